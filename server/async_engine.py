"""The asyncio face of the engine: submit requests, get per-request async streams of deltas.

The engine runs in its own thread (server.engine.worker). Outputs cross into the event loop
with call_soon_threadsafe. A stream that is not read fast enough merges its pending deltas into
one, so a slow consumer never blocks the engine and holds at most one pending delta's text.

Supervision: if the engine thread dies, every in-flight stream fails with the retryable
EngineRestartedError, `healthy` is False (so /readyz says 503) and a fresh core on the same
weights starts in a new thread. More than `max_restarts` crashes within `restart_window_s`
leave the engine down for good (a crash loop is a bug to fix, not to hide).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from .engine.core import EngineStats
from .engine.errors import EngineError, EngineRestartedError, RequestFailedError
from .engine.llm import LLM
from .engine.scoring import plan_score
from .engine.types import (
    EngineRequest,
    FinishReason,
    Priority,
    RequestOutput,
    ScoreOutput,
    TokenLogprob,
)
from .engine.worker import EngineWorker

log = logging.getLogger("banterbox.engine")


class EngineDiedError(EngineError):
    """The engine thread stopped on an unexpected error and is not coming back."""


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
    logprobs: list[TokenLogprob] = field(default_factory=list)  # one per token_ids entry
    prompt_logprobs: tuple[float, ...] = ()  # a scoring request's, on its finishing delta

    def merge(self, output: RequestOutput) -> None:
        self.text += output.text_delta
        self.token_ids.extend(output.new_token_ids)
        self.logprobs.extend(output.logprobs)
        self.prompt_logprobs = output.prompt_logprobs or self.prompt_logprobs
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
        if output.finish_reason is FinishReason.ERROR:  # this request failed alone
            self._pending = None  # text it had not delivered belongs to a failed turn
            self._fail(RequestFailedError(output.error or "the request failed in the engine"))
            return
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

    def __init__(self, llm: LLM, *, max_restarts: int = 5, restart_window_s: float = 60.0) -> None:
        self.llm = llm
        self._streams: dict[str, RequestStream] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._crash: BaseException | None = None  # set: down for good
        self._restarting = False
        self._max_restarts = max_restarts
        self._restart_window_s = restart_window_s
        self._crash_times: deque[float] = deque()
        self._restarter: asyncio.Task[None] | None = None
        self._num_restarts = 0
        self._worker = self._new_worker()

    def _new_worker(self) -> EngineWorker:
        return EngineWorker(
            self.llm.core,
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
        return self._crash is None and not self._restarting

    @property
    def restarting(self) -> bool:
        return self._restarting

    @property
    def num_restarts(self) -> int:
        return self._num_restarts

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._worker.start()

    async def stop(self) -> None:
        if self._restarter is not None:
            self._restarter.cancel()
        await asyncio.to_thread(self._worker.stop, 10.0)
        self.llm.core.close()

    def submit(self, request: EngineRequest) -> RequestStream:
        """Queue a request; refusals (overloaded, too long) surface as the stream's error."""
        if self._crash is not None:
            raise EngineDiedError(f"engine stopped: {self._crash}")
        if self._restarting:
            raise EngineRestartedError("the engine is restarting after an internal error")
        if request.request_id in self._streams:
            raise ValueError(f"request id {request.request_id!r} is already running")
        stream = RequestStream(request, self)
        self._streams[request.request_id] = stream
        self._worker.submit(request)
        return stream

    async def score(
        self,
        prompt_token_ids: Sequence[int],
        candidates: Sequence[Sequence[int]],
        *,
        request_id: str,
        priority: Priority = Priority.INTERACTIVE,
        cache_salt: str = "",
    ) -> ScoreOutput:
        """Log-probability of each candidate after the prompt; refusals raise EngineError.

        The prompt is prefilled first, alone, so that every candidate finds its blocks cached;
        then all candidates run as one batch. Cancelling the caller aborts what is in flight.
        """
        plan = plan_score(
            request_id, prompt_token_ids, candidates, priority=priority, cache_salt=cache_salt
        )
        streams: list[RequestStream] = []
        try:
            streams.append(self.submit(plan.warm))
            warm = await _final(streams[0])
            streams.extend(self.submit(request) for request in plan.candidates)
            finals = [await _final(stream) for stream in streams[1:]]
        finally:
            for stream in streams:
                if not stream.finished:
                    stream.abandon()
        return plan.result(
            _as_output(plan.warm.request_id, warm),
            {
                s.request_id: _as_output(s.request_id, f)
                for s, f in zip(streams[1:], finals, strict=True)
            },
        )

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
        """The engine thread died: fail what was in flight, then restart unless crash-looping."""
        now = time.monotonic()
        self._crash_times.append(now)
        while self._crash_times and now - self._crash_times[0] > self._restart_window_s:
            self._crash_times.popleft()
        give_up = len(self._crash_times) > self._max_restarts
        if give_up:
            self._crash = exc
            log.error(
                "engine crashed %d times in %.0f s; staying down",
                len(self._crash_times),
                self._restart_window_s,
            )
        else:
            self._restarting = True
        for stream in list(self._streams.values()):
            if give_up:
                stream._fail(EngineDiedError(f"engine stopped: {exc}"))
            else:
                stream._fail(EngineRestartedError(f"the engine restarted after an error: {exc}"))
        if not give_up:
            self._restarter = asyncio.get_running_loop().create_task(self._restart())

    async def _restart(self) -> None:
        log.warning("restarting the engine on a fresh core")
        await asyncio.to_thread(self.llm.restart_core)
        self._worker = self._new_worker()
        self._worker.start()
        self._num_restarts += 1
        self._restarting = False
        log.warning("engine restarted (%d restarts so far)", self._num_restarts)


async def _final(stream: RequestStream) -> StreamDelta:
    """The last delta of a prefill-only stream (it samples nothing: the counts are all)."""
    final = StreamDelta()
    async for delta in stream:
        final = delta
    return final


def _as_output(request_id: str, delta: StreamDelta) -> RequestOutput:
    return RequestOutput(
        request_id=request_id,
        new_token_ids=tuple(delta.token_ids),
        text_delta=delta.text,
        finish_reason=delta.finish_reason,
        num_prompt_tokens=delta.num_prompt_tokens,
        num_cached_tokens=delta.num_cached_tokens,
        num_output_tokens=delta.num_output_tokens,
        prompt_logprobs=delta.prompt_logprobs,
    )
