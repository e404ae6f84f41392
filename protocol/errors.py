"""Stable error codes and ProtocolError, the one exception the codec raises. Pure: stdlib only.

Every code has a fixed policy: whether the same request may succeed if sent again later
(`retryable`) and whether the server closes the connection after sending the error frame
(`closes_connection`). Both are part of the wire contract, documented in SPEC.md.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType


class ErrorCode(enum.StrEnum):
    # Raised by the codec itself.
    MALFORMED_FRAME = "malformed_frame"  # not msgpack / not JSON / not a map
    FRAME_TOO_LARGE = "frame_too_large"  # over Limits.max_frame_bytes
    UNKNOWN_TYPE = "unknown_type"  # a type no one here handles
    INVALID_FIELD = "invalid_field"  # missing, mistyped or out-of-range field
    LIMIT_EXCEEDED = "limit_exceeded"  # a string, list, map or nesting over its limit
    UNSUPPORTED_VERSION = "unsupported_version"  # hello.protocol this server does not speak
    # Raised by the server.
    HELLO_REQUIRED = "hello_required"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    SESSION_NOT_FOUND = "session_not_found"
    SESSION_LOST = "session_lost"  # made by an earlier run of the server: its history is gone
    DUPLICATE_REQUEST_ID = "duplicate_request_id"
    UNKNOWN_REQUEST = "unknown_request"
    TOO_MANY_REQUESTS = "too_many_requests"
    OVERLOADED = "overloaded"
    PROMPT_TOO_LONG = "prompt_too_long"
    NOT_READY = "not_ready"
    SHUTTING_DOWN = "shutting_down"
    REQUEST_FAILED = "request_failed"  # this request failed inside the engine; others went on
    ENGINE_RESTARTED = "engine_restarted"  # the engine restarted under this request: retry
    RATE_LIMITED = "rate_limited"  # too many failed handshakes from this address
    SESSION_LIMIT = "session_limit"  # too many open sessions for this connection or address
    STORE_UNAVAILABLE = "store_unavailable"  # the state store cannot be written: nothing kept
    INTERNAL = "internal"


@dataclass(frozen=True, kw_only=True)
class ErrorPolicy:
    retryable: bool  # the same request may succeed later, unchanged
    closes_connection: bool  # the server closes the WebSocket after the error frame


def _policy(retryable: bool, closes_connection: bool) -> ErrorPolicy:
    return ErrorPolicy(retryable=retryable, closes_connection=closes_connection)


ERROR_POLICIES: Mapping[ErrorCode, ErrorPolicy] = MappingProxyType(
    {
        ErrorCode.MALFORMED_FRAME: _policy(False, False),
        ErrorCode.FRAME_TOO_LARGE: _policy(False, False),
        ErrorCode.UNKNOWN_TYPE: _policy(False, False),
        ErrorCode.INVALID_FIELD: _policy(False, False),
        ErrorCode.LIMIT_EXCEEDED: _policy(False, False),
        # A client that speaks another version or skips the handshake cannot go on.
        ErrorCode.UNSUPPORTED_VERSION: _policy(False, True),
        ErrorCode.HELLO_REQUIRED: _policy(False, True),
        ErrorCode.UNAUTHORIZED: _policy(False, True),
        ErrorCode.FORBIDDEN: _policy(False, False),
        ErrorCode.SESSION_NOT_FOUND: _policy(False, False),
        ErrorCode.SESSION_LOST: _policy(False, False),
        ErrorCode.DUPLICATE_REQUEST_ID: _policy(False, False),
        ErrorCode.UNKNOWN_REQUEST: _policy(False, False),
        ErrorCode.TOO_MANY_REQUESTS: _policy(True, False),
        ErrorCode.OVERLOADED: _policy(True, False),
        ErrorCode.PROMPT_TOO_LONG: _policy(False, False),
        ErrorCode.NOT_READY: _policy(True, False),
        # Retry against a restarted or other instance.
        ErrorCode.SHUTTING_DOWN: _policy(True, True),
        ErrorCode.REQUEST_FAILED: _policy(False, False),
        ErrorCode.ENGINE_RESTARTED: _policy(True, False),
        # Sent instead of unauthorized while the address is locked out; try again later.
        ErrorCode.RATE_LIMITED: _policy(True, True),
        ErrorCode.SESSION_LIMIT: _policy(True, False),
        # The session's state could not be made durable, so it was not changed; stateless
        # requests go on. Retry once /readyz says the store is back.
        ErrorCode.STORE_UNAVAILABLE: _policy(True, False),
        ErrorCode.INTERNAL: _policy(True, False),
    }
)


class ProtocolError(Exception):
    """A frame the peer got wrong, or a refusal the server answers with an error frame."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        request_id: str | None = None,
        field: str | None = None,
    ) -> None:
        super().__init__(f"{code.value}: {message}")
        self.code = code
        self.message = message
        self.request_id = request_id  # the frame's "id", when it could be read
        self.field = field  # path of the offending field, e.g. "sampling.temperature"

    @property
    def retryable(self) -> bool:
        return ERROR_POLICIES[self.code].retryable

    @property
    def closes_connection(self) -> bool:
        return ERROR_POLICIES[self.code].closes_connection

    def with_request_id(self, request_id: str | None) -> ProtocolError:
        """A copy carrying `request_id`; the field readers raise before the id is known."""
        return ProtocolError(self.code, self.message, request_id=request_id, field=self.field)
