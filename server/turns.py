"""One generate turn: a protocol request → an engine request → `Delta`/`Done` frames.

Shared by the connection's `generate` and the plugins' `ctx.generate`. Knows sessions, the
engine and metrics; never touches a WebSocket.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from functools import partial

from plugins.api import Constraint, GenerateSpec
from protocol import (
    ChatMessage,
    Delta,
    Done,
    ErrorCode,
    FinishReason,
    Generate,
    Priority,
    ProtocolError,
    Role,
    Sampling,
    Score,
    Scores,
    Timings,
    TokenLogprob,
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


def generate_spec(frame: Generate) -> GenerateSpec:
    """The one list of generate parameters, from a client's `generate` frame."""
    return GenerateSpec(
        request_id=frame.request_id,
        messages=frame.messages,
        prompt=frame.prompt,
        session_id=frame.session_id,
        sampling=frame.sampling,
        max_tokens=frame.max_tokens,
        stop=frame.stop or (),
        priority=frame.priority,
        return_token_ids=frame.return_token_ids,
        constraint=frame.constraint,
        logprobs=frame.logprobs,
        prefill_only=frame.prefill_only,
    )


# JSON has no -inf: a token the model rules out is sent with this log-probability.
_MIN_LOGPROB = -1e30


def _wire_logprobs(entries: Sequence[engine_types.TokenLogprob]) -> tuple[TokenLogprob, ...]:
    return tuple(
        TokenLogprob(
            token_id=e.token_id,
            logprob=max(e.logprob, _MIN_LOGPROB),
            top=tuple((t, max(lp, _MIN_LOGPROB)) for t, lp in e.top),
        )
        for e in entries
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


def engine_constraint(constraint: Constraint | None) -> engine_types.Constraint | None:
    """The plugin API's constraint as the engine's (the same four kinds)."""
    if constraint is None:
        return None
    try:
        return engine_types.Constraint(
            engine_types.ConstraintKind(constraint.kind.value),
            constraint.source,
            constraint.choices,
        )
    except ValueError as exc:
        raise _invalid("constraint", str(exc)) from None


def sampling_params(spec: GenerateSpec, default_max_tokens: int) -> engine_types.SamplingParams:
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
            constraint=engine_constraint(spec.constraint),
            logprobs=spec.logprobs,
        )
    except ValueError as exc:  # plugins may pass values the codec never let through
        raise _invalid("sampling", str(exc)) from None


def _no_transcript(output_ids: Sequence[int]) -> None:
    """A turn whose prompt left history out: the next turn renders its messages anew."""
    return None


