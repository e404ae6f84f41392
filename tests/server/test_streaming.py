"""Streamed turns against a real server over a tiny model: encodings, multiplexing, cancel,
disconnect and a stalled reader."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest
from server_harness import (
    NO_EOS,
    encode,
    engine_idle,
    fast_config,
    poll,
    raw_client,
    recv_frame,
    running_server,
    url_of,
    write_tiny_model,
)

from protocol import Delta, Done, ErrorFrame, FinishReason
from server.client import BanterboxClient

HELLO = [{"role": "user", "content": "Hello there, how are you?"}]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("model"))


@pytest.mark.parametrize("encoding", ["msgpack", "json"])
async def test_streamed_turn(model: Path, encoding: str) -> None:
    async with (
        running_server(model) as server,
        BanterboxClient.connect(url_of(server), encoding=encoding) as client,
    ):
        assert client.welcome is not None
        assert client.welcome.model == "tiny-test-model"
        assert "chat.say" in client.welcome.capabilities
        stream = client.generate(
            messages=HELLO, max_tokens=12, sampling=NO_EOS, return_token_ids=True
        )
        deltas = [delta async for delta in stream]
        assert stream.done is not None
        assert stream.done.finish_reason is FinishReason.LENGTH
        assert [d.seq for d in deltas] == list(range(len(deltas)))
        assert sum(len(d.token_ids or ()) for d in deltas) == 12
        assert stream.done.usage.num_completion_tokens == 12
        assert stream.done.usage.num_prompt_tokens > 0
        assert stream.done.timings.total_ms >= stream.done.timings.ttft_ms >= 0


async def test_answers_in_the_encoding_of_each_frame(model: Path) -> None:
    async with running_server(model) as server, raw_client(server, encoding="json") as ws:
        for encoding in ("msgpack", "json", "msgpack"):
            frame = {"type": "generate", "id": encoding, "prompt": "abc", "max_tokens": 2}
            await ws.send(encode(frame, encoding))
            while True:
                message = await asyncio.wait_for(ws.recv(), 10)
                assert isinstance(message, bytes if encoding == "msgpack" else str)
                if b"done" in (message if isinstance(message, bytes) else message.encode()):
                    break


async def test_twenty_requests_over_five_connections(model: Path) -> None:
    async with running_server(model) as server:
        url = url_of(server)

        async def one_connection(index: int) -> list[Done]:
            encoding = "json" if index % 2 else "msgpack"
            async with BanterboxClient.connect(url, encoding=encoding) as client:
                streams = [
                    client.generate(prompt=f"story {index}-{i}", max_tokens=8, sampling=NO_EOS)
                    for i in range(4)
                ]
                dones = await asyncio.gather(*(s.collect() for s in streams))
                for stream in streams:
                    assert [d.seq for d in stream.deltas] == list(range(len(stream.deltas)))
                    assert {d.request_id for d in stream.deltas} == {stream.request_id}
                return dones

        results = await asyncio.gather(*(one_connection(i) for i in range(5)))
        dones = [done for result in results for done in result]
        assert len(dones) == 20
        assert all(d.finish_reason is FinishReason.LENGTH for d in dones)
        assert all(d.usage.num_completion_tokens == 8 for d in dones)


@pytest.fixture
async def one_seq_server(model: Path):  # type: ignore[no-untyped-def]
    # One running sequence and a tiny step budget: a second request waits, a long prompt
    # takes many steps to prefill.
    config = fast_config(engine={"max_num_seqs": 1, "max_num_batched_tokens": 4})
    async with running_server(model, config) as server:
        yield server


async def test_cancel_while_queued_and_while_decoding(one_seq_server) -> None:  # type: ignore[no-untyped-def]
    server = one_seq_server
    async with BanterboxClient.connect(url_of(server)) as client:
        running = client.generate(prompt="a long story", max_tokens=400, sampling=NO_EOS)
        first = await anext(running)
        assert first.seq == 0
        queued = client.generate(prompt="waits its turn", max_tokens=5)
        queued_task = asyncio.create_task(queued.collect())
        assert server.engine is not None
        await poll(
            lambda: server.engine is not None and server.engine.stats.scheduler.num_waiting == 1
        )
        await client.cancel(queued.request_id)
        done = await queued_task
        assert done.finish_reason is FinishReason.CANCELLED
        assert done.usage.num_completion_tokens == 0
        await client.cancel(running.request_id)
        done = await running.collect()
        assert done.finish_reason is FinishReason.CANCELLED
        assert 1 <= done.usage.num_completion_tokens < 400
        await poll(lambda: engine_idle(server))


async def test_cancel_while_prefilling(one_seq_server) -> None:  # type: ignore[no-untyped-def]
    server = one_seq_server
    async with BanterboxClient.connect(url_of(server)) as client:
        stream = client.generate(prompt="x" * 480, max_tokens=5)
        task = asyncio.create_task(stream.collect())
        # 480 prompt tokens at 4 per step: running with no output yet means prefilling.
        await poll(
            lambda: server.engine is not None and server.engine.stats.scheduler.num_running == 1
        )
        await client.cancel(stream.request_id)
        done = await task
        assert done.finish_reason is FinishReason.CANCELLED
        assert done.usage.num_completion_tokens == 0
        assert stream.deltas == []


async def test_cancel_unknown_request(model: Path) -> None:
    async with running_server(model) as server, BanterboxClient.connect(url_of(server)) as client:
        await client.cancel("nope")
        error = await asyncio.wait_for(client.events.get(), 10)
        assert isinstance(error, ErrorFrame)
        assert (error.code, error.request_id) == ("unknown_request", "nope")


async def test_duplicate_request_id_and_inflight_limit(model: Path) -> None:
    config = fast_config(server={"max_inflight_per_connection": 2})
    async with running_server(model, config) as server, raw_client(server) as ws:

        async def send(request_id: str) -> None:
            frame = {"type": "generate", "id": request_id, "prompt": "p", "max_tokens": 300}
            await ws.send(encode({**frame, "sampling": NO_EOS}))

        await send("a")
        await send("a")
        await send("b")
        await send("c")
        errors = {}
        while len(errors) < 2:
            frame = await recv_frame(ws)
            if isinstance(frame, ErrorFrame):
                errors[frame.code] = frame
        assert errors["duplicate_request_id"].request_id == "a"
        assert errors["too_many_requests"].request_id == "c"
        assert errors["too_many_requests"].retryable
        for request_id in ("a", "b"):
            await ws.send(encode({"type": "cancel", "id": request_id}))
        finished: set[str] = set()
        while len(finished) < 2:
            frame = await recv_frame(ws)
            if isinstance(frame, Done):
                assert frame.finish_reason is FinishReason.CANCELLED
                finished.add(frame.request_id)
        assert finished == {"a", "b"}


async def test_disconnect_cancels_and_frees_kv(model: Path) -> None:
    async with running_server(model) as server:
        assert server.engine is not None
        baseline = server.engine.stats.scheduler.kv.usage_fraction
        async with BanterboxClient.connect(url_of(server)) as client:
            streams = [
                client.generate(prompt=f"tale {i}", max_tokens=400, sampling=NO_EOS)
                for i in range(3)
            ]
            for stream in streams:
                await anext(stream)
            assert server.engine.stats.scheduler.num_running == 3
            client.ws.transport.abort()  # vanish mid-stream, no closing handshake
        await poll(lambda: engine_idle(server) and not server.connections)
        assert server.engine.stats.scheduler.kv.usage_fraction == baseline


async def test_stalled_reader_is_closed_while_others_stream(model: Path) -> None:
    config = fast_config(
        server={
            "write_limit_bytes": 1024,
            "socket_send_buffer_bytes": 4096,
            "write_deadline_s": 0.5,
            "max_inflight_per_connection": 8,
        }
    )
    async with running_server(model, config) as server:
        # A tiny receive buffer and a one-message queue: the kernel soon stops taking frames.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
        sock.connect(("127.0.0.1", server.port))
        async with raw_client(server, sock=sock, max_queue=1, close_timeout=0.2) as stalled:
            for i in range(8):
                frame = {
                    "type": "generate",
                    "id": f"s{i}",
                    "prompt": "never read",
                    "max_tokens": 480,
                    "return_token_ids": True,
                    "sampling": NO_EOS,
                }
                await stalled.send(encode(frame))
            async with BanterboxClient.connect(url_of(server)) as client:
                healthy = client.generate(prompt="keep going", max_tokens=400, sampling=NO_EOS)
                await anext(healthy)
                await poll(lambda: len(server.connections) == 1, timeout_s=20)
                done = await healthy.collect()
                assert done.finish_reason is FinishReason.LENGTH
                assert done.usage.num_completion_tokens == 400
            await poll(lambda: engine_idle(server))  # the stalled requests were cancelled


async def test_frames_after_a_turn_are_in_order(model: Path) -> None:
    async with running_server(model) as server, raw_client(server) as ws:
        frame = {"type": "generate", "id": "t", "prompt": "hi", "max_tokens": 3, "sampling": NO_EOS}
        await ws.send(encode(frame))
        frames = []
        while not frames or not isinstance(frames[-1], Done):
            frames.append(await recv_frame(ws))
        assert all(isinstance(f, Delta) for f in frames[:-1])
        assert [f.seq for f in frames[:-1] if isinstance(f, Delta)] == list(range(len(frames) - 1))
