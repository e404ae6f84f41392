"""Bad frames get the documented error codes and the server keeps serving."""

from __future__ import annotations

from pathlib import Path

import msgpack
import pytest
from server_harness import NO_EOS, encode, fast_config, raw_client, recv_frame, running_server

from protocol import Done, ErrorFrame, FinishReason

# (frame as sent, its encoding, the expected code)
BAD_FRAMES = [
    (b"\xc1\x00", "msgpack", "malformed_frame"),
    ("{not json", "json", "malformed_frame"),
    (msgpack.packb([1, 2]), "msgpack", "malformed_frame"),
    ({"type": "teleport", "id": "x"}, "json", "unknown_type"),
    ({"type": "npc.say", "id": "x"}, "msgpack", "unknown_type"),
    ({"type": "generate", "prompt": "hi"}, "msgpack", "invalid_field"),
    ({"type": "generate", "id": "x", "prompt": 42}, "json", "invalid_field"),
    (
        {"type": "generate", "id": "x", "prompt": "hi", "max_tokens": 1.5},
        "msgpack",
        "invalid_field",
    ),
    ({"type": "generate", "id": "x", "messages": [], "prompt": "hi"}, "json", "invalid_field"),
    ({"type": "cancel"}, "json", "invalid_field"),
    ({"type": "hello", "protocol": 1}, "json", "invalid_field"),
    ({"type": "session.resume", "id": "x", "session_id": "nope"}, "msgpack", "session_not_found"),
    ({"type": "generate", "id": "x", "prompt": "x" * 600}, "msgpack", "prompt_too_long"),
    ({"type": "generate", "id": "x", "prompt": "y" * 3000}, "json", "frame_too_large"),
]


async def _assert_still_serves(ws) -> None:  # type: ignore[no-untyped-def]
    frame = {"type": "generate", "id": "ok", "prompt": "fine", "max_tokens": 3, "sampling": NO_EOS}
    await ws.send(encode(frame))
    while not isinstance(answer := await recv_frame(ws), Done):
        assert not isinstance(answer, ErrorFrame), answer
    assert answer.finish_reason is FinishReason.LENGTH


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from server_harness import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("model"))


async def test_bad_frames_get_codes_and_the_connection_goes_on(model: Path) -> None:
    config = fast_config(limits={"max_frame_bytes": 2048})
    async with running_server(model, config) as server, raw_client(server) as ws:
        for data, encoding, code in BAD_FRAMES:
            raw = data if isinstance(data, bytes | str) else encode(data, encoding)
            await ws.send(raw)
            answer = await recv_frame(ws)
            assert isinstance(answer, ErrorFrame), (data, answer)
            assert answer.code == code, (data, answer)
            if isinstance(data, dict) and code != "frame_too_large":  # too large: never parsed
                assert answer.request_id == data.get("id")
        await _assert_still_serves(ws)
        assert b'banterbox_errors_total{code="malformed_frame"} 3.0' in server.metrics.render()


async def test_error_answers_come_in_the_frame_encoding(model: Path) -> None:
    async with running_server(model) as server, raw_client(server) as ws:
        await ws.send('{"type":"nope.nope","id":"j"}')
        assert isinstance(await ws.recv(), str)
        await ws.send(msgpack.packb({"type": "nope.nope", "id": "m"}))
        assert isinstance(await ws.recv(), bytes)


async def test_oversize_message_is_refused_by_the_websocket_layer(model: Path) -> None:
    config = fast_config(limits={"max_frame_bytes": 1024})
    async with running_server(model, config) as server:
        async with raw_client(server) as ws:
            await ws.send(b"\x00" * (4 * 1024 + 1))
            with pytest.raises(Exception, match="1009"):
                await recv_frame(ws)
        async with raw_client(server) as ws:
            await _assert_still_serves(ws)


async def test_first_frame_must_be_hello(model: Path) -> None:
    async with running_server(model) as server, raw_client(server, hello=False) as ws:
        await ws.send(encode({"type": "generate", "id": "x", "prompt": "hi"}))
        answer = await recv_frame(ws)
        assert isinstance(answer, ErrorFrame)
        assert answer.code == "hello_required"
        await ws.wait_closed()
        assert ws.close_code == 1008


async def test_unsupported_protocol_version_closes(model: Path) -> None:
    async with running_server(model) as server, raw_client(server, hello=False) as ws:
        await ws.send(encode({"type": "hello", "protocol": 2}, "json"))
        answer = await recv_frame(ws)
        assert isinstance(answer, ErrorFrame)
        assert answer.code == "unsupported_version"
        await ws.wait_closed()
        assert ws.close_code == 1008
