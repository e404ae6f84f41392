"""The store the moderation core needs, as a Protocol, and an in-memory one. No I/O.

The names and semantics are plugins.api.Store's (`ctx.store`: get/set/delete/list with TTL,
atomic incr, short-window counters, append/range for logs), which the server lends durable
and namespaced per plugin and tenant; values are typed Any here so the core writes plain
dicts. `MemoryStore` lets the tests and the quality bench run the core without a server.
"""

from __future__ import annotations

import builtins
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol


class Store(Protocol):
    async def get(self, key: str) -> object | None: ...

    async def set(self, key: str, value: Any, *, ttl_s: float | None = None) -> None: ...

    async def set_many(self, items: Sequence[tuple[str, Any, float | None]]) -> None: ...

    async def delete(self, key: str) -> bool: ...

    async def list(self, prefix: str = "") -> builtins.list[str]: ...

    async def incr(self, key: str, amount: int = 1, *, ttl_s: float | None = None) -> int:
        """Add `amount` atomically; a missing key counts from 0 and gets `ttl_s`."""
        ...

    async def incr_windows(self, windows: Sequence[tuple[str, float]]) -> builtins.list[int]:
        """Count one in each (key, ttl_s) short-window counter; the new counts, in order."""
        ...

    async def append(self, key: str, value: Any, *, max_len: int | None = None) -> None:
        """Append to the log at `key`, keeping its newest `max_len` entries."""
        ...

    async def extend(
        self, key: str, values: Sequence[Any], *, max_len: int | None = None
    ) -> None: ...

    async def append_logs(
        self, items: Sequence[tuple[str, Sequence[Any], int | None]], *, durable: bool = True
    ) -> builtins.list[builtins.list[Any]]:
        """`extend` of each (key, values, max_len); each log after its append (atomic per log).
        `durable=False`: its disk sync may wait for the next durable write."""
        ...

    async def range(self, key: str, start: int = 0, stop: int = -1) -> builtins.list[Any]:
        """Entries `start` to `stop` inclusive, oldest first; negatives count from the end."""
        ...


class MemoryStore:
    """Store in a dict, TTLs measured on `clock` (tests pass a fake one)."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._values: dict[str, tuple[object, float | None]] = {}
        self._logs: dict[str, builtins.list[object]] = {}

    def _live(self, key: str) -> object | None:
        found = self._values.get(key)
        if found is None:
            return None
        value, expires = found
        if expires is not None and self._clock() >= expires:
            del self._values[key]
            return None
        return value

    def _expiry(self, ttl_s: float | None) -> float | None:
        return None if ttl_s is None else self._clock() + ttl_s

    async def get(self, key: str) -> object | None:
        return self._live(key)

    async def set(self, key: str, value: Any, *, ttl_s: float | None = None) -> None:
        self._values[key] = (value, self._expiry(ttl_s))

    async def set_many(self, items: Sequence[tuple[str, Any, float | None]]) -> None:
        for key, value, ttl_s in items:
            await self.set(key, value, ttl_s=ttl_s)

    async def delete(self, key: str) -> bool:
        found = self._live(key) is not None or key in self._logs
        self._values.pop(key, None)
        self._logs.pop(key, None)
        return found

    async def list(self, prefix: str = "") -> builtins.list[str]:
        keys = [k for k in self._values if k.startswith(prefix) and self._live(k) is not None]
        return sorted(keys + [k for k in self._logs if k.startswith(prefix)])

    async def incr(self, key: str, amount: int = 1, *, ttl_s: float | None = None) -> int:
        current = self._live(key)
        if current is None:
            value, expires = amount, self._expiry(ttl_s)
        else:
            value, expires = int(current) + amount, self._values[key][1]  # type: ignore[call-overload]
        self._values[key] = (value, expires)
        return value

    async def incr_windows(self, windows: Sequence[tuple[str, float]]) -> builtins.list[int]:
        return [await self.incr(f"window\x1f{key}", ttl_s=ttl_s) for key, ttl_s in windows]

    async def append(self, key: str, value: Any, *, max_len: int | None = None) -> None:
        log = self._logs.setdefault(key, [])
        log.append(value)
        if max_len is not None and len(log) > max_len:
            del log[: len(log) - max_len]

    async def extend(self, key: str, values: Sequence[Any], *, max_len: int | None = None) -> None:
        for value in values:
            await self.append(key, value, max_len=max_len)

    async def append_logs(
        self, items: Sequence[tuple[str, Sequence[Any], int | None]], *, durable: bool = True
    ) -> builtins.list[builtins.list[Any]]:
        logs = []
        for key, values, max_len in items:
            await self.extend(key, values, max_len=max_len)
            logs.append(list(self._logs.get(key, [])))
        return logs

    async def range(self, key: str, start: int = 0, stop: int = -1) -> builtins.list[Any]:
        log = self._logs.get(key, [])
        end = len(log) if stop == -1 else (stop + 1 if stop >= 0 else len(log) + stop + 1)
        return list(log[start:end])
