"""`python -m bench npc`: simulated players in multi-turn NPC talks with a Banterbox server.

A player is one game client: its own connection and server-side session, the persona shared
by every player as the system prompt (so prefix sharing pays), lines from bench/corpus and an
exponential think time between turns. Pacing lives in bench/load.py; this module must not
know about other systems (bench/llama_server.py drives the peer with the same driver).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from .load import (
    CONNECT_FAILED,
    LoadPlan,
    Player,
    PlayerOpener,
    PlayerOpenError,
    TurnRecord,
    error_record,
    run_sweep,
)
from .metrics import RequestTimeline
from .report import default_json_path, write_report

CORPUS = Path(__file__).with_name("corpus")


def load_lines(name: str) -> tuple[str, ...]:
    """Non-empty lines of bench/corpus/NAME.txt."""
    text = (CORPUS / f"{name}.txt").read_text(encoding="utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def load_persona(name: str) -> str:
    """bench/corpus/persona_NAME.txt, or NAME itself when it is a file's path."""
    path = Path(name) if Path(name).is_file() else CORPUS / f"persona_{name}.txt"
    return path.read_text(encoding="utf-8").strip()


class BanterboxPlayer:
    """One game client: a connection and a session; the persona goes with the first turn."""

    def __init__(
        self,
        client: Any,
        session_id: str,
        opening: Sequence[Mapping[str, str]],
        *,
        max_tokens: int,
        sampling: Mapping[str, Any],
    ) -> None:
        self._client = client
        self._session_id = session_id
        self._opening = list(opening)
        self._max_tokens = max_tokens
        self._sampling = dict(sampling)

    async def turn(self, line: str) -> TurnRecord:
        from server.client import CONNECTION_CLOSED, BanterboxError

        messages = [*self._opening, {"role": "user", "content": line}]
        self._opening = []
        stream = self._client.generate(
            messages=messages,
            session_id=self._session_id,
            max_tokens=self._max_tokens,
            sampling=self._sampling,
            return_token_ids=True,
        )
        start = time.perf_counter()
        times: list[float] = []
        counts: list[int] = []
        try:
            async for delta in stream:
                times.append(time.perf_counter())
                counts.append(len(delta.token_ids or ()))
        except BanterboxError as exc:
            return error_record(start, exc.code, fatal=exc.code == CONNECTION_CLOSED)
        end = time.perf_counter()
        usage = stream.done.usage
        num_output = usage.num_completion_tokens
        # Token ids make ITL per token exact; a delta without ids (or a count mismatch)
        # leaves the per-delta split unknown rather than wrong.
        exact = bool(counts) and min(counts) >= 1 and sum(counts) == num_output
        timeline = RequestTimeline(
            start,
            tuple(times),
            end,
            usage.num_prompt_tokens,
            num_output,
            delta_num_tokens=tuple(counts) if exact else (),
        )
        return TurnRecord(timeline, num_cached_tokens=usage.num_cached_tokens)


def banterbox_opener(
    url: str,
    persona: str,
    *,
    max_tokens: int,
    sampling: Mapping[str, Any],
    api_key: str | None = None,
    histories: Sequence[Sequence[Mapping[str, str]]] = (),
) -> PlayerOpener:
    """Players against a Banterbox server; histories[i] (optional) precede player i's first line."""

    @contextlib.asynccontextmanager
    async def open_player(index: int) -> AsyncIterator[Player]:
        from websockets.exceptions import WebSocketException

        from server.client import BanterboxClient, BanterboxError

        async with contextlib.AsyncExitStack() as stack:
            try:
                client = await stack.enter_async_context(
                    BanterboxClient.connect(url, api_key=api_key, client_name="banterbox-bench")
                )
                session = await client.open_session()
            except (OSError, TimeoutError, WebSocketException, BanterboxError) as exc:
                raise PlayerOpenError(CONNECT_FAILED, str(exc)) from exc
            history = list(histories[index]) if histories else []
            opening = [{"role": "system", "content": persona}, *history]
            yield BanterboxPlayer(
                client, session.session_id, opening, max_tokens=max_tokens, sampling=sampling
            )

    return open_player


def parse_levels(text: str) -> list[int]:
    levels = [int(part) for part in text.split(",") if part.strip()]
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers like 1,4,8, got {text!r}")
    return levels


def add_load_arguments(p: argparse.ArgumentParser) -> None:
    """Flags shared by `npc` and `compare`."""
    p.add_argument("--turns", type=int, default=4, help="turns per player (default 4)")
    p.add_argument("--think-time", type=float, default=2.0, help="mean pause between turns, s")
    p.add_argument("--duration", type=float, default=None, help="seconds per level; then drain")
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy on every system")
    p.add_argument(
        "--persona", default="brom", help="NAME of bench/corpus/persona_NAME.txt, or a file"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--slo-ttft", type=float, default=1.0, help="TTFT SLO, seconds")
    p.add_argument("--slo-tok-s", type=float, default=10.0, help="minimum stream tokens/s")
    p.add_argument("--json", type=Path, default=None, help="default: bench/results/NAME-TIME.json")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_arguments(scenarios: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = scenarios.add_parser("npc", help="simulated players talking to NPCs over WebSocket")
    p.add_argument("--url", default="ws://127.0.0.1:8765")
    p.add_argument("--api-key", default=None)
    load = p.add_mutually_exclusive_group()
    load.add_argument("--concurrency", type=int, default=None, help="closed loop: players at once")
    load.add_argument("--rate", type=float, default=None, help="open loop: new players per s")
    load.add_argument("--sweep", type=parse_levels, default=None, help="closed loop at each: 1,4,8")
    p.add_argument("--players", type=int, default=None, help="open loop without --duration")
    add_load_arguments(p)
    p.set_defaults(run=run)


def plans_from_args(args: argparse.Namespace, levels: Sequence[int] | None) -> list[LoadPlan]:
    common = {
        "turns": args.turns,
        "think_time_s": args.think_time,
        "duration_s": args.duration,
        "seed": args.seed,
    }
    if levels is not None:
        return [LoadPlan(concurrency=level, **common) for level in levels]
    rate = getattr(args, "rate", None)
    if rate is not None:
        return [LoadPlan(rate=rate, num_players=args.players, **common)]
    return [LoadPlan(concurrency=getattr(args, "concurrency", None) or 1, **common)]


def sampling_of(args: argparse.Namespace) -> dict[str, Any]:
    return {"temperature": args.temperature, "seed": args.seed}


def config_of(args: argparse.Namespace) -> dict[str, Any]:
    return {k: v for k, v in vars(args).items() if k not in ("run", "api_key")}


def run(args: argparse.Namespace) -> int:
    try:
        plans = plans_from_args(args, args.sweep)
    except ValueError as exc:
        print(f"bench npc: error: {exc}")
        return 2
    opener = banterbox_opener(
        args.url,
        load_persona(args.persona),
        max_tokens=args.max_tokens,
        sampling=sampling_of(args),
        api_key=args.api_key,
    )
    levels = asyncio.run(
        run_sweep(
            opener,
            plans,
            load_lines("player_lines"),
            slo_ttft_s=args.slo_ttft,
            slo_min_tok_s=args.slo_tok_s,
            progress=not args.no_progress,
        )
    )
    files = write_report(
        args.json or default_json_path("npc"),
        scenario="npc",
        config=config_of(args),
        series={"banterbox": levels},
    )
    print(files.markdown)
    print(
        f"wrote {files.json_path}, {files.markdown_path}, "
        + ", ".join(str(p) for p in files.png_paths)
    )
    return 0 if all(lv.metrics.num_ok for lv in levels) else 1
