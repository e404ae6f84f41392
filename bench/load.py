"""The load driver: players by a closed- or open-loop plan, one record per turn; no I/O of its own.

A player is whatever `PlayerOpener(index)` opens (a Banterbox game client, a llama-server
transcript); the driver only paces them. Closed loop: C players at once, each doing T turns;
with a duration a finished player is replaced so C stay busy. Open loop: new players arrive
as a Poisson process of rate R. At the deadline no new turn starts; in-flight turns finish
and count.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from tqdm import tqdm

from .metrics import RequestTimeline
from .report import LevelResult, level_result

CONNECT_FAILED = "connect_failed"  # a client-side code: the player could not open at all

# A load generator is one source address, and the server lets only a few sockets per address
# wait for their hello (server.max_unauthenticated_per_address, 8): players open through at
# most this many handshakes at once, as players on many machines would not collide there.
HANDSHAKES_AT_ONCE = 4
_handshakes: dict[asyncio.AbstractEventLoop, asyncio.Semaphore] = {}


def handshake_slot() -> asyncio.Semaphore:
    """Hold while a player connects and says hello (released once it is welcomed)."""
    loop = asyncio.get_running_loop()
    return _handshakes.setdefault(loop, asyncio.Semaphore(HANDSHAKES_AT_ONCE))


def poisson_arrivals(rate_per_s: float, rng: random.Random) -> Iterator[float]:
    """Arrival offsets in seconds of a Poisson process: exponential gaps of mean 1/rate."""
    if rate_per_s <= 0:
        raise ValueError(f"rate must be > 0, got {rate_per_s}")
    offset = 0.0
    while True:
        offset += rng.expovariate(rate_per_s)
        yield offset


def think_time_s(rng: random.Random, mean_s: float) -> float:
    return rng.expovariate(1.0 / mean_s) if mean_s > 0 else 0.0


@dataclass(frozen=True, slots=True)
class TurnRecord:
    """One turn as the player saw it, plus the prefix-cache hit the server reported."""

    timeline: RequestTimeline
    num_cached_tokens: int = 0
    fatal: bool = False  # the player cannot go on (its connection is gone)


def error_record(start: float, code: str, *, fatal: bool = False) -> TurnRecord:
    now = max(time.perf_counter(), start)
    timeline = RequestTimeline(start, (), now, 0, 0, error_code=code)
    return TurnRecord(timeline, fatal=fatal)


class Player(Protocol):
    async def turn(self, line: str) -> TurnRecord: ...


PlayerOpener = Callable[[int], AbstractAsyncContextManager[Player]]


class PlayerOpenError(Exception):
    """A player could not connect; `code` goes into its error timeline."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


@dataclass(frozen=True, kw_only=True)
class LoadPlan:
    concurrency: int | None = None  # closed loop: players at once
    rate: float | None = None  # open loop: new players per second
    turns: int = 4  # turns per player
    think_time_s: float = 2.0  # mean of the exponential pause between a player's turns
    duration_s: float | None = None  # no new turn starts after this
    num_players: int | None = None  # open loop without a duration: players in all
    seed: int = 0

    def __post_init__(self) -> None:
        if (self.concurrency is None) == (self.rate is None):
            raise ValueError("give exactly one of concurrency and rate")
        if self.rate is not None and self.duration_s is None and self.num_players is None:
            raise ValueError("an open-loop run needs a duration or a number of players")


@dataclass(frozen=True, slots=True)
class LoadResult:
    records: tuple[TurnRecord, ...]
    duration_s: float
    num_players: int


async def run_load(
    open_player: PlayerOpener, plan: LoadPlan, lines: Sequence[str], *, progress: bool = True
) -> LoadResult:
    """Drive players by the plan until it is spent; every turn's record, in completion order."""
    records: list[TurnRecord] = []
    started = time.perf_counter()
    deadline = started + plan.duration_s if plan.duration_s is not None else None
    bounded = deadline is None and plan.concurrency is not None
    total = plan.concurrency * plan.turns if bounded and plan.concurrency else None
    label = f"c={plan.concurrency}" if plan.concurrency is not None else f"rate={plan.rate}/s"
    bar = tqdm(total=total, desc=label, unit="turn", disable=not progress, leave=False)

    def open_for_turns() -> bool:
        return deadline is None or time.perf_counter() < deadline

    async def think(rng: random.Random) -> None:
        pause = think_time_s(rng, plan.think_time_s)
        # A pause past the deadline would only idle the run and dilute its rates.
        if deadline is not None:
            pause = min(pause, max(0.0, deadline - time.perf_counter()))
        await asyncio.sleep(pause)

    async def play(index: int) -> bool:
        """One player's turns; False when it could not even open."""
        rng = random.Random(plan.seed * 1_000_003 + index)
        try:
            async with open_player(index) as player:
                for turn_index in range(plan.turns):
                    if turn_index:
                        await think(rng)
                    if not open_for_turns():
                        break
                    record = await player.turn(rng.choice(lines))
                    records.append(record)
                    bar.update()
                    if record.fatal:
                        break
        except PlayerOpenError as exc:
            records.append(error_record(time.perf_counter(), exc.code))
            return False
        return True

    num_players = 0
    try:
        if plan.concurrency is not None:
            next_index = iter(range(1 << 62))

            async def seat() -> int:
                played = 0
                while True:
                    opened = await play(next(next_index))
                    played += 1
                    # A seat whose player cannot connect stops rather than spin on errors.
                    if not opened or deadline is None or not open_for_turns():
                        return played

            num_players = sum(await asyncio.gather(*(seat() for _ in range(plan.concurrency))))
        else:
            num_players = await _open_loop(play, plan, deadline)
    finally:
        bar.close()
    return LoadResult(tuple(records), time.perf_counter() - started, num_players)


async def _open_loop(
    play: Callable[[int], Coroutine[Any, Any, bool]], plan: LoadPlan, deadline: float | None
) -> int:
    assert plan.rate is not None
    rng = random.Random(plan.seed)
    started = time.perf_counter()
    tasks: list[asyncio.Task[bool]] = []
    for index, offset in enumerate(poisson_arrivals(plan.rate, rng)):
        if plan.num_players is not None and index >= plan.num_players:
            break
        if deadline is not None and started + offset >= deadline:
            break
        await asyncio.sleep(max(0.0, started + offset - time.perf_counter()))
        tasks.append(asyncio.create_task(play(index)))
    await asyncio.gather(*tasks)
    return len(tasks)


async def run_sweep(
    open_player: PlayerOpener,
    plans: Sequence[LoadPlan],
    lines: Sequence[str],
    *,
    slo_ttft_s: float,
    slo_min_tok_s: float,
    progress: bool = True,
) -> list[LevelResult]:
    """One level per plan, run one after the other."""
    levels = []
    for plan in plans:
        result = await run_load(open_player, plan, lines, progress=progress)
        levels.append(
            level_result(
                [r.timeline for r in result.records],
                [r.num_cached_tokens for r in result.records],
                duration_s=result.duration_s,
                concurrency=plan.concurrency,
                rate=plan.rate,
                num_players=result.num_players,
                slo_ttft_s=slo_ttft_s,
                slo_min_tok_s=slo_min_tok_s,
            )
        )
    return levels
