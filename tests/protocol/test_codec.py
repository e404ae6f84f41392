"""Round trips of every frame type, and the codec's errors, in both encodings."""

from __future__ import annotations

import json
from types import MappingProxyType

import msgpack
import pytest

from protocol import (
    DEFAULT_LIMITS,
    Cancel,
    ChatMessage,
    Delta,
    Done,
    Encoding,
    ErrorCode,
    ErrorFrame,
    FinishReason,
    Frame,
    Generate,
    Hello,
    Limits,
    PluginFrame,
    Priority,
    ProtocolError,
    Role,
    Sampling,
    SessionClose,
    SessionClosed,
    SessionInfo,
    SessionOpen,
    SessionResume,
    Timings,
    Usage,
    Welcome,
    decode_client_frame,
    decode_server_frame,
    encode_frame,
    encoding_of,
)

NPC = frozenset({"npc.say"})

CLIENT_FRAMES: list[Frame] = [
    Hello(protocol=1),
    Hello(protocol=1, client="unity-sdk/0.3", api_key="k"),
    SessionOpen(request_id="o1"),
    SessionOpen(request_id="o2", session_id="s-1", metadata={"npc": "guard", "ünï": "😀"}),
    SessionResume(request_id="r1", session_id="s-1"),
    SessionClose(request_id="c1", session_id="s-1"),
    Generate(request_id="g1", prompt=""),
    Generate(
        request_id="g2",
        session_id="s-1",
        messages=(
            ChatMessage(role=Role.SYSTEM, content="be brief"),
            ChatMessage(role=Role.USER, content="hi"),
            ChatMessage(role=Role.ASSISTANT, content="hello"),
        ),
        max_tokens=32,
        stop=("\n", "END"),
        priority=Priority.BACKGROUND,
        return_token_ids=True,
        sampling=Sampling(
            temperature=0.0,
            top_p=1.0,
            top_k=0,
            min_p=0.1,
            repetition_penalty=1.3,
            presence_penalty=-2.0,
            frequency_penalty=2.0,
            seed=(1 << 63) - 1,
            logit_bias={0: -100.0, 50256: 100.0},
        ),
    ),
    Cancel(request_id="g2"),
    PluginFrame(
        type="npc.say", request_id="p1", payload={"text": "hi", "n": [1, None, {"a": 2.5}]}
    ),
]

SERVER_FRAMES: list[Frame] = [
    Welcome(
        server_version="0.1.0",
        protocol=1,
        model="m",
        limits=DEFAULT_LIMITS.to_wire(),
        capabilities=("sessions",),
        connection_id="c1",
    ),
    SessionInfo(request_id="o1", session_id="s-1", resumed=False, num_turns=0),
    SessionClosed(request_id="c1", session_id="s-1"),
    Delta(request_id="g1", seq=0, text="Hel"),
    Delta(request_id="g1", seq=1, text="lo", token_ids=(1, 2, 3)),
    Done(
        request_id="g1",
        finish_reason=FinishReason.CANCELLED,
        usage=Usage(num_prompt_tokens=5, num_cached_tokens=0, num_completion_tokens=2),
        timings=Timings(queue_ms=0.0, ttft_ms=1.5, total_ms=3.25),
    ),
    ErrorFrame(request_id=None, code="malformed_frame", message="bad", retryable=False),
    ErrorFrame(request_id="g1", code="some_future_code", message="", retryable=True),
    PluginFrame(type="mod.action", payload={"action": "timeout", "seconds": 60}),
    PluginFrame(type="npc.emotion", request_id="g1"),
]


def _error(data: bytes | str, **kwargs: object) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decode_client_frame(data, **kwargs)  # type: ignore[arg-type]
    return info.value


def _both(wire: object) -> list[bytes | str]:
    return [msgpack.packb(wire), json.dumps(wire)]


@pytest.mark.parametrize("encoding", list(Encoding))
@pytest.mark.parametrize("frame", CLIENT_FRAMES, ids=repr)
def test_client_frames_round_trip(frame: Frame, encoding: Encoding) -> None:
    data = encode_frame(frame, encoding)
    assert encoding_of(data) is encoding
    assert decode_client_frame(data, plugin_types=NPC) == frame


@pytest.mark.parametrize("encoding", list(Encoding))
@pytest.mark.parametrize("frame", SERVER_FRAMES, ids=repr)
def test_server_frames_round_trip(frame: Frame, encoding: Encoding) -> None:
    data = encode_frame(frame, encoding)
    assert decode_server_frame(data) == frame


