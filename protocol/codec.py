"""Frames to and from the wire: msgpack for binary WebSocket frames, JSON for text. Pure.

The decode functions raise ProtocolError and nothing else, whatever they are given. The encode
function always gives bytes that are valid in their encoding: a string that cannot be UTF-8
(a lone surrogate a JSON client sent, echoed back in an error's id or field path) has that
code point replaced by U+FFFD.
"""

from __future__ import annotations

import enum
import json
import re
from types import MappingProxyType
from typing import Literal, NoReturn, overload

import msgpack

from protocol import validate as v
from protocol.errors import ErrorCode, ProtocolError
from protocol.limits import DEFAULT_LIMITS, Limits
from protocol.messages import RESERVED_NAMESPACES, ClientFrame, Frame, PluginFrame, ServerFrame
from protocol.readers import CLIENT_READERS, SERVER_READERS
from protocol.writers import to_wire

FrameData = bytes | bytearray | memoryview | str
_SURROGATE = re.compile("[\ud800-\udfff]")
# A lone surrogate in a JSON text: a raw one, or an escape of one (a valid escaped pair, or
# an escaped backslash before "u", matches too: those frames get the full per-string check).
_MAY_HOLD_SURROGATE = re.compile(r"[\ud800-\udfff]|\\u[dD][89a-fA-F]")


class Encoding(enum.Enum):
    MSGPACK = "msgpack"  # binary WebSocket frames
    JSON = "json"  # text WebSocket frames


def encoding_of(data: FrameData) -> Encoding:
    """The encoding a frame came in, which is also the one to answer it in."""
    if isinstance(data, str):
        return Encoding.JSON
    if isinstance(data, bytes | bytearray | memoryview):
        return Encoding.MSGPACK
    raise TypeError(f"a frame is bytes or str, not {type(data).__name__}")