class Turn:
    """A submitted turn. Iterate it for its frames: deltas, then one done."""

    def __init__(
        self,
        spec: GenerateSpec,
        stream: RequestStream,
        *,
        received_at: float,
        session: Session | None,
        sessions: SessionStore,
        metrics: ServerMetrics,
        transcript: Callable[[Sequence[int]], Transcript | None],
    ) -> None:
        self.spec = spec
        self.received_at = received_at  # time.monotonic() when the request's frame arrived
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
        last_at = self.received_at
        final: StreamDelta | None = None
        try:
            async for delta in self._stream:
                now = time.monotonic()
                output_ids.extend(delta.token_ids)
                if delta.finish_reason is not None:
                    final = delta
                wants_tokens = spec.return_token_ids or spec.logprobs is not None
                if not (delta.text or (wants_tokens and delta.token_ids)):
                    continue
                if seq == 0:
                    first = self._stream.first_token_at or now
                    self._metrics.ttft.observe(first - self.received_at)
                else:
                    self._metrics.inter_token.observe(
                        (now - last_at) / max(1, len(delta.token_ids))
                    )
                last_at = now
                reply.append(delta.text)
                token_ids = tuple(delta.token_ids) if spec.return_token_ids else None
                logprobs = None if spec.logprobs is None else _wire_logprobs(delta.logprobs)
                yield Delta(
                    request_id=spec.request_id,
                    seq=seq,
                    text=delta.text,
                    token_ids=token_ids,
                    logprobs=logprobs,
                )
                seq += 1
        except EngineError as exc:
            raise wire_error(exc) from None
        finally:
            if self._session is not None and not spec.prefill_only:
                self._session.busy = False
            if not self._stream.finished:  # the consumer went away: free the engine now
                self._stream.abandon()
        assert final is not None and final.finish_reason is not None
        finish = FinishReason(final.finish_reason.value)
        self._metrics.requests.labels(finish.value).inc()
        recorded = spec.record and not spec.prefill_only  # a prefill says nothing to remember
        if self._session is not None and recorded and finish is not FinishReason.CANCELLED:
            transcript = self._transcript(output_ids)
            # Durable before the done goes out: a done the client got is a turn it keeps.
            await self._sessions.commit_turn(
                self._session, spec.messages or (), "".join(reply), transcript
            )
        yield self._done(final, finish)

    def _done(self, final: StreamDelta, finish: FinishReason) -> Done:
        stream, received_at = self._stream, self.received_at
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
        self._score_ids = itertools.count()

    @property
    def max_prompt_tokens(self) -> int:
        model_len = self._llm.info.max_model_len
        return min(self._settings.max_prompt_tokens or model_len, model_len - 1)

    def start(
        self, spec: GenerateSpec, *, tenant: str, engine_request_id: str, received_at: float
    ) -> Turn:
        """Tokenize and submit; raises ProtocolError for a turn that cannot start."""
        session: Session | None = None
        messages: Sequence[ChatMessage] | None = spec.messages
        if spec.system is not None and messages is not None:
            messages = [ChatMessage(role=Role.SYSTEM, content=spec.system), *messages]
        if spec.session_id is not None:
            session = self._sessions.get(tenant, spec.session_id)
            if spec.messages is None:
                raise _invalid("prompt", "a session turn takes messages, not a raw prompt")
            if session.busy:
                raise ProtocolError(
                    ErrorCode.TOO_MANY_REQUESTS,
                    f"session {spec.session_id!r} already has a turn in flight",
                )
            if spec.history_start < 0:
                raise _invalid("history_start", "must be >= 0")
            messages = session.prompt_messages(
                spec.messages, system=spec.system, history_start=spec.history_start
            )
        # A prompt without part of the history is not the transcript's continuation.
        cut = spec.history_start > 0
        history = session.transcript if session is not None and not cut else None
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
            # A prefill is speculative work: it never delays a turn someone waits on.
            priority=engine_types.Priority.BACKGROUND
            if spec.prefill_only
            else _PRIORITIES[spec.priority],
            session_id=session.engine_session_id if session is not None else None,
            # Tenants never share (so never observe) each other's cached prefixes.
            cache_salt=tenant,
            prefill_only=spec.prefill_only,
        )
        try:
            stream = self._engine.submit(request)
        except EngineError as exc:
            raise wire_error(exc) from None
        if session is not None and not spec.prefill_only:
            session.busy = True  # prefills are superseded by the turn, never block it
        return Turn(
            spec,
            stream,
            received_at=received_at,
            session=session,
            sessions=self._sessions,
            metrics=self._metrics,
            transcript=_no_transcript if cut else partial(self._llm.continue_transcript, prompt),
        )

    async def score(
        self,
        *,
        tenant: str,
        candidates: Sequence[str],
        prompt: str | None = None,
        messages: Sequence[ChatMessage] | None = None,
        system: str | None = None,
    ) -> list[float]:
        """Log-probability of each candidate after the prompt (or the chat, ready for the
        assistant's answer), salted by tenant like every turn; raises ProtocolError."""
        if messages is not None and system is not None:
            messages = [ChatMessage(role=Role.SYSTEM, content=system), *messages]
        prompt_ids = self._encode(messages, prompt, None).token_ids
        scored = await self._score(prompt_ids, candidates, tenant=tenant)
        return list(scored.logprobs)

    async def answer_score(self, frame: Score, *, tenant: str) -> Scores:
        """A client's `score`: a session's prompt is its history then `messages`, as a turn
        would render it; the session is read, never changed."""
        messages: Sequence[ChatMessage] | None = frame.messages
        history: Transcript | None = None
        if frame.session_id is not None:
            session = self._sessions.get(tenant, frame.session_id)
            if frame.messages is None:
                raise _invalid("prompt", "a session's score takes messages, not a raw prompt")
            messages = session.prompt_messages(frame.messages)
            history = session.transcript
        prompt_ids = self._encode(messages, frame.prompt, history).token_ids
        scored = await self._score(
            prompt_ids, frame.candidates, tenant=tenant, priority=frame.priority
        )
        return Scores(
            request_id=frame.request_id,
            logprobs=scored.logprobs,
            usage=Usage(
                num_prompt_tokens=scored.num_prompt_tokens,
                num_cached_tokens=scored.num_cached_tokens,
                num_completion_tokens=0,
            ),
        )

    async def _score(
        self,
        prompt_ids: Sequence[int],
        candidates: Sequence[str],
        *,
        tenant: str,
        priority: Priority = Priority.INTERACTIVE,
    ) -> engine_types.ScoreOutput:
        if not candidates:
            raise _invalid("candidates", "give at least one")
        candidate_ids = [self._llm.tokenizer.encode(text) for text in candidates]
        if any(not ids for ids in candidate_ids):
            raise _invalid("candidates", "a candidate must not be empty")
        if len(prompt_ids) + max(map(len, candidate_ids)) > self.max_prompt_tokens:
            raise ProtocolError(
                ErrorCode.PROMPT_TOO_LONG,
                f"the prompt and its longest candidate exceed {self.max_prompt_tokens} tokens",
            )
        try:
            return await self._engine.score(
                prompt_ids,
                candidate_ids,
                request_id=f"score/{next(self._score_ids)}",
                priority=_PRIORITIES[priority],
                cache_salt=tenant,
            )
        except EngineError as exc:
            raise wire_error(exc) from None

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
