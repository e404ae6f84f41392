"""Two `banterbox serve` replicas (real processes) sharing one real Redis: a session moves
between them; counters and topics are consistent across processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from pathlib import Path

from server_harness import write_tiny_model

from bench.procs import RedisServer, ServerProcess
from protocol import PluginFrame
from server.client import BanterboxClient
from server.store.redis_store import RedisStore

SERVER_ARGS = ("--threads", "1", "--kv-cache-mib", "16", "--default-max-tokens", "8")
NS = "plugin\x1fmoderation\x1ftenant-a"

# A replica's share of the work, as its own process: the store calls a plugin would make.
WORKER = """
import asyncio, json, sys
from server.store.redis_store import RedisStore

async def main(url, job, n):
    store = RedisStore(url, prefix="fleet:")
    ns = "plugin\\x1fmoderation\\x1ftenant-a"
    if job == "incr":
        counts = await asyncio.gather(*(store.incr(ns, "strikes:u1") for _ in range(n)))
        print(json.dumps(counts))
    else:
        for i in range(n):
            await store.publish(ns, "mod.action", {"ban": f"user-{i}"})
    await store.close()

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


async def worker(url: str, job: str, n: int) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", WORKER, url, job, str(n), stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    return out.decode()


async def test_a_session_opened_on_one_replica_resumes_on_the_other(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    model = write_tiny_model(tmp_path)
    url = redis_server.url.replace("/0", "/2")  # the replicas' own database
    one = ServerProcess(model, store_url=url, args=SERVER_ARGS).start()
    two = ServerProcess(model, store_url=url, args=SERVER_ARGS).start()
    try:
        async with BanterboxClient.connect(one.url) as client:
            session_id = (await client.open_session(None, {"system": "Be brief."})).session_id
            for line in ("Hi.", "Any news?"):
                messages = [{"role": "user", "content": line}]
                await client.generate(messages=messages, session_id=session_id).collect()
        async with BanterboxClient.connect(two.url) as client:
            info = await client.resume_session(session_id)  # a server-made id of replica one
            assert (info.resumed, info.num_turns) == (True, 2)
            messages = [{"role": "user", "content": "Bye."}]
            await client.generate(messages=messages, session_id=session_id).collect()
        async with BanterboxClient.connect(one.url) as client:
            info = await client.open_session(session_id)  # one's copy was stale: it reloads
            assert (info.resumed, info.num_turns) == (True, 3)
        store = RedisStore(url)
        record = await store.load_session("default", session_id)
        await store.close()
        assert record is not None
        assert [content for _, content in record.messages[::2]] == ["Hi.", "Any news?", "Bye."]
    finally:
        one.stop()
        two.stop()


async def test_a_counter_incremented_from_two_processes_counts_exactly(
    redis_server: RedisServer,
) -> None:
    url = redis_server.url.replace("/0", "/3")
    outputs = await asyncio.gather(worker(url, "incr", 300), worker(url, "incr", 300))
    counts = [c for out in outputs for c in json.loads(out)]
    assert sorted(counts) == list(range(1, 601))  # every increment once, none lost or doubled
    store = RedisStore(url, prefix="fleet:")
    assert await store.get(NS, "strikes:u1") == 600
    await store.close()


async def test_a_topic_reaches_a_subscriber_in_another_process(redis_server: RedisServer) -> None:
    url = redis_server.url.replace("/0", "/4")
    store = RedisStore(url, prefix="fleet:")
    subscription = await store.subscribe(NS, "mod.action")
    await worker(url, "publish", 5)
    got = [await asyncio.wait_for(anext(subscription), 5) for _ in range(5)]
    assert got == [{"ban": f"user-{i}"} for i in range(5)]
    await subscription.aclose()
    await store.close()


# --- moderation on a fleet: the plugin's events through the shared store ----------------------

MOD_CONFIG = '[plugins]\nenabled = ["chat", "moderation"]\n'
NUM_OFFENCES = 24  # half to each replica, all at once


async def mod_request(client: BanterboxClient, frame_type: str, **payload: object) -> PluginFrame:
    ends = frozenset({"mod.verdict", "mod.policy", "mod.subscribed"})
    frames = [f async for f in client.send_plugin(frame_type, payload, end_types=ends)]
    assert isinstance(frames[-1], PluginFrame) and frames[-1].type in ends, frames[-1]
    return frames[-1]


async def offend(
    client: BanterboxClient, numbers: range, *, user_id: str | None = None
) -> list[PluginFrame]:
    """Offences of several users (or all of one user), sent concurrently on one connection."""
    return await asyncio.gather(*(
        mod_request(client, "mod.check", channel="c1", message_id=f"m{n}",
                    user={"id": user_id or f"u{n}", "name": user_id or f"U{n}"},
                    text=f"pineapple {n}")
        for n in numbers
    ))  # fmt: skip


def strike_of(verdict: PluginFrame) -> int:
    reasons = verdict.payload["reasons"]
    assert isinstance(reasons, list)
    details = [r["detail"] for r in reasons if r["name"] == "escalation"]
    assert len(details) == 1, reasons
    return int(details[0].split()[1].rstrip(":"))  # "strike 3: timeout 600 s"


async def actions_seen(client: BanterboxClient, num: int) -> set[str]:
    seen: set[str] = set()
    while len(seen) < num:
        frame = await asyncio.wait_for(client.events.get(), 30)
        if isinstance(frame, PluginFrame) and frame.type == "mod.action":
            assert frame.payload["channel"] == "c1"
            seen.add(str(frame.payload["message_id"]))
    return seen


async def test_mod_actions_from_either_replica_reach_subscribers_on_both(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    model = write_tiny_model(tmp_path)
    (tmp_path / "banterbox.toml").write_text(MOD_CONFIG)
    url = redis_server.url.replace("/0", "/8")  # the replicas' own database
    args = (*SERVER_ARGS, "--config", str(tmp_path / "banterbox.toml"))
    one = ServerProcess(model, store_url=url, args=args).start()
    two = ServerProcess(model, store_url=url, args=args).start()
    try:
        async with contextlib.AsyncExitStack() as stack:
            bot_one, bot_two, watch_one, watch_two = [
                await stack.enter_async_context(BanterboxClient.connect(server.url))
                for server in (one, two, one, two)
            ]
            # The policy set on one replica is the other's too: it lives in the store.
            policy = {"blocked_terms": ["pineapple"]}
            await mod_request(bot_one, "mod.config", channel="c1", op="set", policy=policy)
            for watcher in (watch_one, watch_two):
                await mod_request(watcher, "mod.subscribe", channel="c1")
            half = NUM_OFFENCES // 2
            verdicts = await asyncio.gather(
                offend(bot_one, range(half)), offend(bot_two, range(half, NUM_OFFENCES))
            )
            assert all(v.payload["action"] != "allow" for got in verdicts for v in got)
            everyone = {f"m{n}" for n in range(NUM_OFFENCES)}
            # Every action, from either replica, reaches the subscribers on both (pub/sub).
            assert await actions_seen(watch_one, NUM_OFFENCES) == everyone
            assert await actions_seen(watch_two, NUM_OFFENCES) == everyone
    finally:
        one.stop()
        two.stop()


async def test_one_users_offences_on_two_replicas_count_one_strike_each(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    model = write_tiny_model(tmp_path)
    (tmp_path / "banterbox.toml").write_text(MOD_CONFIG)
    url = redis_server.url.replace("/0", "/9")
    args = (*SERVER_ARGS, "--config", str(tmp_path / "banterbox.toml"))
    one = ServerProcess(model, store_url=url, args=args).start()
    two = ServerProcess(model, store_url=url, args=args).start()
    try:
        async with (
            BanterboxClient.connect(one.url) as bot_one,
            BanterboxClient.connect(two.url) as bot_two,
        ):
            policy = {"blocked_terms": ["pineapple"], "flood": {"limit": 0},
                      "duplicates": {"limit": 0}}  # fmt: skip
            await mod_request(bot_one, "mod.config", channel="c1", op="set", policy=policy)
            half = NUM_OFFENCES // 2
            verdicts = await asyncio.gather(
                offend(bot_one, range(half), user_id="u1"),
                offend(bot_two, range(half, NUM_OFFENCES), user_id="u1"),
            )
            # Each offence is one strike whichever replica saw it: none lost to a race between
            # the processes (or between the concurrent checks of one), none doubled.
            strikes = sorted(strike_of(v) for got in verdicts for v in got)
            assert strikes == list(range(1, NUM_OFFENCES + 1))
        store = RedisStore(url)
        kept = await store.range("plugin\x1fmoderation\x1fdefault", "offences:c1:u1")
        await store.close()
        assert len(kept) == NUM_OFFENCES
    finally:
        one.stop()
        two.stop()
