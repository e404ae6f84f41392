"""One suite, every backend (memory, SQLite, a real Redis): sessions, values, counters, logs,
topics."""

from __future__ import annotations

import asyncio
import time
from types import MappingProxyType

import pytest

from server.store import SessionRecord, Store, StoreValueError

NS = "plugin\x1fmod\x1ftenant-a"


def record(session_id: str = "npc-7", *, tenant: str = "a", ttl_s: float = 3600) -> SessionRecord:
    now = time.time()
    return SessionRecord(
        tenant=tenant,
        session_id=session_id,
        metadata=MappingProxyType({"system": "Be brief.", "ключ": "значение"}),
        messages=(("user", "Hi \U0001f600"), ("assistant", "Hello.")),
        # Any Python string comes back: a lone surrogate, NUL, every plane.
        transcript_text="<|im_start|>user\nHi \U0001f600\ud800\x00<|im_end|>",
        transcript_token_ids=(1, 258, 0, 2**32 - 1, 49151),
        num_turns=1,
        last_used=now,
        expires_at=now + ttl_s,
    )


async def test_a_session_comes_back_exactly(store: Store) -> None:
    saved = record()
    await store.save_session(saved)
    assert await store.load_session("a", "npc-7") == saved
    assert await store.load_session("b", "npc-7") is None  # tenants never share
    newer = SessionRecord(**{**saved.__dict__, "num_turns": 2, "messages": ()})
    await store.save_session(newer)
    assert await store.load_session("a", "npc-7") == newer


async def test_sessions_are_listed_per_tenant_deleted_and_expire(store: Store) -> None:
    for sid in ("s2", "s1", "s*[x"):  # glob characters are ids like any other
        await store.save_session(record(sid))
    await store.save_session(record("other", tenant="b"))
    await store.save_session(record("stale", ttl_s=-1))
    assert await store.list_sessions("a") == ["s*[x", "s1", "s2"]
    assert await store.load_session("a", "stale") is None
    await store.expire(time.time())
    assert await store.delete_session("a", "s1")
    assert not await store.delete_session("a", "s1")
    assert await store.list_sessions("a") == ["s*[x", "s2"]
    assert await store.list_sessions("b") == ["other"]
    everyone = sorted((r.tenant, r.session_id) for r in await store.all_sessions())
    assert everyone == [("a", "s*[x"), ("a", "s2"), ("b", "other")]


async def test_values_are_json_namespaced_and_expire(store: Store) -> None:
    value = {"strikes": [1, 2.5, None, True], "name": "Zoë"}
    await store.set(NS, "user:1", value)
    assert await store.get(NS, "user:1") == value
    assert await store.get("plugin\x1fmod\x1ftenant-b", "user:1") is None
    assert await store.get(NS, "missing") is None
    await store.set(NS, "brief", "gone soon", ttl_s=0.05)
    await asyncio.sleep(0.2)
    assert await store.get(NS, "brief") is None
    assert await store.list(NS) == ["user:1"]
    with pytest.raises(StoreValueError):
        await store.set(NS, "bad", {"x": float("nan")})
    with pytest.raises(StoreValueError):
        await store.set(NS, "bad", {1, 2})  # type: ignore[arg-type]
    with pytest.raises(StoreValueError):
        await store.set(NS, "bad", 1, ttl_s=0)


async def test_list_by_prefix_delete_takes_value_and_log(store: Store) -> None:
    for key in ("user:1", "user:2", "user*", "hold:1"):
        await store.set(NS, key, 1)
    await store.append(NS, "user:log", "entry")
    assert await store.list(NS, "user") == ["user*", "user:1", "user:2", "user:log"]
    assert await store.list(NS, "user*") == ["user*"]
    assert await store.delete(NS, "user:log")
    assert not await store.delete(NS, "user:log")
    assert await store.list(NS, "user:") == ["user:1", "user:2"]


async def test_incr_is_atomic_and_its_ttl_is_the_window_of_the_first(store: Store) -> None:
    results = await asyncio.gather(*(store.incr(NS, "strikes") for _ in range(200)))
    assert sorted(results) == list(range(1, 201))
    assert await store.get(NS, "strikes") == 200
    assert await store.incr(NS, "strikes", -50) == 150
    assert await store.incr(NS, "window", 1, ttl_s=0.3) == 1
    await asyncio.sleep(0.15)
    assert await store.incr(NS, "window", 1, ttl_s=0.3) == 2  # does not extend the window
    await asyncio.sleep(0.3)
    assert await store.get(NS, "window") is None
    await store.set(NS, "text", "abc")
    with pytest.raises(StoreValueError):
        await store.incr(NS, "text")
    await store.set(NS, "big", 2**63 - 1)
    with pytest.raises(StoreValueError):
        await store.incr(NS, "big")


