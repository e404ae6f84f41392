"""The rules of one connection, sans I/O: its state, hello first, request ids, answer encodings.

Both ends use them: the server's connection (server/connection.py) and the Python client
(server/client.py) are thin I/O bridges over these. Nothing here touches a socket or a clock,
so every rule is tested without one (tests/protocol/test_rules.py).

    rules = ServerRules(max_inflight=16)
    frame = rules.receive(data, limits=..., plugin_types=...)   # ProtocolError: answer it
    rules.accept_hello(encoding_of(data))                       # once hello is checked
    entry = rules.requests.admit(frame.request_id, entry)       # duplicate / too many
    encoding = rules.answer_encoding(frame.request_id)          # the request's, else hello's
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from typing import Generic, Protocol, TypeVar

from protocol.codec import Encoding, FrameData, decode_client_frame
from protocol.errors import ErrorCode, ProtocolError
from protocol.limits import DEFAULT_LIMITS, Limits
from protocol.messages import ClientFrame, Hello


class ConnectionState(enum.Enum):
    AWAITING_HELLO = "awaiting_hello"  # the server waits for hello; the client for welcome
    READY = "ready"
    CLOSING = "closing"


_TRANSITIONS = {
    ConnectionState.AWAITING_HELLO: frozenset({ConnectionState.READY, ConnectionState.CLOSING}),
    ConnectionState.READY: frozenset({ConnectionState.CLOSING}),
    ConnectionState.CLOSING: frozenset(),
}


class IllegalTransition(RuntimeError):
    """A move the state machine does not have (a bug in the caller, never the peer's fault)."""


class StateMachine:
    """AWAITING_HELLO → READY → CLOSING, or straight to CLOSING; anything else raises."""

    def __init__(self) -> None:
        self.state = ConnectionState.AWAITING_HELLO

    def move(self, new: ConnectionState) -> None:
        if new not in _TRANSITIONS[self.state]:
            raise IllegalTransition(f"{self.state.name} → {new.name}")
        self.state = new

    def close(self) -> bool:
        """Move to CLOSING unless already there; True when this call moved it."""
        if self.state is ConnectionState.CLOSING:
            return False
        self.move(ConnectionState.CLOSING)
        return True


class HasEncoding(Protocol):
    @property
    def encoding(self) -> Encoding: ...


E = TypeVar("E", bound=HasEncoding)


class RequestTable(Generic[E]):
    """Requests in flight by id. An id is free again as soon as its request ends."""

    def __init__(self, *, max_inflight: int) -> None:
        self.max_inflight = max_inflight
        self._entries: dict[str, E] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._entries

    def __iter__(self) -> Iterator[E]:
        return iter(list(self._entries.values()))

    def get(self, request_id: str | None) -> E | None:
        return None if request_id is None else self._entries.get(request_id)

    def admit(self, request_id: str, entry: E) -> E:
        """Add a request; ProtocolError (naming it) for an id in flight or a full table."""
        if request_id in self._entries:
            raise ProtocolError(
                ErrorCode.DUPLICATE_REQUEST_ID,
                f"request {request_id!r} is already in flight",
                request_id=request_id,
            )
        if len(self._entries) >= self.max_inflight:
            raise ProtocolError(
                ErrorCode.TOO_MANY_REQUESTS,
                f"{self.max_inflight} requests already in flight on this connection",
                request_id=request_id,
            )
        self._entries[request_id] = entry
        return entry

    def end(self, request_id: str, entry: E) -> bool:
        """Remove the request if `entry` is still the one under its id (ids get reused)."""
        if self._entries.get(request_id) is not entry:
            return False
        del self._entries[request_id]
        return True


class ServerRules(Generic[E]):
    """The server's side: hello first and once, then requests; answers in their encoding."""

    def __init__(self, *, max_inflight: int) -> None:
        self.machine = StateMachine()
        self.requests: RequestTable[E] = RequestTable(max_inflight=max_inflight)
        self.hello_encoding = Encoding.MSGPACK  # for frames that answer no request

    @property
    def state(self) -> ConnectionState:
        return self.machine.state

    def receive(
        self,
        data: FrameData,
        *,
        limits: Limits = DEFAULT_LIMITS,
        plugin_types: frozenset[str] = frozenset(),
    ) -> ClientFrame:
        """Decode a frame and check it may come now; ProtocolError says how to answer."""
        frame = decode_client_frame(data, limits=limits, plugin_types=plugin_types)
        if self.state is ConnectionState.AWAITING_HELLO and not isinstance(frame, Hello):
            raise ProtocolError(ErrorCode.HELLO_REQUIRED, "the first frame must be hello")
        if self.state is ConnectionState.READY and isinstance(frame, Hello):
            raise ProtocolError(ErrorCode.INVALID_FIELD, "type: hello was already received")
        return frame

    def accept_hello(self, encoding: Encoding) -> None:
        """The hello was good: requests may follow; unsolicited frames use its encoding."""
        self.machine.move(ConnectionState.READY)
        self.hello_encoding = encoding

    def answer_encoding(self, request_id: str | None) -> Encoding:
        """Answers go out in their request's encoding; anything else in the hello's."""
        entry = self.requests.get(request_id)
        return entry.encoding if entry is not None else self.hello_encoding
