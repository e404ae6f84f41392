"""Prefill while typing: each session's running prefill and the line waiting behind it.

Only asyncio and turn.Stoppable: what runs is the caller's. A running prefill is left to
finish (its blocks serve the newer line too: cut short, a prefill loses its last partial
block, which for a short line is all of it); the newest line waits for it, an older waiting
one is superseded, never queued; a say of the session supersedes both.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from .turn import Stoppable

Key = tuple[str, str]  # (tenant, session id)


class Prefills:
    def __init__(self) -> None:
        self._running: dict[Key, Stoppable[object]] = {}
        self._waiting: dict[Key, asyncio.Future[bool]] = {}

    async def my_turn(self, key: Key) -> bool:
        """True when a new line may prefill now: none runs, or the running one ended and
        no newer line or say came meanwhile. False: this line is superseded."""
        if key not in self._running:
            return True
        self._wake(key, run=False)
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiting[key] = future
        return await future and key not in self._running

    async def run(self, key: Key, work: Callable[[], Awaitable[object]]) -> object | None:
        """The work's result, or None when a say stopped it."""
        prefill: Stoppable[object] = Stoppable()
        self._running[key] = prefill
        try:
            return await prefill.run(work)
        finally:
            if self._running.get(key) is prefill:
                del self._running[key]
            self._wake(key, run=True)

    async def stop(self, key: Key) -> None:
        """A say (or close) of the session: it supersedes the waiting line and the running
        prefill (the engine keeps the full blocks that prefill computed)."""
        self._wake(key, run=False)
        prefill = self._running.pop(key, None)
        if prefill is not None:
            await prefill.stop()

    def _wake(self, key: Key, *, run: bool) -> None:
        future = self._waiting.pop(key, None)
        if future is not None and not future.done():
            future.set_result(run)
