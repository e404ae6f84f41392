"""Lone surrogates in every echoed position: every error frame still encodes, in both encodings."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest

import protocol
from protocol import (
    Encoding,
    ErrorFrame,
    ProtocolError,
    decode_client_frame,
    decode_server_frame,
    encode_frame,
)

VECTORS = Path(protocol.__file__).parent / "vectors"
SURROGATES = ("\ud800", "\udc00", "a\udfffb")


def _vectors() -> list[tuple[str, object]]:
    found: list[tuple[str, object]] = []
    for path in sorted([*VECTORS.glob("client-*"), *(VECTORS / "invalid").iterdir()]):
        if path.name == "expected.json":
            continue
        try:
            if path.suffix == ".json":
                obj = json.loads(path.read_text("utf-8"))
            else:
                obj = msgpack.unpackb(path.read_bytes(), raw=False, strict_map_key=False)
        except ValueError:
            continue  # not JSON or msgpack at all: nothing to plant a surrogate in
        if isinstance(obj, dict):
            found.append((path.name, obj))
    return found


def _paths(node: object, path: tuple[object, ...] = ()) -> Iterator[tuple[object, ...]]:
    """Every (container path, key) place in the tree: keys, values, list items."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield (*path, key)
            yield from _paths(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield (*path, i)
            yield from _paths(value, (*path, i))


def _copy(node: object) -> object:
    result: object = json.loads(json.dumps(node, default=str))
    return result


def _variants(frame: dict[object, object], bad: str) -> Iterator[dict[object, object]]:
    yield {**frame, "id": bad}
    yield {**frame, bad: 1}
    for place in _paths(frame):
        for rename in (True, False):
            variant = _copy(frame)
            assert isinstance(variant, dict)
            parent: object = variant
            for step in place[:-1]:
                parent = parent[step]  # type: ignore[index]
            last = place[-1]
            if rename and isinstance(parent, dict) and isinstance(last, str):
                parent[last + bad] = parent.pop(last)
            elif isinstance(parent, dict | list):
                parent[last] = bad  # type: ignore[index]
            yield variant


def _as_json_text(frame: dict[object, object]) -> str:
    # ensure_ascii writes a lone surrogate as "\\ud800", which is how a client's JSON carries one.
    return json.dumps(frame, ensure_ascii=True, default=str)


@pytest.mark.parametrize(("name", "frame"), _vectors(), ids=[n for n, _ in _vectors()])
def test_every_echoed_position_with_a_surrogate_gives_an_encodable_error(
    name: str, frame: dict[object, object]
) -> None:
    num_checked = 0
    for bad in SURROGATES:
        for variant in _variants(frame, bad):
            try:
                decode_client_frame(_as_json_text(variant), plugin_types=frozenset({"npc.say"}))
            except ProtocolError as error:
                reply = ErrorFrame.from_error(error)
                code = error.code
            else:
                raise AssertionError(f"{name}: a frame with a lone surrogate was accepted")
            for encoding in Encoding:
                data = encode_frame(reply, encoding)
                raw = data.encode("utf-8") if isinstance(data, str) else data
                back = decode_server_frame(raw if encoding is Encoding.MSGPACK else raw.decode())
                assert isinstance(back, ErrorFrame)
                assert back.code == code
                assert back.request_id is None or "\ufffd" not in back.request_id
            num_checked += 1
    assert num_checked >= 2 * len(SURROGATES)


def test_the_three_frames_from_the_report() -> None:
    frames = [
        '{"type":"cancel","id":"\\ud800"}',
        '{"type":"generate","id":"x","prompt":"hi","\\ud800":1}',
        '{"type":"generate","id":"x","prompt":"hi","sampling":{"\\udc00":1}}',
    ]
    for text in frames:
        with pytest.raises(ProtocolError) as caught:
            decode_client_frame(text)
        reply = encode_frame(ErrorFrame.from_error(caught.value), Encoding.JSON)
        reply.encode("utf-8")  # would raise on a lone surrogate
        assert "\ufffd" in reply or caught.value.request_id is None


def test_a_surrogate_id_is_not_echoed_but_a_valid_one_is() -> None:
    with pytest.raises(ProtocolError) as caught:
        decode_client_frame('{"type":"cancel","id":"\\ud800"}')
    assert caught.value.request_id is None
    with pytest.raises(ProtocolError) as caught:
        decode_client_frame('{"type":"generate","id":"ok","prompt":"\\ud800"}')
    assert caught.value.request_id == "ok"