def test_encodings_have_their_python_types() -> None:
    frame = Cancel(request_id="x")
    assert isinstance(encode_frame(frame, Encoding.MSGPACK), bytes)
    assert encode_frame(frame, Encoding.JSON) == '{"type":"cancel","id":"x"}'
    assert encoding_of(bytearray(b"\x80")) is Encoding.MSGPACK
    with pytest.raises(TypeError):
        encoding_of(3)  # type: ignore[arg-type]


def test_every_frame_is_a_map_with_type_first() -> None:
    for frame in CLIENT_FRAMES + SERVER_FRAMES:
        wire = msgpack.unpackb(encode_frame(frame, Encoding.MSGPACK), strict_map_key=False)
        assert next(iter(wire)) == "type"
        assert list(json.loads(encode_frame(frame, Encoding.JSON))) == list(wire)


def test_error_frame_from_error_carries_policy() -> None:
    error = ProtocolError(ErrorCode.OVERLOADED, "busy", request_id="g1")
    assert ErrorFrame.from_error(error) == ErrorFrame(
        request_id="g1", code="overloaded", message="busy", retryable=True
    )


def test_unknown_fields_are_ignored() -> None:
    wire = {
        "type": "generate",
        "id": "g",
        "prompt": "p",
        "future": {"x": [1]},
        "sampling": {"new": 1},
    }
    for data in _both(wire):
        assert decode_client_frame(data) == Generate(
            request_id="g", prompt="p", sampling=Sampling()
        )


def test_null_optional_fields_read_as_absent() -> None:
    wire = {"type": "generate", "id": "g", "prompt": "p", "session_id": None, "messages": None}
    assert decode_client_frame(json.dumps(wire)) == Generate(request_id="g", prompt="p")


def test_logit_bias_keys_may_be_strings_or_ints() -> None:
    as_str = {"type": "generate", "id": "g", "prompt": "", "sampling": {"logit_bias": {"7": 1}}}
    as_int = {"type": "generate", "id": "g", "prompt": "", "sampling": {"logit_bias": {7: 1}}}
    expected = Sampling(logit_bias={7: 1.0})
    assert decode_client_frame(json.dumps(as_str)).sampling == expected  # type: ignore[union-attr]
    assert decode_client_frame(msgpack.packb(as_int)).sampling == expected  # type: ignore[union-attr]
    both = {"type": "generate", "id": "g", "prompt": "", "sampling": {"logit_bias": {"7": 1, 7: 2}}}
    assert _error(msgpack.packb(both, strict_types=False)).field == "sampling.logit_bias.7"


def test_decoded_maps_are_read_only() -> None:
    wire = {"type": "session.open", "id": "o", "metadata": {"a": "b"}}
    frame = decode_client_frame(json.dumps(wire))
    assert isinstance(frame, SessionOpen)
    assert isinstance(frame.metadata, MappingProxyType)


# --- plugin frames -------------------------------------------------------------------------


@pytest.mark.parametrize("data", _both({"type": "npc.say", "id": "p", "text": "hi"}))
def test_plugin_frames_need_to_be_enabled(data: bytes | str) -> None:
    error = _error(data)
    assert error.code is ErrorCode.UNKNOWN_TYPE
    assert error.request_id == "p"
    frame = decode_client_frame(data, plugin_types=frozenset({"npc.say", "mod.check"}))
    assert frame == PluginFrame(type="npc.say", request_id="p", payload={"text": "hi"})
    assert _error(data, plugin_types=frozenset({"npc.act"})).code is ErrorCode.UNKNOWN_TYPE


@pytest.mark.parametrize("frame_type", ["nodot", "session.foo", "Npc.say", "npc.", ".say"])
def test_plugin_types_need_a_free_namespace(frame_type: str) -> None:
    data = json.dumps({"type": frame_type, "id": "p"})
    assert _error(data, plugin_types=frozenset({frame_type})).code is ErrorCode.UNKNOWN_TYPE
    with pytest.raises(ProtocolError) as info:
        decode_server_frame(data)
    assert info.value.code is ErrorCode.UNKNOWN_TYPE


def test_core_types_win_over_plugin_types() -> None:
    data = json.dumps({"type": "session.close", "id": "c", "session_id": "s"})
    frame = decode_client_frame(data, plugin_types=frozenset({"session.close"}))
    assert frame == SessionClose(request_id="c", session_id="s")


