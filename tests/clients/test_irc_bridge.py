"""The IRC bridge (clients/irc): Twitch lines parsed, verdicts turned into commands, and the
bridge between a real ngircd on loopback and a real tiny-model server with moderation."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from server_harness import fast_config, running_server, url_of, write_tiny_model

from clients.irc.bridge import BridgeSettings, IrcBridge, commands
from clients.irc.message import irc_line, parse, roles
from server.client import BanterboxClient

CHANNEL = "#stream"
WAIT_S = 30.0

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

TWITCH = (
    "@badge-info=;badges=moderator/1,subscriber/12;display-name=Ann\\sB;id=abc-1;mod=1;"
    "user-id=42 :ann!ann@ann.tmi.twitch.tv PRIVMSG #stream :hello : there"
)


def test_twitch_lines_parse_with_tags_and_roles() -> None:
    message = parse(TWITCH)
    assert (message.command, message.params, message.nick) == (
        "PRIVMSG", ("#stream", "hello : there"), "ann"
    )  # fmt: skip
    assert message.tags["display-name"] == "Ann B" and message.tags["id"] == "abc-1"
    assert roles(message.tags) == {"moderator", "subscriber"}
    assert parse("PING :tmi.twitch.tv").params == ("tmi.twitch.tv",)
    assert parse(":irc.test 001 bot :Welcome").command == "001"
    injected = irc_line("PRIVMSG", "#c", "/timeout x 5\r\nQUIT")
    assert injected == b"PRIVMSG #c :/timeout x 5  QUIT\r\n"  # no line of its own
    with pytest.raises(ValueError):
        parse(":prefix-only")


def test_verdicts_become_twitch_commands() -> None:
    assert commands({"action": "allow"}, nick="u", message_id="m") == []
    assert commands({"action": "hold"}, nick="u", message_id="m") == []
    assert commands({"action": "delete"}, nick="u", message_id="m") == ["/delete m"]
    assert commands({"action": "delete"}, nick="u", message_id=None) == []
    assert commands({"action": "timeout", "duration_s": 60}, nick="u", message_id="m") == [
        "/timeout u 60"
    ]
    assert commands({"action": "ban"}, nick="u", message_id=None) == ["/ban u"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def ngircd(folder: Path, port: int) -> AsyncIterator[None]:
    binary = shutil.which("ngircd") or "/usr/sbin/ngircd"
    assert Path(binary).exists(), "ngircd is needed (make setup installs Debian's ngircd)"
    folder.mkdir(parents=True, exist_ok=True)
    conf = folder / "ngircd.conf"
    conf.write_text(
        f"[Global]\nName = irc.test\nInfo = test\nListen = 127.0.0.1\nPorts = {port}\n"
        f"PidFile = {folder}/ngircd.pid\nMotdPhrase = test\n"
        "[Limits]\nMaxNickLength = 30\nPingTimeout = 120\nPongTimeout = 20\n"
        "[Options]\nPAM = no\nIdent = no\nDNS = no\n"
    )
    proc = await asyncio.create_subprocess_exec(
        binary, "--nodaemon", "--config", str(conf),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        async with asyncio.timeout(WAIT_S):
            while True:
                with contextlib.suppress(OSError):
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                    writer.close()
                    break
                await asyncio.sleep(0.05)
        yield
    finally:
        proc.terminate()
        await proc.wait()


async def time_out_spoilers(url: str) -> None:
    """The channel's policy: a line with "spoilerword" times its sender out for 60 s."""
    async with BanterboxClient.connect(url) as admin:
        policy = {"blocked_terms": ["spoilerword"], "blocked_action": "timeout",
                  "blocked_duration_s": 60}  # fmt: skip
        stream = admin.send_plugin(
            "mod.config", {"channel": "stream", "op": "set", "policy": policy},
            end_types=frozenset({"mod.policy"}),
        )  # fmt: skip
        assert [frame.type async for frame in stream] == ["mod.policy"]  # type: ignore[attr-defined]


class Viewer:
    """A chatter on the IRC server: joins the channel, speaks, and hears what others send."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def join(cls, port: int, nick: str) -> Viewer:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        viewer = cls(reader, writer)
        writer.write(irc_line("NICK", nick) + irc_line("USER", nick, "0", "*", nick))
        await viewer.until("001")
        writer.write(irc_line("JOIN", CHANNEL))
        await viewer.until("JOIN")
        return viewer

    async def until(self, command: str, nick: str | None = None) -> list[str]:
        """Read lines until one with this command (from nick, if given); returns its params."""
        async with asyncio.timeout(WAIT_S):
            while True:
                raw = await self.reader.readline()
                assert raw, "the IRC server closed the connection"
                message = parse(raw.decode().rstrip("\r\n"))
                if message.command == "PING":
                    self.writer.write(irc_line("PONG", *message.params))
                if message.command == command and nick in (None, message.nick):
                    return list(message.params)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()

    async def say(self, text: str) -> None:
        self.writer.write(irc_line("PRIVMSG", CHANNEL, text))
        await self.writer.drain()


async def test_bridge_carries_out_a_verdict_on_the_irc_channel(tmp_path: Path) -> None:
    model = write_tiny_model(tmp_path)
    irc_port = free_port()
    config = fast_config(plugins={"enabled": ["chat", "moderation"]})
    async with running_server(model, config) as server, ngircd(tmp_path, irc_port):
        await time_out_spoilers(url_of(server))
        viewer = await Viewer.join(irc_port, "viewer")
        settings = BridgeSettings(
            banterbox_url=url_of(server), irc_port=irc_port, nick="modbot",
            channels=(CHANNEL,), min_backoff_s=0.1, max_backoff_s=0.5,
        )  # fmt: skip
        bridge = asyncio.create_task(IrcBridge(settings).run())
        try:
            await viewer.until("JOIN", nick="modbot")
            await viewer.say("hello everyone, good game")
            await viewer.say("the spoilerword is that he dies")
            assert await viewer.until("PRIVMSG", nick="modbot") == [CHANNEL, "/timeout viewer 60"]
        finally:
            await viewer.close()
            bridge.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(bridge, WAIT_S)  # a bridge that ignores cancel fails


async def test_dry_run_acts_on_nothing_and_the_bridge_comes_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = write_tiny_model(tmp_path)
    irc_port = free_port()
    config = fast_config(plugins={"enabled": ["chat", "moderation"]})
    async with running_server(model, config) as server:
        await time_out_spoilers(url_of(server))
        settings = BridgeSettings(
            banterbox_url=url_of(server), irc_port=irc_port, nick="drybot",
            channels=(CHANNEL,), dry_run=True, min_backoff_s=0.1, max_backoff_s=0.5,
        )  # fmt: skip
        bridge_obj = IrcBridge(settings)
        caplog.set_level(logging.INFO, logger="banterbox.bridge")
        bridge = asyncio.create_task(bridge_obj.run())  # before the IRC server is up: it waits
        try:
            for run in (1, 2):  # the IRC server goes away after the first run and comes back
                async with ngircd(tmp_path / str(run), irc_port):
                    viewer = await Viewer.join(irc_port, f"viewer{run}")
                    await asyncio.wait_for(bridge_obj.joined.wait(), WAIT_S)
                    await viewer.say("the spoilerword is that he dies")
                    logged = f"would send to {CHANNEL}: /timeout viewer{run} 60"
                    async with asyncio.timeout(WAIT_S):
                        while logged not in caplog.text:
                            await asyncio.sleep(0.05)
                    caplog.clear()
                    await viewer.close()
            assert not bridge.done()
        finally:
            bridge.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(bridge, WAIT_S)  # a bridge that ignores cancel fails
