"""Single requests that arrive together, run as one batch. Knows no moderation, no store.

`mod.check` frames decoded in the same pass of the event loop (a burst read off one socket,
or many bots' frames at once) for the same key (tenant and channel) wait for the end of that
pass and go through the cascade together: one pass of its layers and one store round trip
for all their windows, offences and audit entries, as a `mod.check_batch` of them would,
where each would have paid its own. Nothing waits for a timer: a lone frame runs one pass
of the loop later than it would alone. Items keep their arrival order within a batch, so a
user's messages are counted in the order they came.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")
R = TypeVar("R")


class Coalescer(Generic[K, T, R]):
    """`submit` items; those of one key submitted in the same loop pass go to `run` as one
    list (at most `max_batch` long), each submitter awaiting its own result or the batch's
    exception. A submitter cancelled while it waits leaves the batch running for the others."""

    def __init__(
        self, run: Callable[[K, Sequence[T]], Awaitable[Sequence[R]]], *, max_batch: int = 1000
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self._run = run
        self._max_batch = max_batch
        self._pending: dict[K, tuple[list[T], list[asyncio.Future[R]]]] = {}
        self._running: set[asyncio.Task[None]] = set()  # held: the loop keeps weak refs only
        self.num_batches = 0  # what coalescing saves shows here, against the items submitted

    async def submit(self, key: K, item: T) -> R:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[R] = loop.create_future()
        group = self._pending.get(key)
        if group is None:
            group = self._pending[key] = ([], [])
            loop.call_soon(self._flush, key, group)  # after the frames already made ready
        items, waiters = group
        items.append(item)
        waiters.append(waiter)
        if len(items) >= self._max_batch:
            self._flush(key, group)
        return await waiter

    def _flush(self, key: K, group: tuple[list[T], list[asyncio.Future[R]]]) -> None:
        if self._pending.get(key) is not group:  # flushed already (full): the callback is late
            return
        del self._pending[key]
        self.num_batches += 1
        task = asyncio.get_running_loop().create_task(self._call(key, *group))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _call(self, key: K, items: list[T], waiters: list[asyncio.Future[R]]) -> None:
        try:
            results = await self._run(key, items)
        except BaseException as exc:  # every submitter of the batch learns why
            for waiter in waiters:
                if not waiter.done():
                    if isinstance(exc, asyncio.CancelledError):
                        waiter.cancel()
                    else:
                        waiter.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for waiter, result in zip(waiters, results, strict=True):
            if not waiter.done():
                waiter.set_result(result)