@overload
def encode_frame(frame: Frame, encoding: Literal[Encoding.MSGPACK]) -> bytes: ...
@overload
def encode_frame(frame: Frame, encoding: Literal[Encoding.JSON]) -> str: ...
@overload
def encode_frame(frame: Frame, encoding: Encoding) -> bytes | str: ...
def encode_frame(frame: Frame, encoding: Encoding) -> bytes | str:
    """Encode any frame; does not validate it (the receiving side's decode does)."""
    wire = to_wire(frame)
    if encoding is Encoding.MSGPACK:
        try:
            packed: bytes = msgpack.packb(wire, use_bin_type=True)
        except UnicodeEncodeError:
            packed = msgpack.packb(_scrub(wire), use_bin_type=True)
        return packed
    text = json.dumps(wire, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    if _SURROGATE.search(text):
        text = json.dumps(_scrub(wire), ensure_ascii=False, separators=(",", ":"))
    return text


def _scrub(value: object) -> object:
    """value with every lone surrogate, in keys and strings at any depth, made U+FFFD."""
    if isinstance(value, str):
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if isinstance(value, dict):
        return {_scrub(k): _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(item) for item in value]
    return value


def decode_client_frame(
    data: FrameData,
    *,
    limits: Limits = DEFAULT_LIMITS,
    plugin_types: frozenset[str] = frozenset(),
) -> ClientFrame:
    """A client frame; plugin types are accepted only if listed in `plugin_types`."""
    raw = _parse(data, limits)
    request_id = _peek_request_id(raw, limits)
    try:
        frame_type = _frame_type(raw, limits)
        reader = CLIENT_READERS.get(frame_type)
        if reader is None and not (frame_type in plugin_types and _is_plugin(frame_type)):
            raise _unknown_type(frame_type)
        _check_tree(raw, data, limits, plugin=reader is None)
        if reader is not None:
            return reader(raw, limits)
        return _read_plugin(raw, frame_type, limits, id_required=True)
    except ProtocolError as error:
        raise error.with_request_id(request_id) from None


def decode_server_frame(data: FrameData, *, limits: Limits = DEFAULT_LIMITS) -> ServerFrame:
    """A server frame; any plugin type is accepted, since the server chose to send it."""
    raw = _parse(data, limits)
    request_id = _peek_request_id(raw, limits)
    try:
        frame_type = _frame_type(raw, limits)
        reader = SERVER_READERS.get(frame_type)
        if reader is None and not _is_plugin(frame_type):
            raise _unknown_type(frame_type)
        _check_tree(raw, data, limits, plugin=reader is None)
        if reader is not None:
            return reader(raw, limits)
        return _read_plugin(raw, frame_type, limits, id_required=False)
    except ProtocolError as error:
        raise error.with_request_id(request_id) from None


def _check_tree(
    raw: dict[object, object], data: FrameData, limits: Limits, *, plugin: bool
) -> None:
    """The whole-frame limits in one pass; a plugin payload must also survive JSON (no int
    map keys). Strings are scanned for lone surrogates only where some may be: msgpack
    decodes UTF-8 strictly, and a JSON text without one in it or its escapes has none."""
    unicode_checked = not isinstance(data, str) or not _MAY_HOLD_SURROGATE.search(data)
    v.check_tree(raw, limits, int_keys=not plugin, unicode_checked=unicode_checked)


def _malformed(message: str) -> NoReturn:
    raise ProtocolError(ErrorCode.MALFORMED_FRAME, message)


def _too_large(size: int, limits: Limits) -> NoReturn:
    raise ProtocolError(
        ErrorCode.FRAME_TOO_LARGE,
        f"frame of {size} bytes is over the limit of {limits.max_frame_bytes}",
    )


def _too_deep(limits: Limits) -> NoReturn:
    # The parsers' own nesting bound (about 1000) is far above max_depth.
    raise ProtocolError(ErrorCode.LIMIT_EXCEEDED, f"nested deeper than {limits.max_depth}")


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not valid JSON")


def _parse(data: object, limits: Limits) -> dict[object, object]:
    if isinstance(data, str):
        # A char takes at least one UTF-8 byte: skip encoding frames that are surely too big.
        if len(data) > limits.max_frame_bytes:
            _too_large(len(data), limits)
        size = len(data.encode("utf-8", "surrogatepass"))
        if size > limits.max_frame_bytes:
            _too_large(size, limits)
        try:
            obj = json.loads(data, parse_constant=_reject_constant)
        except RecursionError:
            _too_deep(limits)
        except ValueError as error:
            _malformed(f"not valid JSON: {error}")
    elif isinstance(data, bytes | bytearray | memoryview):
        if len(data) > limits.max_frame_bytes:
            _too_large(len(data), limits)
        try:
            # Int map keys are allowed for logit_bias; check_tree refuses other kinds.
            obj = msgpack.unpackb(data, raw=False, strict_map_key=False)
        except msgpack.StackError:
            _too_deep(limits)
        except Exception as error:  # msgpack raises many kinds on bad input
            _malformed(f"not valid msgpack ({type(error).__name__}: {error})")
    else:
        _malformed(f"a frame is bytes (msgpack) or str (JSON), not {type(data).__name__}")
    if not isinstance(obj, dict):
        _malformed("a frame must be a map")
    return obj


def _peek_request_id(raw: dict[object, object], limits: Limits) -> str | None:
    """The frame's id if it is a valid one, so that errors can name the request."""
    try:
        request_id = v.optional(raw, "", "id", v.identifier(max_chars=limits.max_request_id_chars))
    except ProtocolError:
        return None
    # An id that is not valid Unicode is no id the client could match an answer to.
    return None if request_id is not None and _SURROGATE.search(request_id) else request_id


def _frame_type(raw: dict[object, object], limits: Limits) -> str:
    return v.required(raw, "", "type", v.string(max_chars=limits.max_key_chars, non_empty=True))


def _is_plugin(frame_type: str) -> bool:
    namespace = frame_type.partition(".")[0]
    return v.is_plugin_type(frame_type) and namespace not in RESERVED_NAMESPACES


def _unknown_type(frame_type: str) -> ProtocolError:
    return ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown frame type {frame_type!r}")


def _read_plugin(
    raw: dict[object, object], frame_type: str, limits: Limits, *, id_required: bool
) -> PluginFrame:
    identifier = v.identifier(max_chars=limits.max_request_id_chars)
    if id_required:
        request_id: str | None = v.required(raw, "", "id", identifier)
    else:
        request_id = v.optional(raw, "", "id", identifier)
    # check_tree has refused int map keys at every depth: the payload is JSON-compatible.
    payload = {key: value for key, value in raw.items() if key not in ("type", "id")}
    return PluginFrame(
        type=frame_type,
        request_id=request_id,
        payload=MappingProxyType(payload),  # type: ignore[arg-type]
    )
