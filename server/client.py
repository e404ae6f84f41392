"""An asyncio Banterbox client (tests, bench/, bots). Uses protocol/ and websockets; no server code.

    async with BanterboxClient.connect("ws://127.0.0.1:8765", api_key=KEY) as client:
        stream = client.generate(messages=[{"role": "user", "content": "Hi!"}], max_tokens=32)
        async for delta in stream:
            print(delta.text, end="")
        print(stream.done.usage)

One reader task decodes every server frame and routes it by request id to the stream or
future waiting on it; frames for no pending request (plugin events, late errors) go to
`client.events`. Server error frames raise `BanterboxError` from the waiting call.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, TypeVar

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from protocol import (
    PROTOCOL_VERSION,
    Cancel,
    ChatMessage,
    ClientFrame,
    Delta,
    Done,
    Encoding,
    ErrorFrame,
    Generate,
    Hello,
    Limits,
    PluginFrame,
    Priority,
    ProtocolError,
    Role,
    Sampling,
    ServerFrame,
    SessionClose,
    SessionClosed,
    SessionInfo,
    SessionOpen,
    SessionResume,
    Welcome,
    decode_server_frame,
    encode_frame,
)
from protocol.rules import ConnectionState, RequestTable, StateMachine

_T = TypeVar("_T")
CONNECTION_CLOSED = "connection_closed"  # a client-side code: the socket went away


class BanterboxError(Exception):
    """An error frame from the server (or the connection closing under a request)."""

    def __init__(self, code: str, message: str, *, retryable: bool = False) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retryable = retryable

    @classmethod
    def from_frame(cls, frame: ErrorFrame) -> BanterboxError:
        return cls(frame.code, frame.message, retryable=frame.retryable)


def _messages(messages: Sequence[ChatMessage | Mapping[str, str]]) -> tuple[ChatMessage, ...]:
    return tuple(
        m if isinstance(m, ChatMessage) else ChatMessage(role=Role(m["role"]), content=m["content"])
        for m in messages
    )


class _Pending:
    """Frames of one request id, in arrival order; None marks the connection's end."""

    def __init__(self, encoding: Encoding) -> None:
        self.encoding = encoding  # the request went out, and its answers come back, in this
        self.queue: asyncio.Queue[ServerFrame | None] = asyncio.Queue()


class ResponseStream:
    """The answer frames of one request, started on first iteration."""

    def __init__(self, client: BanterboxClient, frame: ClientFrame, request_id: str) -> None:
        self.request_id = request_id
        self._client = client
        self._frame = frame
        self._pending: _Pending | None = None
        self._finished = False

    async def _next_frame(self) -> ServerFrame:
        if self._pending is None:
            self._pending = self._client._register(self.request_id)
            await self._client._send(self._frame)
        frame = await self._pending.queue.get()
        if frame is None:
            self._finish()
            raise BanterboxError(CONNECTION_CLOSED, "the connection closed")
        if isinstance(frame, ErrorFrame):
            self._finish()
            raise BanterboxError.from_frame(frame)
        return frame

    def _finish(self) -> None:
        self._finished = True
        self._client._unregister(self.request_id)


class GenerateStream(ResponseStream):
    """Deltas of a generate turn; `done` holds its done frame once iteration ends."""

    def __init__(self, client: BanterboxClient, frame: Generate) -> None:
        super().__init__(client, frame, frame.request_id)
        self.done: Done | None = None
        self.deltas: list[Delta] = []

    @property
    def text(self) -> str:
        return "".join(delta.text for delta in self.deltas)

    def __aiter__(self) -> AsyncIterator[Delta]:
        return self

    async def __anext__(self) -> Delta:
        if self._finished:
            raise StopAsyncIteration
        frame = await self._next_frame()
        if isinstance(frame, Done):
            self.done = frame
            self._finish()
            raise StopAsyncIteration
        if not isinstance(frame, Delta):
            raise BanterboxError("unexpected_frame", f"{type(frame).__name__} in a generate")
        self.deltas.append(frame)
        return frame

    async def collect(self) -> Done:
        """Read to the end; the done frame (the text is in `self.text`)."""
        async for _ in self:
            pass
        assert self.done is not None
        return self.done


class PluginStream(ResponseStream):
    """Every frame answering a plugin request; ends after `done` or a type in `end_types`."""

    def __init__(
        self,
        client: BanterboxClient,
        frame: PluginFrame,
        request_id: str,
        end_types: frozenset[str],
    ) -> None:
        super().__init__(client, frame, request_id)
        self._end_types = end_types

    def __aiter__(self) -> AsyncIterator[ServerFrame]:
        return self

    async def __anext__(self) -> ServerFrame:
        if self._finished:
            raise StopAsyncIteration
        frame = await self._next_frame()
        if isinstance(frame, Done) or (
            isinstance(frame, PluginFrame) and frame.type in self._end_types
        ):
            self._finish()
        return frame


