"""The store interface every backend implements, its records and errors. No I/O, no asyncio.

Exceptions (every backend raises only these):

    StoreError
    ├── StoreUnavailable   the backend cannot be reached or written (disk full, read-only
    │                      data directory, Redis down); retry later
    └── StoreValueError    the caller's fault: a value that is not JSON, `incr` of a
                           non-integer, a key that is not valid text

Two users share one store. Sessions (`*_session` methods) are keyed by tenant and session id.
The plugin store is a key-value space per namespace `ns`, an opaque string the server builds
from the plugin's name and the tenant (server/plugin_store.py), so plugins never share keys:
values are JSON-compatible, may carry a TTL, counters are atomic (short-window counters
for rate limits are cheaper, and on unshared backends not durable), logs are append-only lists
with an optional length cap, and topics fan messages out to every subscriber (on every
replica, for a shared backend). Values and logs are two key spaces under one namespace:
`delete` removes both, `list` names both. Log ranges are inclusive, as Redis' LRANGE:
`range(ns, key, 0, -1)` is the whole log, `range(ns, key, -10, -1)` its newest ten.
"""

from __future__ import annotations

import abc
import builtins
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TypeAlias

log = logging.getLogger("banterbox.store")

JSONValue: TypeAlias = bool | int | float | str | list["JSONValue"] | dict[str, "JSONValue"] | None


class StoreError(Exception):
    """Root of the store's errors."""


class StoreUnavailable(StoreError):
    """The backend cannot serve this call now; the message says why (no secrets in it)."""


class StoreValueError(StoreError, TypeError):
    """A value or key the store cannot hold, or `incr` of a value that is not an integer."""


@dataclass(frozen=True, kw_only=True)
class SessionRecord:
    """A session as the store keeps it; `last_used` and `expires_at` are wall-clock seconds."""

    tenant: str
    session_id: str
    metadata: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    messages: tuple[tuple[str, str], ...] = ()  # (role, content) of each completed turn
    transcript_text: str = ""  # the exact transcript; "" with no token ids: none yet
    transcript_token_ids: tuple[int, ...] = ()
    num_turns: int = 0
    last_used: float = 0.0
    expires_at: float = 0.0


