"""One client WebSocket: handshake, frame dispatch, request multiplexing, sends with a deadline.

The rules live sans I/O in protocol/rules.py (shared with the client): AWAITING_HELLO → READY
→ CLOSING, hello first and once, request ids unique while in flight, every answer in the
encoding of the frame it answers. This module is the I/O around them. A send that
cannot complete within `write_deadline_s` (the client stopped reading) closes the connection
with 1008 and cancels its requests; other connections are untouched. A socket that has not
sent hello within `hello_timeout_s` is closed with 1008; an address that sent too many wrong
keys gets `rate_limited` without its key being looked at. A frame whose handling fails in an
unexpected way gets an `internal` error; the connection and its other requests go on.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.metadata
import itertools
import logging
import secrets
import time
from collections.abc import Coroutine
from contextlib import aclosing, suppress
from dataclasses import dataclass, field
from typing import Any, Protocol

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from plugins.api import GenerateSpec, Plugin, PluginContext
from protocol import (
    PROTOCOL_VERSION,
    Cancel,
    ClientFrame,
    Done,
    Encoding,
    ErrorCode,
    ErrorFrame,
    FinishReason,
    Generate,
    Hello,
    PluginFrame,
    ProtocolError,
    Score,
    ServerFrame,
    SessionClose,
    SessionClosed,
    SessionInfo,
    SessionOpen,
    SessionResume,
    Timings,
    Usage,
    Welcome,
    encode_frame,
    encoding_of,
)
from protocol.rules import ConnectionState, RequestTable, ServerRules

from .auth import Authenticator, AuthFailureLimiter, Principal, bearer_token
from .config import ServerConfig
from .metrics import ServerMetrics
from .plugin_host import PluginRegistry
from .sessions import Opener, SessionStore
from .topics import TopicHub
from .turns import Turn, TurnRunner, generate_spec

log = logging.getLogger("banterbox.connection")


@functools.cache
def server_version() -> str:
    """The installed distribution's version (read once, at the first hello)."""
    return importlib.metadata.version("banterbox")


CORE_CAPABILITIES = (
    "sessions",
    "cancel",
    "token_ids",
    "constraint",
    "logprobs",
    "prefill_only",
    "score",
)
CLOSE_POLICY = 1008  # policy violation: bad handshake, bad key, stalled reader, no hello
CLOSE_GOING_AWAY = 1001
CLOSE_TRY_AGAIN_LATER = 1013  # every authenticated place is taken


class ConnectionGone(Exception):
    """The client is gone or too slow: stop producing frames for it."""


@dataclass(eq=False, kw_only=True)
class Inflight:
    """A request between its frame and its last answer frame."""

    request_id: str
    encoding: Encoding
    received_at: float
    task: asyncio.Task[None] | None = None
    turns: list[Turn] = field(default_factory=list)
    cancelled: bool = False  # cancel() was called: a task ended by it answers "cancelled"
    started: bool = False  # its task began to run (one cancelled before that never would)

    def cancel(self) -> None:
        """Cancel its engine turns (they end with a "cancelled" done), else its task."""
        self.cancelled = True
        if self.turns:
            for turn in self.turns:
                turn.cancel()
        elif self.task is not None and self.started:
            self.task.cancel()


class ConnectionHost(Protocol):
    """What a connection needs of the server. The server implements it; nothing here imports
    the server back."""

    @property
    def config(self) -> ServerConfig: ...
    @property
    def metrics(self) -> ServerMetrics: ...
    @property
    def plugins(self) -> PluginRegistry: ...
    @property
    def sessions(self) -> SessionStore: ...
    @property
    def topics(self) -> TopicHub: ...
    @property
    def authenticator(self) -> Authenticator: ...
    @property
    def auth_failures(self) -> AuthFailureLimiter: ...
    @property
    def ready(self) -> bool: ...
    @property
    def shutting_down(self) -> bool: ...
    @property
    def model_name(self) -> str: ...
    @property
    def turns(self) -> TurnRunner | None: ...

    def wire_limits(self) -> dict[str, int]: ...

    def admit_authenticated(self, connection: Connection) -> bool: ...

    def notify_request_end(self) -> None: ...

    def plugin_context(self, connection: Connection, plugin: Plugin) -> PluginContext: ...


