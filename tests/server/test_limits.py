"""What an anonymous or hostile client cannot exhaust, on a real server: handshakes, keys, caches.

Sockets come from several loopback addresses (127.0.0.x) so that per-address limits can be
told apart from global ones.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from server_harness import (
    NO_EOS,
    encode,
    fast_config,
    http_get,
    poll,
    recv_frame,
    running_server,
    url_of,
    write_tiny_model,
)
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from protocol import Delta, Done, ErrorFrame, FinishReason, SessionInfo, Welcome
from server.app import BanterboxServer
from server.config import ApiKey

KEYS = (
    ApiKey(key="k-alpha", tenant="alpha", scopes=frozenset({"generate"})),
    ApiKey(key="k-beta", tenant="beta", scopes=frozenset({"generate"})),
    ApiKey(key="k-ops", tenant="ops", scopes=frozenset({"metrics"})),
)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("model"))


@asynccontextmanager
async def socket_from(
    server: BanterboxServer, address: str, **kwargs: Any
) -> AsyncIterator[ClientConnection]:
    async with connect(url_of(server), local_addr=(address, 0), **kwargs) as ws:
        yield ws


async def hello(ws: ClientConnection, key: str | None = None) -> Any:
    frame: dict[str, object] = {"type": "hello", "protocol": 1}
    if key is not None:
        frame["api_key"] = key
    await ws.send(encode(frame))
    return await recv_frame(ws)


async def turn(ws: ClientConnection, request_id: str, **fields: Any) -> list[Any]:
    await ws.send(encode({"type": "generate", "id": request_id, **fields}))
    frames = []
    while True:
        frame = await recv_frame(ws)
        frames.append(frame)
        if isinstance(frame, Done | ErrorFrame):
            return frames


async def test_a_socket_that_never_says_hello_is_closed(model: Path) -> None:
    config = fast_config(server={"hello_timeout_s": 0.3})
    async with running_server(model, config) as server, socket_from(server, "127.0.0.1") as ws:
        await asyncio.wait_for(ws.wait_closed(), 10)
        assert ws.close_code == 1008
        assert ws.close_reason == "hello timeout"
        await poll(lambda: not server.connections)


async def test_idle_sockets_cannot_lock_out_authenticated_clients(model: Path) -> None:
    config = fast_config(
        server={
            "max_connections": 2,
            "max_unauthenticated": 6,
            "max_unauthenticated_per_address": 4,
            "hello_timeout_s": 30,
        }
    )
    async with running_server(model, config) as server:
        idle = [socket_from(server, "127.0.0.9") for _ in range(4)]
        for cm in idle:
            await cm.__aenter__()
        try:
            with pytest.raises(InvalidStatus) as refused:
                async with socket_from(server, "127.0.0.9"):
                    pass
            assert refused.value.response.status_code == 429
            # Idle sockets do not count against max_connections: two clients get in.
            async with (
                socket_from(server, "127.0.0.2") as one,
                socket_from(server, "127.0.0.3") as two,
            ):
                assert isinstance(await hello(one), Welcome)
                assert isinstance(await hello(two), Welcome)
                assert (await turn(one, "t", prompt="hi", max_tokens=2, sampling=NO_EOS))[-1]
                with pytest.raises(InvalidStatus) as full:
                    async with socket_from(server, "127.0.0.4"):
                        pass
                assert full.value.response.status_code == 503
        finally:
            for cm in idle:
                await cm.__aexit__(None, None, None)


async def test_the_global_cap_on_sockets_before_hello(model: Path) -> None:
    config = fast_config(server={"max_unauthenticated": 3, "hello_timeout_s": 30})
    async with running_server(model, config) as server:
        idle = [socket_from(server, f"127.0.0.{10 + i}") for i in range(3)]
        for cm in idle:
            await cm.__aenter__()
        try:
            with pytest.raises(InvalidStatus) as refused:
                async with socket_from(server, "127.0.0.20"):
                    pass
            assert refused.value.response.status_code == 503
        finally:
            for cm in idle:
                await cm.__aexit__(None, None, None)
        await poll(lambda: not server.connections)
        async with socket_from(server, "127.0.0.20") as ws:  # their places are free again
            assert isinstance(await hello(ws), Welcome)


async def test_wrong_keys_lock_the_address_out(model: Path) -> None:
    config = fast_config(auth={"keys": KEYS}, server={"max_auth_failures_per_address": 3})
    async with running_server(model, config) as server:
        for _ in range(3):
            async with socket_from(server, "127.0.0.5") as ws:
                answer = await hello(ws, "guess")
                assert isinstance(answer, ErrorFrame) and answer.code == "unauthorized"
        with pytest.raises(InvalidStatus) as locked:
            async with socket_from(server, "127.0.0.5"):
                pass
        assert locked.value.response.status_code == 429
        assert int(locked.value.response.headers["Retry-After"]) > 0
        async with socket_from(server, "127.0.0.6") as ws:  # other addresses are untouched
            assert isinstance(await hello(ws, "k-alpha"), Welcome)


async def test_a_locked_address_gets_rate_limited_even_with_the_right_key(model: Path) -> None:
    config = fast_config(auth={"keys": KEYS}, server={"max_auth_failures_per_address": 1})
    # A socket opened before the lockout still cannot try a key after it.
    async with (
        running_server(model, config) as server,
        socket_from(server, "127.0.0.7") as ws,
        socket_from(server, "127.0.0.7") as early,
    ):
        assert (await hello(ws, "nope")).code == "unauthorized"
        answer = await hello(early, "k-alpha")
        assert isinstance(answer, ErrorFrame)
        assert (answer.code, answer.retryable) == ("rate_limited", True)
        await asyncio.wait_for(early.wait_closed(), 10)


async def test_metrics_need_a_key_when_auth_is_on(model: Path) -> None:
    async with running_server(model, fast_config(auth={"keys": KEYS})) as server:
        assert (await http_get(server.port, "/metrics"))[0] == 401
        no_scope = {"Authorization": "Bearer k-alpha"}
        assert (await http_get(server.port, "/metrics", headers=no_scope))[0] == 401
        status, _, body = await http_get(
            server.port, "/metrics", headers={"Authorization": "Bearer k-ops"}
        )
        assert status == 200 and "banterbox_kv_usage_ratio" in body
        assert (await http_get(server.port, "/readyz"))[0] == 200  # probes stay open


async def test_a_tenant_cannot_see_another_tenants_cached_prefix(model: Path) -> None:
    secret = {"prompt": "the secret system prompt of tenant alpha " * 4, "max_tokens": 1}
    async with (
        running_server(model, fast_config(auth={"keys": KEYS})) as server,
        connect(url_of(server)) as alpha,
        connect(url_of(server)) as beta,
    ):
        await hello(alpha, "k-alpha")
        await hello(beta, "k-beta")
        await turn(alpha, "a1", **secret)
        again = (await turn(alpha, "a2", **secret))[-1]
        guess = (await turn(beta, "b1", **secret))[-1]
        assert isinstance(again, Done) and again.usage.num_cached_tokens > 0
        assert isinstance(guess, Done) and guess.usage.num_cached_tokens == 0


async def test_closing_a_session_mid_turn_leaves_nothing_pinned(model: Path) -> None:
    async with running_server(model) as server, connect(url_of(server)) as ws:
        await hello(ws)
        for round_ in range(3):
            sid = f"s{round_}"
            await ws.send(encode({"type": "session.open", "id": f"o{round_}", "session_id": sid}))
            assert isinstance(await recv_frame(ws), SessionInfo)
            await ws.send(
                encode(
                    {
                        "type": "generate",
                        "id": f"g{round_}",
                        "session_id": sid,
                        "messages": [{"role": "user", "content": "tell me a long story"}],
                        "max_tokens": 40,
                        "sampling": NO_EOS,
                    }
                )
            )
            assert isinstance(await recv_frame(ws), Delta)
            await ws.send(encode({"type": "session.close", "id": f"c{round_}", "session_id": sid}))
            frames = [await recv_frame(ws)]
            while not isinstance(frames[-1], Done):
                frames.append(await recv_frame(ws))
            assert frames[-1].finish_reason is FinishReason.LENGTH
        assert server.engine is not None
        engine = server.engine
        # The idle engine refreshes its figures by itself: no step is needed to see the release.
        await poll(lambda: engine.stats.scheduler.kv.num_pinned_by_sessions == 0)
        assert engine.stats.scheduler.kv.num_used_by_running == 0


async def test_sessions_are_capped_per_connection(model: Path) -> None:
    config = fast_config(sessions={"max_per_connection": 2})
    async with running_server(model, config) as server, connect(url_of(server)) as ws:
        await hello(ws)
        answers = []
        for i in range(3):
            await ws.send(encode({"type": "session.open", "id": f"o{i}", "session_id": f"x{i}"}))
            answers.append(await recv_frame(ws))
        assert [type(a).__name__ for a in answers] == ["SessionInfo", "SessionInfo", "ErrorFrame"]
        assert answers[2].code == "session_limit"
        async with connect(url_of(server)) as other:  # another connection has its own share
            await hello(other)
            await other.send(encode({"type": "session.open", "id": "o", "session_id": "y"}))
            assert isinstance(await recv_frame(other), SessionInfo)


async def test_a_server_made_session_id_from_before_a_restart_is_lost(model: Path) -> None:
    async with running_server(model) as first, connect(url_of(first)) as ws:
        await hello(ws)
        await ws.send(encode({"type": "session.open", "id": "o"}))
        made = await recv_frame(ws)
        assert isinstance(made, SessionInfo)
    async with running_server(model) as second, connect(url_of(second)) as ws:
        await hello(ws)
        await ws.send(encode({"type": "session.open", "id": "o", "session_id": made.session_id}))
        lost = await recv_frame(ws)
        assert isinstance(lost, ErrorFrame) and lost.code == "session_lost"
        assert lost.request_id == "o"


async def test_a_dead_engine_thread_restarts_and_readyz_says_so(model: Path, monkeypatch) -> None:
    async with running_server(model) as server, connect(url_of(server)) as ws:
        await hello(ws)
        assert server.engine is not None
        engine = server.engine
        scheduler = engine.llm.core.scheduler
        original = scheduler.schedule

        def schedule_then_die():  # type: ignore[no-untyped-def]
            if scheduler.num_running:
                raise RuntimeError("injected scheduler fault")
            return original()

        monkeypatch.setattr(scheduler, "schedule", schedule_then_die)
        frames = await turn(ws, "doomed", prompt="hi", max_tokens=50, sampling=NO_EOS)
        assert isinstance(frames[-1], ErrorFrame)
        assert (frames[-1].code, frames[-1].retryable) == ("engine_restarted", True)
        await poll(lambda: engine.healthy, timeout_s=30)
        assert (await http_get(server.port, "/readyz"))[0] == 200
        done = (await turn(ws, "after", prompt="hi", max_tokens=3, sampling=NO_EOS))[-1]
        assert isinstance(done, Done) and done.finish_reason is FinishReason.LENGTH


async def test_a_cancelled_score_ends_with_a_cancelled_done(model: Path) -> None:
    async with running_server(model) as server, connect(url_of(server)) as ws:
        await hello(ws)
        score = {"type": "score", "id": "s", "prompt": "The gate is", "candidates": [" open"]}
        for _ in range(5):
            await ws.send(encode(score))
            await ws.send(encode({"type": "cancel", "id": "s"}))
            answer = await recv_frame(ws)
            if isinstance(answer, ErrorFrame):  # the score ended before the cancel arrived
                assert answer.code == "unknown_request"
                continue
            if isinstance(answer, Done):
                assert answer.finish_reason is FinishReason.CANCELLED
                break
            assert answer.type == "scores"  # it finished first: the cancel's error follows
            assert (await recv_frame(ws)).code == "unknown_request"
        else:
            pytest.fail("the score always finished before its cancel arrived")
