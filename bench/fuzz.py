"""`python -m bench fuzz`: hostile frames or a disconnect storm against a server, then a verdict.

Without `--url` it starts its own server in this process (loopback, a free port) on the
default model or `--model`. The frames come from bench/fuzz_frames.py and are judged by
bench/fuzz_run.py (the in-suite fuzz test uses both). `--storm N` instead opens N connections
that each start a streaming generate (some on sessions) and drop it at a random point. After
either, every session is closed, one normal turn runs, and /metrics and /readyz are read: the
leak figures are those of a server with nothing left to do. The JSON names the model by name
and sha256, never by path.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import hashlib
import os
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from protocol import Delta, Done, ErrorFrame, ProtocolError, decode_server_frame

from .fuzz_frames import encode
from .fuzz_run import (
    FuzzRun,
    NoWelcome,
    RunSettings,
    Tally,
    answer_key,
    close_sessions,
    http_get,
    normal_turn,
)
from .report import write_json

# Gauges of server/metrics.py read after a run; each must be 0 on a server left idle.
LEAK_GAUGES = (
    "banterbox_running_sequences",
    "banterbox_queue_depth",
    "banterbox_kv_blocks_pinned_by_sessions",
    "banterbox_kv_usage_ratio",
    "banterbox_active_sessions",
)
_CONNECT_TRIES = 30
STORM_PROMPTS = ("Tell me about the old mine.", "What do you sell?", "Who are you?", "Hi")


def add_arguments(scenarios: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = scenarios.add_parser("fuzz", help="hostile frames or a disconnect storm, then leak checks")
    p.add_argument("--url", default=None, help="a running server (default: start one here)")
    p.add_argument("--model", type=Path, default=None, help="default: the pulled SmolLM2 GGUF")
    p.add_argument("--threads", type=int, default=2, help="engine threads of the own server")
    p.add_argument("--frames", type=int, default=100_000, help="fuzz frames to send in all")
    p.add_argument("--connections", type=int, default=4, help="fuzz connections at once")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--storm", type=int, default=None, metavar="N", help="a disconnect storm")
    p.add_argument("--storm-concurrency", type=int, default=32, help="storm connections at once")
    p.add_argument("--json", type=Path, default=None, help="write the report here")
    p.set_defaults(run=run)


# --- after a run -------------------------------------------------------------------------------


def parse_metrics(text: str) -> dict[str, float]:
    """Unlabelled samples of a Prometheus text exposition, by name."""
    samples = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if line.startswith("#") or "{" in name or not value:
            continue
        with contextlib.suppress(ValueError):
            samples[name] = float(value.split()[0])
    return samples


@dataclass(frozen=True, kw_only=True)
class After:
    """The server once the run is over, its sessions closed and one normal turn served."""

    readyz_status: int
    normal_turn_error: str | None  # None: the turn ended with done
    gauges: Mapping[str, float]


async def after_run(url: str, *, settle_s: float = 30.0) -> After:
    turn_error = await normal_turn(url)
    gauges: dict[str, float] = {}
    deadline = time.monotonic() + settle_s
    while True:  # the last turn's final step may land just after its done frame
        gauges = parse_metrics((await http_get(url, "/metrics"))[1])
        settled = all(gauges.get(name, 0.0) == 0.0 for name in LEAK_GAUGES)
        if settled or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    status, _ = await http_get(url, "/readyz")
    return After(readyz_status=status, normal_turn_error=turn_error, gauges=gauges)


def failures(results: Mapping[str, Any]) -> list[str]:
    """What breaks the acceptance line: each a sentence; empty when the run passed."""
    found = []
    if results["untyped_answers"]:
        found.append(f"{results['untyped_answers']} untyped answers")
    if results["engine_deaths"]:
        found.append(f"{results['engine_deaths']} engine deaths")
    if results["readyz_after"] != 200:
        found.append(f"/readyz answered {results['readyz_after']} after the run")
    if results["normal_turn_after"] != "ok":
        found.append(f"normal turn after the run: {results['normal_turn_after']}")
    for name, value in results["leaked"].items():
        if value is None:
            found.append(f"{name} missing from /metrics")
        elif value:
            found.append(f"{name} = {value} once idle")
    for kind, count in results.get("incidents", {}).items():
        found.append(f"{count} incidents of kind {kind}")
    return found


def fuzz_results(tally: Tally, after: After, *, num_restarts: int = 0) -> dict[str, Any]:
    """The report's figures from a fuzz run's tally and the server after it."""
    return {
        "frames_sent": tally.num_frames,
        "steps": tally.num_steps,
        "probes": tally.num_probes,
        "connections_opened": tally.num_connections,
        "answers": dict(sorted(tally.answers.items())),
        "answers_total": sum(tally.answers.values()),
        "untyped_answers": tally.num_untyped,
        "closed_by_server": dict(sorted(tally.closes.items())),
        "incidents": dict(collections.Counter(i.kind for i in tally.incidents)),
        "first_incidents": [str(i) for i in tally.incidents[:10]],
        "engine_deaths": max(tally.num_engine_deaths, num_restarts),
        **_after_fields(after),
        "duration_s": round(tally.duration_s, 1),
    }


def _after_fields(after: After) -> dict[str, Any]:
    return {
        "readyz_after": after.readyz_status,
        "normal_turn_after": after.normal_turn_error or "ok",
        "leaked": {
            name.removeprefix("banterbox_"): _number(after.gauges.get(name)) for name in LEAK_GAUGES
        },
    }


def _number(value: float | None) -> float | int | None:
    return int(value) if value is not None and value.is_integer() else value


# --- the disconnect storm -----------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class StormPlan:
    """What connection `index` of a storm does: deterministic per (seed, index)."""

    index: int
    session_id: str | None  # open this session and run the turn on it
    num_deltas: int  # deltas to read before dropping the connection (0: at once)
    abort: bool  # drop the TCP connection (else a clean WebSocket close)

    @classmethod
    def of(cls, seed: int, index: int) -> StormPlan:
        rng = random.Random(seed * 1_000_003 + index)
        on_session = rng.random() < 0.4
        return cls(
            index=index,
            session_id=f"storm-{seed}-{index}" if on_session else None,
            num_deltas=rng.randint(0, 12),
            abort=rng.random() < 0.5,
        )


@dataclass(kw_only=True)
class StormTally:
    num_connections: int = 0
    num_cut_mid_stream: int = 0  # dropped before the turn's done
    num_ended_first: int = 0  # the turn ended (done or error) before the planned drop
    num_untyped: int = 0
    num_deltas: int = 0
    num_connect_retries: int = 0
    duration_s: float = 0.0
    answers: collections.Counter[str] = field(default_factory=collections.Counter)
    connect_failures: collections.Counter[str] = field(default_factory=collections.Counter)
    sessions: set[str] = field(default_factory=set)


async def _storm_connect(url: str, plan: StormPlan, tally: StormTally) -> ClientConnection | None:
    """Connect like a well-behaved client: HTTP 429/503 (too many sockets) is retried."""
    rng = random.Random(plan.index)
    delay_s = 0.05
    for _ in range(_CONNECT_TRIES):
        try:
            return await connect(url, ping_interval=None, close_timeout=2, open_timeout=30)
        except InvalidStatus as exc:
            if exc.response.status_code not in (429, 503):
                tally.connect_failures[f"HTTP {exc.response.status_code}"] += 1
                return None
            tally.num_connect_retries += 1
        except (OSError, TimeoutError, WebSocketException) as exc:
            tally.connect_failures[f"{type(exc).__name__}: {exc}"[:80]] += 1
            return None
        await asyncio.sleep(delay_s * (0.5 + rng.random()))
        delay_s = min(1.0, delay_s * 2)
    tally.connect_failures["refused after retries"] += 1
    return None


async def _storm_one(url: str, plan: StormPlan, tally: StormTally) -> None:
    ws = await _storm_connect(url, plan, tally)
    if ws is None:
        return
    tally.num_connections += 1
    try:
        await ws.send(encode({"type": "hello", "protocol": 1, "client": "storm"}, "msgpack"))
        await _storm_read(ws, tally)
        turn: dict[str, Any] = {"type": "generate", "id": "t", "max_tokens": 64}
        line = STORM_PROMPTS[plan.index % len(STORM_PROMPTS)]
        turn["sampling"] = {"temperature": 0.7, "seed": plan.index}
        if plan.session_id is not None:
            tally.sessions.add(plan.session_id)
            frame = {"type": "session.open", "id": "o", "session_id": plan.session_id}
            await ws.send(encode(frame, "msgpack"))
            await _storm_read(ws, tally)
            turn["session_id"] = plan.session_id
            turn["messages"] = [{"role": "user", "content": line}]
        else:
            turn["prompt"] = line
        await ws.send(encode(turn, "json" if plan.index % 2 else "msgpack"))
        num_deltas = 0
        while num_deltas < plan.num_deltas:
            answer = await _storm_read(ws, tally)
            if isinstance(answer, Done | ErrorFrame):
                tally.num_ended_first += 1
                return
            num_deltas += isinstance(answer, Delta)
        tally.num_cut_mid_stream += 1
    except (ConnectionClosed, TimeoutError):
        pass
    finally:
        if plan.abort:
            ws.transport.abort()
        else:
            with contextlib.suppress(WebSocketException, OSError, TimeoutError):
                await ws.close()


async def _storm_read(ws: ClientConnection, tally: StormTally) -> object:
    async with asyncio.timeout(120):
        message = await ws.recv()
    try:
        frame = decode_server_frame(message)
    except ProtocolError:
        tally.num_untyped += 1
        return None
    tally.answers[answer_key(frame)] += 1
    tally.num_deltas += isinstance(frame, Delta)
    return frame


async def run_storm(
    url: str, *, num_connections: int, seed: int, concurrency: int = 32
) -> StormTally:
    """N connections, at most `concurrency` at once, each dropped mid-stream; sessions closed."""
    tally = StormTally()
    started = time.perf_counter()
    gate = asyncio.Semaphore(concurrency)

    async def one(index: int) -> None:
        async with gate:
            await _storm_one(url, StormPlan.of(seed, index), tally)

    await asyncio.gather(*(one(index) for index in range(num_connections)))
    await close_sessions(url, tally.sessions, timeout_s=300.0)
    tally.duration_s = time.perf_counter() - started
    return tally


def storm_results(tally: StormTally, after: After, *, num_restarts: int = 0) -> dict[str, Any]:
    return {
        "connections": tally.num_connections,
        "cut_mid_stream": tally.num_cut_mid_stream,
        "ended_before_the_cut": tally.num_ended_first,
        "connect_retries": tally.num_connect_retries,
        "connect_failures": dict(tally.connect_failures),
        "sessions": len(tally.sessions),
        "deltas_received": tally.num_deltas,
        "answers": dict(sorted(tally.answers.items())),
        "untyped_answers": tally.num_untyped,
        "engine_deaths": num_restarts,
        **_after_fields(after),
        "duration_s": round(tally.duration_s, 1),
    }


# --- running it ---------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Target:
    url: str
    model: dict[str, str | None]  # name and sha256: never a path
    vocab_size: int | None = None
    num_restarts: Callable[[], int] | None = None  # engine deaths, for a server in this process


def model_record(name: str, path: Path | None) -> dict[str, str | None]:
    if path is None:
        return {"name": name, "sha256": None}
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return {"name": name, "sha256": digest.hexdigest()}


@contextlib.asynccontextmanager
async def target(args: argparse.Namespace) -> AsyncIterator[Target]:
    """The server under test: --url, or one started here on loopback."""
    if args.url is not None:
        welcome_model = await _model_name(args.url)
        yield Target(url=args.url, model=model_record(welcome_model, args.model))
        return
    from server.app import BanterboxServer
    from server.config import EngineSettings, NetworkSettings, ServerConfig
    from server.engine.llm import LLM
    from server.pull import default_model_path

    path = args.model or default_model_path(os.environ)
    config = ServerConfig(
        server=NetworkSettings(host="127.0.0.1", port=0, ping_interval_s=0),
        engine=EngineSettings(threads=args.threads),
    )
    server = BanterboxServer(config)
    await server.start(lambda: LLM.load(path, config.engine.to_engine_config()))
    try:
        assert server.llm is not None and server.engine is not None
        engine = server.engine
        yield Target(
            url=f"ws://127.0.0.1:{server.port}",
            model=model_record(server.model_name, path),
            vocab_size=server.llm.model.config.vocab_size,
            num_restarts=lambda: int(getattr(engine, "num_restarts", 0)) + (not engine.healthy),
        )
    finally:
        await server.shutdown()


async def _model_name(url: str) -> str:
    async with connect(url, ping_interval=None) as ws:
        await ws.send(encode({"type": "hello", "protocol": 1}, "msgpack"))
        welcome = decode_server_frame(await ws.recv())
    return str(getattr(welcome, "model", "?"))


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    async with target(args) as server:
        restarts = server.num_restarts or (lambda: 0)
        config: dict[str, Any] = {"seed": args.seed, "server": "external" if args.url else "own"}
        if args.storm is not None:
            storm = await run_storm(
                server.url,
                num_connections=args.storm,
                seed=args.seed,
                concurrency=args.storm_concurrency,
            )
            after = await after_run(server.url)
            results = storm_results(storm, after, num_restarts=restarts())
            config |= {"connections": args.storm, "concurrency": args.storm_concurrency}
        else:

            async def ready() -> bool:
                return (await http_get(server.url, "/readyz"))[0] == 200

            settings = RunSettings(
                num_frames=args.frames, num_connections=args.connections, health_every=25
            )
            run = FuzzRun(
                server.url,
                seed=args.seed,
                settings=settings,
                vocab_size=server.vocab_size,
                health=ready,
            )
            try:
                tally = await run.run()
            except NoWelcome as exc:
                raise SystemExit(f"bench fuzz: {exc}") from None
            after = await after_run(server.url)
            results = fuzz_results(tally, after, num_restarts=restarts())
            config |= {"frames": args.frames, "connections": args.connections}
    return {
        "benchmark": "storm" if args.storm is not None else "fuzz",
        "model": server.model,
        "config": config,
        "machine": {"cpus": os.cpu_count()},
        "results": results,
        "failures": failures(results),
    }


def print_table(report: Mapping[str, Any]) -> None:
    results = report["results"]
    rows: list[tuple[str, object]] = []
    for key, value in results.items():
        if key in ("answers", "closed_by_server", "incidents", "leaked") and value:
            rows.extend((f"{key}: {name}", count) for name, count in value.items())
        elif key != "first_incidents":
            rows.append((key, value if value != {} else 0))
    width = max(len(name) for name, _ in rows)
    print(f"| {'bench ' + report['benchmark']:<{width}} | value |")
    print(f"|{'-' * (width + 2)}|-------|")
    for name, value in rows:
        print(f"| {name:<{width}} | {value} |")
    for incident in results.get("first_incidents", [])[:3]:
        print(incident)
    print("PASS" if not report["failures"] else "FAIL: " + "; ".join(report["failures"]))


def run(args: argparse.Namespace) -> int:
    report = asyncio.run(_run(args))
    print_table(report)
    if args.json:
        write_json(args.json, report)
    return 0 if not report["failures"] else 1
