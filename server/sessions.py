"""Per-tenant conversation sessions: transcript, metadata, idle TTL. No I/O, no engine calls.

Ids are scoped by tenant: two tenants may both have a session "npc-7" and never see each other's.
Opening an id that already exists for the tenant resumes it (`resumed: true`), so a client can
open its sessions idempotently after a reconnect. Another tenant's id is, to the caller, a
session that does not exist. The transcript holds completed turns only: the user messages of
a turn and the assistant's reply are appended together when the turn ends (not when it is
cancelled or fails). A session's `metadata["system"]`, when given, is its system prompt.

Ids the server makes carry this run's instance id (`s-<instance>-<random>`). Until sessions are
durable, such an id from an earlier run is answered with `session_lost`, never silently opened
empty. Open sessions are capped per tenant, per opening connection and per source address, so
one client cannot fill its tenant's table.
"""

from __future__ import annotations

import re
import secrets
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from protocol import ChatMessage, ErrorCode, ProtocolError, Role

from .engine.llm import Transcript

SYSTEM_KEY = "system"
_SERVER_ID = re.compile(r"s-([0-9a-f]{8})-[0-9a-f]{16}")


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

    @property
    def engine_session_id(self) -> str:
        # Session ids have no control characters, so the separator cannot be forged.
        return f"{self.tenant}\x1f{self.session_id}"

    def prompt_messages(self, new: Sequence[ChatMessage]) -> list[ChatMessage]:
        """System prompt + history + the new turn's messages, ready for the chat template."""
        system = self.metadata.get(SYSTEM_KEY)
        head = [ChatMessage(role=Role.SYSTEM, content=system)] if system else []
        return [*head, *self.messages, *new]


class SessionStore:
    """Every tenant's open sessions, expired after `idle_ttl_s` without use."""

    def __init__(
        self,
        *,
        idle_ttl_s: float = 600.0,
        max_per_tenant: int = 1024,
        max_per_connection: int = 256,
        max_per_address: int = 512,
        clock: Callable[[], float] = time.monotonic,
        on_end: Callable[[Session], None] | None = None,  # each closed or expired session
    ) -> None:
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

    def __len__(self) -> int:
        return len(self._sessions)

    def open(
        self,
        tenant: str,
        session_id: str | None,
        metadata: Mapping[str, str] | None,
        opener: Opener | None = None,
    ) -> tuple[Session, bool]:
        """The new session, or the tenant's existing one with that id (True: resumed)."""
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
        self._sessions[(tenant, session_id)] = session
        self._count(session, +1)
        return session, False

    def _refuse_lost(self, session_id: str) -> None:
        match = _SERVER_ID.fullmatch(session_id)
        if match is not None and match.group(1) != self.instance_id:
            raise ProtocolError(
                ErrorCode.SESSION_LOST,
                f"session {session_id!r} was made by an earlier run of this server and its "
                "history is gone; open a new session and replay the history",
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
            self._refuse_lost(session_id)
            raise ProtocolError(
                ErrorCode.SESSION_NOT_FOUND, f"no session {session_id!r} (closed or expired?)"
            )
        session.last_used = self._clock()
        return session

    def close(self, tenant: str, session_id: str) -> Session:
        session = self.get(tenant, session_id)
        del self._sessions[(tenant, session_id)]
        self._ended(session)
        return session

    def _ended(self, session: Session) -> None:
        self._count(session, -1)
        if self._on_end is not None:
            self._on_end(session)

    def complete_turn(
        self,
        session: Session,
        new: Sequence[ChatMessage],
        reply: str,
        transcript: Transcript | None = None,
    ) -> None:
        session.transcript = transcript
        session.messages.extend(new)
        session.messages.append(ChatMessage(role=Role.ASSISTANT, content=reply))
        session.num_turns += 1
        session.last_used = self._clock()

    def expire(self) -> list[Session]:
        """Forget sessions idle for longer than the TTL (never one with a turn running)."""
        deadline = self._clock() - self._idle_ttl_s
        stale = [key for key, s in self._sessions.items() if s.last_used < deadline and not s.busy]
        expired = [self._sessions.pop(key) for key in stale]
        for session in expired:
            self._ended(session)
        return expired
