"""`bench chat` refuses, in one clear line, a server without the moderation plugin."""

from __future__ import annotations

from pathlib import Path

import pytest
from server_harness import running_server, url_of, write_tiny_model

from bench.__main__ import main
from bench.chat import MissingPluginError, require_moderation
from protocol import Welcome


def welcome(*capabilities: str) -> Welcome:
    return Welcome(
        server_version="0.1.0",
        protocol=1,
        model="m",
        limits={},
        capabilities=capabilities,
        connection_id="c-1",
    )


def test_a_welcome_without_mod_check_is_refused_with_the_capabilities() -> None:
    with pytest.raises(MissingPluginError) as caught:
        require_moderation(welcome("sessions", "chat", "chat.say"), "ws://h:1")
    assert str(caught.value) == (
        "server at ws://h:1 has no moderation plugin (capabilities: sessions, chat, chat.say)"
    )
    require_moderation(welcome("sessions", "moderation", "mod.check"), "ws://h:1")


async def test_the_cli_exits_non_zero_with_one_line_against_a_real_server(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import asyncio

    async with running_server(write_tiny_model(tmp_path)) as server:
        url = url_of(server)
        argv = [
            "chat",
            "--url",
            url,
            "--duration",
            "1",
            "--no-progress",
            "--json",
            str(tmp_path / "chat.json"),
        ]
        code = await asyncio.to_thread(main, argv)
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 1
    assert len(out) == 1
    assert out[0].startswith(
        f"bench chat: server at {url} has no moderation plugin (capabilities: "
    )
    assert not (tmp_path / "chat.json").exists()
