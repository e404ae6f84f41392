"""The LLM judge over a fake scorer: P(yes), the shared policy prefix, and every way it degrades."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence

from plugins.moderation.judge import CANDIDATES, Judge, p_yes, render_prompt


def test_prompt_puts_the_policy_first_and_p_yes_renormalises() -> None:
    first, second = render_prompt("No spoilers.", "hi"), render_prompt("No spoilers.", "bye")
    prefix = first[: first.index("Message:")]
    assert second.startswith(prefix) and "No spoilers." in prefix  # one cached prefix
    assert abs(p_yes([math.log(0.3), math.log(0.1)]) - 0.75) < 1e-12
    assert CANDIDATES == (" yes", " no")


async def test_rulings_and_degradation() -> None:
    seen: list[Sequence[str]] = []

    async def scorer(prompt: str, candidates: Sequence[str]) -> list[float]:
        seen.append(candidates)
        return [0.0, math.log(1 / 3)] if "boss dies" in prompt else [math.log(1 / 3), 0.0]

    judge = Judge(model="m", max_inflight=2, timeout_s=1.0)
    ruling = await judge.rule(scorer, "No spoilers.", ["the boss dies", "hello"])
    assert ruling.p_yes is not None and [round(p, 9) for p in ruling.p_yes] == [0.75, 0.25]
    assert ruling.model == "m" and seen[0] == CANDIDATES
    overloaded = await judge.rule(scorer, "No spoilers.", ["a", "b", "c"])
    assert overloaded.p_yes is None and "overloaded" in overloaded.detail

    async def slow(prompt: str, candidates: Sequence[str]) -> list[float]:
        await asyncio.sleep(10)
        return [0.0, 0.0]

    late = await Judge(model="m", timeout_s=0.01).rule(slow, "p", ["x"])
    assert late.p_yes is None and "deadline" in late.detail

    async def refused(prompt: str, candidates: Sequence[str]) -> list[float]:
        raise RuntimeError("overloaded engine")

    down = await Judge(model="m").rule(refused, "p", ["x"])
    assert down.p_yes is None and "unavailable" in down.detail
    assert judge._inflight == 0  # every path gave its slots back