@dataclass(frozen=True, kw_only=True)
class Verdict:
    """A moderation verdict (`mod.verdict`, or one item of `mod.verdicts`; SPEC §12)."""

    message_id: str
    action: str  # allow, hold, delete, timeout, ban
    score: float  # overall risk in [0, 1]
    categories: Mapping[str, float]
    reasons: tuple[Mapping[str, str], ...]  # {source, name, detail}
    duration_s: float  # a timeout's length; 0 otherwise

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> Verdict:
        return cls(
            message_id=str(payload["message_id"]),
            action=str(payload["action"]),
            score=float(payload["score"]),
            categories=MappingProxyType(dict(payload.get("categories") or {})),
            reasons=tuple(MappingProxyType(dict(r)) for r in payload.get("reasons") or ()),
            duration_s=float(payload.get("duration_s") or 0),
        )


def mod_user(user_id: str, name: str | None = None, roles: Sequence[str] = ()) -> dict[str, Any]:
    """A `user` field of mod.check (the name defaults to the id)."""
    return {"id": user_id, "name": name or user_id, "roles": list(roles)}


class BanterboxClient:
    def __init__(self, ws: ClientConnection, encoding: Encoding) -> None:
        self.ws = ws
        self.encoding = encoding
        self.welcome: Welcome | None = None
        self.events: asyncio.Queue[ServerFrame] = asyncio.Queue()  # frames nobody waits for
        # The same rules as the server's (protocol/rules.py): state, ids unique while pending.
        self.machine = StateMachine()
        self._pending: RequestTable[_Pending] = RequestTable(max_inflight=1 << 20)
        self._ids = itertools.count()
        self._reader: asyncio.Task[None] | None = None
        self._closed = False
        self._limits = Limits(max_frame_bytes=1 << 30, max_string_chars=1 << 28)

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(
        cls,
        url: str,
        *,
        api_key: str | None = None,
        encoding: str = "msgpack",
        client_name: str = "banterbox-python",
        open_timeout_s: float = 10.0,
    ) -> AsyncIterator[BanterboxClient]:
        """Connect, say hello (the key as a Bearer header) and wait for welcome."""
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
        async with connect(
            url, additional_headers=headers, open_timeout=open_timeout_s, max_size=None
        ) as ws:
            client = cls(ws, Encoding(encoding))
            client._reader = asyncio.create_task(client._read())
            try:
                client.welcome = await client._handshake(client_name)
                yield client
            finally:
                client._reader.cancel()
                # wait() never raises the reader's CancelledError, so a cancel of the
                # caller's own task still reaches the caller.
                await asyncio.wait({client._reader})

    def new_request_id(self) -> str:
        return f"r{next(self._ids)}"

    # --- requests -----------------------------------------------------------------------------

    def generate(
        self,
        *,
        messages: Sequence[ChatMessage | Mapping[str, str]] | None = None,
        prompt: str | None = None,
        session_id: str | None = None,
        max_tokens: int | None = None,
        sampling: Mapping[str, Any] | Sampling | None = None,
        stop: Sequence[str] | None = None,
        priority: str = "interactive",
        return_token_ids: bool = False,
        request_id: str | None = None,
    ) -> GenerateStream:
        """A turn; the frame is sent when iteration starts."""
        if sampling is not None and not isinstance(sampling, Sampling):
            sampling = Sampling(**sampling)
        frame = Generate(
            request_id=request_id or self.new_request_id(),
            session_id=session_id,
            messages=_messages(messages) if messages is not None else None,
            prompt=prompt,
            max_tokens=max_tokens,
            stop=tuple(stop) if stop is not None else None,
            priority=Priority(priority),
            return_token_ids=return_token_ids,
            sampling=sampling,
        )
        return GenerateStream(self, frame)

    async def cancel(self, request_id: str) -> None:
        """Ask to cancel; the request's stream then ends with finish_reason "cancelled"."""
        await self._send(Cancel(request_id=request_id))

    async def open_session(
        self, session_id: str | None = None, metadata: Mapping[str, str] | None = None
    ) -> SessionInfo:
        frame = SessionOpen(
            request_id=self.new_request_id(),
            session_id=session_id,
            metadata=MappingProxyType(dict(metadata)) if metadata else None,
        )
        return await self._single(frame, frame.request_id, SessionInfo)

    async def resume_session(self, session_id: str) -> SessionInfo:
        frame = SessionResume(request_id=self.new_request_id(), session_id=session_id)
        return await self._single(frame, frame.request_id, SessionInfo)

    async def close_session(self, session_id: str) -> SessionClosed:
        frame = SessionClose(request_id=self.new_request_id(), session_id=session_id)
        return await self._single(frame, frame.request_id, SessionClosed)

    def send_plugin(
        self,
        frame_type: str,
        payload: Mapping[str, object],
        *,
        request_id: str | None = None,
        end_types: frozenset[str] = frozenset(),
    ) -> PluginStream:
        """A plugin request; iterate its answer frames (ends after done or an end type)."""
        request_id = request_id or self.new_request_id()
        frame = PluginFrame(
            type=frame_type, request_id=request_id, payload=MappingProxyType(dict(payload))
        )
        return PluginStream(self, frame, request_id, end_types)

    def npc_say(
        self,
        npc: str,
        player: str,
        text: str,
        *,
        session_id: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        seed: int | None = None,
    ) -> PluginStream:
        """One NPC line (the npc plugin): iterate `Delta` (speech only), `npc.emotion` and
        `npc.action` PluginFrames where they occur, then `Done` (or `npc.interrupted`; with
        the moderation plugin loaded, `npc.refused` for a blocked line or `npc.replaced` for
        a reply cut by output moderation)."""
        fields: dict[str, object] = {"session_id": session_id, "max_tokens": max_tokens}
        fields |= {"temperature": temperature, "seed": seed}
        payload: dict[str, object] = {"npc": npc, "player": player, "text": text}
        payload |= {k: v for k, v in fields.items() if v is not None}
        ends = frozenset({"npc.interrupted", "npc.refused", "npc.replaced"})
        return self.send_plugin("npc.say", payload, end_types=ends)

    async def call_plugin(
        self, frame_type: str, payload: Mapping[str, object], *, request_id: str | None = None
    ) -> PluginFrame:
        """A plugin request answered by exactly one frame (every mod.* request, and npc.*
        but npc.say and the scene's): that frame; an error frame raises BanterboxError."""
        request_id = request_id or self.new_request_id()
        frame = PluginFrame(
            type=frame_type, request_id=request_id, payload=MappingProxyType(dict(payload))
        )
        return await self._single(frame, request_id, PluginFrame)

    # --- npc.* (SPEC §13): the one-answer frames; npc_say streams --------------------------

    async def npc_typing(
        self, npc: str, player: str, text: str, *, session_id: str | None = None
    ) -> Mapping[str, object]:
        """Prefill the partial line while the player types: `{session_id, prefilled,
        superseded}` once the prefill ran (or was superseded by a newer one)."""
        who = {"session_id": session_id} if session_id else {"npc": npc, "player": player}
        return (await self.call_plugin("npc.typing", {**who, "text": text})).payload

    async def npc_interrupt(self, turn_id: str, heard_chars: int) -> Mapping[str, object]:
        """Stop a running npc.say; `{turn_id, heard_chars, text}`: what the NPC remembers."""
        payload = {"turn_id": turn_id, "heard_chars": heard_chars}
        return (await self.call_plugin("npc.interrupt", payload)).payload

    async def npc_memory(
        self, npc: str, player: str, op: str = "get", memory: Mapping[str, object] | None = None
    ) -> Mapping[str, object] | None:
        """The NPC's memory of the player (`op`: get, set with `memory`, forget); None if none."""
        payload: dict[str, object] = {"npc": npc, "player": player, "op": op}
        if memory is not None:
            payload["memory"] = dict(memory)
        answer = (await self.call_plugin("npc.memory", payload)).payload
        found = answer.get("memory")
        return found if isinstance(found, Mapping) else None

    # --- mod.* (SPEC §12) -------------------------------------------------------------------

    async def mod_check(
        self, channel: str, message_id: str, user: Mapping[str, object], text: str
    ) -> Verdict:
        """One chat message's verdict; `user` as `mod_user(...)` makes it."""
        payload = {"channel": channel, "message_id": message_id, "user": dict(user), "text": text}
        return Verdict.from_payload((await self.call_plugin("mod.check", payload)).payload)

    async def mod_check_batch(
        self, channel: str, messages: Sequence[Mapping[str, object]]
    ) -> list[Verdict]:
        """Verdicts for up to 1000 messages ({message_id, user, text}), in input order."""
        payload = {"channel": channel, "messages": [dict(m) for m in messages]}
        answer = await self.call_plugin("mod.check_batch", payload)
        verdicts = answer.payload.get("verdicts")
        assert isinstance(verdicts, list)
        return [Verdict.from_payload(v) for v in verdicts]

    async def mod_config(
        self, channel: str, op: str = "get", **fields: object
    ) -> Mapping[str, object]:
        """The channel's policy: `get`, `set` (policy=...), `reset`; `permit` (user_id=...)
        answers `{channel, user_id, expires_in_s}`."""
        payload = {"channel": channel, "op": op, **fields}
        return (await self.call_plugin("mod.config", payload)).payload

    async def mod_review(
        self,
        channel: str,
        op: str = "list",
        message_id: str | None = None,
        moderator: str | None = None,
    ) -> Mapping[str, object]:
        """The hold queue (`list`: `{channel, holds}`), or `approve`/`deny` one held message."""
        payload: dict[str, object] = {"channel": channel, "op": op}
        payload |= {k: v for k, v in (("message_id", message_id), ("moderator", moderator)) if v}
        return (await self.call_plugin("mod.review", payload)).payload

    async def mod_audit(self, channel: str, **query: object) -> list[Mapping[str, object]]:
        """Audit entries newest first; query: user_id, action, since (unix s), limit."""
        answer = await self.call_plugin("mod.audit", {"channel": channel, **query})
        entries = answer.payload.get("entries")
        assert isinstance(entries, list)
        return entries

    async def mod_subscribe(self, channel: str, *, subscribe: bool = True) -> bool:
        """Receive the channel's `mod.action` events in `client.events` (or stop)."""
        op = "subscribe" if subscribe else "unsubscribe"
        answer = await self.call_plugin("mod.subscribe", {"channel": channel, "op": op})
        return bool(answer.payload.get("subscribed"))

    # --- plumbing -----------------------------------------------------------------------------

    async def _single(self, frame: ClientFrame, request_id: str, kind: type[_T]) -> _T:
        stream = ResponseStream(self, frame, request_id)
        answer = await stream._next_frame()
        stream._finish()
        if not isinstance(answer, kind):
            raise BanterboxError("unexpected_frame", f"{type(answer).__name__}, not {kind}")
        return answer

    async def _handshake(self, client_name: str) -> Welcome:
        pending = self._register("")
        await self._send(Hello(protocol=PROTOCOL_VERSION, client=client_name))
        frame = await pending.queue.get()
        self._unregister("")
        if isinstance(frame, ErrorFrame):
            raise BanterboxError.from_frame(frame)
        if not isinstance(frame, Welcome):
            raise BanterboxError(CONNECTION_CLOSED, f"no welcome: {frame!r}")
        self.machine.move(ConnectionState.READY)
        # Refuse locally what the server would refuse: more requests than it takes at once.
        self._pending.max_inflight = frame.limits.get(
            "max_inflight_per_connection", self._pending.max_inflight
        )
        return frame

    def _register(self, request_id: str) -> _Pending:
        pending = _Pending(self.encoding)
        try:
            self._pending.admit(request_id, pending)
        except ProtocolError as exc:
            raise BanterboxError(exc.code.value, exc.message, retryable=exc.retryable) from None
        if self._closed:
            pending.queue.put_nowait(None)
        return pending

    def _unregister(self, request_id: str) -> None:
        pending = self._pending.get(request_id)
        if pending is not None:
            self._pending.end(request_id, pending)

    async def _send(self, frame: ClientFrame) -> None:
        try:
            await self.ws.send(encode_frame(frame, self.encoding))
        except ConnectionClosed as exc:
            raise BanterboxError(CONNECTION_CLOSED, str(exc)) from None

    def _route(self, frame: ServerFrame) -> None:
        request_id = getattr(frame, "request_id", None)
        if isinstance(frame, Welcome) or (isinstance(frame, ErrorFrame) and request_id is None):
            request_id = "" if "" in self._pending else None  # the handshake's answer
        pending = self._pending.get(request_id) if request_id is not None else None
        if pending is not None:
            pending.queue.put_nowait(frame)
        else:
            self.events.put_nowait(frame)

    async def _read(self) -> None:
        try:
            async for message in self.ws:
                try:
                    frame = decode_server_frame(message, limits=self._limits)
                except ProtocolError as exc:
                    self.events.put_nowait(ErrorFrame.from_error(exc))
                    continue
                self._route(frame)
        except ConnectionClosed:
            pass
        finally:
            self._closed = True
            self.machine.close()
            for pending in self._pending:
                pending.queue.put_nowait(None)
