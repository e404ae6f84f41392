"""API key authentication: keys to tenants and scopes. Pure lookups; never reads the env."""

from __future__ import annotations

import hmac
import ipaddress
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from .config import SCOPES, ApiKey

DEFAULT_TENANT = "default"  # the one tenant when auth is off


@dataclass(frozen=True, kw_only=True)
class Principal:
    """Who a connection acts for."""

    tenant: str
    scopes: frozenset[str]

    def may(self, scope: str) -> bool:
        return scope in self.scopes


ANONYMOUS = Principal(tenant=DEFAULT_TENANT, scopes=SCOPES)


class Authenticator:
    """Resolves a presented key; with no keys configured every client is ANONYMOUS."""

    def __init__(self, keys: Iterable[ApiKey]) -> None:
        table: dict[str, ApiKey] = {}
        for key in keys:
            if key.key in table:
                raise ValueError(f"API key of tenant {key.tenant!r} is configured twice")
            table[key.key] = key
        self._keys: Mapping[str, ApiKey] = MappingProxyType(table)

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def authenticate(self, presented: str | None) -> Principal | None:
        """The key's principal, or None for a missing or wrong key (auth on)."""
        if not self.enabled:
            return ANONYMOUS
        if presented is None:
            return None
        # Compare against every key in constant time so timing reveals no prefix.
        found: ApiKey | None = None
        for key, entry in self._keys.items():
            if hmac.compare_digest(key.encode(), presented.encode()):
                found = entry
        if found is None:
            return None
        return Principal(tenant=found.tenant, scopes=found.scopes)


def bearer_token(header: str | None) -> str | None:
    """The KEY of an "Authorization: Bearer KEY" header, else None."""
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class AuthFailureLimiter:
    """Counts wrong keys per source address; too many within the window lock it out.

    A locked address is refused before any key comparison until its oldest failure in the
    window ages out. Memory is bounded: past `max_addresses` the least recently failing
    address is forgotten.
    """

    def __init__(
        self,
        *,
        max_failures: int = 10,
        window_s: float = 60.0,
        max_addresses: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max_failures = max_failures
        self._window_s = window_s
        self._max_addresses = max_addresses
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def record_failure(self, address: str) -> None:
        times = self._failures.pop(address, None) or deque()
        times.append(self._clock())
        self._failures[address] = times  # most recent last
        while len(self._failures) > self._max_addresses:
            self._failures.popitem(last=False)

    def retry_after_s(self, address: str) -> float | None:
        """Seconds until the address may try again, or None when it is not locked out."""
        times = self._failures.get(address)
        if times is None:
            return None
        now = self._clock()
        while times and now - times[0] > self._window_s:
            times.popleft()
        if not times:
            del self._failures[address]
            return None
        if len(times) < self._max_failures:
            return None
        return max(0.0, self._window_s - (now - times[-self._max_failures]))
