"""Wire maps from typed frames: the inverse of readers.py. Pure.

Fields that are None are left out (error.id excepted: always present, null when unknown), so
one frame has one canonical encoding, which the golden vectors pin down.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from protocol.messages import (
    Cancel,
    ChatMessage,
    Constraint,
    ConstraintKind,
    Delta,
    Done,
    ErrorFrame,
    Frame,
    Generate,
    Hello,
    PluginFrame,
    Sampling,
    Score,
    Scores,
    SessionClose,
    SessionClosed,
    SessionInfo,
    SessionOpen,
    SessionResume,
    TokenLogprob,
    Usage,
    Welcome,
)

Wire = dict[str, object]
_SCALARS = frozenset({str, int, float, bool, type(None)})


def _plain(value: object) -> object:
    """Mappings and tuples as the dicts and lists both encoders take."""
    if type(value) in _SCALARS:  # most of a large payload: one test, not two isinstance
        return value
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def _map(type_: str, request_id: str | None, **fields: object) -> Wire:
    wire: Wire = {"type": type_}
    if request_id is not None:
        wire["id"] = request_id
    wire.update((name, _plain(value)) for name, value in fields.items() if value is not None)
    return wire


def _message(message: ChatMessage) -> Wire:
    return {"role": message.role.value, "content": message.content}


def _sampling(sampling: Sampling) -> Wire:
    fields = {
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "top_k": sampling.top_k,
        "min_p": sampling.min_p,
        "repetition_penalty": sampling.repetition_penalty,
        "presence_penalty": sampling.presence_penalty,
        "frequency_penalty": sampling.frequency_penalty,
        "seed": sampling.seed,
        # Int keys: msgpack keeps them, json.dumps writes them as the strings readers accept.
        # Ascending token ids: the one order any encoder can reproduce (SPEC §10).
        "logit_bias": None
        if sampling.logit_bias is None
        else dict(sorted(sampling.logit_bias.items())),
    }
    return {name: value for name, value in fields.items() if value is not None}


def _constraint(constraint: Constraint) -> Wire:
    if constraint.kind is ConstraintKind.CHOICE:
        return {constraint.kind.value: list(constraint.choices)}
    if constraint.kind is ConstraintKind.JSON_SCHEMA:
        schema: object = json.loads(constraint.source)
        return {constraint.kind.value: schema}
    return {constraint.kind.value: constraint.source}


def _logprob(entry: TokenLogprob) -> Wire:
    return {
        "id": entry.token_id,
        "logprob": entry.logprob,
        "top": [[token_id, logprob] for token_id, logprob in entry.top],
    }


def _usage(usage: Usage) -> Wire:
    return {
        "prompt_tokens": usage.num_prompt_tokens,
        "cached_tokens": usage.num_cached_tokens,
        "completion_tokens": usage.num_completion_tokens,
    }


def _generate(frame: Generate) -> Wire:
    messages = None if frame.messages is None else [_message(m) for m in frame.messages]
    return _map(
        frame.TYPE,
        frame.request_id,
        session_id=frame.session_id,
        messages=messages,
        prompt=frame.prompt,
        max_tokens=frame.max_tokens,
        stop=frame.stop,
        priority=frame.priority.value,
        return_token_ids=frame.return_token_ids,
        sampling=None if frame.sampling is None else _sampling(frame.sampling),
        constraint=None if frame.constraint is None else _constraint(frame.constraint),
        logprobs=frame.logprobs,
        # Written only when set, so that frames without it keep their canonical bytes.
        prefill_only=frame.prefill_only or None,
    )


def _score(frame: Score) -> Wire:
    messages = None if frame.messages is None else [_message(m) for m in frame.messages]
    return _map(
        frame.TYPE,
        frame.request_id,
        session_id=frame.session_id,
        messages=messages,
        prompt=frame.prompt,
        candidates=frame.candidates,
        priority=frame.priority.value,
    )


def _done(frame: Done) -> Wire:
    usage = _usage(frame.usage)
    timings = {
        "queue_ms": frame.timings.queue_ms,
        "ttft_ms": frame.timings.ttft_ms,
        "total_ms": frame.timings.total_ms,
    }
    return _map(
        frame.TYPE,
        frame.request_id,
        finish_reason=frame.finish_reason.value,
        usage=usage,
        timings=timings,
    )


def _plugin(frame: PluginFrame) -> Wire:
    if "type" in frame.payload or "id" in frame.payload:
        raise ValueError("a plugin payload may not hold the keys 'type' or 'id'")
    # Unlike core fields, a null in a payload is data: keep it.
    wire = _map(frame.type, frame.request_id)
    wire.update((key, _plain(value)) for key, value in frame.payload.items())
    return wire


def to_wire(frame: Frame) -> Wire:
    match frame:
        case Hello():
            return _map(
                frame.TYPE,
                None,
                protocol=frame.protocol,
                client=frame.client,
                api_key=frame.api_key,
            )
        case SessionOpen():
            return _map(
                frame.TYPE, frame.request_id, session_id=frame.session_id, metadata=frame.metadata
            )
        case SessionResume() | SessionClose() | SessionClosed():
            return _map(frame.TYPE, frame.request_id, session_id=frame.session_id)
        case Generate():
            return _generate(frame)
        case Score():
            return _score(frame)
        case Cancel():
            return _map(frame.TYPE, frame.request_id)
        case PluginFrame():
            return _plugin(frame)
        case Welcome():
            return _map(
                frame.TYPE,
                None,
                server_version=frame.server_version,
                protocol=frame.protocol,
                model=frame.model,
                limits=frame.limits,
                capabilities=frame.capabilities,
                connection_id=frame.connection_id,
            )
        case SessionInfo():
            return _map(
                frame.TYPE,
                frame.request_id,
                session_id=frame.session_id,
                resumed=frame.resumed,
                num_turns=frame.num_turns,
            )
        case Delta():
            return _map(
                frame.TYPE,
                frame.request_id,
                seq=frame.seq,
                text=frame.text,
                token_ids=frame.token_ids,
                logprobs=None if frame.logprobs is None else [_logprob(e) for e in frame.logprobs],
            )
        case Done():
            return _done(frame)
        case Scores():
            return _map(
                frame.TYPE, frame.request_id, logprobs=frame.logprobs, usage=_usage(frame.usage)
            )
        case ErrorFrame():
            return {
                "type": frame.TYPE,
                "id": frame.request_id,
                "code": frame.code,
                "message": frame.message,
                "retryable": frame.retryable,
            }
    raise TypeError(f"not a frame: {type(frame).__name__}")
