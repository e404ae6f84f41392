"""`python -m bench faults --cost`: what durability costs a session turn. Sends no faults.

NPC-style session turns (a persona, short lines) at N players against a memory-store server
and a SQLite-store server, alternating, in one run: TTFT and inter-token latency of each; and
the median time of one commit, what a turn's `done` waits for.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from server.client import BanterboxClient
from server.store import SessionRecord, SqliteStore

from .procs import ServerProcess

PERSONA = "You are Mara, the blacksmith of Oakvale. Answer in one or two short sentences."


@dataclass(frozen=True, kw_only=True)
class Setup:
    model: Path
    folder: Path
    num_sessions: int
    max_tokens: int
    server_args: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class CostResult:
    store: str
    num_turns: int
    ttft_p50_ms: float
    ttft_p95_ms: float
    itl_mean_ms: float  # mean gap between deltas of a turn


async def npc_turns(
    url: str, *, num_sessions: int, num_turns: int, max_tokens: int
) -> list[tuple[float, float]]:
    """(TTFT, mean inter-delta gap) of each session turn: players with a persona, in parallel."""
    samples: list[tuple[float, float]] = []
    gate = asyncio.Lock()

    async def player(index: int) -> None:
        async with contextlib.AsyncExitStack() as stack:
            async with gate:
                client = await stack.enter_async_context(BanterboxClient.connect(url))
                session = await client.open_session(None, {"system": PERSONA})
            for turn in range(num_turns):
                line = f"Traveller {index}: what do you sell, friend? ({turn})"
                stream = client.generate(
                    messages=[{"role": "user", "content": line}],
                    session_id=session.session_id,
                    max_tokens=max_tokens,
                )
                started, arrivals = time.perf_counter(), []
                async for _ in stream:
                    arrivals.append(time.perf_counter())
                if arrivals:
                    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
                    samples.append((arrivals[0] - started, statistics.fmean(gaps or [0.0])))

    await asyncio.gather(*(player(i) for i in range(num_sessions)))
    return samples


def cost_result(store: str, samples: Sequence[tuple[float, float]]) -> CostResult:
    ttfts = sorted(t for t, _ in samples)
    return CostResult(
        store=store,
        num_turns=len(samples),
        ttft_p50_ms=1000 * statistics.median(ttfts),
        ttft_p95_ms=1000 * ttfts[min(len(ttfts) - 1, int(0.95 * len(ttfts)))],
        itl_mean_ms=1000 * statistics.fmean(i for _, i in samples),
    )


async def commit_ms(folder: Path, *, num_commits: int = 200) -> dict[str, float]:
    """Median ms of one session commit (a 2,048-token transcript) with each synchronous mode:
    what a turn's done waits for, beside the turn's own seconds."""
    now = time.time()
    record = SessionRecord(
        tenant="t", session_id="s", messages=(("user", "x" * 200),) * 8,
        transcript_text="x" * 8000, transcript_token_ids=tuple(range(2048)),
        num_turns=8, last_used=now, expires_at=now + 600,
    )  # fmt: skip
    medians = {}
    for mode in ("FULL", "NORMAL"):
        store = SqliteStore(folder / f"commit-{mode}" / "banterbox.db", synchronous=mode)
        times = []
        for _ in range(num_commits):
            started = time.perf_counter()
            await store.save_session(record)
            times.append(time.perf_counter() - started)
        await store.close()
        medians[f"sqlite_{mode.lower()}_commit_p50_ms"] = 1000 * statistics.median(times)
    return medians


async def cost(s: Setup, *, rounds: int, num_turns: int) -> list[CostResult]:
    """Memory and SQLite servers one after the other, `rounds` times each, the same load."""
    path = s.folder / "cost" / "banterbox.db"
    samples: dict[str, list[tuple[float, float]]] = {"memory": [], "sqlite": []}
    for _ in range(rounds):
        for store, url in (("memory", "memory://"), ("sqlite", f"sqlite://{path}")):
            server = ServerProcess(s.model, store_url=url, args=s.server_args).start()
            try:
                samples[store] += await npc_turns(
                    server.url, num_sessions=s.num_sessions, num_turns=num_turns,
                    max_tokens=s.max_tokens,
                )  # fmt: skip
            finally:
                server.stop()
    return [cost_result(store, got) for store, got in samples.items()]
