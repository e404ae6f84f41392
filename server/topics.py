"""Topic subscriptions of connections, per tenant, and fan-out of emitted frames. No sockets.

A topic is a plugin's name for an audience (a scene, a moderation channel). Subscribers are
whatever can `push` a frame (a connection); one that is gone or too slow answers False and is
dropped, so an emit never waits on a dead reader for longer than its write deadline.

With a shared state store (Redis), an emit also reaches the subscribers of every other
replica: it is published on the store with this replica's id, and each replica relays what
the others published to its own subscribers. A replica starts listening to a topic when its
first local subscriber arrives, so a frame emitted elsewhere in that same instant may miss it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Hashable
from typing import Protocol

from protocol import Encoding, ProtocolError, ServerFrame, decode_server_frame, encode_frame

from .store import JSONValue, Store, StoreError

log = logging.getLogger("banterbox.topics")


class Subscriber(Hashable, Protocol):
    async def push(self, frame: ServerFrame) -> bool:
        """Send frame; False when this subscriber can take no more frames."""
        ...


def _channel(tenant: str) -> str:
    return f"topics\x1f{tenant}"


class TopicHub:
    """(tenant, topic) -> subscribers. Tenants never reach each other's subscribers."""

    def __init__(self, *, relay: Store | None = None, max_topics_per_subscriber: int = 64) -> None:
        self._relay = relay if relay is not None and relay.shared else None
        self._replica_id = secrets.token_hex(8)
        self._max_topics = max_topics_per_subscriber
        self._subscribers: dict[tuple[str, str], set[Subscriber]] = {}
        self._topics_of: dict[Subscriber, set[tuple[str, str]]] = {}
        self._listeners: dict[tuple[str, str], asyncio.Task[None]] = {}

    def subscribe(self, tenant: str, topic: str, subscriber: Subscriber) -> None:
        key = (tenant, topic)
        topics = self._topics_of.setdefault(subscriber, set())
        if key not in topics and len(topics) >= self._max_topics:
            raise ValueError(f"a connection may follow at most {self._max_topics} topics")
        topics.add(key)
        self._subscribers.setdefault(key, set()).add(subscriber)
        if self._relay is not None and key not in self._listeners:
            self._listeners[key] = asyncio.create_task(self._listen(key, self._relay))

    def unsubscribe(self, tenant: str, topic: str, subscriber: Subscriber) -> None:
        key = (tenant, topic)
        self._subscribers.get(key, set()).discard(subscriber)
        if not self._subscribers.get(key):
            self._subscribers.pop(key, None)
            listener = self._listeners.pop(key, None)
            if listener is not None:
                listener.cancel()
        self._topics_of.get(subscriber, set()).discard(key)

    def drop(self, subscriber: Subscriber) -> None:
        """Forget every subscription of a subscriber (its connection closed)."""
        for tenant, topic in list(self._topics_of.pop(subscriber, ())):
            self.unsubscribe(tenant, topic, subscriber)

    def num_subscribers(self, tenant: str, topic: str) -> int:
        return len(self._subscribers.get((tenant, topic), ()))

    async def emit(self, tenant: str, topic: str, frame: ServerFrame) -> int:
        """Push frame to every subscriber of the topic (all replicas with a shared store);
        returns how many subscribers of this replica took it."""
        if self._relay is not None:
            message: JSONValue = {
                "origin": self._replica_id,
                "frame": encode_frame(frame, Encoding.JSON),
            }
            try:
                await self._relay.publish(_channel(tenant), topic, message)
            except StoreError as exc:  # the other replicas miss it; this one still delivers
                log.warning("topic %r not relayed to other replicas: %s", topic, exc)
        return await self._deliver((tenant, topic), frame)

    async def close(self) -> None:
        for listener in self._listeners.values():
            listener.cancel()
        await asyncio.gather(*self._listeners.values(), return_exceptions=True)
        self._listeners.clear()

    async def _deliver(self, key: tuple[str, str], frame: ServerFrame) -> int:
        subscribers = list(self._subscribers.get(key, ()))
        results = await asyncio.gather(*(s.push(frame) for s in subscribers))
        for subscriber, ok in zip(subscribers, results, strict=True):
            if not ok:
                self.drop(subscriber)
        return sum(results)

    async def _listen(self, key: tuple[str, str], relay: Store) -> None:
        """Relay what other replicas emit to this topic, until its last subscriber leaves."""
        tenant, topic = key
        try:
            subscription = await relay.subscribe(_channel(tenant), topic)
        except StoreError as exc:
            log.warning("cannot follow topic %r on the shared store: %s", topic, exc)
            return
        with contextlib.suppress(StoreError):
            async with subscription:
                async for message in subscription:
                    if not isinstance(message, dict) or message.get("origin") == self._replica_id:
                        continue
                    text = message.get("frame")
                    try:
                        frame = decode_server_frame(text if isinstance(text, str) else "")
                    except ProtocolError:
                        log.warning("dropped a malformed frame relayed on topic %r", topic)
                        continue
                    await self._deliver(key, frame)
