"""The asyncio face of the engine: submit requests, get per-request async streams of deltas.

The engine runs in its own thread (server.engine.worker). Outputs cross into the event loop
with call_soon_threadsafe. A stream that is not read fast enough merges its pending deltas into
one, so a slow consumer never blocks the engine and holds at most one pending delta's text.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from .engine.core import EngineStats
from .engine.errors import EngineError
from .engine.llm import LLM
from .engine.types import EngineRequest, FinishReason, RequestOutput
from .engine.worker import EngineWorker


class EngineDiedError(EngineError):
    """The engine thread stopped on an unexpected error."""


@dataclass
class StreamDelta:
    """One or more engine outputs of a request, merged: the text and tokens since the last read."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: FinishReason | None = None
    num_prompt_tokens: int = 0
    num_cached_tokens: int = 0
    num_output_tokens: int = 0
    scheduled_time: float | None = None  # when the engine first ran the request

    def merge(self, output: RequestOutput) -> None:
        self.text += output.text_delta
        self.token_ids.extend(output.new_token_ids)
        self.finish_reason = output.finish_reason
        self.num_prompt_tokens = output.num_prompt_tokens
        self.num_cached_tokens = output.num_cached_tokens
        self.num_output_tokens = output.num_output_tokens
        self.scheduled_time = output.scheduled_time


class RequestStream:
    """Async iterator of one request's merged deltas; ends after the finishing delta."""

    def __init__(self, request: EngineRequest, engine: AsyncEngine) -> None:
        self.request = request
        self._engine = engine
        self._pending: StreamDelta | None = None
        self._error: EngineError | None = None
        self._wakeup = asyncio.Event()
        self._done = False
        self.submitted_at = time.monotonic()
        self.first_token_at: float | None = None
        self.finished_at: float | None = None

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def finished(self) -> bool:
        return self._done

    def _push(self, output: RequestOutput) -> None:
        now = time.monotonic()
        if self.first_token_at is None and output.new_token_ids:
            self.first_token_at = now
        if self._pending is None:
            self._pending = StreamDelta()
        self._pending.merge(output)
        if output.finished:
            self.finished_at = now
        self._wakeup.set()

    def _fail(self, error: EngineError) -> None:
        self._error = error
        self.finished_at = time.monotonic()
        self._wakeup.set()

    def cancel(self) -> None:
        """Ask the engine to stop this request; a final CANCELLED delta follows."""
        if not self._done:
            self._engine.abort(self.request_id)

    def abandon(self) -> None:
        """Cancel and stop listening, for a consumer that will not read the final delta."""
        self.cancel()
        self._done = True
        self._engine._forget(self.request_id)

    def __aiter__(self) -> AsyncIterator[StreamDelta]:
        return self

    async def __anext__(self) -> StreamDelta:
        if self._done:
            raise StopAsyncIteration
        while self._pending is None and self._error is None:
            self._wakeup.clear()
            await self._wakeup.wait()
        if self._pending is None:
            self._done = True
            self._engine._forget(self.request_id)
            assert self._error is not None
            raise self._error
        delta, self._pending = self._pending, None
        if delta.finish_reason is not None:
            self._done = True
            self._engine._forget(self.request_id)
        return delta


class AsyncEngine:
    """Owns the engine thread; one per server."""

    def __init__(self, llm: LLM) -> None:
        self.llm = llm
        self._streams: dict[str, RequestStream] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._crash: BaseException | None = None
        self._worker = EngineWorker(
            llm.core,
            on_outputs=self._on_outputs,
            on_reject=self._on_reject,
            on_crash=self._on_crash,
        )

    @property
    def stats(self) -> EngineStats:
        return self._worker.stats

    @property
    def num_active(self) -> int:
        return len(self._streams)

    @property
    def healthy(self) -> bool:
        return self._crash is None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._worker.start()

    async def stop(self) -> None:
        await asyncio.to_thread(self._worker.stop, 10.0)

    def submit(self, request: EngineRequest) -> RequestStream:
        """Queue a request; refusals (overloaded, too long) surface as the stream's error."""
        if self._crash is not None:
            raise EngineDiedError(f"engine stopped: {self._crash}")
        if request.request_id in self._streams:
            raise ValueError(f"request id {request.request_id!r} is already running")
        stream = RequestStream(request, self)
        self._streams[request.request_id] = stream
        self._worker.submit(request)
        return stream

    def abort(self, request_id: str) -> None:
        self._worker.abort(request_id)

    def release_session(self, session_id: str) -> None:
        self._worker.release_session(session_id)

    def _forget(self, request_id: str) -> None:
        self._streams.pop(request_id, None)

    # Called on the engine thread: hop onto the loop.
    def _on_outputs(self, outputs: list[RequestOutput]) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._dispatch, outputs)

    def _on_reject(self, request_id: str, error: EngineError) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._dispatch_error, request_id, error)

    def _on_crash(self, exc: BaseException) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._fail_all, exc)

    def _dispatch(self, outputs: list[RequestOutput]) -> None:
        for output in outputs:
            stream = self._streams.get(output.request_id)
            if stream is not None:
                stream._push(output)

    def _dispatch_error(self, request_id: str, error: EngineError) -> None:
        stream = self._streams.get(request_id)
        if stream is not None:
            stream._fail(error)

    def _fail_all(self, exc: BaseException) -> None:
        self._crash = exc
        for stream in list(self._streams.values()):
            stream._fail(EngineDiedError(f"engine stopped: {exc}"))
