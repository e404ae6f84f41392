"""The SQLite store's group commit: writes queued while its thread is busy share one
transaction; a bad value rolls back only its own write; a failed commit keeps none of them."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from server.store import SessionRecord, SqliteStore, StoreUnavailable, StoreValueError

NS = "plugin\x1fmod\x1ftenant-a"


def record(session_id: str) -> SessionRecord:
    now = time.time()
    return SessionRecord(
        tenant="a", session_id=session_id, messages=(("user", "Hi."), ("assistant", "Hello.")),
        num_turns=1, last_used=now, expires_at=now + 600,
    )  # fmt: skip


async def queued_behind_a_busy_thread(store: SqliteStore, *writes: object) -> list[object]:
    """Run `writes` (coroutines) while the store's thread is held by a slow read, so that they
    all wait in its queue; their results (or exceptions) in order."""
    gate = threading.Event()
    busy = asyncio.ensure_future(store._call(lambda db: gate.wait(10), write=False))
    tasks = [asyncio.ensure_future(w) for w in writes]  # type: ignore[call-overload]
    await asyncio.sleep(0.05)  # every write is queued now
    gate.set()
    await busy
    return await asyncio.gather(*tasks, return_exceptions=True)


def committed(path: Path) -> tuple[list[str], int]:
    """What another connection sees: session ids, and the counter's value."""
    with sqlite3.connect(path) as db:
        ids = [row[0] for row in db.execute("SELECT session_id FROM sessions ORDER BY 1")]
        (value,) = db.execute("SELECT value FROM kv WHERE key = 'n'").fetchone()
    return ids, int(value)


async def test_queued_writes_share_one_commit_and_a_bad_value_is_rolled_back_alone(
    tmp_path: Path,
) -> None:
    path = tmp_path / "data" / "banterbox.db"
    store = SqliteStore(path)
    await store.set(NS, "text", "not a number")
    await store.incr(NS, "n")
    statements: list[str] = []
    await store._call(lambda db: db.set_trace_callback(statements.append))
    statements.clear()
    results = await queued_behind_a_busy_thread(
        store,
        *(store.save_session(record(f"npc-{i}")) for i in range(16)),
        store.incr(NS, "text"),  # the caller's fault, inside the shared transaction
        store.incr(NS, "n"),
    )
    assert results[:16] == [None] * 16
    assert isinstance(results[16], StoreValueError)
    assert results[17] == 2
    assert statements.count("COMMIT") == 1  # 18 writes, one transaction, one fsync
    assert statements.count("ROLLBACK TO one") == 1
    assert committed(path) == ([f"npc-{i}" for i in sorted(range(16), key=str)], 2)
    assert await store.get(NS, "text") == "not a number"
    await store.close()


async def test_a_commit_that_fails_keeps_none_of_its_writes(tmp_path: Path) -> None:
    path = tmp_path / "data" / "banterbox.db"
    store = SqliteStore(path, busy_timeout_s=0.1)
    await store.incr(NS, "n")
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock: the commit fails
    try:
        results = await queued_behind_a_busy_thread(
            store, store.save_session(record("npc-1")), store.incr(NS, "n")
        )
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert all(isinstance(r, StoreUnavailable) for r in results), results
    assert not store.available
    assert committed(path) == ([], 1)
    assert await store.incr(NS, "n") == 2  # the next write reconnects and commits
    assert store.available
    await store.close()


@pytest.mark.parametrize("num_writers", [1, 64])
async def test_every_concurrent_increment_counts_once(tmp_path: Path, num_writers: int) -> None:
    store = SqliteStore(tmp_path / "banterbox.db")
    counts = await asyncio.gather(*(store.incr(NS, "n") for _ in range(num_writers)))
    assert sorted(counts) == list(range(1, num_writers + 1))
    await store.close()


async def test_a_deferred_append_commits_without_a_sync_and_the_next_durable_write_syncs(
    tmp_path: Path,
) -> None:
    path = tmp_path / "banterbox.db"
    store = SqliteStore(path)
    await store.ping()  # connected, at the configured level (FULL)
    statements: list[str] = []
    await store._call(lambda db: db.set_trace_callback(statements.append))
    statements.clear()
    logs = await store.append_logs(NS, [("offences", [{"id": "a"}], None)], durable=False)
    assert logs == [[{"id": "a"}]]
    with sqlite3.connect(path) as other:  # committed: another connection sees it at once
        assert other.execute("SELECT COUNT(*) FROM logs").fetchone() == (1,)
    deferred, statements[:] = list(statements), []
    await store.extend(NS, "audit", [{"id": "a"}])
    durable, statements[:] = list(statements), []
    await store.extend(NS, "audit", [{"id": "b"}])
    assert deferred[0] == "PRAGMA synchronous=NORMAL" and deferred[-1] == "COMMIT"
    assert durable[0] == "PRAGMA synchronous=FULL" and durable[-1] == "COMMIT"
    assert not any(s.startswith("PRAGMA") for s in statements)  # still FULL: no switch
    statements.clear()
    # A deferred write queued with a durable one shares its commit, and its sync.
    results = await queued_behind_a_busy_thread(
        store,
        store.append_logs(NS, [("offences", [{"id": "c"}], None)], durable=False),
        store.extend(NS, "audit", [{"id": "c"}]),
    )
    assert results[0] == [[{"id": "a"}, {"id": "c"}]]
    assert not any(s.startswith("PRAGMA") for s in statements)
    assert statements.count("COMMIT") == 1
    await store.close()


async def test_a_store_configured_normal_stays_normal_for_every_write(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "banterbox.db", synchronous="NORMAL")
    await store.ping()
    statements: list[str] = []
    await store._call(lambda db: db.set_trace_callback(statements.append))
    await store.append_logs(NS, [("offences", [1], None)], durable=False)
    await store.extend(NS, "audit", [1])
    assert not any(s.startswith("PRAGMA") for s in statements)
    await store.close()