def test_client_plugin_frames_need_an_id() -> None:
    error = _error(json.dumps({"type": "npc.say"}), plugin_types=NPC)
    assert (error.code, error.field) == (ErrorCode.INVALID_FIELD, "id")


def test_plugin_payloads_are_limited_and_json_compatible() -> None:
    deep: object = []
    for _ in range(DEFAULT_LIMITS.max_depth):
        deep = [deep]
    too_deep = msgpack.packb({"type": "npc.say", "id": "p", "x": deep})
    assert _error(too_deep, plugin_types=NPC).code is ErrorCode.LIMIT_EXCEEDED
    int_key = msgpack.packb({"type": "npc.say", "id": "p", "x": {1: "a"}})
    assert _error(int_key, plugin_types=NPC).code is ErrorCode.INVALID_FIELD


def test_plugin_payload_errors_name_the_field_at_any_depth() -> None:
    """The one-pass check builds a path only for an error: it must still be the right one."""
    nested = {"type": "npc.say", "id": "p", "messages": [{"user": {"id": "u"}}, {"user": {3: 1}}]}
    error = _error(msgpack.packb(nested), plugin_types=NPC)
    assert (error.code, error.field, error.request_id) == (
        ErrorCode.INVALID_FIELD,
        "messages[1].user",
        "p",
    )
    long_text = {
        "type": "npc.say",
        "id": "p",
        "m": [{"t": "x" * (1 + DEFAULT_LIMITS.max_string_chars)}],
    }
    error = _error(msgpack.packb(long_text), plugin_types=NPC)
    assert (error.code, error.field) == (ErrorCode.LIMIT_EXCEEDED, "m[0].t")
    not_finite = msgpack.packb({"type": "npc.say", "id": "p", "m": {"x": [1.0, float("nan")]}})
    error = _error(not_finite, plugin_types=NPC)
    assert (error.code, error.field) == (ErrorCode.INVALID_FIELD, "m.x[1]")


@pytest.mark.parametrize("escape", ["\\ud800", "\\uDFFF", "\\ud83d"])
def test_a_json_plugin_payload_with_a_lone_surrogate_escape_is_refused(escape: str) -> None:
    data = '{"type":"npc.say","id":"p","m":[{"t":"ok"},{"t":"a' + escape + 'b"}]}'
    error = _error(data, plugin_types=NPC)
    assert (error.code, error.field) == (ErrorCode.INVALID_FIELD, "m[1].t")


def test_a_json_plugin_payload_with_an_escaped_pair_or_backslash_is_read() -> None:
    data = '{"type":"npc.say","id":"p","t":"\\ud83d\\ude00","u":"\\\\ud800"}'
    frame = decode_client_frame(data, plugin_types=NPC)
    assert isinstance(frame, PluginFrame)
    assert dict(frame.payload) == {"t": "\U0001f600", "u": "\\ud800"}


def test_plugin_payload_may_not_shadow_type_or_id() -> None:
    with pytest.raises(ValueError):
        encode_frame(PluginFrame(type="npc.say", payload={"id": "x"}), Encoding.JSON)


# --- errors --------------------------------------------------------------------------------


