"""A real Banterbox server on a free port over a tiny random model, for server and plugin tests."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgpack
from tiny import TinyConfig, random_hf_tensors, write_gguf
from websockets.asyncio.client import ClientConnection, connect

from protocol import ServerFrame, Welcome, decode_server_frame
from server.app import BanterboxServer
from server.config import EngineSettings, NetworkSettings, PluginSettings, ServerConfig
from server.engine.llm import LLM


def write_tiny_model(folder: Path) -> Path:
    return write_gguf(folder / "tiny.gguf", TinyConfig(), random_hf_tensors(TinyConfig()))


def fast_config(**sections: dict[str, Any]) -> ServerConfig:
    """Fast defaults for tests (free port, small KV, one thread, short grace), then overrides."""
    server = NetworkSettings(port=0, shutdown_grace_s=2.0, close_timeout_s=1.0, ping_interval_s=0)
    engine = EngineSettings(kv_cache_mib=16, threads=1)
    # Only chat unless a test enables more: plugins load their models and tables at start.
    config = ServerConfig(server=server, engine=engine, plugins=PluginSettings(enabled=("chat",)))
    return dataclasses.replace(
        config,
        **{
            name: dataclasses.replace(getattr(config, name), **values)
            for name, values in sections.items()
        },
    )


@asynccontextmanager
async def running_server(
    model: Path, config: ServerConfig | None = None
) -> AsyncIterator[BanterboxServer]:
    config = config or fast_config()
    server = BanterboxServer(config)
    engine_config = config.engine.to_engine_config()
    await server.start(lambda: LLM.load(model, engine_config))
    try:
        yield server
    finally:
        await server.shutdown()


async def http_get(
    port: int, path: str, *, headers: Mapping[str, str] | None = None
) -> tuple[int, str, str]:
    """(status, content type, body) of a plain HTTP GET."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    writer.write(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n{extra}\r\n".encode())
    await writer.drain()
    raw = (await asyncio.wait_for(reader.read(), 10)).decode()
    writer.close()
    head, _, body = raw.partition("\r\n\r\n")
    lines = head.split("\r\n")
    found = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), found.get("Content-Type", ""), body


def url_of(server: BanterboxServer) -> str:
    return f"ws://127.0.0.1:{server.port}"


# The tiny model's end-of-turn token (<|im_end|>): biased away, a turn runs to max_tokens.
EOS_TOKEN_ID = 258
NO_EOS = {"logit_bias": {EOS_TOKEN_ID: -100.0}}


async def poll(predicate: Callable[[], bool], *, timeout_s: float = 10.0) -> None:
    """Wait until predicate() holds (checked every 10 ms); fail after timeout_s."""
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0.01)


def engine_idle(server: BanterboxServer) -> bool:
    assert server.engine is not None
    stats = server.engine.stats.scheduler
    return stats.num_running == 0 and stats.num_waiting == 0 and server.engine.num_active == 0


def encode(frame: Mapping[str, object], encoding: str = "msgpack") -> bytes | str:
    if encoding == "msgpack":
        packed: bytes = msgpack.packb(frame, use_bin_type=True)
        return packed
    return json.dumps(frame)


async def recv_frame(ws: ClientConnection, *, timeout_s: float = 10.0) -> ServerFrame:
    async with asyncio.timeout(timeout_s):
        return decode_server_frame(await ws.recv())


@asynccontextmanager
async def raw_client(
    server: BanterboxServer, *, hello: bool = True, encoding: str = "msgpack", **kwargs: Any
) -> AsyncIterator[ClientConnection]:
    """A bare WebSocket (after hello/welcome unless hello=False) to send hand-made frames."""
    async with connect(url_of(server), **kwargs) as ws:
        if hello:
            await ws.send(encode({"type": "hello", "protocol": 1}, encoding))
            assert isinstance(await recv_frame(ws), Welcome)
        yield ws
