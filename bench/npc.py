"""`python -m bench npc`: simulated players in multi-turn NPC talks with a Banterbox server.

A player is one game client: its own connection, lines from bench/corpus and an exponential
think time between turns. By default it talks to the npc plugin (`npc.say` with the sample
cards, player i to card i mod 3; emotion and action events counted); `--typing` sends
`npc.typing` at a human typing speed before each line, `--compare-typing` runs without and
then with it and reports the TTFT ratio, `--history-tokens` gives each player a history of
narration (`npc.event`) before the first line. `--mode generate` drives plain `generate`
turns with a persona as the system prompt instead: the path `compare` measures against
llama-server. Pacing lives in bench/load.py; this module must not know about other systems
(bench/llama_server.py drives the peer with the same driver).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import time
from collections import Counter
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
    handshake_slot,
    run_sweep,
)
from .metrics import RequestTimeline
from .report import default_json_path, write_report

CORPUS = Path(__file__).with_name("corpus")
SAMPLE_CARDS = ("blacksmith", "quest_giver", "rival")  # plugins/npc/cards
CHARS_PER_TOKEN = 4  # to size a narration history in tokens


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
                async with handshake_slot():
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
    p.add_argument(
        "--mode", choices=("plugin", "generate"), default="plugin",
        help="plugin: npc.say with the sample cards; generate: plain turns with --persona",
    )  # fmt: skip
    p.add_argument("--cards", type=lambda t: t.split(","), default=list(SAMPLE_CARDS))
    p.add_argument("--typing", action="store_true", help="npc.typing before each line")
    p.add_argument("--compare-typing", action="store_true", help="run without, then with typing")
    p.add_argument("--typing-cps", type=float, default=6.0, help="typing speed, chars per s")
    p.add_argument("--history-tokens", type=int, default=0, help="narration before line one")
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
    if args.mode == "plugin":
        return run_npc_plugin(args, plans)
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


class NpcCounts:
    """What a run of npc players saw besides speech: events by kind and name, prefills."""

    def __init__(self) -> None:
        self.events: Counter[str] = Counter()  # "emotion", "action"
        self.names: Counter[str] = Counter()  # "emotion:proud", "action:give_item"
        self.typing: Counter[str] = Counter()  # "sent", "prefilled", "superseded", "skipped"
        # Where a turn's time goes, one entry per completed turn (ms, or a fraction).
        self.first_frame_ms: list[float] = []  # the reply's first frame: an event or speech
        self.server_queue_ms: list[float] = []  # the server's: received to first scheduled
        self.server_ttft_ms: list[float] = []  # the server's: received to first token
        self.cached_fraction: list[float] = []  # prompt tokens found in the KV cache

    def to_dict(self) -> dict[str, Any]:
        return {
            "events": dict(self.events),
            "by_name": dict(sorted(self.names.items())),
            "typing": dict(self.typing),
            "median": {
                "first_frame_ms": _median(self.first_frame_ms),
                "server_queue_ms": _median(self.server_queue_ms),
                "server_ttft_ms": _median(self.server_ttft_ms),
                "cached_fraction": _median(self.cached_fraction),
            },
        }


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


class NpcPlayer:
    """One game client talking to one NPC through the npc plugin."""

    def __init__(
        self,
        client: Any,
        npc: str,
        player: str,
        counts: NpcCounts,
        *,
        max_tokens: int,
        sampling: Mapping[str, Any],
        typing_cps: float | None,
    ) -> None:
        self._client = client
        self._base = {"npc": npc, "player": player}
        self._counts = counts
        self._max_tokens = max_tokens
        self._sampling = dict(sampling)
        self._typing_cps = typing_cps  # None: no npc.typing frames
        self._drains: set[asyncio.Task[None]] = set()

    async def tell(self, narration: Sequence[str]) -> None:
        """Narration the NPC hears before the first line (a history without replies)."""
        for text in narration:
            async for _ in self._client.send_plugin(
                "npc.event", {**self._base, "text": text}, end_types=frozenset({"npc.noted"})
            ):
                pass

    async def turn(self, line: str) -> TurnRecord:
        from protocol import Delta, Done, PluginFrame
        from server.client import CONNECTION_CLOSED, BanterboxError

        if self._typing_cps is not None:
            await self._type(line)
        payload = {**self._base, "text": line, "max_tokens": self._max_tokens, **self._sampling}
        ends = frozenset({"npc.interrupted", "npc.refused", "npc.replaced"})
        stream = self._client.send_plugin("npc.say", payload, end_types=ends)
        start = time.perf_counter()
        times: list[float] = []
        first_frame: float | None = None
        done = None
        try:
            async for frame in stream:
                if first_frame is None and not isinstance(frame, Done):
                    first_frame = time.perf_counter()
                if isinstance(frame, Delta):
                    times.append(time.perf_counter())
                elif isinstance(frame, PluginFrame) and frame.type in ("npc.emotion", "npc.action"):
                    kind = frame.type.removeprefix("npc.")
                    name = frame.payload.get("emotion", frame.payload.get("name"))
                    self._counts.events[kind] += 1
                    self._counts.names[f"{kind}:{name}"] += 1
                elif isinstance(frame, Done):
                    done = frame
        except BanterboxError as exc:
            return error_record(start, exc.code, fatal=exc.code == CONNECTION_CLOSED)
        end = time.perf_counter()
        if done is None:
            return error_record(start, "no_done")
        usage = done.usage
        if first_frame is not None:
            self._counts.first_frame_ms.append((first_frame - start) * 1000)
        if done.timings is not None:
            self._counts.server_queue_ms.append(done.timings.queue_ms)
            self._counts.server_ttft_ms.append(done.timings.ttft_ms)
        if usage.num_prompt_tokens:
            self._counts.cached_fraction.append(usage.num_cached_tokens / usage.num_prompt_tokens)
        timeline = RequestTimeline(
            start, tuple(times), end, usage.num_prompt_tokens, usage.num_completion_tokens
        )
        return TurnRecord(timeline, num_cached_tokens=usage.num_cached_tokens)

    async def _type(self, line: str) -> None:
        """Type LINE at the player's speed, one npc.typing per word (a game's debounce)."""
        assert self._typing_cps is not None
        words = line.split(" ")
        for index in range(1, len(words)):
            partial = " ".join(words[:index])
            await asyncio.sleep((len(words[index - 1]) + 1) / self._typing_cps)
            stream = self._client.send_plugin(
                "npc.typing", {**self._base, "text": partial}, end_types=frozenset({"npc.typed"})
            )
            task = asyncio.create_task(self._drain(stream))
            self._drains.add(task)
            task.add_done_callback(self._drains.discard)
        await asyncio.sleep(len(words[-1]) / self._typing_cps)

    async def _drain(self, stream: Any) -> None:
        from protocol import PluginFrame
        from server.client import BanterboxError

        self._counts.typing["sent"] += 1
        try:
            async for frame in stream:
                if isinstance(frame, PluginFrame) and frame.type == "npc.typed":
                    payload = frame.payload
                    outcome = (
                        "prefilled"
                        if payload.get("prefilled")
                        else "superseded"
                        if payload.get("superseded")
                        else "skipped"
                    )
                    self._counts.typing[outcome] += 1
        except BanterboxError as exc:
            self._counts.typing[f"error:{exc.code}"] += 1


def narration_for(player: str, num_tokens: int) -> list[str]:
    """About NUM_TOKENS of narration, each chunk starting with PLAYER so that no two players
    share a cached prefix past the card."""
    lines = load_lines("player_lines")
    chunks: list[str] = []
    text = ""
    index = 0
    while len(text) + sum(map(len, chunks)) < num_tokens * CHARS_PER_TOKEN:
        text += f" {player} recalls: {lines[index % len(lines)]}"
        index += 1
        if len(text) > 1500:
            chunks.append(text.strip())
            text = ""
    return [*chunks, text.strip()] if text else chunks


def npc_opener(
    url: str,
    counts: NpcCounts,
    *,
    cards: Sequence[str],
    max_tokens: int,
    sampling: Mapping[str, Any],
    typing_cps: float | None,
    history_tokens: int,
    api_key: str | None = None,
    prefix: str = "p",
) -> PlayerOpener:
    """Players of the npc plugin; player i talks to cards[i mod len(cards)]."""

    @contextlib.asynccontextmanager
    async def open_player(index: int) -> AsyncIterator[Player]:
        from websockets.exceptions import WebSocketException

        from server.client import BanterboxClient, BanterboxError

        player_id = f"{prefix}{index}"
        async with contextlib.AsyncExitStack() as stack:
            try:
                async with handshake_slot():
                    client = await stack.enter_async_context(
                        BanterboxClient.connect(url, api_key=api_key, client_name="banterbox-bench")
                    )
                player = NpcPlayer(
                    client,
                    cards[index % len(cards)],
                    player_id,
                    counts,
                    max_tokens=max_tokens,
                    sampling=sampling,
                    typing_cps=typing_cps,
                )
                if history_tokens:
                    await player.tell(narration_for(player_id, history_tokens))
            except (OSError, TimeoutError, WebSocketException, BanterboxError) as exc:
                raise PlayerOpenError(CONNECT_FAILED, str(exc)) from exc
            yield player

    return open_player


def run_npc_plugin(args: argparse.Namespace, plans: Sequence[LoadPlan]) -> int:
    """The npc plugin scenario: one series, or two (without / with typing) to compare."""
    modes = (
        [None, args.typing_cps]
        if args.compare_typing
        else [args.typing_cps if args.typing else None]
    )
    series: dict[str, list[Any]] = {}
    summary: dict[str, Any] = {}
    stamp = int(time.time())
    for typing_cps in modes:
        label = "typing" if typing_cps is not None else "no typing"
        counts = NpcCounts()
        opener = npc_opener(
            args.url,
            counts,
            cards=args.cards,
            max_tokens=args.max_tokens,
            sampling=sampling_of(args),
            typing_cps=typing_cps,
            history_tokens=args.history_tokens,
            api_key=args.api_key,
            prefix=f"{'t' if typing_cps else 'n'}{stamp}-",  # fresh sessions per mode and run
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
        series[label] = levels
        summary[label] = {
            **counts.to_dict(),
            "ttft_ms": [{"p50": lv.metrics.ttft.p50, "p99": lv.metrics.ttft.p99} for lv in levels],
        }
    notes = _typing_notes(series) if args.compare_typing else []
    if notes:
        summary["typing_vs_not"] = notes
    files = write_report(
        args.json or default_json_path("npc"),
        scenario="npc",
        config=config_of(args),
        series=series,
        summary={"npc": summary},
        notes=[f"npc: {json.dumps(summary)}", *notes],
    )
    print(files.markdown)
    print(f"wrote {files.json_path}, {files.markdown_path}")
    return 0 if all(lv.metrics.num_ok for levels in series.values() for lv in levels) else 1


def _typing_notes(series: Mapping[str, Sequence[Any]]) -> list[str]:
    notes = []
    for without, with_typing in zip(series["no typing"], series["typing"], strict=True):
        a, b = without.metrics.ttft, with_typing.metrics.ttft
        if a.p50 and b.p50 and a.p99 and b.p99:
            notes.append(
                f"TTFT with typing-prefill / without at {without.concurrency} players: "
                f"p50 {b.p50:.0f} / {a.p50:.0f} ms = {b.p50 / a.p50:.2f}, "
                f"p99 {b.p99:.0f} / {a.p99:.0f} ms = {b.p99 / a.p99:.2f}"
            )
    return notes
