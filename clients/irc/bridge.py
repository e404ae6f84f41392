"""The bridge's I/O: one IRC connection and one Banterbox connection; every chat line goes to
mod.check and its verdict becomes Twitch chat commands (or a log line in dry-run). Reconnects
both with backoff. Uses only server.client, the public Python client; never the server."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass

from websockets.exceptions import WebSocketException

from server.client import BanterboxClient, BanterboxError

from .message import IrcMessage, irc_line, parse, roles

log = logging.getLogger("banterbox.bridge")
_VERDICT = frozenset({"mod.verdict"})


@dataclass(frozen=True, kw_only=True)
class BridgeSettings:
    banterbox_url: str = "ws://127.0.0.1:8765"
    api_key: str | None = None  # a key with the moderate scope, when auth is on
    irc_host: str = "127.0.0.1"
    irc_port: int = 6667
    nick: str = "banterbox"
    password: str | None = None  # Twitch: "oauth:..."
    channels: tuple[str, ...] = ()  # "#name"; the moderation channel is the name without '#'
    dry_run: bool = False  # log what would be done, send nothing to the IRC channel
    min_backoff_s: float = 0.5  # the first wait after a lost connection, doubled each time
    max_backoff_s: float = 30.0
    connect_timeout_s: float = 10.0


def commands(verdict: Mapping[str, object], *, nick: str, message_id: str | None) -> list[str]:
    """The Twitch chat commands that carry out a verdict (none for allow and hold: IRC cannot
    hold a line that was already sent; the hold waits in the plugin's review queue)."""
    action = verdict.get("action")
    if action == "delete":
        return [f"/delete {message_id}"] if message_id else []
    if action == "timeout":
        return [f"/timeout {nick} {verdict.get('duration_s') or 600}"]
    if action == "ban":
        return [f"/ban {nick}"]
    return []


class IrcBridge:
    def __init__(self, settings: BridgeSettings) -> None:
        self.settings = settings
        self.joined = asyncio.Event()  # set while joined to the channels (for tests and logs)
        self.num_connections = 0
        self._ids = itertools.count()

    async def run(self) -> None:
        """Bridge until cancelled, reconnecting with exponential backoff and jitter."""
        backoff = self.settings.min_backoff_s
        while True:
            try:
                await self._session()
            except (OSError, EOFError, TimeoutError, BanterboxError, WebSocketException) as error:
                log.warning("bridge connection lost (%s); again in %.1f s", error, backoff)
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                # A cancel that arrived while the client closed was swallowed on the way out.
                raise asyncio.CancelledError
            self.joined.clear()
            await asyncio.sleep(backoff * random.uniform(0.8, 1.2))
            backoff = min(backoff * 2, self.settings.max_backoff_s)
            if self.num_connections:  # it did get in last time: start the backoff over
                backoff, self.num_connections = self.settings.min_backoff_s, 0

    async def _session(self) -> None:
        s = self.settings
        # IRC first: while it is down, no Banterbox connection is opened and closed for nothing.
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(s.irc_host, s.irc_port), s.connect_timeout_s
        )
        try:
            async with BanterboxClient.connect(s.banterbox_url, api_key=s.api_key) as bb:
                writer.write(irc_line("CAP", "REQ", "twitch.tv/tags twitch.tv/commands"))
                if s.password:
                    writer.write(irc_line("PASS", s.password))
                writer.write(irc_line("NICK", s.nick) + irc_line("USER", s.nick, "0", "*", s.nick))
                await writer.drain()
                while raw := await reader.readline():
                    text = raw.decode("utf-8", "replace").rstrip("\r\n")
                    if text:
                        await self._on_line(bb, writer, parse(text))
                raise EOFError("the IRC server closed the connection")
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _on_line(
        self, bb: BanterboxClient, writer: asyncio.StreamWriter, message: IrcMessage
    ) -> None:
        if message.command == "PING":
            writer.write(irc_line("PONG", *message.params))
        elif message.command == "CAP" and message.params[1:2] in (("ACK",), ("NAK",)):
            writer.write(irc_line("CAP", "END"))  # registration waits for the end of CAP
        elif message.command == "001":  # welcome: registered
            for channel in self.settings.channels:
                writer.write(irc_line("JOIN", channel))
        elif message.command == "JOIN" and message.nick == self.settings.nick:
            self.num_connections += 1
            self.joined.set()
            log.info("joined %s", message.params[0] if message.params else "?")
        elif message.command == "PRIVMSG" and len(message.params) == 2:
            await self._moderate(bb, writer, message)
        await writer.drain()

    async def _moderate(
        self, bb: BanterboxClient, writer: asyncio.StreamWriter, message: IrcMessage
    ) -> None:
        channel, text = message.params
        tags = message.tags
        message_id = tags.get("id") or f"irc-{next(self._ids)}"
        user = {
            "id": tags.get("user-id") or message.nick,
            "name": tags.get("display-name") or message.nick,
            "roles": sorted(roles(tags)),
        }
        payload = {"channel": channel.lstrip("#"), "user": user, "text": text,
                   "message_id": message_id}  # fmt: skip
        verdict: Mapping[str, object] = {}
        try:
            async for frame in bb.send_plugin("mod.check", payload, end_types=_VERDICT):
                verdict = getattr(frame, "payload", {})
        except BanterboxError as error:
            if error.code == "connection_closed":
                raise
            log.warning("mod.check refused %s: %s", message_id, error)  # e.g. a text too long
            return
        for command in commands(verdict, nick=message.nick, message_id=tags.get("id")):
            if self.settings.dry_run:
                log.info("dry run: would send to %s: %s", channel, command)
            else:
                writer.write(irc_line("PRIVMSG", channel, command))
