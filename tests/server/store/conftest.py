"""Store backends for the shared suite: memory, SQLite in a temporary folder, a real Redis."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis_server import redis_server

from bench.procs import RedisServer
from server.store import MemoryStore, SqliteStore, Store
from server.store.redis_store import RedisStore

__all__ = ["redis_server"]  # the fixture, for every test in this folder


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    backend: Store
    if request.param == "memory":
        backend = MemoryStore()
    elif request.param == "sqlite":
        backend = SqliteStore(tmp_path / "data" / "banterbox.db")
    else:
        redis: RedisServer = request.getfixturevalue("redis_server")
        # A prefix per test: tests share one Redis and never see each other's keys.
        backend = RedisStore(redis.url, prefix=f"test-{secrets.token_hex(4)}:")
    try:
        yield backend
    finally:
        await backend.close()
