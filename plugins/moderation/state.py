"""Per-user and per-channel chat state over the store: slow mode, flood and duplicate windows,
unique chat, link permits and escalating strikes. Knows the Store protocol only.

Flood, duplicate, slow-mode and unique-chat windows are the store's short-window counters
(`incr_windows`, one call per batch): atomic across a fleet's replicas, kept in the server's
memory on a single box (a restart forgets at most one window of history), and gone on their
own when a window passes. Permits are plain values and strikes a log of offences, durable
where the store is.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from .policy import ChannelPolicy, Escalation
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


@dataclass(frozen=True, kw_only=True)
class Sender:
    """One message as the windows see it: who sent it, and its folded text."""

    user_id: str
    joined: str


async def check_windows(
    store: Store, policy: ChannelPolicy, channel: str, senders: Sequence[Sender], *, now: float
) -> list[list[Finding]]:
    """Each message's findings of the windows it breaks, counting it in each: one store call
    for the whole batch (`incr_windows`, counted in input order, so a user's second message
    of a batch sees the first)."""
    plan: list[tuple[int, str]] = []  # (message index, rule) per window counted
    windows: list[tuple[str, float]] = []
    slow, flood, dup, unique = (
        policy.slow_mode_s, policy.flood, policy.duplicates, policy.unique_chat_s
    )  # fmt: skip
    flood_on = flood.limit > 0 and flood.window_s > 0
    dup_on = dup.limit > 0 and dup.window_s > 0
    flood_window = int(now // flood.window_s) if flood_on else 0
    for n, sender in enumerate(senders):
        user = f"{channel}:{sender.user_id}"
        said = bool(sender.joined.strip())
        key = text_key(sender.joined) if said and (dup_on or unique > 0) else ""
        if slow > 0:
            plan.append((n, "slow_mode"))
            windows.append((f"slow:{user}", slow))
        if flood_on:
            plan.append((n, "flood"))
            windows.append((f"flood:{user}:{flood_window}", flood.window_s))
        if dup_on and said:
            plan.append((n, "duplicates"))
            windows.append((f"dup:{user}:{key}", dup.window_s))
        if unique > 0 and said:
            plan.append((n, "unique_chat"))
            windows.append((f"uniq:{channel}:{key}", unique))
    findings: list[list[Finding]] = [[] for _ in senders]
    if not windows:
        return findings
    counts = await store.incr_windows(windows)
    for (n, rule), count in zip(plan, counts, strict=True):
        if rule == "slow_mode" and count > 1:
            detail = f"one message per {slow:g} s"
            findings[n].append(_finding(Source.RULE, rule, detail, Action.DELETE, 0))
        elif rule == "flood" and count > flood.limit:
            detail = f"{count} messages in {flood.window_s:g} s, limit {flood.limit}"
            findings[n].append(
                _finding(Source.FILTER, rule, detail, flood.action, flood.duration_s)
            )
        elif rule == "duplicates" and count > dup.limit:
            detail = f"sent {count} times in {dup.window_s:g} s, limit {dup.limit}"
            findings[n].append(_finding(Source.FILTER, rule, detail, dup.action, dup.duration_s))
        elif rule == "unique_chat" and count > 1:
            detail = f"already said in chat within {unique:g} s"
            findings[n].append(_finding(Source.RULE, rule, detail, Action.DELETE, 0))
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
    """Count one offence; the penalty the escalation ladder gives for it."""
    (penalty,) = await strikes(store, policy, channel, [user_id], now=now)
    return penalty


async def strikes(
    store: Store, policy: ChannelPolicy, channel: str, user_ids: Sequence[str], *, now: float
) -> list[Penalty]:
    """One offence per entry (a user named twice offended twice, in that order); each
    penalty the escalation ladder gives, the offences durable when this returns."""
    return await count_strikes(store, policy, channel, user_ids, now=now)


async def count_strikes(
    store: Store,
    policy: ChannelPolicy,
    channel: str,
    user_ids: Sequence[str],
    *,
    now: float,
    durable: bool = True,
) -> list[Penalty]:
    """The penalties of one offence per entry (a user named twice offended twice, in that
    order), each offence committed in the store when this returns; `durable=False` for a
    caller whose next write, durable, comes before it acts (the plugin's audit entries of
    the same verdicts): the two then share one disk sync.

    Counted once across a fleet, and under concurrent checks on one replica: each offence is
    appended with an id of its own to the user's offence log (an atomic append on every
    backend), and its strike number is its place in the log as read back afterwards, so two
    offences racing on two replicas get strikes n and n+1, never n twice. Strikes decay: one
    is forgiven per `decay_s` without offences, replayed over the log's times. The log keeps
    the newest OFFENCES_KEPT entries, more than any ladder climbs before its ban.
    """
    ladder = policy.escalation
    ids: list[str] = []
    mine: dict[str, list[dict[str, object]]] = {}
    for user_id in user_ids:
        entry: dict[str, object] = {"id": secrets.token_hex(8), "at": now}
        ids.append(str(entry["id"]))
        mine.setdefault(user_id, []).append(entry)
    logs = await store.append_logs(
        [(_offences_key(channel, u), entries, OFFENCES_KEPT) for u, entries in mine.items()],
        durable=durable,
    )
    strike_of: dict[str, int] = {}
    for log in logs:
        strike_of.update(_replay(log, ladder.decay_s))
    return [_penalty(ladder, strike_of[i]) for i in ids]


OFFENCES_KEPT = 64


def _replay(log: Sequence[object], decay_s: float) -> dict[str, int]:
    """Each offence's strike number: one more than the count before it, less one per decay_s
    between it and the offence before (times of different replicas may run backwards a
    little: no decay then)."""
    count, last = 0, None
    numbers: dict[str, int] = {}
    for entry in log:
        if not isinstance(entry, dict) or not isinstance(entry.get("at"), int | float):
            continue
        at = float(entry["at"])
        if last is not None and decay_s > 0:
            count = max(0, count - int(max(0.0, at - last) // decay_s))
        count += 1
        last = at if last is None else max(last, at)
        numbers[str(entry.get("id"))] = count
    return numbers


def _offences_key(channel: str, user_id: str) -> str:
    return f"offences:{channel}:{user_id}"


def _penalty(ladder: Escalation, count: int) -> Penalty:
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
