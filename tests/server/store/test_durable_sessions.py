"""SessionStore over each store: write-through, a restart (a new SessionStore on the same
store, with another instance id), and two replicas sharing Redis."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from bench.procs import RedisServer
from protocol import ChatMessage, ErrorCode, ProtocolError, Role
from server.engine.llm import Transcript
from server.sessions import SessionStore
from server.store import MemoryStore, SqliteStore, Store
from server.store.redis_store import RedisStore

HI = [ChatMessage(role=Role.USER, content="Hi \U0001f600")]
TRANSCRIPT = Transcript("<|im_start|>user\nHi \U0001f600<|im_end|>\nHello.", (1, 2, 3, 2**31))


async def test_a_restart_resumes_every_acknowledged_turn_exactly(store: Store) -> None:
    before = SessionStore(store=store)
    session, _ = await before.open_session("a", None, {"system": "Be brief."})
    await before.commit_turn(session, HI, "Hello.", TRANSCRIPT)
    named, _ = await before.open_session("a", "npc-7", None)
    after = SessionStore(store=store)  # a new run: another instance id
    assert after.instance_id != before.instance_id
    resumed = await after.resume_session("a", session.session_id)
    assert resumed.transcript == TRANSCRIPT
    assert (resumed.num_turns, resumed.messages, dict(resumed.metadata)) == (
        1,
        [*HI, ChatMessage(role=Role.ASSISTANT, content="Hello.")],
        {"system": "Be brief."},
    )
    assert await after.open_session("a", "npc-7", None) == (after.get("a", "npc-7"), True)
    with pytest.raises(ProtocolError) as foreign:
        await after.resume_session("b", session.session_id)
    assert foreign.value.code is ErrorCode.SESSION_LOST
    assert named.num_turns == 0


async def test_closed_sessions_are_gone_after_a_restart(store: Store) -> None:
    before = SessionStore(store=store)
    session, _ = await before.open_session("a", None, None)
    await before.close_session("a", session.session_id)
    after = SessionStore(store=store)
    with pytest.raises(ProtocolError) as lost:
        await after.open_session("a", session.session_id, None)
    assert lost.value.code is ErrorCode.SESSION_LOST  # never silently opened empty
    with pytest.raises(ProtocolError) as missing:
        await after.resume_session("a", "never-was")
    assert missing.value.code is ErrorCode.SESSION_NOT_FOUND


async def test_the_memory_store_says_lost_after_a_restart() -> None:
    before = SessionStore(store=MemoryStore())
    session, _ = await before.open_session("a", None, None)
    after = SessionStore(store=MemoryStore())
    with pytest.raises(ProtocolError) as lost:
        await after.resume_session("a", session.session_id)
    assert lost.value.code is ErrorCode.SESSION_LOST
    with pytest.raises(ProtocolError) as lost_get:
        after.get("a", session.session_id)
    assert lost_get.value.code is ErrorCode.SESSION_LOST


async def test_a_turn_on_a_session_closed_meanwhile_is_not_kept(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "banterbox.db")
    sessions = SessionStore(store=store)
    session, _ = await sessions.open_session("a", "s1", None)
    await sessions.close_session("a", "s1")
    await sessions.commit_turn(session, HI, "Hello.", TRANSCRIPT)
    assert await store.load_session("a", "s1") is None
    await store.close()


async def test_a_session_moves_between_replicas_sharing_redis(redis_server: RedisServer) -> None:
    prefix = f"test-{secrets.token_hex(4)}:"
    one, two = (RedisStore(redis_server.url, prefix=prefix) for _ in range(2))
    replica_a, replica_b = SessionStore(store=one), SessionStore(store=two)
    session, _ = await replica_a.open_session("a", None, None)
    await replica_a.commit_turn(session, HI, "Hello.", TRANSCRIPT)
    moved = await replica_b.resume_session("a", session.session_id)  # a server-made id of A's
    assert moved.transcript == TRANSCRIPT
    later = Transcript(TRANSCRIPT.text + " Again.", (*TRANSCRIPT.token_ids, 9))
    await replica_b.commit_turn(moved, HI, "Again.", later)
    back = await replica_a.resume_session("a", session.session_id)  # A's copy is stale
    assert (back.num_turns, back.transcript) == (2, later)
    await one.close()
    await two.close()


async def test_a_restarted_server_warms_its_own_store_but_not_a_fleets(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    store = SqliteStore(tmp_path / "banterbox.db")
    before = SessionStore(store=store)
    session, _ = await before.open_session("a", "npc-7", {"system": "Be brief."})
    await before.commit_turn(session, HI, "Hello.", TRANSCRIPT)
    after = SessionStore(store=store)
    assert await after.warm() == 1
    found = after.get("a", "npc-7")  # found without a resume: a plugin's open finds it too
    assert (found.num_turns, found.transcript) == (1, TRANSCRIPT)
    assert after.open("a", "npc-7", None) == (found, True)
    await store.close()
    shared = RedisStore(redis_server.url, prefix=f"test-{secrets.token_hex(4)}:")
    assert await SessionStore(store=shared).warm() == 0
    await shared.close()


async def test_a_plugins_changes_are_durable_when_they_return(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "banterbox.db")
    sessions = SessionStore(store=store)
    await sessions.open_session("a", "npc-1", {"npc": "mara"})
    await sessions.open_session("a", "npc-2", None)
    creak = ChatMessage(role=Role.USER, content="(the door creaks)")
    await sessions.append_messages("a", "npc-1", [creak, creak])
    await sessions.truncate_messages("a", "npc-1", 1)
    await sessions.close_session("a", "npc-2")
    record = await store.load_session("a", "npc-1")  # no waiting: written before the return
    assert record is not None and record.messages == (("user", "(the door creaks)"),)
    assert await store.load_session("a", "npc-2") is None  # a restart will not bring it back
    with pytest.raises(ProtocolError) as missing:
        await sessions.append_messages("a", "npc-2", [creak])
    assert missing.value.code is ErrorCode.SESSION_NOT_FOUND
    await store.close()
