"""Short-window counters kept in this process: what the memory and SQLite stores lend for
rate limits. No I/O, no asyncio.

A window is a counter that starts at its first count and is forgotten `ttl_s` later (a fixed
window, as `incr` with a TTL counts). They cost a dict operation, never a disk write: a
restart forgets the open windows, which is at most `ttl_s` of flood or duplicate history.
Expired windows go in sweeps whose cost is paid by the counts that made them.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence

from .base import StoreValueError
from .codec import check_key, check_ttl


def window_ttl(ttl_s: float) -> float:
    """A window's TTL, checked: every window has one."""
    checked = check_ttl(ttl_s)
    if checked is None:
        raise StoreValueError("a window needs a ttl_s")
    return checked


class Windows:
    def __init__(
        self, *, clock: Callable[[], float] = time.monotonic, max_windows: int = 1_000_000
    ) -> None:
        self._clock = clock
        self._max_windows = max_windows  # past this many live windows, the oldest go first
        # (count, expires_at): tuples of numbers, which the cyclic collector stops tracking,
        # so a million open windows cost a full collection nothing (lists would be scanned).
        self._counts: dict[tuple[str, str], tuple[int, float]] = {}
        self._next_sweep = 1024  # sweep when the table has grown to this size

    def incr(self, ns: str, windows: Sequence[tuple[str, float]]) -> list[int]:
        """Count one in each (key, ttl_s) window under ns; the counts, in order."""
        ttls: dict[float, float] = {}  # a batch has a few distinct TTLs: check each once
        checked = [
            (check_key(key), ttls.get(ttl_s) or ttls.setdefault(ttl_s, window_ttl(ttl_s)))
            for key, ttl_s in windows
        ]
        now = self._clock()
        counts = self._counts
        out: list[int] = []
        for key, ttl_s in checked:
            slot = (ns, key)
            entry = counts.get(slot)
            if entry is None or entry[1] <= now:
                counts.pop(slot, None)  # an expired window restarts, at the end of the order
                counts[slot] = (1, now + ttl_s)
                out.append(1)
            else:
                count = entry[0] + 1
                counts[slot] = (count, entry[1])  # in place: the order stays creation order
                out.append(count)
        if len(counts) >= self._next_sweep:
            self._sweep(now)
        return out

    def _sweep(self, now: float) -> None:
        counts = self._counts
        for slot in [s for s, (_, expires_at) in counts.items() if expires_at <= now]:
            del counts[slot]
        # Dicts keep insertion order, which is creation order: the oldest windows first.
        for slot in list(counts)[: max(0, len(counts) - self._max_windows)]:
            del counts[slot]
        self._next_sweep = max(1024, 2 * len(counts))


class LocalWindows:
    """`Store.incr_windows` for a backend that is not shared (memory, SQLite): counters in
    this process, made on first use."""

    @functools.cached_property
    def _windows(self) -> Windows:
        return Windows()

    async def incr_windows(self, ns: str, windows: Sequence[tuple[str, float]]) -> list[int]:
        return self._windows.incr(ns, windows)