class Connection:
    def __init__(self, ws: ServerConnection, app: ConnectionHost) -> None:
        self.ws = ws
        self.app = app
        self.address = source_address(ws)
        self.connection_id = f"c-{secrets.token_hex(6)}"
        # The rules (state, hello first, request ids, answer encodings) live sans I/O.
        self.rules: ServerRules[Inflight] = ServerRules(
            max_inflight=app.config.server.max_inflight_per_connection
        )
        self.principal: Principal | None = None
        self._engine_ids = itertools.count()
        self._closer: asyncio.Task[None] | None = None

    @property
    def tenant(self) -> str:
        assert self.principal is not None, "no tenant before the handshake"
        return self.principal.tenant

    @property
    def state(self) -> ConnectionState:
        return self.rules.state

    @property
    def inflight(self) -> RequestTable[Inflight]:
        return self.rules.requests

    # --- lifecycle ----------------------------------------------------------------------------

    async def run(self) -> None:
        timeout_s = self.app.config.server.hello_timeout_s
        hello_timer = asyncio.get_running_loop().call_later(timeout_s, self._hello_expired)
        try:
            async for message in self.ws:
                await self._on_message(message)
                if self.state is ConnectionState.CLOSING:
                    break
        except ConnectionClosed:
            pass
        finally:
            hello_timer.cancel()
            self.rules.machine.close()
            self.cancel_all()
            self.app.topics.drop(self)
            if self._closer is not None:
                await self._closer

    def _hello_expired(self) -> None:
        if self.state is ConnectionState.AWAITING_HELLO:
            log.info("%s: no hello from %s in time; closing", self.connection_id, self.address)
            self._close_soon(CLOSE_POLICY, "hello timeout")

    def cancel_all(self) -> None:
        for inflight in self.inflight:
            inflight.cancel()

    async def close(self, code: int, reason: str) -> None:
        """Close now; a client that does not read its close frame is dropped after a timeout."""
        self.rules.machine.close()
        try:
            async with asyncio.timeout(self.app.config.server.close_timeout_s):
                await self.ws.close(code, reason)
        except TimeoutError:
            self.ws.transport.abort()

    def _close_soon(self, code: int, reason: str) -> None:
        self.rules.machine.close()
        if self._closer is None:
            self._closer = asyncio.create_task(self.close(code, reason))

    # --- sending ------------------------------------------------------------------------------

    async def send(self, frame: ServerFrame, encoding: Encoding) -> None:
        if isinstance(frame, ErrorFrame):
            self.app.metrics.errors.labels(frame.code).inc()
        data = encode_frame(frame, encoding)
        try:
            if not self.ws.paused:
                # The transport takes it without waiting (websockets waits only for a paused
                # one): no deadline to arm, a timer saved per frame. A send that fills the
                # buffer pauses it, and the next one gets the deadline.
                await self.ws.send(data)
                return
            async with asyncio.timeout(self.app.config.server.write_deadline_s):
                await self.ws.send(data)
        except TimeoutError:
            log.warning("%s: write deadline exceeded; closing", self.connection_id)
            self.cancel_all()
            self._close_soon(CLOSE_POLICY, "write deadline exceeded")
            raise ConnectionGone("write deadline exceeded") from None
        except ConnectionClosed:
            raise ConnectionGone("connection closed") from None

    async def send_for(self, frame: ServerFrame) -> None:
        """Send in the encoding of the request the frame answers (else the hello's)."""
        await self.send(frame, self.rules.answer_encoding(getattr(frame, "request_id", None)))

    async def _send_error(self, error: ProtocolError, encoding: Encoding) -> None:
        await self.send(ErrorFrame.from_error(error), encoding)
        if error.closes_connection:
            self._close_soon(CLOSE_POLICY, error.code.value)

    # --- receiving ----------------------------------------------------------------------------

    async def _on_message(self, message: str | bytes) -> None:
        received_at = time.monotonic()
        encoding = encoding_of(message)
        try:
            frame = self.rules.receive(
                message, limits=self.app.config.limits, plugin_types=self.app.plugins.frame_types
            )
            await self._dispatch(frame, encoding, received_at)
        except ProtocolError as error:
            with suppress(ConnectionGone):  # the client left before hearing why
                await self._send_error(error, encoding)
        except ConnectionGone:
            pass
        except Exception:  # a bug in handling one frame: that frame fails, nothing else
            log.exception("%s: a frame failed", self.connection_id)
            with suppress(ConnectionGone):
                await self._send_error(
                    ProtocolError(ErrorCode.INTERNAL, "internal error"), encoding
                )

    async def _dispatch(self, frame: ClientFrame, encoding: Encoding, received_at: float) -> None:
        if isinstance(frame, Hello):  # the rules let it through only as the first frame
            await self._on_hello(frame, encoding)
        elif isinstance(frame, Cancel):
            self._on_cancel(frame)
        elif isinstance(frame, SessionOpen | SessionResume | SessionClose):
            self._require_scope("generate", frame.request_id)
            await self.send(await self._on_session(frame), encoding)
        elif isinstance(frame, Generate):
            self._require_scope("generate", frame.request_id)
            inflight = self._admit(frame.request_id, encoding, received_at)
            turn = self._start_or_forget(inflight, generate_spec(frame))
            inflight.turns.append(turn)
            self._spawn(inflight, self._stream_turn(inflight, turn))
        elif isinstance(frame, Score):
            self._require_scope("generate", frame.request_id)
            inflight = self._admit(frame.request_id, encoding, received_at)
            self._spawn(inflight, self._answer_score(inflight, frame))
        else:
            plugin = self.app.plugins.by_type[frame.type]
            request_id = frame.request_id or ""
            self._require_scope(self.app.plugins.scope_of(frame.type), request_id)
            inflight = self._admit(request_id, encoding, received_at)
            self._spawn(inflight, self._run_plugin(inflight, plugin, frame))

    async def _on_hello(self, hello: Hello, encoding: Encoding) -> None:
        app = self.app
        if not app.ready:
            code = ErrorCode.SHUTTING_DOWN if app.shutting_down else ErrorCode.NOT_READY
            raise ProtocolError(code, "the server is not ready; retry later")
        retry_after = app.auth_failures.retry_after_s(self.address)
        if retry_after is not None:
            raise ProtocolError(
                ErrorCode.RATE_LIMITED,
                f"too many wrong API keys from this address; retry in {retry_after:.0f} s",
            )
        header = self.ws.request.headers.get("Authorization") if self.ws.request else None
        principal = app.authenticator.authenticate(bearer_token(header) or hello.api_key)
        if principal is None:
            app.auth_failures.record_failure(self.address)
            raise ProtocolError(ErrorCode.UNAUTHORIZED, "missing or unknown API key")
        if not app.admit_authenticated(self):
            await self.send(
                ErrorFrame.from_error(
                    ProtocolError(ErrorCode.OVERLOADED, "the server has no room for another client")
                ),
                encoding,
            )
            self._close_soon(CLOSE_TRY_AGAIN_LATER, "too many connections")
            return
        self.principal = principal
        self.rules.accept_hello(encoding)
        welcome = Welcome(
            server_version=server_version(),
            protocol=PROTOCOL_VERSION,
            model=app.model_name,
            limits=app.wire_limits(),
            capabilities=(*CORE_CAPABILITIES, *app.plugins.capabilities),
            connection_id=self.connection_id,
        )
        await self.send(welcome, encoding)

    def _require_scope(self, scope: str, request_id: str) -> None:
        assert self.principal is not None
        if not self.principal.may(scope):
            raise ProtocolError(
                ErrorCode.FORBIDDEN, f"this key lacks the {scope!r} scope", request_id=request_id
            )

    def _on_cancel(self, frame: Cancel) -> None:
        inflight = self.inflight.get(frame.request_id)
        if inflight is None:
            raise ProtocolError(
                ErrorCode.UNKNOWN_REQUEST,
                f"no request {frame.request_id!r} in flight",
                request_id=frame.request_id,
            )
        inflight.cancel()

    async def _on_session(self, frame: SessionOpen | SessionResume | SessionClose) -> ServerFrame:
        # Awaited in the read loop: a generate sent right after session.open finds it.
        store = self.app.sessions
        try:
            if isinstance(frame, SessionClose):
                await store.close_session(self.tenant, frame.session_id)
                return SessionClosed(request_id=frame.request_id, session_id=frame.session_id)
            if isinstance(frame, SessionResume):
                session = await store.resume_session(self.tenant, frame.session_id)
                resumed = True
            else:
                opener = Opener(connection_id=self.connection_id, address=self.address)
                session, resumed = await store.open_session(
                    self.tenant, frame.session_id, frame.metadata, opener
                )
        except ProtocolError as error:
            raise error.with_request_id(frame.request_id) from None
        return SessionInfo(
            request_id=frame.request_id,
            session_id=session.session_id,
            resumed=resumed,
            num_turns=session.num_turns,
        )

    # --- requests -----------------------------------------------------------------------------

    def _admit(self, request_id: str, encoding: Encoding, received_at: float) -> Inflight:
        if self.app.shutting_down:
            raise ProtocolError(
                ErrorCode.SHUTTING_DOWN, "the server is stopping", request_id=request_id
            )
        inflight = Inflight(request_id=request_id, encoding=encoding, received_at=received_at)
        return self.inflight.admit(request_id, inflight)

    def start_turn(self, spec: GenerateSpec) -> Turn:
        """A turn for a request in flight here (a generate frame's, or a plugin's)."""
        turns = self.app.turns
        if turns is None:
            raise ProtocolError(ErrorCode.NOT_READY, "the model is not loaded")
        inflight = self.inflight.get(spec.request_id)
        if inflight is None:
            raise ValueError(f"{spec.request_id!r} is not a request in flight here")
        engine_request_id = f"{self.connection_id}/{next(self._engine_ids)}"
        return turns.start(
            spec,
            tenant=self.tenant,
            engine_request_id=engine_request_id,
            received_at=inflight.received_at,
        )

    def track_turn(self, request_id: str, turn: Turn | None, *, add: bool) -> None:
        """A plugin's turn joins (or leaves) its request, so that cancel reaches it."""
        inflight = self.inflight.get(request_id)
        if inflight is None or turn is None:
            return
        if add:
            inflight.turns.append(turn)
        elif turn in inflight.turns:
            inflight.turns.remove(turn)

    async def push(self, frame: ServerFrame) -> bool:
        """Send a frame nobody asked for on this connection (a topic's event)."""
        if self.state is not ConnectionState.READY:
            return False
        try:
            await self.send(frame, self.rules.hello_encoding)
        except ConnectionGone:
            return False
        return True

    def _start_or_forget(self, inflight: Inflight, spec: GenerateSpec) -> Turn:
        try:
            return self.start_turn(spec)
        except ProtocolError as error:
            self._end(inflight)
            raise error.with_request_id(inflight.request_id) from None

    def _end(self, inflight: Inflight) -> None:
        # Before the last frame goes out, so that the client may reuse the id at once.
        self.inflight.end(inflight.request_id, inflight)

    def _spawn(self, inflight: Inflight, work: Coroutine[Any, Any, None]) -> None:
        inflight.task = asyncio.create_task(self._guard(inflight, work))

    async def _guard(self, inflight: Inflight, work: Coroutine[Any, Any, None]) -> None:
        """Run a request's work; whatever happens, the request ends and the client hears why."""
        error: ProtocolError | None = None
        cut = False  # its task was cancelled: no frame of its own will end the request
        inflight.started = True
        try:
            # Cancelled before its task ran, with no turn to end it "cancelled": skip the work.
            if inflight.cancelled and not inflight.turns:
                work.close()
                raise asyncio.CancelledError
            await work
        except ProtocolError as exc:
            error = exc.with_request_id(exc.request_id or inflight.request_id)
        except ConnectionGone:
            pass
        except asyncio.CancelledError:
            cut = inflight.cancelled
        except Exception:
            log.exception("%s: request %r failed", self.connection_id, inflight.request_id)
            error = ProtocolError(
                ErrorCode.INTERNAL, "internal error", request_id=inflight.request_id
            )
        finally:
            self._end(inflight)
            self.app.notify_request_end()
        if self.state is ConnectionState.CLOSING:
            return
        with suppress(ConnectionGone):
            if error is not None:
                await self._send_error(error, inflight.encoding)
            elif cut:  # a score or a plugin's work, cancelled while no turn ran: say so
                await self.send(_cancelled_done(inflight), inflight.encoding)

    async def _stream_turn(self, inflight: Inflight, turn: Turn) -> None:
        async with aclosing(turn.events()) as events:
            async for event in events:
                if isinstance(event, Done):
                    self._end(inflight)
                await self.send(event, inflight.encoding)

    async def _answer_score(self, inflight: Inflight, frame: Score) -> None:
        turns = self.app.turns
        if turns is None:
            raise ProtocolError(ErrorCode.NOT_READY, "the model is not loaded")
        scores = await turns.answer_score(frame, tenant=self.tenant)
        self._end(inflight)
        await self.send(scores, inflight.encoding)

    async def _run_plugin(self, inflight: Inflight, plugin: Plugin, frame: PluginFrame) -> None:
        await plugin.handle(frame, self.app.plugin_context(self, plugin))


def _cancelled_done(inflight: Inflight) -> Done:
    """The `done` that ends a request cancelled before any engine turn answered it."""
    elapsed_ms = max(0.0, (time.monotonic() - inflight.received_at) * 1000)
    return Done(
        request_id=inflight.request_id,
        finish_reason=FinishReason.CANCELLED,
        usage=Usage(num_prompt_tokens=0, num_cached_tokens=0, num_completion_tokens=0),
        timings=Timings(queue_ms=elapsed_ms, ttft_ms=elapsed_ms, total_ms=elapsed_ms),
    )


def source_address(ws: ServerConnection) -> str:
    """The peer's IP address (the unit of the per-address limits), or "" when unknown."""
    remote = ws.remote_address
    if isinstance(remote, tuple) and remote:
        return str(remote[0])
    return ""
