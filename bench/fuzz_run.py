"""Drive fuzz steps (bench/fuzz_frames.py) at a server over WebSockets; judge every answer.

Each of a few connections runs its share of the steps one after the other: send the step's
frames, then a probe (a `cancel` of an id never used, answered `unknown_request`). The server
reads a connection's frames in order, so every immediate answer of the step comes before the
probe's; a generate may stream on past it and is tracked by id until its `done` or `error`.
Nothing here knows whether the server runs in this process.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException

from protocol import (
    ERROR_POLICIES,
    Delta,
    Done,
    ErrorCode,
    ErrorFrame,
    Limits,
    PluginFrame,
    ProtocolError,
    ServerFrame,
    SessionClosed,
    SessionInfo,
    Welcome,
    decode_server_frame,
)

from .fuzz_frames import SESSION_POOL, Expect, FrameGenerator, Shot, Step, encode

KNOWN_CODES = frozenset(code.value for code in ErrorCode)
# Errors about a new frame that happens to reuse a running request's id: they never end it.
_NOT_THE_RUNNING_ONE = frozenset({ErrorCode.DUPLICATE_REQUEST_ID, ErrorCode.UNKNOWN_REQUEST})
HealthCheck = Callable[[], Awaitable[bool]]


@dataclass(frozen=True, kw_only=True)
class Incident:
    """Something a hostile frame must never cause, with the step that caused it."""

    kind: str  # untyped, unknown_code, unanswered, dropped, stalled, internal, ...
    detail: str
    step: str  # Step.describe() of the step it happened in (or the stream's step)

    def __str__(self) -> str:
        return f"[{self.kind}] {self.detail}\n  {self.step}"


@dataclass(kw_only=True)
class Tally:
    """What one run saw; merged over connections."""

    num_steps: int = 0
    num_frames: int = 0
    num_probes: int = 0
    num_connections: int = 0
    num_untyped: int = 0
    num_engine_deaths: int = 0
    duration_s: float = 0.0
    answers: collections.Counter[str] = field(default_factory=collections.Counter)
    closes: collections.Counter[str] = field(default_factory=collections.Counter)
    incidents: list[Incident] = field(default_factory=list)


@dataclass(frozen=True, kw_only=True)
class RunSettings:
    num_frames: int = 2000  # fuzz frames in all, split evenly over the connections
    num_connections: int = 4
    probe_timeout_s: float = 30.0  # a probe unanswered this long: the connection stalled
    drain_timeout_s: float = 60.0  # after the last step, for running turns to end
    health_every: int = 1  # check the health callback every this many steps of a connection
    max_incidents: int = 0  # stop early after this many (0: never)


@dataclass(eq=False, kw_only=True)
class _Stream:
    step: Step
    shot: Shot
    next_seq: int = 0


def answer_key(frame: ServerFrame) -> str:
    """The tally key of an answer: its type, and the code of an error."""
    if isinstance(frame, ErrorFrame):
        return f"error:{frame.code}"
    return frame.TYPE if hasattr(frame, "TYPE") else getattr(frame, "type", "?")


class NoWelcome(Exception):
    """A hello was not answered with welcome (e.g. not_ready after the engine died)."""


class _Conn:
    """One client WebSocket and the routing of what it receives."""

    def __init__(self, run: FuzzRun, ws: ClientConnection, name: str) -> None:
        self.run = run
        self.ws = ws
        self.name = name
        self.pending: dict[str, _Stream] = {}
        self.step: Step | None = None
        self.answers: list[ServerFrame] = []  # this step's answers not claimed by a stream
        self.probe_id: str | None = None
        self.probe_answered = asyncio.Event()
        self.changed = asyncio.Event()
        self.closing_error = False  # the server sent an error whose code closes the connection
        self.closed_by_us = False
        self.close_code: int | None = None
        self.closed = asyncio.Event()
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for message in self.ws:
                self._on_message(message)
        except ConnectionClosed:
            pass
        finally:
            self.close_code = self.ws.close_code or 1006
            if not self.closed_by_us:
                self.run.tally.closes[str(self.close_code)] += 1
            self.closed.set()
            self.changed.set()

    def _on_message(self, message: str | bytes) -> None:
        run = self.run
        step = self.step.describe() if self.step else f"{self.name}, between steps"
        try:
            frame = decode_server_frame(message)
        except ProtocolError as error:
            run.tally.num_untyped += 1
            run.incident("untyped", f"{error}: {message[:300]!r}", step)
            return
        run.tally.answers[answer_key(frame)] += 1
        request_id = getattr(frame, "request_id", None)
        stream = self.pending.get(request_id) if request_id is not None else None
        if isinstance(frame, ErrorFrame):
            if frame.code not in KNOWN_CODES:
                run.incident("unknown_code", repr(frame), step)
            elif ERROR_POLICIES[ErrorCode(frame.code)].closes_connection:
                self.closing_error = True
            if frame.code == ErrorCode.INTERNAL:
                run.incident("internal", repr(frame), stream.step.describe() if stream else step)
        if isinstance(frame, SessionInfo):
            run.sessions.add(frame.session_id)
        elif isinstance(frame, SessionClosed):
            run.sessions.discard(frame.session_id)
        if request_id is not None and request_id == self.probe_id:
            if not (isinstance(frame, ErrorFrame) and frame.code == ErrorCode.UNKNOWN_REQUEST):
                run.incident("probe", f"the probe got {frame!r}", step)
            self.probe_answered.set()
        elif stream is not None and not (
            isinstance(frame, ErrorFrame) and frame.code in _NOT_THE_RUNNING_ONE
        ):
            self._on_stream_frame(stream, frame)
        else:
            self.answers.append(frame)
        self.changed.set()

    def _on_stream_frame(self, stream: _Stream, frame: ServerFrame) -> None:
        request_id = stream.shot.request_id
        assert request_id is not None
        if isinstance(frame, Delta):
            if frame.seq != stream.next_seq:
                detail = f"delta seq {frame.seq}, expected {stream.next_seq}: {frame!r}"
                self.run.incident("seq", detail, stream.step.describe())
            stream.next_seq = frame.seq + 1
        elif not isinstance(frame, PluginFrame):  # a done, an error, scores: the last answer
            del self.pending[request_id]
        if stream.step is self.step:
            self.answers.append(frame)  # the step's "was it answered" counts it too

    async def send(self, data: bytes | str) -> bool:
        try:
            await self.ws.send(data)
        except ConnectionClosed:
            return False
        return True

    async def wait(self, predicate: Callable[[], bool], timeout_s: float) -> bool:
        """Until predicate() or the connection closes; False on timeout."""
        try:
            async with asyncio.timeout(timeout_s):
                while not predicate() and not self.closed.is_set():
                    self.changed.clear()
                    await self.changed.wait()
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        self.closed_by_us = not self.closed.is_set()
        with contextlib.suppress(WebSocketException, OSError, TimeoutError):
            async with asyncio.timeout(5):
                await self.ws.close()
        self.reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.reader


class FuzzRun:
    """One fuzz run against `url`; `await run()` returns the tally."""

    def __init__(
        self,
        url: str,
        *,
        seed: int,
        settings: RunSettings,
        vocab_size: int | None = None,
        health: HealthCheck | None = None,
    ) -> None:
        self.url = url
        self.seed = seed
        self.settings = settings
        self.vocab_size = vocab_size
        self.health = health
        self.tally = Tally()
        self.sessions: set[str] = set()  # session ids the server said are open
        self.limits = Limits()
        self._healthy = True
        self._stop = asyncio.Event()
        self._recent_streams: collections.deque[str] = collections.deque(maxlen=4)
        self._num_probes = 0

    def incident(self, kind: str, detail: str, step: str) -> None:
        self.tally.incidents.append(Incident(kind=kind, detail=detail, step=step))
        limit = self.settings.max_incidents
        if limit and len(self.tally.incidents) >= limit:
            self._stop.set()

    async def run(self) -> Tally:
        started = time.perf_counter()
        welcome = await self._probe_limits()
        generator = FrameGenerator(self.seed, limits=welcome, vocab_size=self.vocab_size)
        n = self.settings.num_connections
        per_slot = -(-self.settings.num_frames // n)
        await asyncio.gather(*(self._slot(generator, slot, n, per_slot) for slot in range(n)))
        await self._check_health("after the last step")
        try:
            await close_sessions(self.url, self.sessions | set(SESSION_POOL))
        except (NoWelcome, OSError, TimeoutError, WebSocketException, ProtocolError) as exc:
            self.incident("refused", f"closing the sessions: {exc}", "after the last step")
        self.tally.duration_s = time.perf_counter() - started
        return self.tally

    async def _probe_limits(self) -> Limits:
        conn = await self._open(hello=True)
        await conn.close()
        return self.limits

    async def _open(self, *, hello: bool, name: str = "setup") -> _Conn:
        ws = await connect(self.url, max_size=None, ping_interval=None, close_timeout=2)
        self.tally.num_connections += 1
        conn = _Conn(self, ws, name)
        if hello:
            await conn.send(encode({"type": "hello", "protocol": 1, "client": "fuzz"}, "msgpack"))
            await conn.wait(lambda: bool(conn.answers), 30.0)
            welcome = conn.answers[0] if conn.answers else None
            if not isinstance(welcome, Welcome):
                await conn.close()
                raise NoWelcome(f"no welcome from {self.url}: {welcome!r}")
            known = {k: v for k, v in welcome.limits.items() if k in Limits.__dataclass_fields__}
            self.limits = Limits(**known)
            conn.answers.clear()
        return conn

    async def _check_health(self, where: str) -> None:
        if self.health is None:
            return
        healthy = await self.health()
        if self._healthy and not healthy:
            self.tally.num_engine_deaths += 1
            recent = "\n  ".join(self._recent_streams) or "(none)"
            self.incident("engine_down", f"unhealthy {where}; recent turns:\n  {recent}", where)
        self._healthy = healthy

    async def _slot(self, generator: FrameGenerator, slot: int, n: int, num_frames: int) -> None:
        name = f"connection {slot}"
        conn = await self._open(hello=True, name=name)
        num_sent = num_steps = 0
        try:
            while num_sent < num_frames and not self._stop.is_set():
                step = generator.step(slot + n * num_steps)
                num_steps += 1
                self.tally.num_steps += 1
                num_sent += len(step.shots)
                if step.fresh:
                    await self._fresh_step(step)
                else:
                    if conn.closed.is_set():
                        conn = await self._open(hello=True, name=name)
                    await self._step(conn, step)
                if num_steps % self.settings.health_every == 0:
                    await self._check_health(f"after {step.describe()}")
            await self._drain(conn)
        except NoWelcome as exc:
            self.incident("refused", f"reconnecting {name}: {exc}", step.describe())
        finally:
            await conn.close()

    async def _send_shots(self, conn: _Conn, step: Step) -> bool:
        conn.step = step
        conn.answers = []
        for shot in step.shots:
            if shot.streams and shot.request_id is not None:
                conn.pending.setdefault(shot.request_id, _Stream(step=step, shot=shot))
                self._recent_streams.append(shot.describe())
            self.tally.num_frames += 1
            if not await conn.send(shot.data):
                return False
        return True

    async def _probe(self, conn: _Conn, step: Step) -> bool:
        """Send the probe; True once it is answered (False: closed or stalled, said why)."""
        self._num_probes += 1
        self.tally.num_probes += 1
        conn.probe_id = f"probe-{self._num_probes}"
        conn.probe_answered.clear()
        encoding = ("msgpack", "json")[self._num_probes % 2]
        if not await conn.send(encode({"type": "cancel", "id": conn.probe_id}, encoding)):
            return False
        if not await conn.wait(conn.probe_answered.is_set, self.settings.probe_timeout_s):
            self.incident("stalled", f"no answer to the probe in {conn.name}", step.describe())
            await conn.close()
            return False
        return conn.probe_answered.is_set()

    async def _step(self, conn: _Conn, step: Step) -> None:
        if await self._send_shots(conn, step) and await self._probe(conn, step):
            self._judge(conn, step)
        if conn.closed.is_set() and not conn.closed_by_us:
            self._judge_close(conn, step)
            conn.pending.clear()  # the server cancels a gone connection's turns itself
        conn.step = None

    async def _fresh_step(self, step: Step) -> None:
        conn = await self._open(hello=False, name="a fresh connection")
        try:
            if not await self._send_shots(conn, step):
                return
            needed = sum(1 for shot in step.shots if shot.expect is Expect.ANSWER)

            def welcomed() -> bool:
                return any(isinstance(answer, Welcome) for answer in conn.answers)

            def answered() -> bool:
                return len(conn.answers) >= needed or welcomed()

            if not await conn.wait(answered, self.settings.probe_timeout_s):
                self.incident("stalled", "no answer before hello", step.describe())
            elif welcomed():  # the step's hello worked: the connection is like any other now
                if await self._probe(conn, step):
                    self._judge(conn, step)
            elif not conn.closed.is_set() and len(conn.answers) < needed:
                # Before hello the refusals carry no id (hello_required): count them instead.
                detail = f"{needed} frames to answer, {len(conn.answers)} answers"
                self.incident("unanswered", detail, step.describe())
            if conn.closing_error and not conn.closed.is_set():
                await conn.wait(lambda: False, self.settings.probe_timeout_s)
                if not conn.closed.is_set():
                    detail = f"not closed after {conn.answers[-3:]!r}"
                    self.incident("unclosed", detail, step.describe())
            if conn.closed.is_set() and not conn.closed_by_us:
                self._judge_close(conn, step)
        finally:
            await conn.close()

    def _judge(self, conn: _Conn, step: Step) -> None:
        """After the probe: every shot that must be answered was (streams may still run)."""
        clean = {shot.request_id for shot in step.shots if shot.request_id is not None}
        claimed = {getattr(a, "request_id", None) for a in conn.answers}
        loose = sum(1 for a in conn.answers if getattr(a, "request_id", None) not in clean)
        needed_loose = 0
        for shot in step.shots:
            if shot.expect is not Expect.ANSWER:
                continue
            if shot.request_id is None:
                needed_loose += 1
            elif shot.request_id not in claimed and shot.request_id not in conn.pending:
                self.incident("unanswered", f"no answer to {shot.describe()}", step.describe())
        if loose < needed_loose:
            detail = f"{needed_loose} frames without a clean id, {loose} answers without one"
            self.incident("unanswered", detail, step.describe())

    def _judge_close(self, conn: _Conn, step: Step) -> None:
        code = conn.close_code
        too_big = any(len(shot.data) > self.limits.max_frame_bytes for shot in step.shots)
        if code == 1008 and conn.closing_error:
            return
        if code == 1009 and too_big:
            return
        detail = f"closed with {code} by the server in {conn.name} (closing error: "
        detail += f"{conn.closing_error}); answers: {conn.answers[-3:]!r}"
        self.incident("dropped", detail, step.describe())

    async def _drain(self, conn: _Conn) -> None:
        """Cancel what still runs and wait for every turn to end."""
        if conn.closed.is_set():
            return
        for request_id in list(conn.pending):
            await conn.send(encode({"type": "cancel", "id": request_id}, "msgpack"))
        if not await conn.wait(lambda: not conn.pending, self.settings.drain_timeout_s):
            for stream in conn.pending.values():
                detail = f"never ended: {stream.shot.describe()}"
                self.incident("never_ended", detail, stream.step.describe())


async def close_sessions(url: str, session_ids: Iterable[str], *, timeout_s: float = 60.0) -> None:
    """session.close each id on a fresh connection (session_not_found for the unknown ones)."""
    ids = sorted(set(session_ids))
    async with asyncio.timeout(timeout_s), connect(url, ping_interval=None) as ws:
        await ws.send(encode({"type": "hello", "protocol": 1}, "msgpack"))
        welcome = decode_server_frame(await ws.recv())
        if not isinstance(welcome, Welcome):
            raise NoWelcome(f"no welcome from {url}: {welcome!r}")
        for number, session_id in enumerate(ids):
            frame = {"type": "session.close", "id": f"close-{number}", "session_id": session_id}
            await ws.send(encode(frame, "msgpack"))
        for _ in ids:
            decode_server_frame(await ws.recv())


async def http_get(url: str, path: str, *, timeout_s: float = 10.0) -> tuple[int, str]:
    """GET http://host:port/path of a ws:// url: (status, body); (0, why) when unreachable."""
    host, _, port = url.removeprefix("ws://").partition("/")[0].partition(":")
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(host, int(port or 80))
            request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
            writer.write(request.encode())
            data = await reader.read()
            writer.close()
    except (OSError, TimeoutError) as exc:
        return 0, f"{type(exc).__name__}: {exc}"
    head, _, body = data.decode("utf-8", "replace").partition("\r\n\r\n")
    status = head.split(" ", 2)[1] if head.count(" ") >= 1 else "0"
    return int(status) if status.isdigit() else 0, body


async def normal_turn(url: str, *, max_tokens: int = 4, timeout_s: float = 60.0) -> str | None:
    """One plain generate on a fresh connection; None when it ends with done, else what broke."""
    try:
        async with asyncio.timeout(timeout_s), connect(url, ping_interval=None) as ws:
            await ws.send(encode({"type": "hello", "protocol": 1}, "msgpack"))
            if not isinstance(decode_server_frame(await ws.recv()), Welcome):
                return "no welcome"
            frame = {
                "type": "generate",
                "id": "normal",
                "prompt": "Hello",
                "max_tokens": max_tokens,
            }
            await ws.send(encode(frame, "json"))
            while True:
                answer = decode_server_frame(await ws.recv())
                if isinstance(answer, Done):
                    return None
                if not isinstance(answer, Delta):
                    return f"the normal turn got {answer!r}"
    except (OSError, TimeoutError, WebSocketException, ProtocolError) as exc:
        return f"the normal turn failed: {type(exc).__name__}: {exc}"
