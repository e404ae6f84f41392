"""When held messages expire: one sleeping task for all of them. Knows no store, no frames.

A hold expires `hold_s` after its verdict unless a review took it first. A task per hold,
asleep for its two minutes, made every waiting hold a task, a coroutine and a timer that the
cyclic collector scanned on each full collection (some 20,000 of them at 2,000 checks a
second, 9% held): those scans stopped the event loop for tens of milliseconds. Here a
waiting hold is a tuple of strings and a number in a heap, which the collector leaves alone,
and one task sleeps until the earliest is due, then expires every due one at once.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import suppress
from typing import Any

log = logging.getLogger("banterbox.plugins.moderation")

Expire = Callable[[str, str, str], Awaitable[None]]  # (tenant, channel, message_id)
Spawn = Callable[[Coroutine[Any, Any, None]], None]


class HoldExpiry:
    def __init__(self, expire: Expire, on_idle: Callable[[str], None] | None = None) -> None:
        """`on_idle(tenant)` runs once the tenant's last waiting hold has been expired, so the
        caller can drop what it kept for the tenant's expiries."""
        self._expire = expire
        self._on_idle = on_idle
        self._due: list[tuple[float, str, str, str]] = []  # heap of (due, tenant, channel, id)
        self._waiting: Counter[str] = Counter()  # holds per tenant not yet expired
        self._wake: asyncio.Event | None = None  # set while a sweeper runs

    def __len__(self) -> int:
        return len(self._due)

    def add(
        self, tenant: str, channel: str, message_id: str, *, after_s: float, spawn: Spawn
    ) -> None:
        """Expire the hold `after_s` from now; `spawn` starts the sweeper when none runs (a
        background task of the server's, which ends it with the plugin)."""
        due = asyncio.get_running_loop().time() + after_s
        heapq.heappush(self._due, (due, tenant, channel, message_id))
        self._waiting[tenant] += 1
        if self._wake is None:
            self._wake = asyncio.Event()
            spawn(self._sweep(self._wake))
        elif self._due[0][0] == due:  # sooner than what the sweeper sleeps for
            self._wake.set()

    async def _sweep(self, wake: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._due:
                delay = self._due[0][0] - loop.time()
                if delay > 0:
                    wake.clear()
                    with suppress(TimeoutError):
                        async with asyncio.timeout(delay):
                            await wake.wait()
                    continue
                now, due = loop.time(), []
                while self._due and self._due[0][0] <= now:
                    due.append(heapq.heappop(self._due))
                results = await asyncio.gather(
                    *(self._expire(t, c, m) for _, t, c, m in due), return_exceptions=True
                )
                for (_, tenant, channel, message_id), result in zip(due, results, strict=True):
                    if isinstance(result, Exception):  # that hold stays for a review to take
                        log.error("expiry of held %s in %s failed: %r", message_id, channel, result)
                    self._waiting[tenant] -= 1
                    if self._waiting[tenant] <= 0:
                        del self._waiting[tenant]
                        if self._on_idle is not None:
                            self._on_idle(tenant)
        finally:
            self._wake = None  # the next add starts a sweeper again (after a stop, too)
