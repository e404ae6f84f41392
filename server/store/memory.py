"""The memory store: dictionaries in this process. For tests, and as the explicit choice of
state that a restart may lose. Touches no file and no network.
"""

from __future__ import annotations

import builtins
import time
from collections.abc import Callable, Sequence

from .base import JSONValue, SessionRecord, Store, Subscription
from .codec import (
    add_int,
    check_amount,
    check_key,
    check_max_len,
    check_ttl,
    dump_value,
    inclusive_slice,
    load_value,
)
from .fanout import Fanout
from .windows import LocalWindows


class MemoryStore(LocalWindows, Store):
    kind = "memory"

    def __init__(self, *, clock: Callable[[], float] = time.time, max_queue: int = 1024) -> None:
        super().__init__()
        self._clock = clock
        self._sessions: dict[tuple[str, str], SessionRecord] = {}
        self._values: dict[tuple[str, str], tuple[str, float | None]] = {}  # json, expires_at
        self._logs: dict[tuple[str, str], builtins.list[str]] = {}
        self._fanout = Fanout(max_queue=max_queue)

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        await self._fanout.close()

    # --- sessions -----------------------------------------------------------------------------

    async def save_session(self, record: SessionRecord) -> None:
        self._sessions[(record.tenant, record.session_id)] = record

    async def load_session(self, tenant: str, session_id: str) -> SessionRecord | None:
        record = self._sessions.get((tenant, session_id))
        if record is None or record.expires_at < self._clock():
            return None
        return record

    async def delete_session(self, tenant: str, session_id: str) -> bool:
        return self._sessions.pop((tenant, session_id), None) is not None

    async def all_sessions(self) -> builtins.list[SessionRecord]:
        now = self._clock()
        return [r for r in self._sessions.values() if r.expires_at >= now]

    async def list_sessions(self, tenant: str) -> builtins.list[str]:
        now = self._clock()
        return sorted(
            sid for (t, sid), r in self._sessions.items() if t == tenant and r.expires_at >= now
        )

    async def expire(self, now: float) -> int:
        stale = [key for key, r in self._sessions.items() if r.expires_at < now]
        for key in stale:
            del self._sessions[key]
        values = [k for k, (_, at) in self._values.items() if at is not None and at <= now]
        for key in values:
            del self._values[key]
        return len(stale) + len(values)

    # --- plugin key-value store ---------------------------------------------------------------

    def _live(self, slot: tuple[str, str]) -> str | None:
        entry = self._values.get(slot)
        if entry is None:
            return None
        raw, expires_at = entry
        if expires_at is not None and expires_at <= self._clock():
            del self._values[slot]
            return None
        return raw

    def _expiry(self, ttl_s: float | None) -> float | None:
        ttl_s = check_ttl(ttl_s)
        return None if ttl_s is None else self._clock() + ttl_s

    async def get(self, ns: str, key: str) -> JSONValue:
        raw = self._live((ns, check_key(key)))
        return None if raw is None else load_value(raw)

    async def set(self, ns: str, key: str, value: JSONValue, ttl_s: float | None = None) -> None:
        self._values[(ns, check_key(key))] = (dump_value(value), self._expiry(ttl_s))

    async def set_many(self, ns: str, items: Sequence[tuple[str, JSONValue, float | None]]) -> None:
        rows = [((ns, check_key(k)), (dump_value(v), self._expiry(t))) for k, v, t in items]
        self._values.update(rows)

    async def delete(self, ns: str, key: str) -> bool:
        slot = (ns, check_key(key))
        had_value = self._live(slot) is not None
        self._values.pop(slot, None)
        return self._logs.pop(slot, None) is not None or had_value

    async def list(self, ns: str, prefix: str = "") -> builtins.list[str]:
        check_key(prefix, what="prefix")
        keys = {k for (n, k) in self._logs if n == ns and k.startswith(prefix)}
        for n, k in builtins.list(self._values):
            if n == ns and k.startswith(prefix) and self._live((n, k)) is not None:
                keys.add(k)
        return sorted(keys)

    async def incr(self, ns: str, key: str, amount: int = 1, ttl_s: float | None = None) -> int:
        slot = (ns, check_key(key))
        amount, expires_at = check_amount(amount), self._expiry(ttl_s)
        raw = self._live(slot)
        if raw is None:
            self._values[slot] = (str(amount), expires_at)
            return amount
        total = add_int(load_value(raw), amount, key=key)
        self._values[slot] = (str(total), self._values[slot][1])
        return total

    async def append(self, ns: str, key: str, value: JSONValue, max_len: int | None = None) -> None:
        slot, raw, max_len = (ns, check_key(key)), dump_value(value), check_max_len(max_len)
        entries = self._logs.setdefault(slot, [])
        entries.append(raw)
        if max_len is not None and len(entries) > max_len:
            del entries[: len(entries) - max_len]

    async def extend(
        self, ns: str, key: str, values: Sequence[JSONValue], max_len: int | None = None
    ) -> None:
        slot, max_len = (ns, check_key(key)), check_max_len(max_len)
        raws = [dump_value(value) for value in values]
        entries = self._logs.setdefault(slot, [])
        entries.extend(raws)
        if max_len is not None and len(entries) > max_len:
            del entries[: len(entries) - max_len]

    async def append_logs(
        self,
        ns: str,
        items: Sequence[tuple[str, Sequence[JSONValue], int | None]],
        *,
        durable: bool = True,  # nothing here reaches a disk
    ) -> builtins.list[builtins.list[JSONValue]]:
        logs = []
        for key, values, max_len in items:  # no await inside: atomic on the event loop
            await self.extend(ns, key, values, max_len)
            logs.append([load_value(raw) for raw in self._logs.get((ns, key), [])])
        return logs

    async def range(
        self, ns: str, key: str, start: int = 0, stop: int = -1
    ) -> builtins.list[JSONValue]:
        window = inclusive_slice(start, stop)
        return [load_value(raw) for raw in self._logs.get((ns, check_key(key)), [])[window]]

    async def publish(self, ns: str, topic: str, message: JSONValue) -> int:
        return self._fanout.publish((ns, check_key(topic, what="topic")), message)

    async def subscribe(self, ns: str, topic: str) -> Subscription:
        return self._fanout.subscribe((ns, check_key(topic, what="topic")))
