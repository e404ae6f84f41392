"""Typed readers for plugin frame payloads, with the core frames' error messages. Pure.

A plugin reads its fields the way the codec reads core frames, so a client gets the same
`invalid_field` / `limit_exceeded` errors, field paths and request id from either:

    read = PayloadReader(frame)
    text = read.required("text", string(max_chars=2000, non_empty=True))
    session_id = read.optional("session_id", identifier(max_chars=128))
"""

from __future__ import annotations

from typing import TypeVar

from protocol import validate as v
from protocol.errors import ProtocolError
from protocol.messages import PluginFrame

T = TypeVar("T")

# The converters a reader takes; each raises ProtocolError naming the field path.
string = v.string
identifier = v.identifier
integer = v.integer
number = v.number
boolean = v.boolean
mapping = v.mapping
array = v.array
list_of = v.list_of
choice = v.choice


class PayloadReader:
    """Reads fields of one plugin frame; errors carry the frame's request id."""

    def __init__(self, frame: PluginFrame) -> None:
        self._frame = frame
        self._raw: dict[object, object] = {key: value for key, value in frame.payload.items()}

    @property
    def request_id(self) -> str:
        """The frame's id (client plugin frames always have one)."""
        if self._frame.request_id is None:
            raise v.invalid("id", "required")
        return self._frame.request_id

    def required(self, name: str, convert: v.Convert[T]) -> T:
        try:
            return v.required(self._raw, "", name, convert)
        except ProtocolError as error:
            raise error.with_request_id(self._frame.request_id) from None

    def optional(self, name: str, convert: v.Convert[T]) -> T | None:
        try:
            return v.optional(self._raw, "", name, convert)
        except ProtocolError as error:
            raise error.with_request_id(self._frame.request_id) from None

    def nested(self, name: str, *, required: bool = True) -> NestedReader | None:
        """A reader over a map-valued field, whose errors name "name.field"."""
        read = self.required if required else self.optional
        raw = read(name, v.mapping)
        return None if raw is None else NestedReader(raw, name, self._frame.request_id)


class NestedReader:
    """Reads the fields of a map inside a payload (e.g. `user` of `mod.check`)."""

    def __init__(self, raw: dict[object, object], path: str, request_id: str | None) -> None:
        self._raw = raw
        self._path = path
        self._request_id = request_id

    def required(self, name: str, convert: v.Convert[T]) -> T:
        try:
            return v.required(self._raw, self._path, name, convert)
        except ProtocolError as error:
            raise error.with_request_id(self._request_id) from None

    def optional(self, name: str, convert: v.Convert[T]) -> T | None:
        try:
            return v.optional(self._raw, self._path, name, convert)
        except ProtocolError as error:
            raise error.with_request_id(self._request_id) from None
