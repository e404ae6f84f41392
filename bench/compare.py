"""`python -m bench compare --peer llama-server`: the npc sweep on Banterbox and on llama-server.

One system runs at a time (the machine has few cores), each started fresh on the same model
file. Ratios are always Banterbox's figure over llama-server's:
- capacity_ratio: players served at the SLO, where a system's capacity is the largest swept
  concurrency whose goodput_fraction >= 0.9 (0 when none; the ratio is null when the peer's is 0);
- tok_s_ratio_at_32: aggregate output tok/s at 32 players (the largest swept level when 32 is
  not swept; `tok_s_ratio_level` says which);
- follow_up_ttft_ratio: median TTFT of a follow-up turn after a ~1,000-token history, with more
  players than llama-server has slots (below 1: Banterbox answers sooner).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from .llama_server import launch_llama_server, llama_http, llama_opener, stopping
from .load import Player, PlayerOpener, TurnRecord, run_sweep
from .npc import (
    add_load_arguments,
    banterbox_opener,
    config_of,
    load_lines,
    load_persona,
    parse_levels,
    plans_from_args,
    sampling_of,
)
from .peers.llama_cpp import BUILD_SCRIPT, find_binary
from .report import LevelResult, default_json_path, level_result, markdown_table, write_report

MIN_GOODPUT_FRACTION = 0.9
BANTERBOX, LLAMA = "banterbox", "llama-server"
_LISTENING = re.compile(r"listening on (ws://\S+)")


def capacity_at_slo(
    levels: Sequence[LevelResult], *, min_goodput: float = MIN_GOODPUT_FRACTION
) -> int:
    """The largest concurrency whose goodput_fraction >= min_goodput; 0 when none does."""
    passing = [
        lv.concurrency for lv in levels
        if lv.concurrency is not None and (lv.metrics.goodput_fraction or 0.0) >= min_goodput
    ]  # fmt: skip
    return max(passing, default=0)


def ratio(ours: float | None, theirs: float | None) -> float | None:
    return ours / theirs if ours is not None and theirs else None


@contextlib.contextmanager
def launch_banterbox(
    model: Path,
    *,
    threads: int,
    log_path: Path,
    dtype: str = "auto",
    startup_timeout_s: float = 300.0,
) -> Iterator[str]:
    """`banterbox serve` on a free port until exit; yields its ws:// URL once it listens."""
    command = [
        sys.executable,
        "-m",
        "server.cli",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--model",
        str(model),
        "--threads",
        str(threads),
        "--dtype",
        dtype,
    ]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    with stopping(process):
        deadline = time.monotonic() + startup_timeout_s
        while not (found := _LISTENING.search(log_path.read_text(errors="replace"))):
            if process.poll() is not None:
                tail = log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"banterbox serve exited ({process.returncode}):\n{tail}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"banterbox serve not listening after {startup_timeout_s} s")
            time.sleep(0.25)
        yield found.group(1)


def build_histories(
    num_players: int, *, num_exchanges: int, seed: int
) -> list[list[dict[str, str]]]:
    """A distinct earlier conversation per player (user/assistant pairs from the corpus)."""
    lines, replies = load_lines("player_lines"), load_lines("npc_replies")
    rng = random.Random(seed)
    return [
        [turn for _ in range(num_exchanges)
         for turn in ({"role": "user", "content": rng.choice(lines)},
                      {"role": "assistant", "content": rng.choice(replies)})]
        for _ in range(num_players)
    ]  # fmt: skip


