"""Issue 9's frames, each alone over a real server: a typed answer, the engine and the link live.

Spec-legal sampling that once killed the engine thread (token ids past the vocabulary,
temperatures and penalties that underflow float32), lone surrogates echoed back into an
unencodable error frame, and a session closed while its turn runs (the turn's KV stayed
pinned with no session left).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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
)
from tiny import VOCAB_SIZE
from websockets.asyncio.client import ClientConnection

from bench.fuzz_run import http_get
from protocol import Delta, Done, ErrorFrame, FinishReason, SessionClosed, SessionInfo
from server.app import BanterboxServer


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from server_harness import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("model"))


async def _end_of(ws: ClientConnection, request_id: str) -> Done | ErrorFrame:
    """The frame that ends the request: its done or its error."""
    while True:
        answer = await recv_frame(ws)
        if isinstance(answer, Done | ErrorFrame) and answer.request_id in (request_id, None):
            return answer
        assert isinstance(answer, Delta), answer


async def _assert_alive(server: BanterboxServer, ws: ClientConnection) -> None:
    """Engine healthy, /readyz 200, and a normal turn works on the same connection."""
    assert server.engine is not None and server.engine.healthy
    assert (await http_get(url_of(server), "/readyz"))[0] == 200
    frame = {"type": "generate", "id": "after", "prompt": "fine", "max_tokens": 3}
    await ws.send(encode({**frame, "sampling": NO_EOS}))
    answer = await _end_of(ws, "after")
    assert isinstance(answer, Done) and answer.finish_reason is FinishReason.LENGTH, answer


@pytest.mark.parametrize("token_id", [VOCAB_SIZE, VOCAB_SIZE + 1, 49152, 2**31 - 1])
@pytest.mark.parametrize("encoding", ["json", "msgpack"])
async def test_logit_bias_beyond_the_vocabulary_is_invalid_field(
    model: Path, token_id: int, encoding: str
) -> None:
    key: int | str = str(token_id) if encoding == "json" else token_id
    frame = {"type": "generate", "id": "b", "prompt": "hi", "sampling": {"logit_bias": {key: 1}}}
    async with running_server(model) as server, raw_client(server) as ws:
        await ws.send(encode(frame, encoding))
        answer = await _end_of(ws, "b")
        assert isinstance(answer, ErrorFrame) and answer.code == "invalid_field", answer
        assert answer.request_id == "b" and "logit_bias" in answer.message
        await _assert_alive(server, ws)


@pytest.mark.parametrize(
    "sampling",
    [
        {"temperature": 1e-50},
        {"temperature": 1e-40},
        {"temperature": 5e-324},
        {"repetition_penalty": 1e-300, "temperature": 1},
        {"repetition_penalty": 5e-324, "temperature": 0.7},
    ],
)
async def test_underflowing_sampling_ends_typed_and_the_engine_lives(
    model: Path, sampling: dict[str, Any]
) -> None:
    # Both answers are right: refuse the value, or sample with it and finish normally.
    frame = {"type": "generate", "id": "u", "prompt": "hi", "max_tokens": 8, "sampling": sampling}
    async with running_server(model) as server, raw_client(server) as ws:
        await ws.send(encode(frame))  # msgpack: the float64 reaches the server bit for bit
        answer = await _end_of(ws, "u")
        if isinstance(answer, ErrorFrame):
            assert answer.code == "invalid_field", answer
        else:
            assert answer.finish_reason in (FinishReason.STOP, FinishReason.LENGTH), answer
        await _assert_alive(server, ws)


SURROGATE_FRAMES = [
    ('{"type":"cancel","id":"\\ud800"}', {"invalid_field", "unknown_request"}),
    ('{"type":"generate","id":"x","prompt":"hi","\\ud800":1}', {"invalid_field"}),
    ('{"type":"generate","id":"x","prompt":"hi","sampling":{"\\udc00":1}}', {"invalid_field"}),
]


@pytest.mark.parametrize(("text", "codes"), SURROGATE_FRAMES)
async def test_a_lone_surrogate_is_answered_and_the_connection_stays(
    model: Path, text: str, codes: set[str]
) -> None:
    json.loads(text)  # spelled as JSON escapes: the text frame itself is plain ASCII
    async with running_server(model) as server, raw_client(server, encoding="json") as ws:
        await ws.send(text)
        answer = await recv_frame(ws)
        # Unknown fields are ignored, so a generate may also just run (then it ends in done).
        if isinstance(answer, Delta | Done):
            answer = answer if isinstance(answer, Done) else await _end_of(ws, "x")
            assert isinstance(answer, Done), answer
        else:
            assert isinstance(answer, ErrorFrame) and answer.code in codes, answer
        await _assert_alive(server, ws)


async def test_session_close_mid_turn_leaves_no_block_pinned(model: Path) -> None:
    config = fast_config()
    async with running_server(model, config) as server, raw_client(server) as ws:
        assert server.engine is not None
        for round_number in range(3):
            session_id = f"mid-{round_number}"
            await ws.send(encode({"type": "session.open", "id": "o", "session_id": session_id}))
            assert isinstance(await recv_frame(ws), SessionInfo)
            turn = {
                "type": "generate",
                "id": "t",
                "session_id": session_id,
                "messages": [{"role": "user", "content": "Tell me a long story, please."}],
                "max_tokens": 40,
                "sampling": NO_EOS,
            }
            await ws.send(encode(turn))
            assert isinstance(await recv_frame(ws), Delta)  # the turn runs
            close = {"type": "session.close", "id": "c", "session_id": session_id}
            await ws.send(encode(close))
            answers = []
            while not any(isinstance(a, Done) for a in answers):
                answers.append(await recv_frame(ws))
            assert any(isinstance(a, SessionClosed) for a in answers), answers
        assert len(server.sessions) == 0
        await _assert_alive(server, ws)  # its steps also refresh the engine's stats
        await poll(lambda: engine_idle(server))
        kv = server.engine.stats.scheduler.kv
        assert kv.num_pinned_by_sessions == 0, kv
        assert kv.num_used_by_running == 0, kv


async def test_a_client_gone_with_errors_pending_leaves_no_traceback(
    model: Path, caplog: pytest.LogCaptureFixture
) -> None:
    frame = encode({"type": "session.resume", "id": "r", "session_id": "nope"})
    async with running_server(model) as server:
        for _ in range(5):
            async with raw_client(server) as ws:
                for _ in range(20):  # each answered session_not_found, after the socket is gone
                    await ws.send(frame)
                ws.transport.abort()
        await poll(lambda: not server.connections)
        async with raw_client(server) as ws:
            await _assert_alive(server, ws)
    failed = [r for r in caplog.records if r.name.startswith("websockets") and r.exc_info]
    assert not failed, failed[0].getMessage()
