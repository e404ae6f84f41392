"""plugins.api.Store for one plugin and tenant, over the server's state store. No engine, no I/O.

The namespace is built here from the plugin's name and the tenant, so a plugin can neither
read another plugin's keys nor another tenant's.
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence

from .store import JSONValue, Store


def namespace(plugin: str, tenant: str) -> str:
    # The unit separator cannot occur in plugin names or tenants (both come from config).
    return f"plugin\x1f{plugin}\x1f{tenant}"


class PluginStore:
    """The Store a plugin sees: its own namespace within one tenant."""

    def __init__(self, store: Store, *, plugin: str, tenant: str) -> None:
        self._store = store
        self._ns = namespace(plugin, tenant)

    async def get(self, key: str) -> JSONValue:
        return await self._store.get(self._ns, key)

    async def set(self, key: str, value: JSONValue, *, ttl_s: float | None = None) -> None:
        await self._store.set(self._ns, key, value, ttl_s)

    async def set_many(self, items: Sequence[tuple[str, JSONValue, float | None]]) -> None:
        await self._store.set_many(self._ns, items)

    async def delete(self, key: str) -> bool:
        return await self._store.delete(self._ns, key)

    async def list(self, prefix: str = "") -> builtins.list[str]:
        return await self._store.list(self._ns, prefix)

    async def incr(self, key: str, amount: int = 1, *, ttl_s: float | None = None) -> int:
        return await self._store.incr(self._ns, key, amount, ttl_s)

    async def incr_windows(self, windows: Sequence[tuple[str, float]]) -> builtins.list[int]:
        return await self._store.incr_windows(self._ns, windows)

    async def append(self, key: str, value: JSONValue, *, max_len: int | None = None) -> None:
        await self._store.append(self._ns, key, value, max_len)

    async def extend(
        self, key: str, values: Sequence[JSONValue], *, max_len: int | None = None
    ) -> None:
        await self._store.extend(self._ns, key, values, max_len)

    async def append_logs(
        self, items: Sequence[tuple[str, Sequence[JSONValue], int | None]], *, durable: bool = True
    ) -> builtins.list[builtins.list[JSONValue]]:
        return await self._store.append_logs(self._ns, items, durable=durable)

    async def range(self, key: str, start: int = 0, stop: int = -1) -> builtins.list[JSONValue]:
        return await self._store.range(self._ns, key, start, stop)
