"""The Redis store: state shared by a fleet of replicas, over redis-py's asyncio client. Touches
only keys under its prefix (default "banterbox:"), so deployments may share one Redis.

Keys: `s:<tenant>:<session id>` (a hash per session, expiring at its `expires_at`),
`v:<namespace>:<key>` (a JSON string, PX for a TTL), `w:<namespace>:<key>` (a short-window
counter, PX its window), `l:<namespace>:<key>` (a list) and the
pub/sub channel `t:<namespace>:<topic>`; tenant and namespace are percent-quoted, so they hold
no ":". `incr` is one Lua script (INCRBY, then PEXPIRE only when it created the key), atomic
across replicas, and so is `incr_windows` for all its windows; `append`/`extend` is RPUSH +
LTRIM in one MULTI, `set_many` its SETs in one. Durability is Redis': run it with
`appendonly yes` and `appendfsync always` for the guarantee of SPEC.md to cover a crash of
Redis too (`make fleet` does), `everysec` to risk the last second.
"""

from __future__ import annotations

import builtins
import re
from collections.abc import Awaitable, Sequence
from typing import Any, TypeVar, cast
from urllib.parse import quote, unquote

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .base import (
    JSONValue,
    SessionRecord,
    Store,
    StoreUnavailable,
    StoreValueError,
    Subscription,
)
from .codec import (
    check_amount,
    check_key,
    check_max_len,
    check_ttl,
    decode_session,
    dump_value,
    encode_session,
    inclusive_slice,
    load_value,
)
from .windows import window_ttl

T = TypeVar("T")

# KEYS[1] counter; ARGV[1] amount, ARGV[2] TTL in ms or "". EXISTS first: the TTL is the
# window of a counter that this very call creates, never extended by later increments.
_INCR = """
local created = redis.call('EXISTS', KEYS[1]) == 0
local total = redis.call('INCRBY', KEYS[1], ARGV[1])
if created and ARGV[2] ~= '' then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return total
"""
# KEYS: the windows; ARGV: their TTLs in ms. One script: every window counted atomically.
_WINDOWS = """
local counts = {}
for i, key in ipairs(KEYS) do
  local total = redis.call('INCR', key)
  if total == 1 then redis.call('PEXPIRE', key, ARGV[i]) end
  counts[i] = total
end
return counts
"""
# The caller's mistakes, as Redis words them; any other error reply means Redis cannot serve.
_VALUE_ERRORS = ("value is not an integer", "increment or decrement would overflow",
                 "WRONGTYPE")  # fmt: skip
_GLOB = re.compile(r"([*?\[\]\\])")


def _glob_literal(text: str) -> str:
    return _GLOB.sub(r"\\\1", text)


def _text(raw: bytes | str) -> str:
    # The client is made without decode_responses: replies are bytes, typed as either.
    return raw.decode("utf-8", "surrogatepass") if isinstance(raw, bytes) else raw


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


