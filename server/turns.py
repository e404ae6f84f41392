"""One generate turn: a protocol request → an engine request → `Delta`/`Done` frames.

Shared by the connection's `generate` and the plugins' `ctx.generate`. Knows sessions, the
engine and metrics; never touches a WebSocket.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass
from functools import partial

from protocol import (
    ChatMessage,
    Delta,
    Done,
    ErrorCode,
    FinishReason,
    Generate,
    Priority,
    ProtocolError,
    Sampling,
    Timings,
    Usage,
)

from .async_engine import AsyncEngine, RequestStream, StreamDelta
from .config import NetworkSettings
from .engine import types as engine_types
from .engine.errors import (
    ChatTemplateError,
    EngineError,
    EngineRestartedError,
    InvalidRequestError,
    OverloadedError,
    PromptTooLongError,
    RequestError,
    RequestFailedError,
    TokenizerError,
)
from .engine.llm import LLM, Transcript
from .metrics import ServerMetrics
from .sessions import Session, SessionStore

_PRIORITIES = {
    Priority.INTERACTIVE: engine_types.Priority.INTERACTIVE,
    Priority.BACKGROUND: engine_types.Priority.BACKGROUND,
}


@dataclass(frozen=True, kw_only=True)
class TurnSpec:
    """What a turn asks for, whoever asked (a generate frame or a plugin)."""

    request_id: str  # the client's id, echoed in every frame
    messages: tuple[ChatMessage, ...] | None = None
    prompt: str | None = None
    session_id: str | None = None
    sampling: Sampling | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    priority: Priority = Priority.INTERACTIVE
    return_token_ids: bool = False
    received_at: float = 0.0  # time.monotonic() when the frame arrived

    @classmethod
    def from_generate(cls, frame: Generate, received_at: float) -> TurnSpec:
        return cls(
            request_id=frame.request_id,
            messages=frame.messages,
            prompt=frame.prompt,
            session_id=frame.session_id,
            sampling=frame.sampling,
            max_tokens=frame.max_tokens,
            stop=frame.stop or (),
            priority=frame.priority,
            return_token_ids=frame.return_token_ids,
            received_at=received_at,
        )


def _invalid(field: str, message: str) -> ProtocolError:
    return ProtocolError(ErrorCode.INVALID_FIELD, f"{field}: {message}", field=field)


def wire_error(exc: EngineError) -> ProtocolError:
    """The one table from engine errors to wire errors (most specific class first)."""
    if isinstance(exc, InvalidRequestError):
        return _invalid(exc.field, exc.detail)
    if isinstance(exc, OverloadedError):
        return ProtocolError(ErrorCode.OVERLOADED, str(exc))
    if isinstance(exc, PromptTooLongError):
        return ProtocolError(ErrorCode.PROMPT_TOO_LONG, str(exc))
    if isinstance(exc, RequestError):
        return _invalid("prompt", str(exc))
    if isinstance(exc, RequestFailedError):
        return ProtocolError(ErrorCode.REQUEST_FAILED, f"engine: {exc}")
    if isinstance(exc, EngineRestartedError):
        return ProtocolError(ErrorCode.ENGINE_RESTARTED, f"engine: {exc}")
    return ProtocolError(ErrorCode.INTERNAL, f"engine: {exc}")


def sampling_params(spec: TurnSpec, default_max_tokens: int) -> engine_types.SamplingParams:
    s = spec.sampling or Sampling()
    base = engine_types.SamplingParams()
    try:
        return engine_types.SamplingParams(
            temperature=base.temperature if s.temperature is None else s.temperature,
            top_k=base.top_k if s.top_k is None else s.top_k,
            top_p=base.top_p if s.top_p is None else s.top_p,
            min_p=base.min_p if s.min_p is None else s.min_p,
            repetition_penalty=base.repetition_penalty
            if s.repetition_penalty is None
            else s.repetition_penalty,
            presence_penalty=base.presence_penalty
            if s.presence_penalty is None
            else s.presence_penalty,
            frequency_penalty=base.frequency_penalty
            if s.frequency_penalty is None
            else s.frequency_penalty,
            logit_bias=base.logit_bias if s.logit_bias is None else s.logit_bias,
            seed=s.seed,
            max_tokens=spec.max_tokens or default_max_tokens,
            stop=spec.stop,
        )
    except ValueError as exc:  # plugins may pass values the codec never let through
        raise _invalid("sampling", str(exc)) from None


class Turn:
    """A submitted turn. Iterate it for its frames: deltas, then one done."""

    def __init__(
        self,
        spec: TurnSpec,
        stream: RequestStream,
        *,
        session: Session | None,
        sessions: SessionStore,
        metrics: ServerMetrics,
        transcript: Callable[[Sequence[int]], Transcript],
    ) -> None:
        self.spec = spec
        self._stream = stream
        self._session = session
        self._sessions = sessions
        self._metrics = metrics
        self._transcript = transcript  # prompt + these output ids → the session's transcript

    def cancel(self) -> None:
        """Ask the engine to stop; the turn then ends with finish_reason "cancelled"."""
        self._stream.cancel()

    async def events(self) -> AsyncGenerator[Delta | Done, None]:
        """The turn's frames. Refusals raise ProtocolError; closing early abandons the turn."""
        spec = self.spec
        seq = 0
        reply: list[str] = []
        output_ids: list[int] = []
        last_at = spec.received_at
        final: StreamDelta | None = None
        try:
            async for delta in self._stream:
                now = time.monotonic()
                output_ids.extend(delta.token_ids)
                if delta.finish_reason is not None:
                    final = delta
                if not (delta.text or (spec.return_token_ids and delta.token_ids)):
                    continue
                if seq == 0:
                    first = self._stream.first_token_at or now
                    self._metrics.ttft.observe(first - spec.received_at)
                else:
                    self._metrics.inter_token.observe(
                        (now - last_at) / max(1, len(delta.token_ids))
                    )
                last_at = now
                reply.append(delta.text)
                token_ids = tuple(delta.token_ids) if spec.return_token_ids else None
                yield Delta(
                    request_id=spec.request_id, seq=seq, text=delta.text, token_ids=token_ids
                )
                seq += 1
        except EngineError as exc:
            raise wire_error(exc) from None
        finally:
            if self._session is not None:
                self._session.busy = False
            if not self._stream.finished:  # the consumer went away: free the engine now
                self._stream.abandon()
        assert final is not None and final.finish_reason is not None
        finish = FinishReason(final.finish_reason.value)
        self._metrics.requests.labels(finish.value).inc()
        if self._session is not None and finish is not FinishReason.CANCELLED:
            transcript = self._transcript(output_ids)
            # Durable before the done goes out: a done the client got is a turn it keeps.
            await self._sessions.commit_turn(
                self._session, spec.messages or (), "".join(reply), transcript
            )
        yield self._done(final, finish)

    def _done(self, final: StreamDelta, finish: FinishReason) -> Done:
        stream, received_at = self._stream, self.spec.received_at
        finished_at = stream.finished_at or time.monotonic()
        first_at = stream.first_token_at or finished_at
        return Done(
            request_id=self.spec.request_id,
            finish_reason=finish,
            usage=Usage(
                num_prompt_tokens=final.num_prompt_tokens,
                num_cached_tokens=final.num_cached_tokens,
                num_completion_tokens=final.num_output_tokens,
            ),
            timings=Timings(
                # Receipt until the engine first ran the request (a step picked it).
                queue_ms=max(0.0, ((final.scheduled_time or first_at) - received_at) * 1000),
                ttft_ms=max(0.0, (first_at - received_at) * 1000),
                total_ms=max(0.0, (finished_at - received_at) * 1000),
            ),
        )


