"""Plugin API v2 end to end over a real server: store, spawn, emit, system, constraint, score."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from probe_plugin import ProbePlugin
from redis_server import RedisServer, redis_server
from server_harness import encode, fast_config, poll, recv_frame, write_tiny_model
from websockets.asyncio.client import ClientConnection

from plugins.api import PLUGIN_API_VERSION, BasePlugin
from plugins.chat import ChatPlugin
from protocol import Delta, Done, ErrorFrame, PluginFrame, SessionInfo, Welcome
from server.app import BanterboxServer
from server.engine.config import EngineConfig
from server.engine.llm import LLM
from server.plugin_host import PluginLoadError, PluginRegistry
from server.store import open_store

__all__ = ["redis_server"]  # the fixture, for the fleet test


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("model"))


class _Server:
    def __init__(self, model: Path, *, store_url: str = "memory://") -> None:
        self.plugin = ProbePlugin()
        self.server = BanterboxServer(
            fast_config(), plugins=PluginRegistry([self.plugin]), store=open_store(store_url)
        )
        self._model = model

    async def __aenter__(self) -> _Server:
        config = self.server.config.engine.to_engine_config()
        await self.server.start(lambda: LLM.load(self._model, config))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.server.shutdown()


async def _connect(server: BanterboxServer) -> ClientConnection:
    from websockets.asyncio.client import connect

    ws = await connect(f"ws://127.0.0.1:{server.port}")
    await ws.send(encode({"type": "hello", "protocol": 1}))
    assert isinstance(await recv_frame(ws), Welcome)
    return ws


async def _ask(ws: ClientConnection, frame_type: str, request_id: str, **payload: Any) -> Any:
    await ws.send(encode({"type": frame_type, "id": request_id, **payload}))
    return await recv_frame(ws)


async def test_store_is_namespaced_counts_and_logs(model: Path) -> None:
    async with _Server(model) as s:
        ws = await _connect(s.server)
        try:
            for i, key in enumerate(["a", "b", "c", "d"]):
                answer = await _ask(ws, "probe.remember", f"r{i}", key=key, value=f"v{key}")
                assert isinstance(answer, PluginFrame) and answer.type == "probe.remembered"
                assert answer.payload["count"] == i + 1
            assert answer.payload["log"] == ["b", "c", "d"]  # max_len 3 keeps the newest
            value = await _ask(ws, "probe.recall", "q", key="b")
            assert value.payload["value"] == "vb"
            missing = await _ask(ws, "probe.recall", "q2", key="zz")
            assert missing.payload["value"] is None
            bad = await _ask(ws, "probe.remember", "bad", key="")
            assert isinstance(bad, ErrorFrame) and bad.code == "invalid_field"
            assert bad.request_id == "bad" and bad.message.startswith("key:")
        finally:
            await ws.close()


async def test_emit_reaches_subscribed_connections_and_spawned_work_runs(model: Path) -> None:
    async with _Server(model) as s:
        fan, quiet, speaker = [await _connect(s.server) for _ in range(3)]
        try:
            assert (await _ask(fan, "probe.follow", "f", topic="scene-1")).type == "probe.following"
            announced = await _ask(speaker, "probe.announce", "a", topic="scene-1", text="hi")
            assert announced.payload["reached"] == 1
            news = await recv_frame(fan)
            assert isinstance(news, PluginFrame) and news.type == "probe.news"
            assert news.payload["text"] == "hi"
            assert (await _ask(speaker, "probe.later", "l", topic="scene-1", text="soon")).type == (
                "probe.spawned"
            )
            later = await recv_frame(fan)
            assert later.payload["text"] == "soon"
            with pytest.raises(TimeoutError):  # the unsubscribed connection heard nothing
                await recv_frame(quiet, timeout_s=0.2)
            await fan.close()
            await poll(lambda: s.server.topics.num_subscribers("default", "scene-1") == 0)
        finally:
            for ws in (quiet, speaker):
                await ws.close()


async def test_emit_reaches_subscribers_on_another_replica(
    model: Path, redis_server: RedisServer
) -> None:
    async with (
        _Server(model, store_url=redis_server.url) as one,
        _Server(model, store_url=redis_server.url) as two,
    ):
        fan, speaker = await _connect(one.server), await _connect(two.server)
        try:
            await _ask(fan, "probe.follow", "f", topic="arena")
            for attempt in range(50):  # the replica subscribes on the store in the background
                await _ask(speaker, "probe.announce", f"a{attempt}", topic="arena", text="go")
                try:
                    news = await recv_frame(fan, timeout_s=0.1)
                    break
                except TimeoutError:
                    continue
            assert isinstance(news, PluginFrame) and news.payload == {"text": "go"}
            # Store state is shared too: a counter from both replicas counts once each.
            await _ask(fan, "probe.remember", "r1", key="k", value="v")
            counted = await _ask(speaker, "probe.remember", "r2", key="k", value="v")
            assert counted.payload["count"] == 2
        finally:
            for ws in (fan, speaker):
                await ws.close()


async def test_a_constrained_turn_under_the_plugins_system_prompt(model: Path) -> None:
    async with _Server(model) as s:
        ws = await _connect(s.server)
        try:
            system, text, choices = "You are a terse gate guard.", "May I pass?", ["yes", "no"]
            await ws.send(
                encode(
                    {"type": "probe.ask", "id": "k", "text": text, "system": system,
                     "choices": choices}
                )
            )  # fmt: skip
            frames = [await recv_frame(ws)]
            while not isinstance(frames[-1], PluginFrame | ErrorFrame):
                frames.append(await recv_frame(ws))
            assert isinstance(frames[-1], PluginFrame), frames[-1]
            assert frames[-1].payload["text"] in choices
            done = next(f for f in frames if isinstance(f, Done))
            assert s.server.llm is not None
            rendered = s.server.llm.encode_chat(
                [{"role": "system", "content": system}, {"role": "user", "content": text}]
            )
            assert done.usage.num_prompt_tokens == len(rendered)  # the system came first
            assert "".join(f.text for f in frames if isinstance(f, Delta)) in choices
        finally:
            await ws.close()


async def test_score_ranks_candidates_and_matches_the_engine(model: Path) -> None:
    async with _Server(model) as s:
        ws = await _connect(s.server)
        try:
            answer = await _ask(
                ws, "probe.judge", "j", prompt="The gate is", candidates=[" open", " closed"]
            )
            assert isinstance(answer, PluginFrame), answer
            logprobs = answer.payload["logprobs"]
            assert len(logprobs) == 2 and all(lp < 0 for lp in logprobs)
            # The engine alone, on a core of its own (the server's belongs to its thread).
            alone = LLM.load(model, EngineConfig(kv_cache_mib=4, num_threads=1))
            tok = alone.tokenizer
            direct = alone.score(
                alone.encode_prompt("The gate is"), [tok.encode(" open"), tok.encode(" closed")]
            )
            assert logprobs == pytest.approx(list(direct.logprobs), abs=1e-4)
        finally:
            await ws.close()


async def test_lifecycle_hooks(model: Path) -> None:
    async with _Server(model) as s:
        assert s.plugin.host is not None  # start() ran before serving
        ws = await _connect(s.server)
        try:
            opened = await _ask(ws, "session.open", "o", session_id="talk")
            assert isinstance(opened, SessionInfo)
            await _ask(ws, "session.close", "c", session_id="talk")
            for _ in range(100):
                closed = await _ask(ws, "probe.closed", "x")
                if closed.payload["sessions"]:
                    break
                await asyncio.sleep(0.02)
            assert closed.payload["sessions"] == ["talk"]
        finally:
            await ws.close()
    assert s.plugin.stopped


def test_plugins_of_api_v1_are_refused_with_how_to_port() -> None:
    class Old(ChatPlugin):
        api_version = 1

    with pytest.raises(PluginLoadError, match="port it"):
        PluginRegistry([Old()])


def test_every_frame_type_needs_a_scope() -> None:
    class NoScope(BasePlugin):
        name = "noscope"
        frame_types = frozenset({"noscope.do"})

    with pytest.raises(PluginLoadError, match="needs a scope"):
        PluginRegistry([NoScope()])
    assert NoScope().api_version == PLUGIN_API_VERSION
