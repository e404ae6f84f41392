"""`python -m bench chat`: live-stream chat through the moderation plugin; no plots.

Open loop (default): `mod.check` frames at R msgs/s (Poisson); a message's latency is the
time to its `mod.verdict`, reported in the TTFT columns. Batch mode (`--batch N`): closed
loop, `--concurrency` `mod.check_batch` frames of N messages in flight, reporting messages/s
and the batch latency. A server without the moderation plugin is refused up front with one
line, so a run never measures errors.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import json
import os
import random
import statistics
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from .load import poisson_arrivals
from .metrics import RequestTimeline
from .npc import load_lines
from .report import default_json_path, level_result, write_json, write_report

MODERATION_FRAME = "mod.check"
BATCH_FRAME = "mod.check_batch"


class MissingPluginError(Exception):
    """The server's welcome does not list the moderation plugin's frame type."""


def require_moderation(welcome: Any, url: str) -> None:
    capabilities = tuple(welcome.capabilities)
    if MODERATION_FRAME not in capabilities:
        listed = ", ".join(capabilities) or "none"
        raise MissingPluginError(
            f"server at {url} has no moderation plugin (capabilities: {listed})"
        )


def _message(text: str, index: int, num_users: int, unique: bool) -> dict[str, object]:
    viewer = f"viewer-{index % num_users}"
    if unique:  # a never-seen text: nothing is served from the plugin's memo of repeated lines
        text = f"{text} {index}"
    return {"message_id": str(index), "user": {"id": viewer, "name": viewer}, "text": text}


async def _check(client: Any, text: str, index: int, args: argparse.Namespace) -> RequestTimeline:
    from server.client import BanterboxError

    stream = client.send_plugin(
        MODERATION_FRAME,
        {"channel": "bench", **_message(text, index, args.users, args.unique)},
        end_types=frozenset({"mod.verdict"}),
    )
    start = time.perf_counter()
    try:
        async for _ in stream:
            break  # the first answer is the verdict; later frames are the plugin's business
    except BanterboxError as exc:
        return RequestTimeline(
            start, (), max(time.perf_counter(), start), 0, 0, error_code=exc.code
        )
    now = time.perf_counter()
    return RequestTimeline(start, (now,), now, 0, 0)


async def _run_chat(args: argparse.Namespace) -> list[RequestTimeline]:
    from server.client import BanterboxClient

    messages = load_lines("chat_messages")
    rng = random.Random(args.seed)
    async with BanterboxClient.connect(args.url, api_key=args.api_key) as client:
        require_moderation(client.welcome, args.url)
        await _set_policy(client, args)
        started = time.perf_counter()
        tasks = []
        bar = tqdm(desc=f"chat {args.rate}/s", unit="msg", disable=args.no_progress, leave=False)
        for index, offset in enumerate(poisson_arrivals(args.rate, rng)):
            if offset >= args.duration:
                break
            await asyncio.sleep(max(0.0, started + offset - time.perf_counter()))
            task = asyncio.create_task(_check(client, rng.choice(messages), index, args))
            task.add_done_callback(lambda _: bar.update())
            tasks.append(task)
        timelines = list(await asyncio.gather(*tasks))
        bar.close()
    return timelines


async def _set_policy(client: Any, args: argparse.Namespace) -> None:
    """The bench channel's policy: the default one, or with the LLM judge on every message."""
    policy = {"judge": {"policy": args.judge_policy, "mode": "all"}} if args.judge_policy else {}
    stream = client.send_plugin(
        "mod.config",
        {"channel": "bench", "op": "set", "policy": policy},
        end_types=frozenset({"mod.policy"}),
    )
    async for _ in stream:
        break


