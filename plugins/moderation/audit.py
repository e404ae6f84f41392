"""The audit log and the review queue of held messages, over the store. Knows Store only.

Every non-allow verdict and every moderator decision is one entry appended to the channel's
log (who, what, which rules, which score, when). A held message waits under a key with the
channel's `hold_s`: a review takes it, or it expires (deleted from chat, no strike). The store
keeps an expired hold `HOLD_GRACE_S` longer, so that its expiry can be told from a review and
logged once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .store import Store

DECISIONS = ("approve", "deny")
HOLD_GRACE_S = 60.0


@dataclass(frozen=True, kw_only=True)
class AuditQuery:
    user_id: str | None = None
    action: str | None = None  # a verdict action or a decision ("approve", "deny")
    since: float = 0.0  # unix seconds
    limit: int = 100  # newest first


def audit_key(channel: str) -> str:
    return f"audit:{channel}"


def hold_key(channel: str, message_id: str) -> str:
    return f"hold:{channel}:{message_id}"


async def record(
    store: Store, channel: str, entry: Mapping[str, object], *, max_entries: int = 100_000
) -> None:
    """Append to the channel's log; past `max_entries` the oldest go (storage stays bounded)."""
    await store.append(audit_key(channel), dict(entry), max_len=max_entries)


async def record_all(
    store: Store,
    channel: str,
    entries: Sequence[Mapping[str, object]],
    *,
    max_entries: int = 100_000,
) -> None:
    """Append a batch's entries to the channel's log, in order, in one write."""
    await store.extend(audit_key(channel), [dict(e) for e in entries], max_len=max_entries)


async def query(
    store: Store, channel: str, q: AuditQuery, *, max_scan: int = 10_000
) -> list[dict[str, object]]:
    """Entries matching `q`, newest first; looks at the newest `max_scan` entries only."""
    entries = await store.range(audit_key(channel), -max_scan, -1)
    found: list[dict[str, object]] = []
    for entry in reversed(entries):
        if not isinstance(entry, dict):
            continue
        at = entry.get("at", 0.0)
        if q.user_id is not None and entry.get("user_id") != q.user_id:
            continue
        if q.action is not None and q.action not in (entry.get("action"), entry.get("decision")):
            continue
        if isinstance(at, int | float) and at < q.since:
            break  # appended in time order: the rest are older
        found.append(entry)
        if len(found) >= q.limit:
            break
    return found


def hold_value(
    channel: str, held: Mapping[str, object], *, hold_s: float
) -> tuple[str, dict[str, object], float]:
    """A held message as (key, value, ttl_s) for `set_many`."""
    return hold_key(channel, str(held["message_id"])), dict(held), hold_s + HOLD_GRACE_S


async def take_hold(
    store: Store, channel: str, message_id: str, *, now: float, expired: bool = False
) -> dict[str, object] | None:
    """The held message, removed from the queue: a live one for a review, or (`expired`) one
    past its time for the expiry; None when there is no such hold."""
    key = hold_key(channel, message_id)
    found = await store.get(key)
    if not isinstance(found, dict) or _live(found, now) is expired:
        return None
    await store.delete(key)
    return found


async def pending(store: Store, channel: str, *, now: float) -> list[dict[str, object]]:
    held = []
    for key in await store.list(hold_key(channel, "")):
        found = await store.get(key)
        if isinstance(found, dict) and _live(found, now):
            held.append(found)
    return sorted(held, key=lambda h: float(h.get("at", 0.0)))


def _live(held: Mapping[str, object], now: float) -> bool:
    expires_at = held.get("expires_at")
    return not isinstance(expires_at, int | float) or now < expires_at