def test_error_carries_request_id_when_readable() -> None:
    bad: dict[str, object] = {
        "type": "generate",
        "id": "g7",
        "prompt": "p",
        "sampling": {"temperature": -1},
    }
    error = _error(json.dumps(bad))
    assert (error.code, error.field, error.request_id) == (
        ErrorCode.INVALID_FIELD,
        "sampling.temperature",
        "g7",
    )
    bad["id"] = 7
    assert _error(json.dumps(bad)).request_id is None


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"", ErrorCode.MALFORMED_FRAME),
        (b"\x81\xa4type", ErrorCode.MALFORMED_FRAME),
        (msgpack.packb({"type": "cancel", "id": "x"}) + b"\x00", ErrorCode.MALFORMED_FRAME),
        ("", ErrorCode.MALFORMED_FRAME),
        ('{"type": "cancel", "id": "x"', ErrorCode.MALFORMED_FRAME),
        ('{"type": "cancel", "id": "x", "n": Infinity}', ErrorCode.MALFORMED_FRAME),
        ('"cancel"', ErrorCode.MALFORMED_FRAME),
        (msgpack.packb([1, 2]), ErrorCode.MALFORMED_FRAME),
        ('{"type": 5, "id": "x"}', ErrorCode.INVALID_FIELD),
        ('{"type": "", "id": "x"}', ErrorCode.INVALID_FIELD),
        ('{"type": "welcome", "id": "x"}', ErrorCode.UNKNOWN_TYPE),
        ('{"type": "hello", "protocol": 0}', ErrorCode.UNSUPPORTED_VERSION),
        ('{"type": "hello", "protocol": "1"}', ErrorCode.INVALID_FIELD),
        ('{"type": "hello"}', ErrorCode.INVALID_FIELD),
        ('{"type": "cancel", "id": "a\\nb"}', ErrorCode.INVALID_FIELD),
        ('{"type": "cancel", "id": "x", "n": 1e999}', ErrorCode.INVALID_FIELD),
        ('{"type": "cancel", "id": "x", "n": 18446744073709551616}', ErrorCode.INVALID_FIELD),
        ('{"type": "cancel", "id": "x", "n": "\\ud800"}', ErrorCode.INVALID_FIELD),
        ("[" * 5000 + "]" * 5000, ErrorCode.LIMIT_EXCEEDED),
        (b"\x91" * 5000 + b"\x90", ErrorCode.LIMIT_EXCEEDED),
        (msgpack.packb({"type": "cancel", "id": "x", 1.5: 0}), ErrorCode.INVALID_FIELD),
        (
            msgpack.packb({"type": "cancel", "id": "x", "t": msgpack.ExtType(5, b"")}),
            ErrorCode.INVALID_FIELD,
        ),
    ],
)
def test_codec_errors(data: bytes | str, code: ErrorCode) -> None:
    assert _error(data).code is code


def test_non_frame_input_is_a_protocol_error() -> None:
    assert _error(12).code is ErrorCode.MALFORMED_FRAME  # type: ignore[arg-type]
    with pytest.raises(ProtocolError):
        decode_server_frame(None)  # type: ignore[arg-type]


GOOD = {"type": "generate", "id": "g", "prompt": "p"}


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"prompt": None}, "messages"),
        ({"messages": [{"role": "user", "content": "x"}]}, "messages"),
        ({"prompt": None, "messages": []}, "messages"),
        ({"prompt": None, "messages": [{"role": "user"}]}, "messages[0].content"),
        ({"prompt": None, "messages": ["hi"]}, "messages[0]"),
        ({"prompt": 3}, "prompt"),
        ({"session_id": ""}, "session_id"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 1.0}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"stop": "x"}, "stop"),
        ({"stop": [""]}, "stop[0]"),
        ({"priority": "urgent"}, "priority"),
        ({"return_token_ids": 1}, "return_token_ids"),
        ({"sampling": []}, "sampling"),
        ({"sampling": {"temperature": "hot"}}, "sampling.temperature"),
        ({"sampling": {"temperature": 101}}, "sampling.temperature"),
        ({"sampling": {"top_p": 1.01}}, "sampling.top_p"),
        ({"sampling": {"top_k": -1}}, "sampling.top_k"),
        ({"sampling": {"top_k": 2.0}}, "sampling.top_k"),
        ({"sampling": {"min_p": 1.5}}, "sampling.min_p"),
        ({"sampling": {"repetition_penalty": 0}}, "sampling.repetition_penalty"),
        ({"sampling": {"presence_penalty": -2.5}}, "sampling.presence_penalty"),
        ({"sampling": {"frequency_penalty": 3}}, "sampling.frequency_penalty"),
        ({"sampling": {"seed": -1}}, "sampling.seed"),
        ({"sampling": {"logit_bias": {"-1": 0}}}, "sampling.logit_bias.-1"),
        ({"sampling": {"logit_bias": {"1": 101}}}, "sampling.logit_bias.1"),
        ({"sampling": {"logit_bias": [1]}}, "sampling.logit_bias"),
    ],
)
def test_invalid_generate_fields_are_named(extra: dict[str, object], field: str) -> None:
    for data in _both({**GOOD, **extra}):
        error = _error(data)
        assert (error.code, error.field) == (ErrorCode.INVALID_FIELD, field), error


@pytest.mark.parametrize(
    ("wire", "field"),
    [
        ({"type": "session.open", "id": "o", "metadata": {"a": 1}}, "metadata.a"),
        ({"type": "session.open", "id": "o", "metadata": "a"}, "metadata"),
        ({"type": "session.resume", "id": "r"}, "session_id"),
        ({"type": "session.close", "id": "c", "session_id": 5}, "session_id"),
        ({"type": "cancel"}, "id"),
        ({"type": "hello", "protocol": 1, "client": 2}, "client"),
    ],
)
def test_invalid_session_fields_are_named(wire: dict[str, object], field: str) -> None:
    error = _error(json.dumps(wire))
    assert (error.code, error.field) == (ErrorCode.INVALID_FIELD, field)