class Subscription(abc.ABC):
    """Messages published to one topic after `subscribe` returned, in order, until closed."""

    def __aiter__(self) -> AsyncIterator[JSONValue]:
        return self

    @abc.abstractmethod
    async def __anext__(self) -> JSONValue: ...

    @abc.abstractmethod
    async def aclose(self) -> None: ...

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class Store(abc.ABC):
    """One backend. Calls are coroutines; none blocks the event loop."""

    kind: str = ""  # "memory", "sqlite", "redis"
    durable: bool = False  # survives a restart of this process
    shared: bool = False  # other replicas see the same state

    def __init__(self) -> None:
        self.available = True
        self.last_error = ""

    def _healthy(self) -> None:
        if not self.available:
            log.info("%s store available again", self.kind)
        self.available, self.last_error = True, ""

    def _unavailable(self, reason: str) -> StoreUnavailable:
        if self.available:
            log.warning("%s store unavailable: %s", self.kind, reason)
        self.available, self.last_error = False, reason
        return StoreUnavailable(f"{self.kind} store: {reason}")

    @abc.abstractmethod
    async def ping(self) -> None:
        """A write round trip: raises StoreUnavailable when the backend cannot take writes."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    # --- sessions -----------------------------------------------------------------------------

    @abc.abstractmethod
    async def save_session(self, record: SessionRecord) -> None:
        """Insert or replace; durable (for a durable backend) when this returns."""

    @abc.abstractmethod
    async def load_session(self, tenant: str, session_id: str) -> SessionRecord | None:
        """The record, or None when there is none or it has expired."""

    @abc.abstractmethod
    async def delete_session(self, tenant: str, session_id: str) -> bool: ...

    @abc.abstractmethod
    async def all_sessions(self) -> builtins.list[SessionRecord]:
        """Every tenant's unexpired records: a restarted server's working set."""

    @abc.abstractmethod
    async def list_sessions(self, tenant: str) -> list[str]:
        """The tenant's unexpired session ids, sorted."""

    @abc.abstractmethod
    async def expire(self, now: float) -> int:
        """Forget session records and values that expired before `now`; how many went. (Redis
        expires keys itself; the others need this called now and then.)"""

    # --- plugin key-value store ---------------------------------------------------------------

    @abc.abstractmethod
    async def get(self, ns: str, key: str) -> JSONValue:
        """The value, or None when absent or expired."""

    @abc.abstractmethod
    async def set(
        self, ns: str, key: str, value: JSONValue, ttl_s: float | None = None
    ) -> None: ...

    @abc.abstractmethod
    async def set_many(self, ns: str, items: Sequence[tuple[str, JSONValue, float | None]]) -> None:
        """`set` of each (key, value, ttl_s), all in one write (one transaction on SQLite, one
        MULTI on Redis): a batch's state costs one round trip, not one per key."""

    @abc.abstractmethod
    async def delete(self, ns: str, key: str) -> bool:
        """Remove the key's value and log; True if there was either."""

    @abc.abstractmethod
    async def list(self, ns: str, prefix: str = "") -> builtins.list[str]:
        """Keys (values and logs) starting with `prefix`, sorted."""

    @abc.abstractmethod
    async def incr(self, ns: str, key: str, amount: int = 1, ttl_s: float | None = None) -> int:
        """Add atomically (absent counts as 0) and return the new value. `ttl_s` is set when
        the increment creates the key (a fixed window, as rate limiters count)."""

    @abc.abstractmethod
    async def incr_windows(
        self, ns: str, windows: Sequence[tuple[str, float]]
    ) -> builtins.list[int]:
        """Count one in each short-window counter (key, ttl_s) and return the new counts, in
        one call. A window starts at its first count and ends ttl_s later (required).

        Made for rate limits (flood, duplicates), not for state that must outlive a crash:
        on a shared backend (Redis) the counts are atomic and agree across replicas, as
        `incr`; on the others they live in this process only (no disk write; a restart
        forgets the open windows, at most ttl_s of history). Windows are a key space of
        their own: `get`, `list` and `delete` do not see them."""

    @abc.abstractmethod
    async def append(self, ns: str, key: str, value: JSONValue, max_len: int | None = None) -> None:
        """Append to the key's log and keep only its newest `max_len` entries."""

    @abc.abstractmethod
    async def extend(
        self, ns: str, key: str, values: Sequence[JSONValue], max_len: int | None = None
    ) -> None:
        """`append` of each value, in order, in one write; then the newest `max_len` stay."""

    @abc.abstractmethod
    async def append_logs(
        self,
        ns: str,
        items: Sequence[tuple[str, Sequence[JSONValue], int | None]],
        *,
        durable: bool = True,
    ) -> builtins.list[builtins.list[JSONValue]]:
        """`extend` of each (key, values, max_len), in one call; each log's entries after its
        append, oldest first. Atomic per log (no other write comes between a log's append and
        its read), so a caller finds its own entries' places among concurrent appends.

        `durable=False` defers the disk sync: committed and seen by every caller when this
        returns, and it survives a kill -9 of the server, but a backend that syncs each
        commit (SQLite FULL) may leave it to the next durable write to reach the disk. For
        entries that a durable write always follows before anything is acknowledged."""

    @abc.abstractmethod
    async def range(
        self, ns: str, key: str, start: int = 0, stop: int = -1
    ) -> builtins.list[JSONValue]:
        """Entries `start` to `stop` inclusive, oldest first; negatives count from the end."""

    @abc.abstractmethod
    async def publish(self, ns: str, topic: str, message: JSONValue) -> int:
        """Deliver to the topic's subscribers; how many received it (on this replica for
        an unshared backend, on all replicas for a shared one)."""

    @abc.abstractmethod
    async def subscribe(self, ns: str, topic: str) -> Subscription:
        """Subscribed when this returns; iterate the result, close it when done."""
