"""State that outlives a process: sessions and the plugin store, behind one interface with
three backends (memory, SQLite, Redis). Never imports the engine, protocol or plugins.

`open_store(url)` picks the backend: "memory://" (this process only), "sqlite:///PATH" (one
file; the default, in the data directory) or "redis://host:port/db" (a fleet). Nothing is
opened until the first call, so a server whose store is down still starts.
"""

from __future__ import annotations

from pathlib import Path

from .base import (
    JSONValue,
    SessionRecord,
    Store,
    StoreError,
    StoreUnavailable,
    StoreValueError,
    Subscription,
)
from .memory import MemoryStore
from .sqlite import SqliteStore

__all__ = [
    "JSONValue",
    "MemoryStore",
    "SessionRecord",
    "SqliteStore",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "StoreValueError",
    "Subscription",
    "open_store",
]

SQLITE_FILE = "banterbox.db"  # the default store's file, in the data directory


def open_store(url: str, *, sqlite_synchronous: str = "FULL") -> Store:
    """The backend `url` names; ValueError for one this server does not know."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(f"store url {url!r}: expected memory://, sqlite:///PATH or redis://...")
    if scheme == "memory" and not rest:
        return MemoryStore()
    if scheme == "sqlite" and rest.startswith("/"):
        return SqliteStore(Path(rest), synchronous=sqlite_synchronous)
    if scheme in {"redis", "rediss", "unix"}:
        from .redis_store import RedisStore  # redis-py is imported only by a fleet

        return RedisStore(url)
    raise ValueError(f"store url {url!r}: expected memory://, sqlite:///PATH or redis://...")
