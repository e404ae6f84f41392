"""Topic subscriptions of connections, per tenant, and fan-out of emitted frames. No sockets.

A topic is a plugin's name for an audience (a scene, a moderation channel). Subscribers are
whatever can `push` a frame (a connection); one that is gone or too slow answers False and is
dropped, so an emit never waits on a dead reader for longer than its write deadline.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from typing import Protocol

from protocol import ServerFrame


class Subscriber(Hashable, Protocol):
    async def push(self, frame: ServerFrame) -> bool:
        """Send frame; False when this subscriber can take no more frames."""
        ...


class TopicHub:
    """(tenant, topic) -> subscribers. Tenants never reach each other's subscribers."""

    def __init__(self, *, max_topics_per_subscriber: int = 64) -> None:
        self._max_topics = max_topics_per_subscriber
        self._subscribers: dict[tuple[str, str], set[Subscriber]] = {}
        self._topics_of: dict[Subscriber, set[tuple[str, str]]] = {}

    def subscribe(self, tenant: str, topic: str, subscriber: Subscriber) -> None:
        key = (tenant, topic)
        topics = self._topics_of.setdefault(subscriber, set())
        if key not in topics and len(topics) >= self._max_topics:
            raise ValueError(f"a connection may follow at most {self._max_topics} topics")
        topics.add(key)
        self._subscribers.setdefault(key, set()).add(subscriber)

    def unsubscribe(self, tenant: str, topic: str, subscriber: Subscriber) -> None:
        key = (tenant, topic)
        self._subscribers.get(key, set()).discard(subscriber)
        if not self._subscribers.get(key):
            self._subscribers.pop(key, None)
        self._topics_of.get(subscriber, set()).discard(key)

    def drop(self, subscriber: Subscriber) -> None:
        """Forget every subscription of a subscriber (its connection closed)."""
        for tenant, topic in list(self._topics_of.pop(subscriber, ())):
            self.unsubscribe(tenant, topic, subscriber)

    def num_subscribers(self, tenant: str, topic: str) -> int:
        return len(self._subscribers.get((tenant, topic), ()))

    async def emit(self, tenant: str, topic: str, frame: ServerFrame) -> int:
        """Push frame to every subscriber of the topic at once; returns how many took it."""
        subscribers = list(self._subscribers.get((tenant, topic), ()))
        results = await asyncio.gather(*(s.push(frame) for s in subscribers))
        for subscriber, ok in zip(subscribers, results, strict=True):
            if not ok:
                self.drop(subscriber)
        return sum(results)