async def run_follow_up(
    open_player: PlayerOpener,
    *,
    num_players: int,
    concurrency: int,
    slo_ttft_s: float,
    slo_min_tok_s: float,
    seed: int,
) -> dict[str, LevelResult]:
    """Every player's first turn (persona + history), then every player's follow-up turn."""
    lines = load_lines("player_lines")
    rng = random.Random(seed)
    gate = asyncio.Semaphore(concurrency)
    phases: dict[str, LevelResult] = {}

    async def one(player: Player, line: str) -> TurnRecord:
        async with gate:
            return await player.turn(line)

    async with contextlib.AsyncExitStack() as stack:
        players = [await stack.enter_async_context(open_player(i)) for i in range(num_players)]
        for phase in ("history", "follow_up"):
            started = time.perf_counter()
            records = await asyncio.gather(*(one(p, rng.choice(lines)) for p in players))
            phases[phase] = level_result(
                [r.timeline for r in records],
                [r.num_cached_tokens for r in records],
                duration_s=time.perf_counter() - started,
                concurrency=concurrency,
                rate=None,
                num_players=num_players,
                slo_ttft_s=slo_ttft_s,
                slo_min_tok_s=slo_min_tok_s,
            )
    return phases


def add_arguments(scenarios: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = scenarios.add_parser("compare", help="the npc sweep on Banterbox and on a peer server")
    p.add_argument("--peer", choices=[LLAMA], default=LLAMA)
    p.add_argument("--model", type=Path, default=None, help="default: the pulled SmolLM2 GGUF")
    p.add_argument("--sweep", type=parse_levels, default=[1, 4, 8, 16, 32])
    p.add_argument("--threads", type=int, default=2, help="CPU threads for either server")
    p.add_argument(
        "--dtype", default="auto", help="Banterbox's --dtype (auto: GGUF blocks packed on CPU)"
    )
    p.add_argument("--ctx-per-slot", type=int, default=2048, help="llama-server -c = N * this")
    p.add_argument("--follow-up-players", type=int, default=16)
    p.add_argument("--follow-up-slots", type=int, default=4, help="llama-server --parallel")
    p.add_argument(
        "--follow-up-exchanges",
        type=int,
        default=18,
        help="earlier user/NPC exchanges per player (~35 tokens each)",
    )
    add_load_arguments(p)
    p.set_defaults(run=run, duration=30.0)


async def _banterbox(url: str, args: argparse.Namespace, *, follow_up: bool) -> Any:
    persona, sampling = load_persona(args.persona), sampling_of(args)
    if follow_up:
        histories = build_histories(
            args.follow_up_players, num_exchanges=args.follow_up_exchanges, seed=args.seed
        )
        opener = banterbox_opener(
            url, persona, max_tokens=args.max_tokens, sampling=sampling, histories=histories
        )
        return await _follow_up(opener, args)
    opener = banterbox_opener(url, persona, max_tokens=args.max_tokens, sampling=sampling)
    return await _sweep(opener, args)


async def _llama(base_url: str, args: argparse.Namespace, *, follow_up: bool) -> Any:
    persona, sampling = load_persona(args.persona), sampling_of(args)
    async with llama_http(base_url) as http:
        if follow_up:
            histories = build_histories(
                args.follow_up_players, num_exchanges=args.follow_up_exchanges, seed=args.seed
            )
            opener = llama_opener(
                http, persona, max_tokens=args.max_tokens, sampling=sampling, histories=histories
            )
            return await _follow_up(opener, args)
        opener = llama_opener(http, persona, max_tokens=args.max_tokens, sampling=sampling)
        return await _sweep(opener, args)


async def _sweep(opener: PlayerOpener, args: argparse.Namespace) -> list[LevelResult]:
    # One untimed turn first: a fresh server's first request pays one-off costs (allocations,
    # the persona's first prefill) that are no part of serving players.
    async with opener(0) as player:
        await player.turn("Hello.")
    return await run_sweep(
        opener,
        plans_from_args(args, args.sweep),
        load_lines("player_lines"),
        slo_ttft_s=args.slo_ttft,
        slo_min_tok_s=args.slo_tok_s,
        progress=not args.no_progress,
    )


async def _follow_up(opener: PlayerOpener, args: argparse.Namespace) -> dict[str, LevelResult]:
    return await run_follow_up(
        opener,
        num_players=args.follow_up_players,
        concurrency=args.follow_up_slots,
        slo_ttft_s=args.slo_ttft,
        slo_min_tok_s=args.slo_tok_s,
        seed=args.seed,
    )


def summarize(
    sweeps: Mapping[str, Sequence[LevelResult]], follow_ups: Mapping[str, Mapping[str, LevelResult]]
) -> dict[str, Any]:
    """The ratios and the figures behind them, for the JSON's top level."""
    capacity = {system: capacity_at_slo(levels) for system, levels in sweeps.items()}
    common = {lv.concurrency for lv in sweeps[BANTERBOX]} & {lv.concurrency for lv in sweeps[LLAMA]}
    level = 32 if 32 in common else max(c for c in common if c is not None)
    tok_s = {
        s: next(lv.metrics.output_tok_s for lv in levels if lv.concurrency == level)
        for s, levels in sweeps.items()
    }
    ttft = {s: phases["follow_up"].metrics.ttft.p50 for s, phases in follow_ups.items()}
    return {
        "capacity_ratio": ratio(capacity[BANTERBOX], capacity[LLAMA]),
        "follow_up_ttft_ratio": ratio(ttft[BANTERBOX], ttft[LLAMA]),
        "tok_s_ratio_at_32": ratio(tok_s[BANTERBOX], tok_s[LLAMA]),
        "tok_s_ratio_level": level,
        "capacity_at_slo": capacity,
        "output_tok_s_at_level": tok_s,
        "follow_up_ttft_p50_ms": ttft,
        "ratio_definitions": (__doc__ or "").split("\n", 3)[3].strip(),
        "follow_up": {
            s: {k: v.to_dict() for k, v in phases.items()} for s, phases in follow_ups.items()
        },
    }


def _model_label(model: Path) -> str:
    """The model by file name and sha256: no machine paths in committed results."""
    digest = hashlib.sha256()
    with model.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return f"{model.name} (sha256 {digest.hexdigest()})"


def run(args: argparse.Namespace) -> int:
    from server.pull import default_model_path

    model = args.model or default_model_path(os.environ)
    if find_binary("llama-server") is None:
        print(f"bench compare: llama-server is not built; run {BUILD_SCRIPT}")
        return 2
    sweeps: dict[str, list[LevelResult]] = {}
    follow_ups: dict[str, dict[str, LevelResult]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-compare-") as tmp:
        logs = Path(tmp)
        for follow_up in (False, True):
            with launch_banterbox(
                model, threads=args.threads, log_path=logs / "bb.log", dtype=args.dtype
            ) as url:
                result = asyncio.run(_banterbox(url, args, follow_up=follow_up))
            (follow_ups if follow_up else sweeps)[BANTERBOX] = result
            parallel = args.follow_up_slots if follow_up else max(args.sweep)
            with launch_llama_server(
                model,
                parallel=parallel,
                ctx_per_slot=args.ctx_per_slot,
                threads=args.threads,
                log_path=logs / "llama.log",
            ) as base:
                result = asyncio.run(_llama(base, args, follow_up=follow_up))
            (follow_ups if follow_up else sweeps)[LLAMA] = result
    summary = summarize(sweeps, follow_ups)
    follow_table = markdown_table(
        {f"{s} {phase}": [lv] for s, phases in follow_ups.items() for phase, lv in phases.items()}
    )
    notes = [
        "### follow-up turns", follow_table,
        "### ratios (Banterbox / llama-server)",
        "\n".join(f"- {k}: {summary[k]}" for k in ("capacity_ratio", "capacity_at_slo",
                   "tok_s_ratio_at_32", "tok_s_ratio_level", "follow_up_ttft_ratio")),
    ]  # fmt: skip
    files = write_report(
        args.json or default_json_path("compare"),
        scenario="compare",
        config={**config_of(args), "model": _model_label(model)},
        series=sweeps,
        summary=summary,
        notes=notes,
    )
    print(files.markdown)
    print(f"wrote {files.json_path}")
    return 0
