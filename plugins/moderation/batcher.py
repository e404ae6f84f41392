"""Micro-batching of classifier calls: many awaiters, one model call in a thread. Knows no model.

Messages from every channel and connection wait up to `window_s` (or until `max_batch` are
queued) and go to the model in one call on a worker thread, so the event loop never runs
the model and a burst of single `mod.check` frames costs one call, not one each.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

Predict = Callable[[Sequence[str]], list[float]]


class MicroBatcher:
    def __init__(self, predict: Predict, *, window_s: float = 0.002, max_batch: int = 1024) -> None:
        if window_s < 0 or max_batch < 1:
            raise ValueError("window_s must be >= 0 and max_batch >= 1")
        self._predict = predict
        self._window_s = window_s
        self._max_batch = max_batch
        self._texts: list[str] = []
        self._waiters: list[asyncio.Future[list[float]]] = []
        self._offsets: list[int] = []
        self._flush: asyncio.TimerHandle | None = None
        self._running: set[asyncio.Task[None]] = set()  # held: the loop keeps only weak refs
        self.num_calls = 0  # model calls made: what the batching saves shows here

    async def predict(self, texts: Sequence[str]) -> list[float]:
        """Scores for `texts`, batched with whatever else arrives in the window."""
        if not texts:
            return []
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[list[float]] = loop.create_future()
        self._offsets.append(len(self._texts))
        self._texts.extend(texts)
        self._waiters.append(waiter)
        if len(self._texts) >= self._max_batch:
            self._run_now()
        elif self._flush is None:
            self._flush = loop.call_later(self._window_s, self._run_now)
        return await waiter

    def _run_now(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        texts, waiters, offsets = self._texts, self._waiters, self._offsets
        self._texts, self._waiters, self._offsets = [], [], []
        self.num_calls += 1
        task = asyncio.get_running_loop().create_task(self._call(texts, waiters, offsets))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _call(
        self, texts: list[str], waiters: list[asyncio.Future[list[float]]], offsets: list[int]
    ) -> None:
        try:
            scores = await asyncio.to_thread(self._predict, texts)
        except Exception as exc:  # every waiter of the batch learns why
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(exc)
            return
        ends = [*offsets[1:], len(texts)]
        for waiter, start, end in zip(waiters, offsets, ends, strict=True):
            if not waiter.done():
                waiter.set_result(scores[start:end])