async def _run_batches(args: argparse.Namespace, *, first_index: int = 0) -> dict[str, object]:
    """One closed-loop run; its messages are numbered (and their viewers named) from
    `first_index`, so that rounds on one server need not replay each other's viewers."""
    from server.client import BanterboxClient

    texts = load_lines("chat_messages")
    rng = random.Random(args.seed)
    latencies: list[float] = []
    actions: collections.Counter[str] = collections.Counter()
    num_sent = first_index
    async with BanterboxClient.connect(args.url, api_key=args.api_key) as client:
        require_moderation(client.welcome, args.url)
        if BATCH_FRAME not in tuple(client.welcome.capabilities):
            raise MissingPluginError(f"server at {args.url} has no {BATCH_FRAME}")
        await _set_policy(client, args)
        started = time.perf_counter()
        deadline = started + args.duration

        async def worker() -> None:
            nonlocal num_sent
            while time.perf_counter() < deadline:
                first = num_sent
                num_sent += args.batch
                batch = [
                    _message(rng.choice(texts), first + n, args.users, args.unique)
                    for n in range(args.batch)
                ]
                sent = time.perf_counter()
                stream = client.send_plugin(
                    BATCH_FRAME,
                    {"channel": "bench", "messages": batch},
                    end_types=frozenset({"mod.verdicts"}),
                )
                async for frame in stream:
                    verdicts = frame.payload["verdicts"]
                    if len(verdicts) != args.batch:
                        raise RuntimeError(f"{len(verdicts)} verdicts for {args.batch} messages")
                    actions.update(verdict["action"] for verdict in verdicts)
                    break
                latencies.append(time.perf_counter() - sent)

        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        elapsed = time.perf_counter() - started
    ordered = sorted(latencies)
    return {
        "scenario": "chat-batch",
        "config": {k: v for k, v in vars(args).items() if k not in ("run", "api_key", "json")},
        "num_batches": len(latencies),
        "num_messages": len(latencies) * args.batch,
        "duration_s": round(elapsed, 3),
        "messages_per_s": round(len(latencies) * args.batch / elapsed, 1),
        "batch_latency_p50_ms": round(1000 * statistics.median(ordered), 2),
        "batch_latency_p99_ms": round(1000 * ordered[int(0.99 * (len(ordered) - 1))], 2),
        "actions": dict(sorted(actions.items())),  # what the verdicts said: the work done
    }


async def _compare_stores(args: argparse.Namespace) -> dict[str, object]:
    """Batch throughput of two servers of its own, one on the memory store and one on SQLite
    (the default, FULL sync), in `--rounds` alternating pairs (memory first in even pairs,
    SQLite first in odd ones, so a drift of the machine's load falls on both)."""
    import tempfile

    from server.pull import default_model_path

    from .procs import ServerProcess

    model = Path(args.model) if args.model else default_model_path(dict(os.environ))
    results: dict[str, list[dict[str, object]]] = {"memory": [], "sqlite": []}
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "serve.toml"
        config.write_text('[plugins]\nenabled = ["chat", "moderation"]\n', encoding="utf-8")
        server_args = ("--config", str(config), "--threads", "1", "--kv-cache-mib", "64",
                       "--max-inflight", "4096")  # fmt: skip
        urls = {"memory": "memory://", "sqlite": f"sqlite:///{folder}/banterbox.db"}
        servers = {
            name: ServerProcess(model, store_url=url, args=server_args).start()
            for name, url in urls.items()
        }
        # Each round goes on from the viewers of the server's previous rounds: every round
        # replays the same texts (one seed), so a viewer seen again within the duplicate
        # window would be timed out for repeating itself (the third round of a server was
        # all timeouts), and the rounds would measure different work.
        num_sent = dict.fromkeys(servers, 0)
        try:
            for pair in range(args.rounds):
                order = ("memory", "sqlite") if pair % 2 == 0 else ("sqlite", "memory")
                for name in order:
                    run_args = argparse.Namespace(**{**vars(args), "url": servers[name].url})
                    result = await _run_batches(run_args, first_index=num_sent[name])
                    num_sent[name] += int(str(result["num_messages"]))
                    results[name].append(result)
        finally:
            for server in servers.values():
                server.stop()
    rates = {
        name: [float(str(r["messages_per_s"])) for r in runs] for name, runs in results.items()
    }
    pairs = [s / m for m, s in zip(rates["memory"], rates["sqlite"], strict=True)]
    return {
        "scenario": "chat-batch-stores",
        "model": {"file": model.name, "sha256": _sha256(model)},
        "config": {
            k: v
            for k, v in vars(args).items()
            if k not in ("run", "api_key", "json", "url", "model")
        },
        "messages_per_s": {name: rate for name, rate in rates.items()},
        "median_messages_per_s": {name: statistics.median(rate) for name, rate in rates.items()},
        "sqlite_over_memory_per_pair": [round(r, 3) for r in pairs],
        "sqlite_over_memory_median": round(statistics.median(pairs), 3),
        "rounds": results,
    }


