"""The load driver's pacing: Poisson arrivals, closed and open loops, the deadline."""

from __future__ import annotations

import contextlib
import random
import statistics
import time
from collections.abc import AsyncIterator

import pytest

from bench.load import (
    LoadPlan,
    Player,
    PlayerOpenError,
    TurnRecord,
    poisson_arrivals,
    run_load,
    think_time_s,
)
from bench.metrics import RequestTimeline


def test_poisson_gaps_have_the_rate_mean_and_exponential_spread() -> None:
    rng = random.Random(7)
    arrivals = poisson_arrivals(4.0, rng)
    offsets = [next(arrivals) for _ in range(20_000)]
    gaps = [b - a for a, b in zip([0.0, *offsets], offsets, strict=False)]
    assert all(g > 0 for g in gaps)
    assert statistics.fmean(gaps) == pytest.approx(0.25, rel=0.03)
    # An exponential's standard deviation equals its mean; P(gap > mean) = 1/e.
    assert statistics.pstdev(gaps) == pytest.approx(0.25, rel=0.05)
    assert sum(g > 0.25 for g in gaps) / len(gaps) == pytest.approx(0.3679, abs=0.015)
    # Arrivals in unit windows are Poisson: variance equals mean.
    counts = [0] * int(offsets[-1])
    for offset in offsets:
        if int(offset) < len(counts):
            counts[int(offset)] += 1
    assert statistics.fmean(counts) == pytest.approx(4.0, rel=0.03)
    assert statistics.pvariance(counts) == pytest.approx(4.0, rel=0.1)


def test_poisson_is_reproducible_and_rejects_a_bad_rate() -> None:
    first = poisson_arrivals(2.0, random.Random(1))
    second = poisson_arrivals(2.0, random.Random(1))
    assert [next(first) for _ in range(5)] == [next(second) for _ in range(5)]
    with pytest.raises(ValueError):
        next(poisson_arrivals(0.0, random.Random(1)))


def test_think_time_zero_means_none() -> None:
    rng = random.Random(3)
    assert think_time_s(rng, 0.0) == 0.0
    assert statistics.fmean(think_time_s(rng, 2.0) for _ in range(5000)) == pytest.approx(
        2, rel=0.06
    )


def test_a_plan_needs_one_kind_of_load_and_a_bound() -> None:
    with pytest.raises(ValueError):
        LoadPlan()
    with pytest.raises(ValueError):
        LoadPlan(concurrency=2, rate=1.0)
    with pytest.raises(ValueError):
        LoadPlan(rate=1.0)


class EchoPlayer:
    """Answers every line at once with one token; remembers who said what."""

    def __init__(self, index: int, said: list[tuple[int, str]]) -> None:
        self.index = index
        self.said = said

    async def turn(self, line: str) -> TurnRecord:
        self.said.append((self.index, line))
        now = time.perf_counter()
        return TurnRecord(RequestTimeline(now, (now,), now, 3, 1), num_cached_tokens=2)


def echo_opener(said: list[tuple[int, str]], *, fail_index: int | None = None):  # type: ignore[no-untyped-def]
    @contextlib.asynccontextmanager
    async def open_player(index: int) -> AsyncIterator[Player]:
        if index == fail_index:
            raise PlayerOpenError("connect_failed", "refused")
        yield EchoPlayer(index, said)

    return open_player


async def test_closed_loop_without_duration_runs_one_wave() -> None:
    said: list[tuple[int, str]] = []
    plan = LoadPlan(concurrency=3, turns=4, think_time_s=0.0)
    result = await run_load(echo_opener(said), plan, ["a", "b"], progress=False)
    assert result.num_players == 3
    assert len(result.records) == 12
    assert sorted({index for index, _ in said}) == [0, 1, 2]


async def test_closed_loop_with_duration_replaces_players_until_the_deadline() -> None:
    said: list[tuple[int, str]] = []
    plan = LoadPlan(concurrency=2, turns=2, think_time_s=0.0, duration_s=0.05)
    result = await run_load(echo_opener(said), plan, ["a"], progress=False)
    assert result.num_players > 2
    assert len(result.records) == len(said)


async def test_open_loop_counts_players_and_records_open_failures() -> None:
    said: list[tuple[int, str]] = []
    plan = LoadPlan(rate=1000.0, num_players=5, turns=2, think_time_s=0.0)
    result = await run_load(echo_opener(said, fail_index=1), plan, ["a"], progress=False)
    assert result.num_players == 5
    codes = [r.timeline.error_code for r in result.records]
    assert codes.count("connect_failed") == 1
    assert codes.count(None) == 8
