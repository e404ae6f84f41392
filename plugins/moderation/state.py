"""Per-user and per-channel chat state over the store: slow mode, flood and duplicate windows,
unique chat, link permits and escalating strikes. Knows the Store protocol only.

Every counter is one atomic `incr` with a TTL, so replicas sharing a store agree, and state
dies on its own when a window passes: nothing here sweeps.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from .policy import ChannelPolicy
from .store import Store
from .verdict import Action, Finding, Reason, Source

PERMIT_S = 60.0  # a moderator's link permit lasts this long, and for one message


def text_key(joined: str) -> str:
    """A short stable key of a folded message: "SPAM spam!" and "spam  spam" are one."""
    return hashlib.blake2b(joined.strip().encode(), digest_size=8).hexdigest()


@dataclass(frozen=True, kw_only=True)
class Penalty:
    action: Action
    duration_s: int
    strike: int  # the user's strike count in this channel after this offence


async def check_state(
    store: Store, policy: ChannelPolicy, channel: str, user_id: str, joined: str, *, now: float
) -> list[Finding]:
    """Findings of the windows this message breaks; counts it in each window."""
    findings: list[Finding] = []
    user = f"{channel}:{user_id}"
    key = text_key(joined)
    slow = policy.slow_mode_s
    if slow > 0 and await store.incr(f"slow:{user}", ttl_s=slow) > 1:
        detail = f"one message per {slow:g} s"
        findings.append(_finding(Source.RULE, "slow_mode", detail, Action.DELETE, 0))
    flood = policy.flood
    if flood.limit > 0 and flood.window_s > 0:
        window = int(now // flood.window_s)
        count = await store.incr(f"flood:{user}:{window}", ttl_s=flood.window_s)
        if count > flood.limit:
            detail = f"{count} messages in {flood.window_s:g} s, limit {flood.limit}"
            finding = _finding(Source.FILTER, "flood", detail, flood.action, flood.duration_s)
            findings.append(finding)
    dup = policy.duplicates
    if dup.limit > 0 and dup.window_s > 0 and joined.strip():
        count = await store.incr(f"dup:{user}:{key}", ttl_s=dup.window_s)
        if count > dup.limit:
            detail = f"sent {count} times in {dup.window_s:g} s, limit {dup.limit}"
            finding = _finding(Source.FILTER, "duplicates", detail, dup.action, dup.duration_s)
            findings.append(finding)
    unique = policy.unique_chat_s
    if (
        unique > 0
        and joined.strip()
        and await store.incr(f"uniq:{channel}:{key}", ttl_s=unique) > 1
    ):
        detail = f"already said in chat within {unique:g} s"
        findings.append(_finding(Source.RULE, "unique_chat", detail, Action.DELETE, 0))
    return findings


async def grant_permit(store: Store, channel: str, user_id: str) -> None:
    await store.set(f"permit:{channel}:{user_id}", 1, ttl_s=PERMIT_S)


async def take_permit(store: Store, channel: str, user_id: str) -> bool:
    """Whether the user holds a link permit; using it spends it."""
    key = f"permit:{channel}:{user_id}"
    if await store.get(key) is None:
        return False
    await store.delete(key)
    return True


async def has_permit(store: Store, channel: str, user_id: str) -> bool:
    return await store.get(f"permit:{channel}:{user_id}") is not None


async def strike(
    store: Store, policy: ChannelPolicy, channel: str, user_id: str, *, now: float
) -> Penalty:
    """Count one offence; the penalty the escalation ladder gives for it.

    Strikes decay: one is forgiven per `decay_s` without offences, so the record is kept as
    (count, time of the last offence) and decayed on read.
    """
    ladder = policy.escalation
    key = f"strikes:{channel}:{user_id}"
    record = await store.get(key)
    count, last = (0, now)
    if isinstance(record, list | tuple) and len(record) == 2:
        count, last = int(record[0]), float(record[1])
    if ladder.decay_s > 0:
        count = max(0, count - int((now - last) // ladder.decay_s))
    count += 1
    ttl = ladder.decay_s * count if ladder.decay_s > 0 else None
    await store.set(key, [count, now], ttl_s=ttl)
    if count <= len(ladder.timeouts_s):
        return Penalty(action=Action.TIMEOUT, duration_s=ladder.timeouts_s[count - 1], strike=count)
    if ladder.ban or not ladder.timeouts_s:
        return Penalty(action=Action.BAN, duration_s=0, strike=count)
    return Penalty(action=Action.TIMEOUT, duration_s=ladder.timeouts_s[-1], strike=count)


def _finding(source: Source, name: str, detail: str, action: Action, duration_s: int) -> Finding:
    return Finding(
        action=action,
        reason=Reason(source=source, name=name, detail=detail),
        duration_s=duration_s,
    )


async def _seen(store: Store, key: str, window_s: float) -> bool:
    """Count one occurrence in a window; whether there was one before."""
    return await store.incr(key, ttl_s=window_s) > 1