class RedisStore(Store):
    kind = "redis"
    durable = True
    shared = True

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "banterbox:",
        timeout_s: float = 2.0,
        retries: int = 3,
        scan_count: int = 500,
        max_connections: int = 64,
    ) -> None:
        super().__init__()
        # Retried with backoff: a Redis restart or failover shorter than the retries is
        # invisible to clients; a longer one answers store_unavailable. A burst of calls
        # waits for one of `max_connections` instead of failing.
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout_s,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries),
            retry_on_error=[RedisConnectionError, RedisTimeoutError],
        )
        self._redis = Redis(connection_pool=pool)
        self._prefix = prefix
        self._scan_count = scan_count
        self._incr = self._redis.register_script(_INCR)
        self._windows = self._redis.register_script(_WINDOWS)

    async def _call(self, op: Awaitable[T]) -> T:
        try:
            result = await op
        except ResponseError as exc:
            if any(words in str(exc) for words in _VALUE_ERRORS):
                raise StoreValueError(str(exc)) from None
            raise self._unavailable(f"{type(exc).__name__}: {exc}") from None
        except (RedisError, OSError) as exc:
            raise self._unavailable(f"{type(exc).__name__}: {exc}") from None
        self._healthy()
        return result

    async def _scan(self, pattern: str) -> builtins.list[str]:
        keys: builtins.list[str] = []
        cursor = 0
        while True:
            cursor, batch = await self._call(
                self._redis.scan(cursor, match=pattern, count=self._scan_count)
            )
            keys.extend(_text(k) for k in batch)
            if cursor == 0:
                return keys

    async def ping(self) -> None:
        # A write: a Redis that refuses writes (MISCONF after a failed save, READONLY) is down.
        await self._call(self._redis.set(f"{self._prefix}ping", "1", px=60_000))

    async def close(self) -> None:
        await self._redis.aclose(close_connection_pool=True)

    # --- sessions -----------------------------------------------------------------------------

    def _session_key(self, tenant: str, session_id: str) -> str:
        return f"{self._prefix}s:{quote(tenant, safe='')}:{session_id}"

    async def save_session(self, record: SessionRecord) -> None:
        key = self._session_key(record.tenant, record.session_id)
        pipe = self._redis.pipeline(transaction=True)
        pipe.delete(key)
        pipe.hset(key, mapping=cast(Any, encode_session(record)))
        pipe.pexpireat(key, _ms(record.expires_at))
        await self._call(pipe.execute())

    async def load_session(self, tenant: str, session_id: str) -> SessionRecord | None:
        raw = await self._call(self._redis.hgetall(self._session_key(tenant, session_id)))
        if not raw:
            return None
        fields = {_text(k): v if isinstance(v, bytes) else v.encode() for k, v in raw.items()}
        return decode_session(tenant, session_id, fields)

    async def delete_session(self, tenant: str, session_id: str) -> bool:
        return bool(await self._call(self._redis.delete(self._session_key(tenant, session_id))))

    async def all_sessions(self) -> builtins.list[SessionRecord]:
        head = f"{self._prefix}s:"
        records = []
        for key in await self._scan(_glob_literal(head) + "*"):
            tenant, _, session_id = key[len(head) :].partition(":")
            record = await self.load_session(unquote(tenant), session_id)
            if record is not None:  # it may have expired since the scan
                records.append(record)
        return records

    async def list_sessions(self, tenant: str) -> builtins.list[str]:
        head = self._session_key(tenant, "")
        keys = await self._scan(_glob_literal(head) + "*")
        return sorted(k[len(head) :] for k in keys)

    async def expire(self, now: float) -> int:
        return 0  # Redis expires keys itself

    # --- plugin key-value store ---------------------------------------------------------------

    def _value_key(self, ns: str, key: str) -> str:
        return f"{self._prefix}v:{quote(ns, safe='')}:{check_key(key)}"

    def _log_key(self, ns: str, key: str) -> str:
        return f"{self._prefix}l:{quote(ns, safe='')}:{check_key(key)}"

    async def get(self, ns: str, key: str) -> JSONValue:
        raw = await self._call(self._redis.get(self._value_key(ns, key)))
        return None if raw is None else load_value(raw)

    async def set(self, ns: str, key: str, value: JSONValue, ttl_s: float | None = None) -> None:
        ttl_s = check_ttl(ttl_s)
        px = None if ttl_s is None else _ms(ttl_s)
        await self._call(self._redis.set(self._value_key(ns, key), dump_value(value), px=px))

    async def set_many(self, ns: str, items: Sequence[tuple[str, JSONValue, float | None]]) -> None:
        rows = [(self._value_key(ns, k), dump_value(v), check_ttl(t)) for k, v, t in items]
        if not rows:
            return
        pipe = self._redis.pipeline(transaction=True)
        for key, raw, ttl_s in rows:
            pipe.set(key, raw, px=None if ttl_s is None else _ms(ttl_s))
        await self._call(pipe.execute())

    async def delete(self, ns: str, key: str) -> bool:
        keys = (self._value_key(ns, key), self._log_key(ns, key))
        return bool(await self._call(self._redis.delete(*keys)))

    async def list(self, ns: str, prefix: str = "") -> builtins.list[str]:
        check_key(prefix, what="prefix")
        found: set[str] = set()
        for kind in ("v", "l"):
            head = f"{self._prefix}{kind}:{quote(ns, safe='')}:"
            keys = await self._scan(_glob_literal(head + prefix) + "*")
            found.update(k[len(head) :] for k in keys)
        return sorted(found)

    async def incr(self, ns: str, key: str, amount: int = 1, ttl_s: float | None = None) -> int:
        amount, ttl_s = check_amount(amount), check_ttl(ttl_s)
        ttl_ms = "" if ttl_s is None else str(_ms(ttl_s))
        total = await self._call(
            cast(Awaitable[int], self._incr(keys=[self._value_key(ns, key)], args=[amount, ttl_ms]))
        )
        return int(total)

    async def incr_windows(
        self, ns: str, windows: Sequence[tuple[str, float]]
    ) -> builtins.list[int]:
        if not windows:
            return []
        keys = [self._window_key(ns, key) for key, _ in windows]
        ttls = [_ms(window_ttl(ttl_s)) for _, ttl_s in windows]
        counts = await self._call(
            cast(Awaitable[builtins.list[int]], self._windows(keys=keys, args=ttls))
        )
        return [int(count) for count in counts]

    def _window_key(self, ns: str, key: str) -> str:
        return f"{self._prefix}w:{quote(ns, safe='')}:{check_key(key)}"

    async def append(self, ns: str, key: str, value: JSONValue, max_len: int | None = None) -> None:
        await self.extend(ns, key, [value], max_len)

    async def extend(
        self, ns: str, key: str, values: Sequence[JSONValue], max_len: int | None = None
    ) -> None:
        log_key, max_len = self._log_key(ns, key), check_max_len(max_len)
        raws = [dump_value(value) for value in values]
        if not raws:
            return
        pipe = self._redis.pipeline(transaction=True)
        pipe.rpush(log_key, *raws)
        if max_len is not None:
            pipe.ltrim(log_key, -max_len, -1)
        await self._call(pipe.execute())

    async def append_logs(
        self,
        ns: str,
        items: Sequence[tuple[str, Sequence[JSONValue], int | None]],
        *,
        durable: bool = True,  # Redis' own appendfsync policy decides, for every write alike
    ) -> builtins.list[builtins.list[JSONValue]]:
        if not items:
            return []
        pipe = self._redis.pipeline(transaction=True)  # MULTI: no other write comes between
        for key, values, max_len in items:
            log_key, max_len = self._log_key(ns, key), check_max_len(max_len)
            raws = [dump_value(value) for value in values]
            if raws:
                pipe.rpush(log_key, *raws)
            if max_len is not None:
                pipe.ltrim(log_key, -max_len, -1)
            pipe.lrange(log_key, 0, -1)
        replies = await self._call(pipe.execute())
        logs, n = [], 0
        for _, values, max_len in items:
            n += (1 if values else 0) + (1 if max_len is not None else 0)
            logs.append([load_value(raw) for raw in replies[n]])
            n += 1
        return logs

    async def range(
        self, ns: str, key: str, start: int = 0, stop: int = -1
    ) -> builtins.list[JSONValue]:
        log_key = self._log_key(ns, key)
        inclusive_slice(start, stop)  # the same argument checks as the other backends
        entries = await self._call(
            cast(Awaitable[builtins.list[bytes]], self._redis.lrange(log_key, start, stop))
        )
        return [load_value(raw) for raw in entries]

    def _channel(self, ns: str, topic: str) -> str:
        return f"{self._prefix}t:{quote(ns, safe='')}:{check_key(topic, what='topic')}"

    async def publish(self, ns: str, topic: str, message: JSONValue) -> int:
        channel = self._channel(ns, topic)
        return int(await self._call(self._redis.publish(channel, dump_value(message))))

    async def subscribe(self, ns: str, topic: str) -> Subscription:
        channel = self._channel(ns, topic)
        pubsub = self._redis.pubsub()
        subscription = _RedisSubscription(self, pubsub)
        try:
            await self._call(pubsub.subscribe(channel))
            # Redis confirms a SUBSCRIBE with a message of its own: once it is read, every
            # later PUBLISH reaches this subscription.
            while True:
                confirm = await self._call(pubsub.get_message(timeout=1.0))
                if confirm is not None and confirm["type"] == "subscribe":
                    return subscription
        except BaseException:
            await pubsub.aclose()  # type: ignore[no-untyped-call]
            raise

    def unavailable(self, exc: Exception) -> StoreUnavailable:
        return self._unavailable(f"{type(exc).__name__}: {exc}")


class _RedisSubscription(Subscription):
    def __init__(self, store: RedisStore, pubsub: PubSub) -> None:
        self._store = store
        self._pubsub = pubsub
        self._closed = False

    async def __anext__(self) -> JSONValue:
        while not self._closed:
            try:
                message = await self._pubsub.get_message(
                    ignore_subscribe_messages=True, timeout=1.0
                )
            except (RedisError, OSError) as exc:
                raise self._store.unavailable(exc) from None
            if message is not None and message["type"] == "message":
                return load_value(message["data"])
        raise StopAsyncIteration

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            await self._pubsub.aclose()  # type: ignore[no-untyped-call]
