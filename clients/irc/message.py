"""IRC lines with IRCv3 tags, parsed and written (RFC 1459 and Twitch's tags). Pure: no sockets."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

_TAG_ESCAPES = {":": ";", "s": " ", "\\": "\\", "r": "\r", "n": "\n"}
# Twitch badges that make a chatter a moderator of the channel, in the plugin's role names.
_BADGE_ROLES = {"broadcaster": "broadcaster", "moderator": "moderator", "vip": "vip",
                "subscriber": "subscriber", "staff": "staff"}  # fmt: skip


def _no_tags() -> Mapping[str, str]:
    return MappingProxyType({})


@dataclass(frozen=True)
class IrcMessage:
    command: str
    params: tuple[str, ...] = ()
    prefix: str = ""
    tags: Mapping[str, str] = field(default_factory=_no_tags)

    @property
    def nick(self) -> str:
        return self.prefix.partition("!")[0]


def _unescape(value: str) -> str:
    out, chars = [], iter(value)
    for char in chars:
        if char == "\\":
            escaped = next(chars, "")
            out.append(_TAG_ESCAPES.get(escaped, escaped))
        else:
            out.append(char)
    return "".join(out)


def parse(line: str) -> IrcMessage:
    """One line (without its CRLF) -> its parts; ValueError for a line with no command."""
    tags: dict[str, str] = {}
    if line.startswith("@"):
        raw, _, line = line[1:].partition(" ")
        for item in raw.split(";"):
            key, _, value = item.partition("=")
            if key:
                tags[key] = _unescape(value)
    line = line.lstrip(" ")
    prefix = ""
    if line.startswith(":"):
        prefix, _, line = line[1:].partition(" ")
    head, _, trailing = line.partition(" :")
    words = head.split()
    if not words:
        raise ValueError(f"no command in IRC line {line!r}")
    params = (*words[1:], trailing) if " :" in line else tuple(words[1:])
    return IrcMessage(words[0].upper(), params, prefix, MappingProxyType(tags))


def irc_line(command: str, *params: str) -> bytes:
    """A line to send: the last parameter goes after ':' (it may hold spaces); CR/LF never."""
    parts = [command, *params]
    if params:
        parts[-1] = ":" + params[-1]
    text = " ".join(parts).replace("\r", " ").replace("\n", " ")
    return text.encode("utf-8", errors="replace")[:510] + b"\r\n"


def roles(tags: Mapping[str, str]) -> frozenset[str]:
    """The chatter's roles from Twitch tags: badges (`moderator/1,subscriber/12`) and `mod=1`."""
    found = set()
    for badge in tags.get("badges", "").split(","):
        name = badge.partition("/")[0]
        if name in _BADGE_ROLES:
            found.add(_BADGE_ROLES[name])
    if tags.get("mod") == "1":
        found.add("moderator")
    return frozenset(found)
