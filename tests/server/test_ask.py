"""`banterbox ask`: the README's one-liner streams an answer from a running server."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
from server_harness import running_server, url_of, write_tiny_model


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("model"))


async def _ask(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server.cli", "ask", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_ask_streams_an_answer(model: Path) -> None:
    async with running_server(model) as server:
        code, out, err = await _ask("--url", url_of(server), "--max-tokens", "6", "Hello!")
        assert code == 0, err
        assert out.endswith("\n") and len(out) > 1
        assert b"banterbox_ttft_seconds_count 1.0" in server.metrics.render()


async def test_ask_without_a_server_is_one_line(unused_tcp_port: int) -> None:
    code, out, err = await _ask("--url", f"ws://127.0.0.1:{unused_tcp_port}", "Hello!")
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith("banterbox: error:")
