"""Per-tenant conversation sessions: a working set in memory, written through to the store.
No engine calls; no I/O but the store's.

Ids are scoped by tenant: two tenants may both have a session "npc-7" and never see each other's.
Opening an id that already exists for the tenant resumes it (`resumed: true`), so a client can
open its sessions idempotently after a reconnect. Another tenant's id is, to the caller, a
session that does not exist. The transcript holds completed turns only: the user messages of
a turn and the assistant's reply are appended together when the turn ends (not when it is
cancelled or fails). A session's `metadata["system"]`, when given, is its system prompt.

Durability (the `*_session` coroutines and `commit_turn`): a session opened, resumed or closed
on the wire and every completed turn are saved to the store before they are answered, so a
turn whose `done` was sent survives a crash. After a restart (or on another replica, with a
shared store) `open_session`/`resume_session` load the record, with the exact transcript; the
engine recomputes the KV. A store that cannot be written answers `store_unavailable` and the
session is left as it was. The working set expires idle sessions; the store expires its records
at the same idle TTL (`expires_at`). A plugin's reads and changes (`find_session`,
`append_messages`, `truncate_messages`, behind plugins.api.SessionAccess) go through the store
the same way, so they hold on any replica and are durable when they return. The synchronous
`open` and `close` change the working set at once and the store soon after (write-behind; on
a shared store a synchronous `open` saves nothing).

Ids the server makes carry this run's instance id (`s-<instance>-<random>`). Such an id from
another run that the store does not have (the memory store after a restart; an expired or
closed one) is answered with `session_lost`, never silently opened empty. Open sessions are
capped per tenant, per opening connection and per source address, so one client cannot fill
its tenant's table.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from protocol import ChatMessage, ErrorCode, ProtocolError, Role

from .engine.llm import Transcript
from .store import MemoryStore, SessionRecord, Store, StoreUnavailable

SYSTEM_KEY = "system"
_SERVER_ID = re.compile(r"s-([0-9a-f]{8})-[0-9a-f]{16}")
log = logging.getLogger("banterbox.sessions")


@dataclass(frozen=True, kw_only=True)
class Opener:
    """Who opens a session: for the per-connection and per-address caps."""

    connection_id: str = ""
    address: str = ""


@dataclass(kw_only=True)
class Session:
    tenant: str
    session_id: str
    metadata: Mapping[str, str]
    messages: list[ChatMessage] = field(default_factory=list)
    num_turns: int = 0
    last_used: float = 0.0
    opener: Opener = field(default_factory=Opener)
    busy: bool = False  # a turn is running: a second concurrent turn would interleave
    # What the model saw and said so far, token for token: the next turn extends it exactly.
    transcript: Transcript | None = None
    # Saves of one session take turns: each writes the state of its moment, in order.
    save_lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False, compare=False)

    @property
    def engine_session_id(self) -> str:
        # Session ids have no control characters, so the separator cannot be forged.
        return f"{self.tenant}\x1f{self.session_id}"

    def prompt_messages(
        self, new: Sequence[ChatMessage], *, system: str | None = None, history_start: int = 0
    ) -> list[ChatMessage]:
        """System prompt + history + the new turn's messages, ready for the chat template.

        A plugin's own system prompt (an NPC's card) takes the place of the session's; the
        history's first `history_start` messages are left out (a plugin summarised them).
        """
        system = system if system is not None else self.metadata.get(SYSTEM_KEY)
        head = [ChatMessage(role=Role.SYSTEM, content=system)] if system else []
        return [*head, *self.messages[history_start:], *new]


class SessionStore:
    """Every tenant's open sessions, expired after `idle_ttl_s` without use."""

    def __init__(
        self,
        *,
        store: Store | None = None,
        idle_ttl_s: float = 600.0,
        max_per_tenant: int = 1024,
        max_per_connection: int = 256,
        max_per_address: int = 512,
        # Wall-clock: `last_used` is saved, and must mean the same after a restart.
        clock: Callable[[], float] = time.time,
        on_end: Callable[[Session], None] | None = None,  # each closed or expired session
    ) -> None:
        self.store = store or MemoryStore()
        self._on_end = on_end
        self._idle_ttl_s = idle_ttl_s
        self._max_per_tenant = max_per_tenant
        self._max_per_connection = max_per_connection
        self._max_per_address = max_per_address
        self._clock = clock
        self._sessions: dict[tuple[str, str], Session] = {}
        self._per_tenant: Counter[str] = Counter()
        self._per_connection: Counter[str] = Counter()
        self._per_address: Counter[str] = Counter()
        self.instance_id = secrets.token_hex(4)  # this run's; in the ids it makes
        self._pending: set[asyncio.Task[None]] = set()  # write-behind of synchronous calls

    def __len__(self) -> int:
        return len(self._sessions)

    def open(
        self,
        tenant: str,
        session_id: str | None,
        metadata: Mapping[str, str] | None,
        opener: Opener | None = None,
    ) -> tuple[Session, bool]:
        """The new session, or the tenant's existing one with that id (True: resumed); a new
        one is saved soon after. Not on a shared store: there another replica may have the id,
        and only `open_session` asks the store."""
        session, resumed = self._open_here(tenant, session_id, metadata, opener)
        if not resumed and not self.store.shared:
            self._later(self.persist(session))
        return session, resumed

    def _open_here(
        self,
        tenant: str,
        session_id: str | None,
        metadata: Mapping[str, str] | None,
        opener: Opener | None = None,
    ) -> tuple[Session, bool]:
        self.expire()
        if session_id is not None:
            existing = self._sessions.get((tenant, session_id))
            if existing is not None:
                existing.last_used = self._clock()
                return existing, True
            self._refuse_lost(session_id)
        opener = opener or Opener()
        self._check_caps(tenant, opener)
        session_id = session_id or f"s-{self.instance_id}-{secrets.token_hex(8)}"
        session = Session(
            tenant=tenant,
            session_id=session_id,
            metadata=MappingProxyType(dict(metadata or {})),
            last_used=self._clock(),
            opener=opener,
        )
        return self._add(session), False

    def _add(self, session: Session) -> Session:
        """Into the working set, counted against its caps."""
        self._sessions[(session.tenant, session.session_id)] = session
        self._count(session, +1)
        return session

    def _adopt(self, record: SessionRecord) -> Session:
        """A stored session into the working set, as the store has it (a resume or a warm
        start is never capped, as in memory)."""
        session = Session(tenant=record.tenant, session_id=record.session_id, metadata={})
        self._refresh(session, record)
        session.last_used = record.last_used
        return self._add(session)

    def _refuse_lost(self, session_id: str) -> None:
        """For an id the store does not have either."""
        match = _SERVER_ID.fullmatch(session_id)
        if match is not None and match.group(1) != self.instance_id:
            why = "expired or was closed" if self.store.durable else "was lost in a restart"
            raise ProtocolError(
                ErrorCode.SESSION_LOST,
                f"session {session_id!r} was made by another run of this server and {why}: "
                "its history is gone; open a new session and replay the history",
            )

    def _check_caps(self, tenant: str, opener: Opener) -> None:
        caps = (
            (self._per_tenant, tenant, self._max_per_tenant, "this tenant", True),
            (self._per_connection, opener.connection_id, self._max_per_connection,
             "this connection", bool(opener.connection_id)),
            (self._per_address, opener.address, self._max_per_address, "this address",
             bool(opener.address)),
        )  # fmt: skip
        for counter, key, limit, who, applies in caps:
            if applies and counter[key] >= limit:
                raise ProtocolError(
                    ErrorCode.SESSION_LIMIT, f"{who} has {limit} open sessions; close some"
                )

    def _count(self, session: Session, delta: int) -> None:
        for counter, key in (
            (self._per_tenant, session.tenant),
            (self._per_connection, session.opener.connection_id),
            (self._per_address, session.opener.address),
        ):
            counter[key] += delta
            if counter[key] <= 0:
                del counter[key]

    def get(self, tenant: str, session_id: str) -> Session:
        """The tenant's session; ProtocolError(session_not_found) if it has none by that id."""
        self.expire()
        session = self._sessions.get((tenant, session_id))
        if session is None:
            if self.store.durable:
                raise ProtocolError(
                    ErrorCode.SESSION_NOT_FOUND,
                    f"session {session_id!r} is not open here (closed, expired, or from before "
                    "a restart or on another replica: session.resume it first)",
                )
            self._refuse_lost(session_id)
            raise ProtocolError(
                ErrorCode.SESSION_NOT_FOUND, f"no session {session_id!r} (closed or expired?)"
            )
        session.last_used = self._clock()
        return session

    def close(self, tenant: str, session_id: str) -> Session:
        """Forget the session now; its record is deleted soon after."""
        session = self._close_here(tenant, session_id)
        self._later(self.store.delete_session(tenant, session_id))
        return session

    def _close_here(self, tenant: str, session_id: str) -> Session:
        session = self.get(tenant, session_id)
        del self._sessions[(tenant, session_id)]
        self._ended(session)
        return session

    def _later(self, work: Coroutine[Any, Any, object]) -> None:
        """Write-behind for the synchronous calls (a plugin's): durable soon after they
        return, not before; a failure is logged (the store watch reports the store down)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop, so no store call can run: a synchronous unit test
            work.close()
            return
        task = loop.create_task(self._quietly(work))
        self._pending.add(task)  # a strong reference until it is done
        task.add_done_callback(self._pending.discard)

    async def _quietly(self, work: Coroutine[Any, Any, object]) -> None:
        try:
            await work
        except (ProtocolError, StoreUnavailable) as exc:
            log.warning("a session change stays in memory only: %s", exc)

    def _ended(self, session: Session) -> None:
        self._count(session, -1)
        if self._on_end is not None:
            self._on_end(session)

    # --- durable ------------------------------------------------------------------------------

    def _unavailable(self, exc: StoreUnavailable) -> ProtocolError:
        # The reason goes to the log (it may name paths or hosts), not to the client.
        log.warning("session store: %s", exc)
        return ProtocolError(
            ErrorCode.STORE_UNAVAILABLE,
            "the session store cannot be written now; nothing was changed, retry later",
        )

    def record(self, session: Session) -> SessionRecord:
        transcript = session.transcript
        return SessionRecord(
            tenant=session.tenant,
            session_id=session.session_id,
            metadata=session.metadata,
            messages=_pairs(session.messages),
            transcript_text=transcript.text if transcript is not None else "",
            transcript_token_ids=transcript.token_ids if transcript is not None else (),
            num_turns=session.num_turns,
            last_used=session.last_used,
            expires_at=session.last_used + self._idle_ttl_s,
        )

    def _refresh(self, session: Session, record: SessionRecord) -> None:
        session.metadata = MappingProxyType(dict(record.metadata))
        session.messages = [ChatMessage(role=Role(r), content=c) for r, c in record.messages]
        session.num_turns = record.num_turns
        has_transcript = record.transcript_text or record.transcript_token_ids
        session.transcript = (
            Transcript(record.transcript_text, record.transcript_token_ids)
            if has_transcript
            else None
        )

    async def warm(self) -> int:
        """After a restart, the store's sessions into the working set: every session is then
        found as before (by a plugin's `find_session`, by a `generate` without a resume).
        Only for a store of this process alone: fleet replicas load a session when it is
        opened or resumed. The store keeps sessions no longer than the working set would."""
        if not self.store.durable or self.store.shared:
            return 0
        try:
            records = await self.store.all_sessions()
        except StoreUnavailable as exc:
            log.warning("sessions not warmed (each loads on its resume): %s", exc)
            return 0
        for record in records:
            if (record.tenant, record.session_id) not in self._sessions:
                self._adopt(record)
        return len(records)

    async def persist(self, session: Session) -> None:
        """Save the session as it is now; ProtocolError(store_unavailable) if that fails."""
        async with session.save_lock:
            if self._sessions.get((session.tenant, session.session_id)) is not session:
                return  # closed or expired meanwhile: saving would bring it back
            try:
                await self.store.save_session(self.record(session))
            except StoreUnavailable as exc:
                raise self._unavailable(exc) from None

    async def _find(self, tenant: str, session_id: str) -> Session | None:
        """The working set's session, else the store's (loaded into the working set). With a
        shared store the record wins: another replica may have run turns on it since."""
        local = self._sessions.get((tenant, session_id))
        if local is not None and not self.store.shared:
            return local
        try:
            record = await self.store.load_session(tenant, session_id)
        except StoreUnavailable as exc:
            if local is not None:
                return local
            raise self._unavailable(exc) from None
        local = self._sessions.get((tenant, session_id))  # another call may have loaded it
        if record is None:
            return local
        if local is None:
            local = self._adopt(record)
        elif not local.busy and (
            record.num_turns != local.num_turns or record.messages != _pairs(local.messages)
        ):  # a turn or a plugin's change (a narration, a cut reply) made elsewhere
            self._refresh(local, record)
        return local

    async def open_session(
        self,
        tenant: str,
        session_id: str | None,
        metadata: Mapping[str, str] | None,
        opener: Opener | None = None,
    ) -> tuple[Session, bool]:
        """`open`, durable: the store's session of that id resumes; a new one is saved."""
        self.expire()
        if session_id is not None:
            found = await self._find(tenant, session_id)
            if found is not None:
                found.last_used = self._clock()
                await self.persist(found)  # its idle TTL starts again in the store too
                return found, True
        session, resumed = self._open_here(tenant, session_id, metadata, opener)
        if not resumed:
            try:
                await self.persist(session)
            except ProtocolError:
                self._forget(session)
                raise
        return session, resumed

    async def resume_session(self, tenant: str, session_id: str) -> Session:
        """The tenant's session from the working set or the store, or session_not_found;
        saved again, so its idle TTL starts again in the store too."""
        found = await self.find_session(tenant, session_id)
        await self.persist(found)
        return found

    async def close_session(self, tenant: str, session_id: str) -> None:
        """`close`, durable: the record is deleted first, then the working set forgets it."""
        local = self._sessions.get((tenant, session_id))
        # Under the session's save lock: a save queued behind it finds the session gone.
        async with local.save_lock if local is not None else contextlib.nullcontext():
            try:
                deleted = await self.store.delete_session(tenant, session_id)
            except StoreUnavailable as exc:
                raise self._unavailable(exc) from None
            if deleted and (tenant, session_id) not in self._sessions:
                return
            self._close_here(tenant, session_id)

    def _forget(self, session: Session) -> None:
        """Undo the working set's half of an open the store refused (it never was open)."""
        if self._sessions.get((session.tenant, session.session_id)) is session:
            del self._sessions[(session.tenant, session.session_id)]
            self._count(session, -1)

    async def find_session(self, tenant: str, session_id: str) -> Session:
        """The tenant's session as the store has it now (a plugin's read), without saving;
        session_not_found (or session_lost) when neither here nor the store has it."""
        self.expire()
        found = await self._find(tenant, session_id)
        if found is None:
            self._refuse_lost(session_id)
            raise ProtocolError(
                ErrorCode.SESSION_NOT_FOUND, f"no session {session_id!r} (closed or expired?)"
            )
        found.last_used = self._clock()
        return found

    async def append_messages(
        self, tenant: str, session_id: str, messages: Sequence[ChatMessage]
    ) -> None:
        """Add messages a plugin wrote (a narration, an interrupted turn) to the transcript,
        durably; on store_unavailable the session is left as it was."""
        session = await self.find_session(tenant, session_id)
        before = (list(session.messages), session.transcript)
        session.messages.extend(messages)
        session.transcript = None  # the exact tokens no longer follow the messages
        await self._persist_or_undo(session, before)

    async def truncate_messages(self, tenant: str, session_id: str, num_messages: int) -> None:
        """Keep the first num_messages messages, durably; the KV is recomputed from them."""
        session = await self.find_session(tenant, session_id)
        before = (list(session.messages), session.transcript)
        del session.messages[max(0, num_messages) :]
        session.transcript = None
        await self._persist_or_undo(session, before)

    async def _persist_or_undo(
        self, session: Session, before: tuple[list[ChatMessage], Transcript | None]
    ) -> None:
        try:
            await self.persist(session)
        except ProtocolError:
            session.messages[:], session.transcript = before
            raise

    async def commit_turn(
        self,
        session: Session,
        new: Sequence[ChatMessage],
        reply: str,
        transcript: Transcript | None = None,
    ) -> None:
        """Append a completed turn and make it durable; on store_unavailable it is undone."""
        before = (len(session.messages), session.transcript, session.num_turns)
        session.transcript = transcript
        session.messages.extend(new)
        session.messages.append(ChatMessage(role=Role.ASSISTANT, content=reply))
        session.num_turns += 1
        session.last_used = self._clock()
        if self._sessions.get((session.tenant, session.session_id)) is not session:
            return  # closed while the turn ran: its transcript is not kept
        try:
            await self.persist(session)
        except ProtocolError:
            if session.num_turns == before[2] + 1:  # nothing else changed it meanwhile
                del session.messages[before[0] :]
                session.transcript, session.num_turns = before[1], before[2]
            raise

    def expire(self) -> list[Session]:
        """Forget sessions idle for longer than the TTL (never one with a turn running)."""
        deadline = self._clock() - self._idle_ttl_s
        stale = [key for key, s in self._sessions.items() if s.last_used < deadline and not s.busy]
        expired = [self._sessions.pop(key) for key in stale]
        for session in expired:
            self._ended(session)
        return expired


def _pairs(messages: Sequence[ChatMessage]) -> tuple[tuple[str, str], ...]:
    """Messages as a store record holds them."""
    return tuple((m.role.value, m.content) for m in messages)