@pytest.mark.parametrize(
    ("wire", "code"),
    [
        ({"type": "delta", "id": "g", "seq": -1, "text": ""}, ErrorCode.INVALID_FIELD),
        ({"type": "done", "id": "g", "finish_reason": "eos"}, ErrorCode.INVALID_FIELD),
        ({"type": "error", "code": "x", "message": "m"}, ErrorCode.INVALID_FIELD),
        ({"type": "welcome", "protocol": 1}, ErrorCode.INVALID_FIELD),
        ({"type": "generate", "id": "g", "prompt": "p"}, ErrorCode.UNKNOWN_TYPE),
    ],
)
def test_server_frame_errors(wire: dict[str, object], code: ErrorCode) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_server_frame(json.dumps(wire))
    assert info.value.code is code


# --- limits --------------------------------------------------------------------------------

TIGHT = Limits(
    max_frame_bytes=300,
    max_depth=3,
    max_items=6,
    max_string_chars=10,
    max_key_chars=16,
    max_name_chars=5,
    max_request_id_chars=4,
    max_session_id_chars=6,
    max_messages=2,
    max_stop_strings=1,
    max_logit_bias=1,
    max_metadata_entries=1,
    max_generate_tokens=9,
)


PLUGIN = frozenset({"npc.a_type_of_17c"})


@pytest.mark.parametrize(
    "wire",
    [
        {"type": "cancel", "id": "12345"},
        {"type": "session.resume", "id": "r", "session_id": "1234567"},
        {"type": "generate", "id": "g", "prompt": "x" * 11},
        {"type": "generate", "id": "g", "prompt": "", "stop": ["a", "b"]},
        {"type": "generate", "id": "g", "prompt": "", "stop": ["abcdef"]},
        {"type": "generate", "id": "g", "prompt": "", "max_tokens": 10},
        {"type": "generate", "id": "g", "messages": [{"role": "user", "content": ""}] * 3},
        {"type": "generate", "id": "g", "prompt": "", "sampling": {"logit_bias": {"1": 0, "2": 0}}},
        {"type": "session.open", "id": "o", "metadata": {"a": "", "b": ""}},
        {"type": "hello", "protocol": 1, "client": "abcdef"},
        {"type": "cancel", "id": "c", "unknown": "x" * 11},
        {"type": "cancel", "id": "c", "a_key_of_17_chars": 1},
        {"type": "npc.a_type_of_17c", "id": "c"},
        {"type": "cancel", "id": "c", "x": [1, 2, 3, 4, 5, 6, 7]},
        {"type": "cancel", "id": "c", "x": [[[]]]},
        {"type": "cancel", "id": "c", "a": 1, "b": 2, "c": 3, "d": 4, "e": 5},
    ],
)
def test_limits_are_enforced(wire: dict[str, object]) -> None:
    for data in _both(wire):
        assert _error(data, limits=TIGHT, plugin_types=PLUGIN).code is ErrorCode.LIMIT_EXCEEDED
        decode_client_frame(data, plugin_types=PLUGIN)  # within the default limits


def test_limits_at_their_bound_pass() -> None:
    wire = {
        "type": "generate",
        "id": "1234",
        "prompt": "x" * 10,
        "stop": ["abcde"],
        "max_tokens": 9,
    }
    for data in _both(wire):
        assert isinstance(decode_client_frame(data, limits=TIGHT), Generate)


@pytest.mark.parametrize("encoding", list(Encoding))
def test_frame_too_large(encoding: Encoding) -> None:
    limits = Limits(max_frame_bytes=200)
    fits = Generate(request_id="g", prompt="x" * 10)
    assert decode_client_frame(encode_frame(fits, encoding), limits=limits) == fits
    big = encode_frame(Generate(request_id="g", prompt="x" * 200), encoding)
    assert _error(big, limits=limits).code is ErrorCode.FRAME_TOO_LARGE


def test_json_frame_size_counts_utf8_bytes() -> None:
    data = encode_frame(Generate(request_id="g", prompt="é" * 80), Encoding.JSON)
    assert len(data) < 200 < len(data.encode())
    assert _error(data, limits=Limits(max_frame_bytes=200)).code is ErrorCode.FRAME_TOO_LARGE
