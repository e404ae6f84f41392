"""`python -m bench faults --cost`: what durability costs an NPC turn. Sends no faults.

N players each talk to the npc plugin's blacksmith (`npc.say`, its own session, seeded so both
stores do the same work) against a memory-store server and a SQLite-store server, in
alternating pairs of rounds within one run (memory first in even pairs, SQLite first in odd
ones, so that a drift of the machine's load falls on both): TTFT (to the first frame of the
reply, speech or event) and the gaps between its frames, medians per store and the ratio of
each pair. And what a `done` waits for: the median of one commit, and sixteen turns'
commits at once, grouped by the store (one fsync) against one after the other.
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

from protocol import Done, PluginFrame
from server.client import BanterboxClient
from server.store import SessionRecord, SqliteStore

from .procs import ServerProcess

PERSONA = "You are Mara, the blacksmith of Oakvale. Answer in one or two short sentences."
NPC = "blacksmith"  # a sample card of plugins/npc, which the default config enables


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
    round: int  # the pair of rounds it ran in (-1: every round of this store)
    num_turns: int
    ttft_p50_ms: float
    ttft_p95_ms: float
    itl_p50_ms: float  # median gap between the frames of a reply
    itl_mean_ms: float


Sample = tuple[float, list[float]]  # (TTFT, the gaps between a reply's frames)


async def npc_turns(
    url: str, *, num_sessions: int, num_turns: int, max_tokens: int
) -> list[Sample]:
    """TTFT and frame gaps of every npc.say: N players in parallel, one session each."""
    samples: list[Sample] = []
    gate = asyncio.Lock()

    async def player(index: int) -> None:
        async with contextlib.AsyncExitStack() as stack:
            async with gate:  # a server takes 8 sockets before hello per address
                client = await stack.enter_async_context(BanterboxClient.connect(url))
            for turn in range(num_turns):
                line = f"Traveller {index}: what do you sell, friend? ({turn})"
                stream = client.npc_say(
                    NPC, f"player-{index}", line, max_tokens=max_tokens, seed=index * 1000 + turn
                )
                started, arrivals = time.perf_counter(), []
                async for frame in stream:
                    if not isinstance(frame, Done) and not (
                        isinstance(frame, PluginFrame) and frame.type == "npc.session"
                    ):
                        arrivals.append(time.perf_counter())
                if arrivals:
                    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
                    samples.append((arrivals[0] - started, gaps))

    await asyncio.gather(*(player(i) for i in range(num_sessions)))
    return samples


def cost_result(store: str, round_: int, samples: Sequence[Sample]) -> CostResult:
    ttfts = sorted(t for t, _ in samples)
    gaps = [g for _, turn in samples for g in turn] or [0.0]
    return CostResult(
        store=store,
        round=round_,
        num_turns=len(samples),
        ttft_p50_ms=1000 * statistics.median(ttfts),
        ttft_p95_ms=1000 * ttfts[min(len(ttfts) - 1, int(0.95 * len(ttfts)))],
        itl_p50_ms=1000 * statistics.median(gaps),
        itl_mean_ms=1000 * statistics.fmean(gaps),
    )


def _transcript(session_id: str) -> SessionRecord:
    """A session of 8 turns and 2,048 tokens, as a turn's commit writes it."""
    now = time.time()
    return SessionRecord(
        tenant="t", session_id=session_id, messages=(("user", "x" * 200),) * 8,
        transcript_text="x" * 8000, transcript_token_ids=tuple(range(2048)),
        num_turns=8, last_used=now, expires_at=now + 600,
    )  # fmt: skip


async def commit_ms(
    folder: Path, *, num_commits: int = 200, num_turns: int = 16, repeats: int = 20
) -> dict[str, float]:
    """What a turn's done waits for, in median ms: one session commit with each synchronous
    mode; and until `num_turns` concurrent commits all returned (a step's turns ending
    together), grouped by the store, against the same commits awaited one after another."""
    medians = {}
    for mode in ("FULL", "NORMAL"):
        store = SqliteStore(folder / f"commit-{mode}" / "banterbox.db", synchronous=mode)
        times = []
        for _ in range(num_commits):
            started = time.perf_counter()
            await store.save_session(_transcript("s"))
            times.append(time.perf_counter() - started)
        await store.close()
        medians[f"sqlite_{mode.lower()}_commit_p50_ms"] = 1000 * statistics.median(times)
    records = [_transcript(f"s{i}") for i in range(num_turns)]
    store = SqliteStore(folder / "group" / "banterbox.db")
    together, serial = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        await asyncio.gather(*(store.save_session(r) for r in records))
        together.append(time.perf_counter() - started)
        started = time.perf_counter()
        for r in records:
            await store.save_session(r)
        serial.append(time.perf_counter() - started)
    await store.close()
    medians[f"sqlite_full_{num_turns}_concurrent_p50_ms"] = 1000 * statistics.median(together)
    medians[f"sqlite_full_{num_turns}_one_by_one_p50_ms"] = 1000 * statistics.median(serial)
    return medians


async def cost(s: Setup, *, rounds: int, num_turns: int) -> list[CostResult]:
    """Memory and SQLite servers in `rounds` pairs, the same load; each round's result, then
    each store's over all its rounds."""
    results: list[CostResult] = []
    pooled: dict[str, list[Sample]] = {"memory": [], "sqlite": []}
    for pair in range(rounds):
        order = ["memory", "sqlite"] if pair % 2 == 0 else ["sqlite", "memory"]
        for store in order:
            path = s.folder / f"cost-{pair}" / "banterbox.db"
            url = "memory://" if store == "memory" else f"sqlite://{path}"
            server = ServerProcess(s.model, store_url=url, args=s.server_args).start()
            try:
                got = await npc_turns(
                    server.url, num_sessions=s.num_sessions, num_turns=num_turns,
                    max_tokens=s.max_tokens,
                )  # fmt: skip
            finally:
                server.stop()
            pooled[store] += got
            results.append(cost_result(store, pair, got))
    return results + [cost_result(store, -1, got) for store, got in pooled.items()]
