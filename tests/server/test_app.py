"""HTTP probes and metrics, connection limits, auth, tenants and sessions on a real server."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
from server_harness import (
    NO_EOS,
    encode,
    fast_config,
    http_get,
    poll,
    raw_client,
    recv_frame,
    running_server,
    url_of,
    write_tiny_model,
)
from websockets.exceptions import InvalidStatus

from protocol import ErrorFrame, FinishReason
from server.app import BanterboxServer
from server.client import BanterboxClient, BanterboxError
from server.config import ApiKey, AuthSettings
from server.engine.llm import LLM

KEYS = AuthSettings(
    keys=(
        ApiKey(key="k-alpha", tenant="alpha", scopes=frozenset({"generate"})),
        ApiKey(key="k-beta", tenant="beta", scopes=frozenset({"generate"})),
        ApiKey(key="k-mod", tenant="alpha", scopes=frozenset({"moderate"})),
    )
)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("model"))


async def test_probes_follow_the_lifecycle(model: Path) -> None:
    server = BanterboxServer(fast_config())
    loaded = threading.Event()

    def load() -> LLM:
        loaded.wait(10)
        return LLM.load(model, server.config.engine.to_engine_config())

    starting = asyncio.create_task(server.start(load))
    await poll(lambda: server._ws_server is not None)
    assert (await http_get(server.port, "/healthz"))[0] == 200
    assert (await http_get(server.port, "/readyz"))[0] == 503
    async with raw_client(server, hello=False) as ws:
        await ws.send(encode({"type": "hello", "protocol": 1}))
        answer = await recv_frame(ws)
        assert isinstance(answer, ErrorFrame)
        assert (answer.code, answer.retryable) == ("not_ready", True)
    loaded.set()
    await starting
    assert (await http_get(server.port, "/readyz"))[0] == 200
    await server.shutdown()
    assert not server.ready


async def test_metrics_after_a_turn(model: Path) -> None:
    async with running_server(model) as server:
        async with BanterboxClient.connect(url_of(server)) as client:
            await client.generate(prompt="count", max_tokens=5, sampling=NO_EOS).collect()
            status, content_type, body = await http_get(server.port, "/metrics")
        assert status == 200
        assert content_type.startswith("text/plain; version=0.0.4")
        for name in (
            "banterbox_ttft_seconds_bucket",
            "banterbox_inter_token_latency_seconds_count",
            "banterbox_queue_depth",
            "banterbox_running_sequences",
            "banterbox_kv_usage_ratio",
            "banterbox_prefix_hit_tokens_total",
            "banterbox_active_sessions",
            "banterbox_connections",
            'banterbox_requests_total{finish_reason="length"} 1.0',
        ):
            assert name in body, name
        assert "banterbox_ttft_seconds_count 1.0" in body


async def test_each_server_has_its_own_registry(model: Path) -> None:
    async with running_server(model) as one, running_server(model) as two:
        assert one.metrics.registry is not two.metrics.registry


async def test_over_max_connections_is_refused_with_503(model: Path) -> None:
    config = fast_config(server={"max_connections": 1})
    async with running_server(model, config) as server, raw_client(server):
        with pytest.raises(InvalidStatus) as refused:
            async with raw_client(server):
                pass
        assert refused.value.response.status_code == 503


async def test_bad_key_is_unauthorized_and_closed(model: Path) -> None:
    async with running_server(model, fast_config(auth={"keys": KEYS.keys})) as server:
        with pytest.raises(BanterboxError) as bad:
            async with BanterboxClient.connect(url_of(server), api_key="wrong"):
                pass
        assert bad.value.code == "unauthorized"
        async with raw_client(server, hello=False) as ws:
            await ws.send(encode({"type": "hello", "protocol": 1}))
            answer = await recv_frame(ws)
            assert isinstance(answer, ErrorFrame)
            assert answer.code == "unauthorized"
            await ws.wait_closed()
            assert ws.close_code == 1008
        # The key may also come in hello, for clients that cannot set headers.
        async with raw_client(server, hello=False) as ws:
            await ws.send(encode({"type": "hello", "protocol": 1, "api_key": "k-beta"}))
            assert not isinstance(await recv_frame(ws), ErrorFrame)


async def test_missing_scope_is_forbidden(model: Path) -> None:
    async with (
        running_server(model, fast_config(auth={"keys": KEYS.keys})) as server,
        BanterboxClient.connect(url_of(server), api_key="k-mod") as client,
    ):
        with pytest.raises(BanterboxError) as forbidden:
            await client.generate(prompt="hi", max_tokens=2).collect()
        assert forbidden.value.code == "forbidden"
        with pytest.raises(BanterboxError) as forbidden:
            await client.open_session()
        assert forbidden.value.code == "forbidden"


async def test_sessions_are_per_tenant(model: Path) -> None:
    async with running_server(model, fast_config(auth={"keys": KEYS.keys})) as server:
        url = url_of(server)
        async with (
            BanterboxClient.connect(url, api_key="k-alpha") as alpha,
            BanterboxClient.connect(url, api_key="k-beta") as beta,
        ):
            opened = await alpha.open_session("npc-7")
            assert (opened.session_id, opened.resumed) == ("npc-7", False)
            for attempt in (
                beta.resume_session("npc-7"),
                beta.close_session("npc-7"),
                beta.generate(
                    session_id="npc-7", messages=[{"role": "user", "content": "hi"}]
                ).collect(),
            ):
                with pytest.raises(BanterboxError) as hidden:
                    await attempt
                assert hidden.value.code == "session_not_found"
            # The same id is a separate, new session for beta.
            assert (await beta.open_session("npc-7")).resumed is False
            assert (await alpha.resume_session("npc-7")).resumed is True


async def test_session_turns_reuse_the_kv_cache(model: Path) -> None:
    async with running_server(model) as server, BanterboxClient.connect(url_of(server)) as client:
        session = await client.open_session(metadata={"system": "You are a blacksmith."})
        assert session.session_id
        first = client.generate(
            session_id=session.session_id,
            messages=[{"role": "user", "content": "Can you fix my sword, please?"}],
            max_tokens=8,
            sampling=NO_EOS,
        )
        await first.collect()
        second = client.generate(
            session_id=session.session_id,
            messages=[{"role": "user", "content": "And my shield?"}],
            max_tokens=8,
            sampling=NO_EOS,
        )
        done = await second.collect()
        assert done.finish_reason is FinishReason.LENGTH
        assert first.done is not None
        # The whole first turn (prompt and reply, full blocks) is reused, not just the persona.
        history = first.done.usage.num_prompt_tokens + first.done.usage.num_completion_tokens
        assert done.usage.num_cached_tokens == (history - 1) // 16 * 16
        assert first.done is not None
        assert done.usage.num_prompt_tokens > first.done.usage.num_prompt_tokens
        again = await client.open_session(session.session_id)  # an existing id resumes
        assert (again.resumed, again.num_turns) == (True, 2)
        transcript = server.sessions.get("default", session.session_id).messages
        assert [m.role.value for m in transcript] == ["user", "assistant"] * 2
        assert transcript[1].content == first.text
        assert server.engine is not None
        kv = server.engine.llm.core.kv_manager
        assert kv.usage().num_pinned_by_sessions > 0
        closed = await client.close_session(session.session_id)
        assert closed.session_id == session.session_id
        await poll(lambda: kv.usage().num_pinned_by_sessions == 0)  # closing unpins its KV
        with pytest.raises(BanterboxError) as gone:
            await client.resume_session(session.session_id)
        assert gone.value.code == "session_not_found"


async def test_cancelled_session_turn_is_not_kept(model: Path) -> None:
    async with running_server(model) as server, BanterboxClient.connect(url_of(server)) as client:
        session = await client.open_session()
        stream = client.generate(
            session_id=session.session_id,
            messages=[{"role": "user", "content": "Tell me everything."}],
            max_tokens=400,
            sampling=NO_EOS,
        )
        await anext(stream)
        await client.cancel(stream.request_id)
        assert (await stream.collect()).finish_reason is FinishReason.CANCELLED
        assert server.sessions.get("default", session.session_id).messages == []
