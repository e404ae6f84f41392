"""Property tests: whatever the decoders are fed, they raise ProtocolError or nothing else."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import protocol
from protocol import (
    ClientFrame,
    Encoding,
    Frame,
    ProtocolError,
    decode_client_frame,
    decode_server_frame,
    encode_frame,
)
from protocol.messages import CLIENT_TYPES, SERVER_TYPES

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PLUGIN_TYPES = frozenset({"npc.say"})
TYPES = sorted(CLIENT_TYPES | SERVER_TYPES | {"npc.say", "mod.check", "nope"})
FIELDS = [
    "id", "protocol", "client", "api_key", "session_id", "metadata", "messages", "prompt",
    "max_tokens", "stop", "priority", "return_token_ids", "sampling", "role", "content",
    "temperature", "top_p", "top_k", "min_p", "repetition_penalty", "presence_penalty",
    "frequency_penalty", "seed", "logit_bias", "server_version", "model", "limits",
    "capabilities", "connection_id", "resumed", "num_turns", "seq", "text", "token_ids",
    "finish_reason", "usage", "timings", "code", "message", "retryable", "prompt_tokens",
    "cached_tokens", "completion_tokens", "queue_ms", "ttft_ms", "total_ms",
]  # fmt: skip
WORDS = st.sampled_from(["user", "system", "interactive", "background", "stop", "x", "", "1"])
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(1 << 63), max_value=(1 << 64) - 1)
    | st.floats()
    | st.text(max_size=8)
    | WORDS
    | st.binary(max_size=4)
)
KEYS = st.sampled_from(FIELDS) | st.text(max_size=4) | st.integers(-3, 300)
VALUES = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(KEYS, children, max_size=4),
    max_leaves=20,
)
FRAMES = st.builds(
    lambda frame_type, fields: {"type": frame_type, **fields},
    st.sampled_from(TYPES),
    st.dictionaries(st.sampled_from(FIELDS), VALUES, max_size=8),
)

# Valid frames from the golden vectors, each with one field replaced, removed or nested deeper.
BASES = [
    json.loads(path.read_text("utf-8"))
    for path in sorted((Path(protocol.__file__).parent / "vectors").glob("*.json"))
]


@st.composite
def mutated_frames(draw: st.DrawFn) -> dict[object, object]:
    frame: dict[object, object] = dict(draw(st.sampled_from(BASES)))
    target = frame
    nested = [key for key, value in frame.items() if isinstance(value, dict)]
    if draw(st.booleans()) and nested:
        key: object = draw(st.sampled_from(nested))
        target = frame[key] = dict(frame[key])  # type: ignore[call-overload]
    key = draw(st.sampled_from(sorted(target, key=str)) | KEYS)
    if draw(st.booleans()):
        target.pop(key, None)
    else:
        target[key] = draw(VALUES)
    return frame


def _check(data: bytes | str) -> None:
    """Decoding raises only ProtocolError, and what decodes survives a round trip."""
    decoders: list[Callable[[bytes | str], Frame]] = [decode_server_frame, _decode_client]
    for decode in decoders:
        try:
            frame = decode(data)
        except ProtocolError:
            continue
        for encoding in Encoding:
            again = decode(encode_frame(frame, encoding))
            assert again == frame


def _decode_client(data: bytes | str) -> ClientFrame:
    return decode_client_frame(data, plugin_types=PLUGIN_TYPES)


def _encodings(obj: object) -> list[bytes | str]:
    encoded: list[bytes | str] = [msgpack.packb(obj, use_bin_type=True)]
    # Bytes, and maps holding both 1 and "1" as keys, have no JSON form.
    with contextlib.suppress(TypeError, ValueError):
        encoded.append(json.dumps(obj))
    return encoded


@FUZZ
@given(st.binary(max_size=256))
def test_arbitrary_bytes(data: bytes) -> None:
    _check(data)


@FUZZ
@given(st.text(max_size=256))
def test_arbitrary_text(data: str) -> None:
    _check(data)


@FUZZ
@given(VALUES)
def test_arbitrary_msgpack_and_json_values(obj: object) -> None:
    for data in _encodings(obj):
        _check(data)


@FUZZ
@given(FRAMES)
def test_frame_shaped_maps(obj: dict[str, object]) -> None:
    for data in _encodings(obj):
        _check(data)


@FUZZ
@given(mutated_frames())
def test_mutated_valid_frames(obj: dict[object, object]) -> None:
    for data in _encodings(obj):
        _check(data)
