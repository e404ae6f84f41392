"""Spam filters: caps, symbols, emotes, links, repetitions, zalgo and length. Pure.

Each filter measures one number of a message and fires when it exceeds the filter's limit
(the Nightbot / StreamElements model): caps and symbols in percent of the message's letters
or non-space characters, the others in counts. A filter ignores messages shorter than its
`min_length` (so "GG" is not caps spam) and users holding one of its `exempt_roles`.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .verdict import Action, Finding, Reason, Source

FILTER_NAMES = ("caps", "symbols", "emotes", "links", "repetitions", "zalgo", "length")
DEFAULT_EXEMPT = frozenset({"broadcaster", "moderator"})
# Emotes every Twitch chat knows; a channel adds its own in its policy.
GLOBAL_EMOTES = frozenset(
    [
        "Kappa",
        "PogChamp",
        "LUL",
        "KEKW",
        "OMEGALUL",
        "Pog",
        "PogU",
        "monkaS",
        "Sadge",
        "FeelsBadMan",
        "FeelsGoodMan",
        "BibleThump",
        "ResidentSleeper",
        "Kreygasm",
        "4Head",
        "TriHard",
        "WutFace",
        "NotLikeThis",
        "SeemsGood",
        "HeyGuys",
        "VoHiYo",
        "CoolCat",
        "DansGame",
        "SwiftRage",
        "Jebaited",
        "PepeHands",
        "catJAM",
        "EZ",
        "Clap",
    ]
)
_LINK = re.compile(
    r"(?i)\b(?:https?://|www\.)[^\s/]+\S*"
    r"|\b(?:[a-z0-9-]+\.)+(?:com|net|org|tv|gg|io|ly|me|co|xyz|ru|info|biz|link|shop|live|app"
    r"|ly|be|to|cc|gl|us|uk|de)\b(?:/\S*)?"
)
_SCHEME = re.compile(r"(?i)^(?:https?://)?(?:www\.)?")
_WORD = re.compile(r"\w{2,}")
_CHAR_RUN = re.compile(r"(.)\1{2,}", re.DOTALL)  # runs of 3 or more: shorter ones count 0


@dataclass(frozen=True, kw_only=True)
class FilterSettings:
    limit: float  # what the filter's measure may reach without firing
    enabled: bool = True
    min_length: int = 0  # shorter messages are not measured (letters, for caps)
    action: Action = Action.DELETE
    duration_s: int = 0  # for a timeout action
    exempt_roles: frozenset[str] = DEFAULT_EXEMPT
    silent: bool = False  # act without telling subscribers


DEFAULT_FILTERS: Mapping[str, FilterSettings] = {
    "caps": FilterSettings(limit=75.0, min_length=20),
    "symbols": FilterSettings(limit=50.0, min_length=12),
    "emotes": FilterSettings(limit=10.0),
    "links": FilterSettings(limit=0.0, action=Action.DELETE, exempt_roles=DEFAULT_EXEMPT | {"vip"}),
    "repetitions": FilterSettings(limit=6.0, min_length=10),
    "zalgo": FilterSettings(limit=8.0),
    "length": FilterSettings(limit=400.0, action=Action.DELETE),
}


@dataclass(frozen=True, kw_only=True)
class FilterContext:
    """Channel data some filters need besides the text."""

    emotes: frozenset[str] = GLOBAL_EMOTES
    link_allow: tuple[str, ...] = ()  # domains (and their subdomains) anyone may post
    link_permitted: bool = False  # a moderator's one-off permit for this user's next link


def links_of(text: str) -> list[str]:
    """The domains linked in `text`, lower-cased, without scheme or www."""
    return [_SCHEME.sub("", match.group(0)).split("/")[0].lower() for match in _LINK.finditer(text)]


def _caps(text: str, context: FilterContext) -> tuple[float, int]:
    # Emote names are case-sensitive words ("LUL", "KEKW"), not shouting.
    spoken = "".join(word for word in text.split() if word not in context.emotes)
    letters = sum(map(str.isalpha, spoken))
    upper = sum(map(str.isupper, spoken))
    return (100.0 * upper / letters if letters else 0.0), letters


def _symbols(text: str, _: FilterContext) -> tuple[float, int]:
    # Combining marks are zalgo's to count, not symbols.
    marks = 0 if text.isascii() else sum(1 for ch in text if unicodedata.combining(ch))
    visible = len(text) - sum(map(str.isspace, text)) - marks
    symbols = visible - sum(map(str.isalnum, text))
    return (100.0 * symbols / visible if visible else 0.0), visible


def _emotes(text: str, context: FilterContext) -> tuple[float, int]:
    named = sum(1 for word in text.split() if word in context.emotes)
    emoji = 0 if text.isascii() else sum(1 for ch in text if unicodedata.category(ch) == "So")
    return float(named + emoji), len(text)


def _links(text: str, context: FilterContext) -> tuple[float, int]:
    if context.link_permitted or "." not in text:
        return 0.0, len(text)
    allowed = context.link_allow
    bad = [d for d in links_of(text) if not any(d == a or d.endswith("." + a) for a in allowed)]
    return float(len(bad)), len(text)


def _repetitions(text: str, _: FilterContext) -> tuple[float, int]:
    words = Counter(word.casefold() for word in _WORD.findall(text))
    most = max(words.values(), default=0)
    longest_run = max((len(m.group(0)) for m in _CHAR_RUN.finditer(text)), default=0)
    # A run of 3 same characters counts as one repeat: "LETS GOOOOOO" is hype, not spam.
    return float(max(most, longest_run // 3)), len(text)


def _zalgo(text: str, _: FilterContext) -> tuple[float, int]:
    if text.isascii():
        return 0.0, len(text)
    decomposed = unicodedata.normalize("NFD", text)
    return float(sum(1 for ch in decomposed if unicodedata.combining(ch))), len(text)


def _length(text: str, _: FilterContext) -> tuple[float, int]:
    return float(len(text)), len(text)


_MEASURES: Mapping[str, Callable[[str, FilterContext], tuple[float, int]]] = {
    "caps": _caps, "symbols": _symbols, "emotes": _emotes, "links": _links,
    "repetitions": _repetitions, "zalgo": _zalgo, "length": _length,
}  # fmt: skip
_UNITS = {"caps": "%", "symbols": "%"}


def run_filters(
    text: str,
    filters: Mapping[str, FilterSettings],
    roles: frozenset[str],
    context: FilterContext,
) -> list[Finding]:
    findings = []
    for name, settings in filters.items():
        # No measure exceeds the text's length: short messages skip the work.
        if not settings.enabled or len(text) < settings.min_length or roles & settings.exempt_roles:
            continue
        value, length = _MEASURES[name](text, context)
        if length < settings.min_length or value <= settings.limit:
            continue
        unit = _UNITS.get(name, "")
        findings.append(
            Finding(
                action=settings.action,
                reason=Reason(
                    source=Source.FILTER,
                    name=name,
                    detail=f"{name} {value:g}{unit} over the limit of {settings.limit:g}{unit}",
                ),
                duration_s=settings.duration_s,
                silent=settings.silent,
            )
        )
    return findings
