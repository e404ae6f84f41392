"""kill -9 of a real `banterbox serve` while 16 sessions stream, then a restart: every turn
whose done a client received is in the store, byte for byte, and resumes."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from server_harness import NO_EOS
from tiny import TinyConfig, random_hf_tensors, write_gguf
from websockets.exceptions import WebSocketException

from bench.procs import RedisServer, ServerProcess
from server.client import BanterboxClient, BanterboxError
from server.store import SessionRecord, SqliteStore, Store
from server.store.redis_store import RedisStore

NUM_SESSIONS = 16
KILL_AFTER_TURNS = 2  # acknowledged on every session; the next ones are streaming
SERVER_ARGS = ("--threads", "1", "--kv-cache-mib", "32", "--default-max-tokens", "12")

Acked = dict[str, list[tuple[str, str]]]  # session id → (user line, reply) of each done


def write_long_model(folder: Path) -> Path:
    """The tiny model with room for however many turns the players get in before the kill."""
    config = TinyConfig(max_position=8192)
    return write_gguf(folder / "tiny-8k.gguf", config, random_hf_tensors(config))


async def play(url: str, session_id: str, acked: Acked, one_at_a_time: asyncio.Lock) -> None:
    """Turn after turn until the server dies under it."""
    with contextlib.suppress(BanterboxError, WebSocketException, OSError):
        async with contextlib.AsyncExitStack() as stack:
            async with one_at_a_time:  # the server allows 8 sockets before hello per address
                client = await stack.enter_async_context(BanterboxClient.connect(url))
                await client.open_session(session_id, {"system": "You are a shopkeeper."})
            for n in range(1000):
                line = f"{session_id} says line {n}"
                stream = client.generate(
                    messages=[{"role": "user", "content": line}],
                    session_id=session_id,
                    sampling=NO_EOS,
                )
                await stream.collect()
                acked[session_id].append((line, stream.text))


def assert_keeps(record: SessionRecord | None, turns: list[tuple[str, str]]) -> None:
    assert record is not None
    # At most one turn more than acknowledged: committed, its done lost in the kill.
    assert len(turns) <= record.num_turns <= len(turns) + 1
    pairs = [(u[1], a[1]) for u, a in zip(record.messages[::2], record.messages[1::2], strict=True)]
    assert pairs[: len(turns)] == turns


async def crash_and_resume(model: Path, store_url: str, open_store: Store) -> None:
    server = ServerProcess(model, store_url=store_url, args=SERVER_ARGS).start()
    acked: Acked = {f"player-{i}": [] for i in range(NUM_SESSIONS)}
    connecting = asyncio.Lock()
    players = [asyncio.create_task(play(server.url, sid, acked, connecting)) for sid in acked]
    try:
        async with asyncio.timeout(120):
            while min(map(len, acked.values())) < KILL_AFTER_TURNS:
                await asyncio.sleep(0.01)
    finally:
        server.kill()  # mid-stream: turns are running on every session
    await asyncio.gather(*players)

    server.start()  # same port, same store
    try:
        for sid, turns in acked.items():
            before = await open_store.load_session("default", sid)
            assert_keeps(before, turns)
            assert before is not None
            async with BanterboxClient.connect(server.url) as client:
                info = await client.resume_session(sid)
                assert info.num_turns == before.num_turns
                stream = client.generate(
                    messages=[{"role": "user", "content": "and now?"}], session_id=sid
                )
                await stream.collect()
            after = await open_store.load_session("default", sid)
            assert after is not None and after.num_turns == before.num_turns + 1
            assert after.messages[: len(before.messages)] == before.messages
            # The resumed transcript is the stored one: where the new prompt's text extends it
            # (the random model's invalid UTF-8 may not), its tokens are reused exactly.
            if after.transcript_text.startswith(before.transcript_text):
                prefix = before.transcript_token_ids
                assert after.transcript_token_ids[: len(prefix)] == prefix
    finally:
        server.stop()


async def test_kill_9_loses_no_acknowledged_turn_sqlite(tmp_path: Path) -> None:
    path = tmp_path / "data" / "banterbox.db"
    store = SqliteStore(path)  # a second reader of the server's file (WAL allows it)
    try:
        await crash_and_resume(write_long_model(tmp_path), f"sqlite://{path}", store)
    finally:
        await store.close()


async def test_kill_9_loses_no_acknowledged_turn_redis(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    url = redis_server.url.replace("/0", "/1")  # a database of its own: the server's prefix
    store = RedisStore(url)
    try:
        await crash_and_resume(write_long_model(tmp_path), url, store)
    finally:
        await store.close()
