"""The golden vectors in protocol/vectors/: what any client's codec is tested against."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import protocol
from protocol import (
    ClientFrame,
    Encoding,
    ErrorCode,
    PluginFrame,
    ProtocolError,
    ServerFrame,
    decode_client_frame,
    decode_server_frame,
    encode_frame,
)
from protocol.messages import CLIENT_TYPES, SERVER_TYPES

VECTORS = Path(protocol.__file__).parent / "vectors"
INVALID = VECTORS / "invalid"
NAMES = sorted(path.stem for path in VECTORS.glob("*.json"))
# The plugin types the client vectors use (npc.*, mod.*); a server enables them through its
# plugin list: every client vector whose type is not a core frame's.
PLUGIN_TYPES = (
    frozenset(
        json.loads(path.read_text(encoding="utf-8"))["type"]
        for path in VECTORS.glob("client-*.json")
    )
    - CLIENT_TYPES
)


def _decode(name: str, data: bytes | str) -> ClientFrame | ServerFrame:
    if name.startswith("client-"):
        return decode_client_frame(data, plugin_types=PLUGIN_TYPES)
    assert name.startswith("server-"), name
    return decode_server_frame(data)


def test_vectors_come_in_pairs() -> None:
    msgpack_names = sorted(path.stem for path in VECTORS.glob("*.msgpack"))
    assert msgpack_names == NAMES
    assert len(NAMES) >= 14


def test_vectors_cover_every_frame_type() -> None:
    frames = [_decode(name, (VECTORS / f"{name}.json").read_text()) for name in NAMES]
    types = {frame.type if isinstance(frame, PluginFrame) else frame.TYPE for frame in frames}
    assert types >= CLIENT_TYPES | SERVER_TYPES
    plugin_names = {
        name for name, frame in zip(NAMES, frames, strict=True) if isinstance(frame, PluginFrame)
    }
    assert {name.partition("-")[0] for name in plugin_names} == {"client", "server"}


@pytest.mark.parametrize("name", NAMES)
def test_msgpack_vector_reencodes_to_the_same_bytes(name: str) -> None:
    data = (VECTORS / f"{name}.msgpack").read_bytes()
    assert encode_frame(_decode(name, data), Encoding.MSGPACK) == data


@pytest.mark.parametrize("name", NAMES)
def test_json_vector_reencodes_to_the_same_json(name: str) -> None:
    text = (VECTORS / f"{name}.json").read_text(encoding="utf-8")
    assert json.loads(encode_frame(_decode(name, text), Encoding.JSON)) == json.loads(text)


@pytest.mark.parametrize("name", NAMES)
def test_both_encodings_decode_to_the_same_frame(name: str) -> None:
    from_json = _decode(name, (VECTORS / f"{name}.json").read_text(encoding="utf-8"))
    from_msgpack = _decode(name, (VECTORS / f"{name}.msgpack").read_bytes())
    assert from_json == from_msgpack


def _expected() -> dict[str, str]:
    expected: dict[str, str] = json.loads((INVALID / "expected.json").read_text())
    return expected


def test_every_invalid_vector_has_an_expected_code() -> None:
    files = sorted(path.name for path in INVALID.iterdir() if path.name != "expected.json")
    assert files == sorted(_expected())
    assert {ErrorCode(code) for code in _expected().values()} == {
        ErrorCode.MALFORMED_FRAME,
        ErrorCode.UNKNOWN_TYPE,
        ErrorCode.INVALID_FIELD,
        ErrorCode.LIMIT_EXCEEDED,
        ErrorCode.UNSUPPORTED_VERSION,
    }


@pytest.mark.parametrize(("file_name", "code"), sorted(_expected().items()))
def test_invalid_vector_gives_its_code(file_name: str, code: str) -> None:
    path = INVALID / file_name
    data: bytes | str = path.read_bytes() if path.suffix == ".msgpack" else path.read_text("utf-8")
    with pytest.raises(ProtocolError) as info:
        decode_client_frame(data)
    assert info.value.code == ErrorCode(code)


def test_logit_bias_is_written_in_ascending_token_id_order() -> None:
    import msgpack

    from protocol import Generate, Sampling

    for order in ([198, 2, 50], [2, 50, 198], [50, 198, 2]):
        bias = {token_id: float(token_id) for token_id in order}
        frame = Generate(request_id="b", prompt="hi", sampling=Sampling(logit_bias=bias))
        packed = msgpack.unpackb(encode_frame(frame, Encoding.MSGPACK), strict_map_key=False)
        assert list(packed["sampling"]["logit_bias"]) == [2, 50, 198]
        text = json.loads(encode_frame(frame, Encoding.JSON))
        assert list(text["sampling"]["logit_bias"]) == ["2", "50", "198"]