class TurnRunner:
    """Turns prompts into engine requests; one per server."""

    def __init__(
        self,
        *,
        llm: LLM,
        engine: AsyncEngine,
        sessions: SessionStore,
        metrics: ServerMetrics,
        settings: NetworkSettings,
    ) -> None:
        self._llm = llm
        self._engine = engine
        self._sessions = sessions
        self._metrics = metrics
        self._settings = settings

    @property
    def max_prompt_tokens(self) -> int:
        model_len = self._llm.info.max_model_len
        return min(self._settings.max_prompt_tokens or model_len, model_len - 1)

    def start(self, spec: TurnSpec, *, tenant: str, engine_request_id: str) -> Turn:
        """Tokenize and submit; raises ProtocolError for a turn that cannot start."""
        session: Session | None = None
        messages: Sequence[ChatMessage] | None = spec.messages
        if spec.session_id is not None:
            session = self._sessions.get(tenant, spec.session_id)
            if spec.messages is None:
                raise _invalid("prompt", "a session turn takes messages, not a raw prompt")
            if session.busy:
                raise ProtocolError(
                    ErrorCode.TOO_MANY_REQUESTS,
                    f"session {spec.session_id!r} already has a turn in flight",
                )
            messages = session.prompt_messages(spec.messages)
        history = session.transcript if session is not None else None
        prompt = self._encode(messages, spec.prompt, history)
        prompt_ids = prompt.token_ids
        if len(prompt_ids) > self.max_prompt_tokens:
            raise ProtocolError(
                ErrorCode.PROMPT_TOO_LONG,
                f"{len(prompt_ids)} prompt tokens; the limit is {self.max_prompt_tokens}",
            )
        request = self._llm.new_request(
            prompt_ids,
            sampling_params(spec, self._settings.default_max_tokens),
            request_id=engine_request_id,
            priority=_PRIORITIES[spec.priority],
            session_id=session.engine_session_id if session is not None else None,
            # Tenants never share (so never observe) each other's cached prefixes.
            cache_salt=tenant,
        )
        try:
            stream = self._engine.submit(request)
        except EngineError as exc:
            raise wire_error(exc) from None
        if session is not None:
            session.busy = True
        return Turn(
            spec,
            stream,
            session=session,
            sessions=self._sessions,
            metrics=self._metrics,
            transcript=partial(self._llm.continue_transcript, prompt),
        )

    def _encode(
        self,
        messages: Sequence[ChatMessage] | None,
        prompt: str | None,
        history: Transcript | None,
    ) -> Transcript:
        try:
            if messages is not None:
                rendered = [{"role": m.role.value, "content": m.content} for m in messages]
                return self._llm.encode_chat_turn(rendered, history)
            if prompt is None:
                raise _invalid("messages", "give exactly one of messages and prompt")
            if not prompt:
                raise _invalid("prompt", "must not be empty")
            return Transcript(prompt, tuple(self._llm.encode_prompt(prompt)))
        except ChatTemplateError as exc:
            raise _invalid("messages", str(exc)) from None
        except TokenizerError as exc:
            raise _invalid("prompt", str(exc)) from None
