"""`banterbox serve` as a process (SIGTERM drains), its flags and config; one real-model turn."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest
from server_harness import NO_EOS, fast_config, running_server, url_of, write_tiny_model

from protocol import FinishReason
from server.client import BanterboxClient
from server.config import ConfigError
from server.serve import add_serve_arguments, build_config


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0)
    add_serve_arguments(parser)
    return parser.parse_args(argv)


def test_flags_override_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "banterbox.toml"
    path.write_text(
        '[server]\nport = 9000\nmax_connections = 7\n[engine]\ndevice = "cuda"\nthreads = 3\n'
        '[[auth.keys]]\nkey = "k1"\ntenant = "t1"\nscopes = ["generate"]\n'
    )
    config = build_config(parse("--config", str(path), "--port", "9100"), {})
    assert (config.server.port, config.server.max_connections) == (9100, 7)
    assert (config.engine.device, config.engine.threads) == ("cuda", 3)  # not cli's defaults
    env = {"BANTERBOX_API_KEYS": "k2:t2:generate+admin"}
    config = build_config(parse("--config", str(path), "--host", "0.0.0.0"), env)
    assert [(k.tenant, sorted(k.scopes)) for k in config.auth.keys] == [
        ("t1", ["generate"]),
        ("t2", ["admin", "generate"]),
    ]


def test_auth_off_only_on_loopback() -> None:
    assert not build_config(parse("--host", "::1"), {}).auth.enabled
    with pytest.raises(ConfigError, match="loopback"):
        build_config(parse("--host", "0.0.0.0"), {})


async def _read_until_listening(stream: asyncio.StreamReader, lines: list[str]) -> int:
    while True:
        line = (await stream.readline()).decode()
        if not line:
            raise AssertionError("server exited:\n" + "".join(lines))
        lines.append(line)
        if "listening on ws://" in line:
            return int(line.split("ws://127.0.0.1:")[1].split()[0])


async def test_sigterm_lets_the_turn_finish_and_exits_0(tmp_path: Path) -> None:
    model = write_tiny_model(tmp_path)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server.cli", "serve", "--model", str(model), "--port", "0",
        "--kv-cache-mib", "16", "--threads", "1", "--shutdown-grace", "20",
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "BANTERBOX_API_KEYS": ""},
    )  # fmt: skip
    assert proc.stderr is not None
    lines: list[str] = []
    try:
        port = await asyncio.wait_for(_read_until_listening(proc.stderr, lines), 60)
        assert "(model tiny-test-model)" in lines[-1]
        drain = asyncio.create_task(proc.stderr.read())
        async with BanterboxClient.connect(f"ws://127.0.0.1:{port}") as client:
            stream = client.generate(prompt="last words", max_tokens=300, sampling=NO_EOS)
            await anext(stream)
            proc.send_signal(signal.SIGTERM)
            done = await stream.collect()
        assert done.finish_reason is FinishReason.LENGTH
        assert done.usage.num_completion_tokens == 300
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        assert "stopped" in (await drain).decode()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_shutdown_cancels_turns_past_the_grace(tmp_path: Path) -> None:
    model = write_tiny_model(tmp_path)
    config = fast_config(server={"shutdown_grace_s": 0.2})
    async with (
        running_server(model, config) as server,
        BanterboxClient.connect(url_of(server)) as client,
    ):
        stream = client.generate(prompt="endless", max_tokens=480, sampling=NO_EOS)
        await anext(stream)
        await server.shutdown()
        done = await stream.collect()
        assert done.finish_reason is FinishReason.CANCELLED
        assert client.ws.close_code == 1001


@pytest.mark.slow
async def test_default_model_streams_real_text(default_model: Path) -> None:
    model = default_model
    config = fast_config(engine={"kv_cache_mib": 64, "threads": 2})
    async with (
        running_server(model, config) as server,
        BanterboxClient.connect(url_of(server)) as client,
    ):
        assert client.welcome is not None
        assert "smollm2" in client.welcome.model.lower()
        stream = client.generate(
            messages=[{"role": "user", "content": "What is the capital of France?"}],
            max_tokens=24,
        )
        deltas = [delta async for delta in stream]
        assert len(deltas) > 1
        assert "Paris" in stream.text