def _sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def add_arguments(scenarios: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = scenarios.add_parser("chat", help="chat messages through the moderation plugin")
    p.add_argument("--url", default="ws://127.0.0.1:8765")
    p.add_argument("--api-key", default=None)
    p.add_argument("--rate", type=float, default=5.0, help="messages per second (Poisson)")
    p.add_argument("--duration", type=float, default=30.0, help="seconds of arrivals")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--users", type=int, default=5000, help="distinct viewers sending")
    p.add_argument("--batch", type=int, default=0, help="N > 0: mod.check_batch of N, closed loop")
    p.add_argument("--concurrency", type=int, default=4, help="batches in flight (batch mode)")
    p.add_argument("--unique", action="store_true", help="make every text unique (no memo hits)")
    p.add_argument(
        "--judge-policy", default="", help="plain-words policy: the LLM judge rules every message"
    )
    p.add_argument("--slo-ttft", type=float, default=0.5, help="verdict latency SLO, seconds")
    p.add_argument(
        "--compare-stores",
        action="store_true",
        help="batch mode on two servers of its own: the memory store vs SQLite, alternating",
    )
    p.add_argument("--rounds", type=int, default=3, help="pairs of rounds (--compare-stores)")
    p.add_argument("--model", default="", help="--compare-stores: the servers' model")
    p.add_argument("--json", type=Path, default=None, help="default: bench/results/chat-TIME.json")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    # What `python -m bench` imported (torch among it) out of the collector's reach: the
    # client's full collections took 100+ ms each, counted as verdict latency.
    from server.client import BanterboxClient  # noqa: F401  (imported before the freeze)

    gc.freeze()
    if args.compare_stores:
        if args.batch <= 0:
            print("bench chat: --compare-stores needs --batch N")
            return 2
        result = asyncio.run(_compare_stores(args))
        path = args.json or default_json_path("chat-batch-stores")
        write_json(path, result)
        print(json.dumps({k: v for k, v in result.items() if k != "rounds"}, indent=2))
        return 0
    if args.batch > 0:
        try:
            result = asyncio.run(_run_batches(args))
        except MissingPluginError as exc:
            print(f"bench chat: {exc}")
            return 1
        path = args.json or default_json_path("chat-batch")
        write_json(path, result)
        print(json.dumps(result, indent=2))
        return 0
    started = time.perf_counter()
    try:
        timelines = asyncio.run(_run_chat(args))
    except MissingPluginError as exc:
        print(f"bench chat: {exc}")
        return 1
    level = level_result(
        timelines,
        [0] * len(timelines),
        duration_s=time.perf_counter() - started,
        concurrency=None,
        rate=args.rate,
        num_players=len(timelines),
        slo_ttft_s=args.slo_ttft,
        slo_min_tok_s=0.0,
    )
    config = {k: v for k, v in vars(args).items() if k not in ("run", "api_key")}
    files = write_report(
        args.json or default_json_path("chat"),
        scenario="chat",
        config=config,
        series={"banterbox": [level]},
    )
    print(files.markdown)
    return 0 if level.metrics.num_ok else 1
