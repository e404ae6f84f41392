"""In-process publish/subscribe for the backends that are not shared. Touches no I/O.

Each subscriber has a bounded queue: a subscriber that stops reading loses its oldest
messages (counted in `num_dropped`), never blocks the publisher or another subscriber.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict

from .base import JSONValue, Subscription
from .codec import dump_value, load_value

_CLOSED = object()  # queued by aclose so that a waiting reader wakes up and stops


class QueueSubscription(Subscription):
    def __init__(self, fanout: Fanout, channel: tuple[str, str], max_queue: int) -> None:
        self._fanout = fanout
        self._channel = channel
        self.queue: asyncio.Queue[object] = asyncio.Queue(max_queue)
        self.closed = False
        self.num_dropped = 0

    async def __anext__(self) -> JSONValue:
        if self.closed and self.queue.empty():
            raise StopAsyncIteration
        item = await self.queue.get()
        if item is _CLOSED:
            raise StopAsyncIteration
        assert isinstance(item, str)
        return load_value(item)

    def offer(self, item: object) -> None:
        if self.queue.full():
            self.queue.get_nowait()
            self.num_dropped += 1
        self.queue.put_nowait(item)

    async def aclose(self) -> None:
        if not self.closed:
            self.closed = True
            self._fanout.remove(self._channel, self)
            self.offer(_CLOSED)


class Fanout:
    """(namespace, topic) → the subscriptions of this process."""

    def __init__(self, *, max_queue: int = 1024) -> None:
        self._max_queue = max_queue
        self._subscribers: defaultdict[tuple[str, str], set[QueueSubscription]] = defaultdict(set)

    def publish(self, channel: tuple[str, str], message: JSONValue) -> int:
        # Encoded once: each subscriber decodes its own copy, so none can mutate another's.
        raw = dump_value(message)
        subscribers = self._subscribers.get(channel, set())
        for subscription in subscribers:
            subscription.offer(raw)
        return len(subscribers)

    def subscribe(self, channel: tuple[str, str]) -> QueueSubscription:
        subscription = QueueSubscription(self, channel, self._max_queue)
        self._subscribers[channel].add(subscription)
        return subscription

    def remove(self, channel: tuple[str, str], subscription: QueueSubscription) -> None:
        subscribers = self._subscribers.get(channel)
        if subscribers is not None:
            subscribers.discard(subscription)
            if not subscribers:
                del self._subscribers[channel]

    async def close(self) -> None:
        for subscribers in list(self._subscribers.values()):
            for subscription in list(subscribers):
                await subscription.aclose()
