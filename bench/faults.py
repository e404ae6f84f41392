"""`python -m bench faults`: faults injected under streaming load, acknowledged turns counted.

Each scenario runs real processes (bench/procs.py): `banterbox serve` children, a real
redis-server, SQLite on a real tmpfs. N players each keep a session and talk turn after turn;
a turn is acknowledged when its `done` arrived. A player whose connection dies reconnects
(to the next replica, in a fleet) and `session.resume`s; `store_unavailable` is retried. At the
end every session's record in the store is compared with what its player acknowledged:

- kill9: `kill -9` of the server mid-stream (SQLite), restart on the same port;
- redis-restart: `kill -9` of Redis (AOF, appendfsync always) under load, then restart;
- replica-kill: two replicas on one Redis, `kill -9` of the one serving every player;
- read-only: the server restarted on a read-only data directory that turns writable later;
- disk-full: the SQLite data directory's disk filled under load, then freed.

`--cost` instead measures what durability costs (bench/faults_cost.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import subprocess
import tempfile
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from websockets.exceptions import WebSocketException

from server.client import CONNECTION_CLOSED, BanterboxClient, BanterboxError
from server.pull import default_model_path
from server.store import SqliteStore, Store
from server.store.redis_store import RedisStore

from .faults_cost import PERSONA, CostResult, Setup, commit_ms, cost
from .fuzz import model_record
from .procs import RedisServer, ServerProcess
from .report import write_json

SCENARIOS = ("kill9", "redis-restart", "replica-kill", "read-only", "disk-full")
TENANT = "default"  # the tenant of a server without keys


@dataclass(kw_only=True)
class Player:
    """One game client: its session, the lines it said and the replies whose done it got."""

    session_id: str
    urls: Sequence[str]
    max_tokens: int
    acked: dict[str, str] = field(default_factory=dict)  # line → reply
    num_refused: int = 0  # store_unavailable answers (retried)
    num_reconnects: int = 0
    failed: str = ""  # the error code that ended this player (one a retry cannot change)

    async def run(self, stop: asyncio.Event, gate: asyncio.Lock) -> None:
        index, opened = 0, False
        while not stop.is_set():
            try:
                async with contextlib.AsyncExitStack() as stack:
                    async with gate:  # a server takes 8 sockets before hello per address
                        client = await stack.enter_async_context(
                            BanterboxClient.connect(self.urls[index])
                        )
                        if opened:
                            await client.resume_session(self.session_id)
                        else:
                            await client.open_session(self.session_id, {"system": PERSONA})
                            opened = True
                    await self._talk(client, stop)
            except (BanterboxError, WebSocketException, OSError) as exc:
                if isinstance(exc, BanterboxError) and exc.code == "store_unavailable":
                    self.num_refused += 1  # the resume: the store is down, try again
                elif (
                    isinstance(exc, BanterboxError)
                    and not exc.retryable
                    and exc.code != CONNECTION_CLOSED
                ):
                    self.failed = exc.code  # e.g. prompt_too_long: the session is full
                    return
                else:
                    self.num_reconnects += 1
                index = (index + 1) % len(self.urls)
                await asyncio.sleep(0.2)

    async def _talk(self, client: BanterboxClient, stop: asyncio.Event) -> None:
        while not stop.is_set():
            line = f"{self.session_id}, line {len(self.acked) + self.num_refused}: any work?"
            stream = client.generate(
                messages=[{"role": "user", "content": line}],
                session_id=self.session_id,
                max_tokens=self.max_tokens,
            )
            try:
                await stream.collect()
            except BanterboxError as exc:
                if exc.code != "store_unavailable":
                    raise
                self.num_refused += 1
                await asyncio.sleep(0.2)
                continue
            self.acked[line] = stream.text


@dataclass(frozen=True, kw_only=True)
class FaultResult:
    scenario: str
    store: str
    num_sessions: int
    num_acked: int  # turns whose done a client received
    num_lost: int  # of those, missing from the store or not byte-identical
    num_refused: int  # store_unavailable answers during the fault (retried by the players)
    num_reconnects: int
    during: str = ""  # what the server said while the fault lasted
    note: str = ""


class Load:
    """N players against some URLs, paced by waits on their acknowledged turns."""

    def __init__(self, urls: Sequence[str], *, num_sessions: int, max_tokens: int) -> None:
        self.players = [
            Player(session_id=f"player-{i}", urls=urls, max_tokens=max_tokens)
            for i in range(num_sessions)
        ]
        self._stop = asyncio.Event()
        gate = asyncio.Lock()
        self._tasks = [asyncio.create_task(p.run(self._stop, gate)) for p in self.players]

    async def each_acked(self, more: int, *, timeout_s: float = 600.0) -> None:
        """Until every player has `more` acknowledged turns beyond what it has now."""
        targets = [len(p.acked) + more for p in self.players]
        async with asyncio.timeout(timeout_s):
            while any(
                len(p.acked) < t and not p.failed
                for p, t in zip(self.players, targets, strict=True)
            ):
                await asyncio.sleep(0.05)

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    async def verdict(self, store: Store) -> tuple[int, int]:
        """(acknowledged, lost): an acked line must be in the record with the same reply."""
        num_acked = num_lost = 0
        for player in self.players:
            record = await store.load_session(TENANT, player.session_id)
            kept = dict(zip(
                (c for _, c in record.messages[::2]), (c for _, c in record.messages[1::2]),
                strict=True,
            )) if record else {}  # fmt: skip
            num_acked += len(player.acked)
            num_lost += sum(kept.get(line) != reply for line, reply in player.acked.items())
        return num_acked, num_lost

    def result(
        self, scenario: str, store: str, acked_lost: tuple[int, int], **kw: str
    ) -> FaultResult:
        return FaultResult(
            scenario=scenario,
            store=store,
            num_sessions=len(self.players),
            num_acked=acked_lost[0],
            num_lost=acked_lost[1],
            num_refused=sum(p.num_refused for p in self.players),
            num_reconnects=sum(p.num_reconnects for p in self.players),
            note=", ".join(
                sorted({f"a player ended on {p.failed}" for p in self.players if p.failed})
            ),
            **kw,
        )


async def readyz(port: int) -> int:
    with contextlib.suppress(OSError):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
        status = int((await asyncio.wait_for(reader.readline(), 5)).split()[1])
        writer.close()
        return status
    return 0


async def stateless_ok(url: str) -> bool:
    try:
        async with BanterboxClient.connect(url) as client:
            await client.generate(prompt="Hello", max_tokens=4).collect()
    except (BanterboxError, WebSocketException, OSError):
        return False
    return True


# --- scenarios ---------------------------------------------------------------------------------


async def kill9(s: Setup) -> FaultResult:
    path = s.folder / "kill9" / "banterbox.db"
    server = ServerProcess(s.model, store_url=f"sqlite://{path}", args=s.server_args).start()
    load = Load([server.url], num_sessions=s.num_sessions, max_tokens=s.max_tokens)
    try:
        await load.each_acked(2)
        server.kill()  # turns are streaming on every session now
        server.start()
        await load.each_acked(2)  # every player resumed and went on
        await load.stop()
    finally:
        server.stop()
    store = SqliteStore(path)
    try:
        return load.result("kill9", "sqlite", await load.verdict(store))
    finally:
        await store.close()


async def redis_restart(s: Setup) -> FaultResult:
    redis = RedisServer(s.folder / "redis-restart").start()
    args = (*s.server_args, "--config", str(_health_config(s.folder)))
    server = ServerProcess(s.model, store_url=redis.url, args=args).start()
    load = Load([server.url], num_sessions=s.num_sessions, max_tokens=s.max_tokens)
    try:
        await load.each_acked(2)
        redis.kill()
        await asyncio.sleep(3.0)  # an outage longer than the client's retries
        status, streamed = await readyz(server.port), await stateless_ok(server.url)
        during = f"/readyz {status}; stateless turns {'streamed' if streamed else 'FAILED'}"
        redis.start()  # the AOF holds every acknowledged write
        await load.each_acked(2)
        await load.stop()
        store = RedisStore(redis.url)
        result = load.result("redis-restart", "redis", await load.verdict(store), during=during)
        await store.close()
        return result
    finally:
        server.stop()
        redis.stop()


async def replica_kill(s: Setup) -> FaultResult:
    redis = RedisServer(s.folder / "replica-kill").start()
    one = ServerProcess(s.model, store_url=redis.url, args=s.server_args).start()
    two = ServerProcess(s.model, store_url=redis.url, args=s.server_args).start()
    load = Load([one.url, two.url], num_sessions=s.num_sessions, max_tokens=s.max_tokens)
    try:
        await load.each_acked(2)
        one.kill()  # every player was on replica one: all move to two and resume there
        await load.each_acked(2)
        await load.stop()
        store = RedisStore(redis.url)
        result = load.result("replica-kill", "redis", await load.verdict(store))
        await store.close()
        return result
    finally:
        one.stop()
        two.stop()
        redis.stop()


@contextlib.contextmanager
def tmpfs(folder: Path, size: str) -> Iterator[Path | None]:
    """A tmpfs of its own (None where this machine does not let us mount one)."""
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                              str(folder)], capture_output=True)  # fmt: skip
    if mounted.returncode != 0:
        yield None
        return
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def skipped(scenario: str) -> FaultResult:
    return FaultResult(scenario=scenario, store="sqlite", num_sessions=0, num_acked=0,
                       num_lost=0, num_refused=0, num_reconnects=0,
                       note="skipped: cannot mount a tmpfs here")  # fmt: skip


async def while_down(server: ServerProcess) -> str:
    await asyncio.sleep(2.0)
    status, streamed = await readyz(server.port), await stateless_ok(server.url)
    return f"/readyz {status}; stateless turns {'streamed' if streamed else 'FAILED'}"


async def sqlite_fault(
    s: Setup,
    scenario: str,
    *,
    size: str,
    inject: Callable[[ServerProcess, Path], None],
    recover: Callable[[Path], None],
) -> FaultResult:
    """A SQLite server on a tmpfs of its own under load: `inject` breaks its data directory,
    the server says what it can while it is broken, `recover` repairs it, the load goes on."""
    with tmpfs(s.folder / scenario, size) as mount:
        if mount is None:
            return skipped(scenario)
        path = mount / "banterbox.db"
        args = (*s.server_args, "--config", str(_health_config(s.folder)))
        server = ServerProcess(s.model, store_url=f"sqlite://{path}", args=args).start()
        load = Load([server.url], num_sessions=s.num_sessions, max_tokens=s.max_tokens)
        try:
            await load.each_acked(2)
            inject(server, mount)
            during = await while_down(server)
            recover(mount)
            await load.each_acked(2)
            await load.stop()
        finally:
            server.stop()
        store = SqliteStore(path)
        try:
            return load.result(scenario, "sqlite", await load.verdict(store), during=during)
        finally:
            await store.close()


def remount_read_only(server: ServerProcess, mount: Path) -> None:
    # Linux will not remount read-only under a file open for writing: the server meets the
    # read-only directory at a restart (a volume mounted wrong), and it turns writable again
    # under the running server.
    server.stop()
    subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
    server.start()


def remount_writable(mount: Path) -> None:
    subprocess.run(["mount", "-o", "remount,rw", str(mount)], check=True)


def fill_disk(server: ServerProcess, mount: Path) -> None:
    """Until the disk is full, under the running turns."""
    with contextlib.suppress(OSError), (mount / "filler").open("wb") as out:
        while True:
            out.write(b"\0" * (1 << 20))
            out.flush()


def free_disk(mount: Path) -> None:
    (mount / "filler").unlink()


async def read_only(s: Setup) -> FaultResult:
    return await sqlite_fault(
        s, "read-only", size="64m", inject=remount_read_only, recover=remount_writable
    )


async def disk_full(s: Setup) -> FaultResult:
    return await sqlite_fault(s, "disk-full", size="32m", inject=fill_disk, recover=free_disk)


def _health_config(folder: Path) -> Path:
    path = folder / "health.toml"
    path.write_text("[store]\nhealth_interval_s = 0.2\n")
    return path


RUNNERS: dict[str, Callable[[Setup], Coroutine[Any, Any, FaultResult]]] = {
    "kill9": kill9, "redis-restart": redis_restart, "replica-kill": replica_kill,
    "read-only": read_only, "disk-full": disk_full,
}  # fmt: skip


# --- the command -------------------------------------------------------------------------------


def add_arguments(scenarios: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = scenarios.add_parser("faults", help="kill -9, Redis restart, replica loss, read-only disk")
    p.add_argument("--model", type=Path, default=None, help="default: the pulled SmolLM2 GGUF")
    p.add_argument("--sessions", type=int, default=16, help="players, one session each")
    p.add_argument("--max-tokens", type=int, default=16, help="per turn")
    p.add_argument("--threads", type=int, default=2, help="engine threads per server")
    p.add_argument("--only", type=lambda t: t.split(","), default=list(SCENARIOS),
                   help=f"some of {','.join(SCENARIOS)}")  # fmt: skip
    p.add_argument("--cost", action="store_true", help="measure durability's cost instead")
    p.add_argument("--rounds", type=int, default=3, help="--cost: pairs of memory/SQLite rounds")
    p.add_argument("--turns", type=int, default=4, help="--cost: turns per player")
    p.add_argument("--json", type=Path, default=None, help="also write JSON (and .md beside it)")
    p.set_defaults(run=run)


def cost_ratios(costs: Sequence[CostResult]) -> dict[str, dict[str, Any]]:
    """SQLite / memory of each figure: per pair of rounds, their median, and pooled."""
    by = {(c.store, c.round): asdict(c) for c in costs}
    pairs = sorted({c.round for c in costs if c.round >= 0})
    ratios: dict[str, dict[str, Any]] = {}
    for k in ("ttft_p50_ms", "ttft_p95_ms", "itl_p50_ms", "itl_mean_ms"):
        each = [by["sqlite", p][k] / by["memory", p][k] for p in pairs]
        ratios[k] = {
            "pairs": [round(r, 3) for r in each],
            "median_of_pairs": statistics.median(each),
            "pooled": by["sqlite", -1][k] / by["memory", -1][k],
        }
    return ratios


def table(rows: Sequence[dict[str, Any]]) -> str:
    heads = list(rows[0])
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    lines += ["| " + " | ".join(str(row[h]) for h in heads) + " |" for row in rows]
    return "\n".join(lines)


def command_line(args: argparse.Namespace) -> str:
    words = ["python -m bench faults", f"--sessions {args.sessions}",
             f"--max-tokens {args.max_tokens}", f"--threads {args.threads}"]  # fmt: skip
    if args.model is not None:
        words.append(f"--model {args.model.name}")  # the file's name: no machine paths
    if args.cost:
        words += ["--cost", f"--rounds {args.rounds}", f"--turns {args.turns}"]
    elif args.only != list(SCENARIOS):
        words.append(f"--only {','.join(args.only)}")
    return " ".join(words)


def run(args: argparse.Namespace) -> int:
    import os

    model = args.model or default_model_path(os.environ)
    with tempfile.TemporaryDirectory(prefix="banterbox-faults-") as folder:
        setup = Setup(
            model=model, folder=Path(folder), num_sessions=args.sessions,
            max_tokens=args.max_tokens,
            server_args=("--threads", str(args.threads), "--kv-cache-mib", "256"),
        )  # fmt: skip
        if args.cost:
            costs = asyncio.run(cost(setup, rounds=args.rounds, num_turns=args.turns))
            commits = asyncio.run(commit_ms(setup.folder))
            rows = [{k: round(v, 1) if isinstance(v, float) else v for k, v in asdict(c).items()}
                    for c in costs]  # fmt: skip
            ratios = cost_ratios(costs)
            summary = "SQLite / memory (median of the pairs' ratios; pooled medians' ratio): "
            summary += ", ".join(
                f"{k} {v['median_of_pairs']:.3f}; {v['pooled']:.3f}" for k, v in ratios.items()
            )
            summary += "\n\nCommits: " + ", ".join(f"{k} {v:.2f}" for k, v in commits.items())
            report: dict[str, Any] = {"results": rows, "sqlite_over_memory": ratios, **commits}
        else:
            results = [asyncio.run(RUNNERS[name](setup)) for name in args.only]
            rows = [asdict(r) for r in results]
            lost = sum(r.num_lost for r in results)
            summary = f"acknowledged turns lost: {lost} of {sum(r.num_acked for r in results)}"
            report = {"results": rows, "num_lost": lost}
    text = table(rows) + "\n\n" + summary
    print(text)
    if args.json is not None:
        report = {"command": command_line(args), "model": model_record(model.name, model), **report}
        write_json(args.json, report)
        args.json.with_suffix(".md").write_text(
            f"# {'Durability cost' if args.cost else 'Faults'}\n\n`{command_line(args)}` "
            f"(model {model.name})\n\n{text}\n"
        )
    return 0 if args.cost or report["num_lost"] == 0 else 1
