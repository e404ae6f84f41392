"""Single checks coalesced per loop pass, and the one-task expiry of held messages."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from plugins.moderation.coalesce import Coalescer
from plugins.moderation.expiry import HoldExpiry


async def test_items_of_one_pass_run_as_one_batch_in_order_each_with_its_own_result() -> None:
    calls: list[tuple[str, list[int]]] = []

    async def run(key: str, items: Sequence[int]) -> list[int]:
        calls.append((key, list(items)))
        await asyncio.sleep(0)
        return [10 * n for n in items]

    coalescer: Coalescer[str, int, int] = Coalescer(run, max_batch=4)
    first = await asyncio.gather(
        *(coalescer.submit("a", n) for n in range(6)), coalescer.submit("b", 99)
    )
    assert first == [0, 10, 20, 30, 40, 50, 990]
    assert calls == [("a", [0, 1, 2, 3]), ("a", [4, 5]), ("b", [99])]  # full at 4: split
    assert await coalescer.submit("a", 7) == 70  # a later pass: a batch of its own
    assert calls[-1] == ("a", [7]) and coalescer.num_batches == 4


async def test_a_failed_batch_fails_each_submitter_and_a_cancelled_one_leaves_the_rest() -> None:
    gate = asyncio.Event()

    async def run(key: str, items: Sequence[int]) -> list[int]:
        await gate.wait()
        if key == "bad":
            raise ValueError("store down")
        return list(items)

    coalescer: Coalescer[str, int, int] = Coalescer(run)
    bad = [asyncio.ensure_future(coalescer.submit("bad", n)) for n in range(3)]
    good = [asyncio.ensure_future(coalescer.submit("good", n)) for n in range(3)]
    await asyncio.sleep(0.01)
    good[0].cancel()
    gate.set()
    for task in bad:
        with pytest.raises(ValueError, match="store down"):
            await task
    assert await asyncio.gather(good[1], good[2]) == [1, 2]
    assert good[0].cancelled()


async def test_holds_expire_in_time_order_whenever_they_were_added() -> None:
    expired: list[str] = []
    tasks: list[asyncio.Task[None]] = []

    async def expire(tenant: str, channel: str, message_id: str) -> None:
        expired.append(f"{tenant}/{channel}/{message_id}")

    def spawn(work: object) -> None:
        tasks.append(asyncio.ensure_future(work))  # type: ignore[call-overload]

    expiry = HoldExpiry(expire)
    expiry.add("t", "slow", "m1", after_s=0.3, spawn=spawn)
    expiry.add("t", "fast", "m2", after_s=0.05, spawn=spawn)  # sooner: wakes the sweeper
    expiry.add("t", "fast", "m3", after_s=0.05, spawn=spawn)
    assert len(tasks) == 1  # one sweeper for every hold
    await asyncio.sleep(0.15)
    assert expired == ["t/fast/m2", "t/fast/m3"]
    await asyncio.wait_for(tasks[0], 2)  # nothing left: the sweeper ends
    assert expired[-1] == "t/slow/m1" and len(expiry) == 0
    expiry.add("u", "c", "m4", after_s=0.01, spawn=spawn)  # and a new hold starts another
    await asyncio.wait_for(tasks[1], 2)
    assert expired[-1] == "u/c/m4"


async def test_a_failed_expiry_is_logged_and_the_others_still_expire(
    caplog: pytest.LogCaptureFixture,
) -> None:
    expired: list[str] = []

    async def expire(tenant: str, channel: str, message_id: str) -> None:
        if message_id == "bad":
            raise RuntimeError("store down")
        expired.append(message_id)

    tasks: list[asyncio.Task[None]] = []

    def spawn(work: object) -> None:
        tasks.append(asyncio.ensure_future(work))  # type: ignore[call-overload]

    expiry = HoldExpiry(expire)
    for message_id in ("bad", "m1"):
        expiry.add("t", "c", message_id, after_s=0.01, spawn=spawn)
    await asyncio.wait_for(tasks[0], 2)
    assert expired == ["m1"]
    assert "expiry of held bad in c failed" in caplog.text


async def test_a_tenant_is_idle_once_its_last_waiting_hold_has_expired() -> None:
    expired: list[str] = []
    idle: list[tuple[str, list[str]]] = []
    tasks: list[asyncio.Task[None]] = []

    async def expire(tenant: str, channel: str, message_id: str) -> None:
        expired.append(message_id)

    def spawn(work: object) -> None:
        tasks.append(asyncio.ensure_future(work))  # type: ignore[call-overload]

    expiry = HoldExpiry(expire, on_idle=lambda tenant: idle.append((tenant, list(expired))))
    expiry.add("a", "c", "a1", after_s=0.01, spawn=spawn)
    expiry.add("b", "c", "b1", after_s=0.05, spawn=spawn)
    expiry.add("a", "c", "a2", after_s=0.1, spawn=spawn)
    await asyncio.sleep(0.07)
    assert expired == ["a1", "b1"] and idle == [("b", ["a1", "b1"])]  # a still has a2 waiting
    await asyncio.wait_for(tasks[0], 2)
    assert idle == [("b", ["a1", "b1"]), ("a", ["a1", "b1", "a2"])]  # after its expire ran