async def test_windows_count_atomically_in_one_call_and_end_on_time(store: Store) -> None:
    calls = [store.incr_windows(NS, [("flood:u1", 5.0), ("dup:u1:x", 5.0)]) for _ in range(50)]
    results = await asyncio.gather(*calls)
    assert sorted(r[0] for r in results) == list(range(1, 51))
    assert [r[0] == r[1] for r in results] == [True] * 50  # both counted in the same call
    assert await store.incr_windows(NS, [("w", 0.3), ("w", 0.3), ("other", 0.3)]) == [1, 2, 1]
    await asyncio.sleep(0.15)
    assert await store.incr_windows(NS, [("w", 0.3)]) == [3]  # does not extend the window
    await asyncio.sleep(0.3)
    assert await store.incr_windows(NS, [("w", 0.3)]) == [1]  # a new window
    assert await store.incr_windows("plugin\x1fmod\x1ftenant-b", [("w", 1.0)]) == [1]
    assert await store.incr_windows(NS, []) == []
    # Their own key space: values, logs and listings never see them.
    assert await store.get(NS, "w") is None
    assert await store.list(NS, "") == []
    assert await store.delete(NS, "w") is False
    for bad in (0, -1.0, float("nan"), None, "5"):
        with pytest.raises(StoreValueError):
            await store.incr_windows(NS, [("w", bad)])  # type: ignore[list-item]


async def test_set_many_and_extend_write_a_batch_at_once(store: Store) -> None:
    await store.set_many(NS, [("a", {"n": 1}, None), ("b", [2], 0.2), ("a", "last wins", None)])
    assert (await store.get(NS, "a"), await store.get(NS, "b")) == ("last wins", [2])
    await store.set_many(NS, [])
    await asyncio.sleep(0.3)
    assert await store.get(NS, "b") is None
    await store.extend(NS, "log", [1, 2, 3])
    await store.extend(NS, "log", [])
    await store.extend(NS, "log", [4, 5], max_len=4)
    await store.append(NS, "log", 6, max_len=4)
    assert await store.range(NS, "log") == [3, 4, 5, 6]
    with pytest.raises(StoreValueError):
        await store.set_many(NS, [("ok", 1, None), ("bad", {1, 2}, None)])  # type: ignore[list-item]
    with pytest.raises(StoreValueError):
        await store.extend(NS, "log", [7, float("nan")])
    assert await store.get(NS, "ok") is None  # nothing of a refused batch was written
    assert await store.range(NS, "log") == [3, 4, 5, 6]


async def test_logs_append_trim_and_range_inclusively(store: Store) -> None:
    for i in range(10):
        await store.append(NS, "audit", {"i": i}, max_len=5)
    assert await store.range(NS, "audit") == [{"i": i} for i in range(5, 10)]
    assert await store.range(NS, "audit", 0, 1) == [{"i": 5}, {"i": 6}]
    assert await store.range(NS, "audit", -2, -1) == [{"i": 8}, {"i": 9}]
    assert await store.range(NS, "audit", 3, 100) == [{"i": 8}, {"i": 9}]
    assert await store.range(NS, "audit", -100, 0) == [{"i": 5}]
    assert await store.range(NS, "audit", 4, 2) == []
    assert await store.range(NS, "missing") == []
    await store.append(NS, "unbounded", 1)
    await store.append(NS, "unbounded", [2])
    assert await store.range(NS, "unbounded") == [1, [2]]


async def test_topics_deliver_in_order_within_their_namespace(store: Store) -> None:
    subscription = await store.subscribe(NS, "scene:1")
    other = await store.subscribe("plugin\x1fmod\x1ftenant-b", "scene:1")
    assert await store.publish(NS, "scene:1", {"n": 1}) == 1
    await store.publish(NS, "scene:1", {"n": 2})
    await store.publish(NS, "scene:2", {"n": 3})
    got = [await asyncio.wait_for(anext(subscription), 5) for _ in range(2)]
    assert got == [{"n": 1}, {"n": 2}]
    await subscription.aclose()
    assert await store.publish(NS, "scene:1", {"n": 4}) == 0
    await other.aclose()
    with pytest.raises(StopAsyncIteration):
        await anext(other)


async def test_ping_writes(store: Store) -> None:
    await store.ping()
    assert store.available and store.last_error == ""


async def test_append_logs_appends_many_and_reads_each_back_atomically(store: Store) -> None:
    assert await store.append_logs(NS, []) == []
    logs = await store.append_logs(NS, [("a", [1, 2], None), ("b", [], None), ("c", [9], 2)])
    assert logs == [[1, 2], [], [9]]
    assert await store.append_logs(NS, [("c", [10, 11], 2), ("a", [3], None)]) == [
        [10, 11],
        [1, 2, 3],
    ]
    # Concurrent appenders each find their own entry once, at distinct places.
    answers = await asyncio.gather(
        *(store.append_logs(NS, [("race", [{"who": n}], None)]) for n in range(20))
    )
    places = sorted(log.index({"who": n}) for n, (log,) in enumerate(answers))
    assert places == list(range(20))
    with pytest.raises(StoreValueError):
        await store.append_logs(NS, [("a", [float("nan")], None)])
    assert await store.range(NS, "a") == [1, 2, 3]
