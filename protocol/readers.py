"""Typed frames from decoded, tree-checked maps: one reader per frame type. Pure.

Unknown fields are ignored so that newer peers can add fields (SPEC.md, "Versioning").
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from types import MappingProxyType

from protocol import validate as v
from protocol.errors import ErrorCode, ProtocolError
from protocol.limits import Limits
from protocol.messages import (
    SUPPORTED_PROTOCOLS,
    Cancel,
    ChatMessage,
    ClientFrame,
    Constraint,
    ConstraintKind,
    Delta,
    Done,
    ErrorFrame,
    FinishReason,
    Generate,
    Hello,
    Priority,
    Role,
    Sampling,
    Score,
    Scores,
    ServerFrame,
    SessionClose,
    SessionClosed,
    SessionInfo,
    SessionOpen,
    SessionResume,
    Timings,
    TokenLogprob,
    Usage,
    Welcome,
)

Raw = dict[object, object]
_U31 = (1 << 31) - 1
_U63 = (1 << 63) - 1
_MS_MAX = 1e12  # about 30 years: anything above is a broken clock, not a timing
MAX_LOGPROBS = 20  # generate.logprobs: the most alternatives per token


def _request_id(raw: Raw, limits: Limits) -> str:
    return v.required(raw, "", "id", v.identifier(max_chars=limits.max_request_id_chars))


def _session_id(raw: Raw, limits: Limits) -> str:
    return v.required(raw, "", "session_id", v.identifier(max_chars=limits.max_session_id_chars))


# --- client frames -------------------------------------------------------------------------


def read_hello(raw: Raw, limits: Limits) -> Hello:
    protocol = v.required(raw, "", "protocol", v.integer(lo=0, hi=_U31))
    if protocol not in SUPPORTED_PROTOCOLS:
        supported = ", ".join(str(p) for p in sorted(SUPPORTED_PROTOCOLS))
        raise ProtocolError(
            ErrorCode.UNSUPPORTED_VERSION,
            f"protocol {protocol} is not supported; this server speaks {supported}",
            field="protocol",
        )
    name = v.string(max_chars=limits.max_name_chars)
    return Hello(
        protocol=protocol,
        client=v.optional(raw, "", "client", name),
        api_key=v.optional(raw, "", "api_key", name),
    )


def _metadata(value: object, path: str, limits: Limits) -> Mapping[str, str]:
    raw = v.mapping(value, path)
    if len(raw) > limits.max_metadata_entries:
        raise v.over_limit(path, f"more than {limits.max_metadata_entries} entries")
    text = v.string(max_chars=limits.max_name_chars)
    metadata: dict[str, str] = {}
    for key, item in raw.items():
        if not isinstance(key, str):
            raise v.invalid(path, "keys must be strings")
        metadata[key] = text(item, f"{path}.{key}")
    return MappingProxyType(metadata)


def read_session_open(raw: Raw, limits: Limits) -> SessionOpen:
    session_id = v.identifier(max_chars=limits.max_session_id_chars)
    return SessionOpen(
        request_id=_request_id(raw, limits),
        session_id=v.optional(raw, "", "session_id", session_id),
        metadata=v.optional(raw, "", "metadata", lambda x, p: _metadata(x, p, limits)),
    )


def read_session_resume(raw: Raw, limits: Limits) -> SessionResume:
    return SessionResume(request_id=_request_id(raw, limits), session_id=_session_id(raw, limits))


def read_session_close(raw: Raw, limits: Limits) -> SessionClose:
    return SessionClose(request_id=_request_id(raw, limits), session_id=_session_id(raw, limits))


def read_cancel(raw: Raw, limits: Limits) -> Cancel:
    return Cancel(request_id=_request_id(raw, limits))


def _chat_message(value: object, path: str, limits: Limits) -> ChatMessage:
    raw = v.mapping(value, path)
    return ChatMessage(
        role=v.required(raw, path, "role", v.choice(Role)),
        content=v.required(raw, path, "content", v.string(max_chars=limits.max_string_chars)),
    )


def _logit_bias(value: object, path: str, limits: Limits) -> Mapping[int, float]:
    raw = v.mapping(value, path)
    if len(raw) > limits.max_logit_bias:
        raise v.over_limit(path, f"more than {limits.max_logit_bias} entries")
    bias = v.number(lo=-100.0, hi=100.0)
    out: dict[int, float] = {}
    for key, item in raw.items():
        # JSON map keys are strings, so token ids come as "123" there and as 123 in msgpack.
        if isinstance(key, str) and key.isascii() and key.isdigit() and len(key) <= 10:
            token_id: object = int(key)
        else:
            token_id = key
        key_path = f"{path}.{key}"
        token_id = v.integer(lo=0, hi=_U31)(token_id, key_path)
        if token_id in out:
            raise v.invalid(key_path, "token id given twice")
        out[token_id] = bias(item, key_path)
    return MappingProxyType(out)


def _sampling(value: object, path: str, limits: Limits) -> Sampling:
    raw = v.mapping(value, path)
    penalty = v.number(lo=-2.0, hi=2.0)
    return Sampling(
        temperature=v.optional(raw, path, "temperature", v.number(lo=0.0, hi=100.0)),
        top_p=v.optional(raw, path, "top_p", v.number(lo=0.0, hi=1.0, lo_open=True)),
        top_k=v.optional(raw, path, "top_k", v.integer(lo=0, hi=_U31)),
        min_p=v.optional(raw, path, "min_p", v.number(lo=0.0, hi=1.0)),
        repetition_penalty=v.optional(
            raw, path, "repetition_penalty", v.number(lo=0.0, hi=100.0, lo_open=True)
        ),
        presence_penalty=v.optional(raw, path, "presence_penalty", penalty),
        frequency_penalty=v.optional(raw, path, "frequency_penalty", penalty),
        seed=v.optional(raw, path, "seed", v.integer(lo=0, hi=_U63)),
        logit_bias=v.optional(raw, path, "logit_bias", lambda x, p: _logit_bias(x, p, limits)),
    )


def _max_tokens(value: object, path: str, limits: Limits) -> int:
    max_tokens = v.integer(lo=1, hi=_U63)(value, path)
    if max_tokens > limits.max_generate_tokens:
        raise v.over_limit(path, f"over the limit of {limits.max_generate_tokens}")
    return max_tokens


def _constraint(value: object, path: str, limits: Limits) -> Constraint:
    raw = v.mapping(value, path)
    kinds = [kind for kind in ConstraintKind if kind.value in raw]
    if len(kinds) != 1:
        names = ", ".join(kind.value for kind in ConstraintKind)
        raise v.invalid(path, f"give exactly one of {names}")
    kind = kinds[0]
    field = f"{path}.{kind.value}"
    text = v.string(max_chars=limits.max_string_chars, non_empty=True)
    if kind is ConstraintKind.CHOICE:
        choice = v.list_of(text, max_items=limits.max_candidates, min_items=1)
        return Constraint(kind, choices=v.required(raw, path, kind.value, choice))
    if kind is ConstraintKind.JSON_SCHEMA:
        schema = v.required(raw, path, kind.value, v.mapping)
        v.json_compatible(schema, field)
        # Text keeps the frame hashable; json.dumps keeps the schema's key order.
        return Constraint(kind, json.dumps(schema, ensure_ascii=False, allow_nan=False))
    return Constraint(kind, v.required(raw, path, kind.value, text))


def _messages_or_prompt(
    raw: Raw, limits: Limits
) -> tuple[tuple[ChatMessage, ...] | None, str | None]:
    message = v.list_of(
        lambda x, p: _chat_message(x, p, limits), max_items=limits.max_messages, min_items=1
    )
    messages = v.optional(raw, "", "messages", message)
    prompt = v.optional(raw, "", "prompt", v.string(max_chars=limits.max_string_chars))
    if (messages is None) == (prompt is None):
        raise v.invalid("messages", "give exactly one of messages and prompt")
    return messages, prompt


def read_generate(raw: Raw, limits: Limits) -> Generate:
    messages, prompt = _messages_or_prompt(raw, limits)
    stop = v.list_of(
        v.string(max_chars=limits.max_name_chars, non_empty=True), max_items=limits.max_stop_strings
    )
    return Generate(
        request_id=_request_id(raw, limits),
        session_id=v.optional(
            raw, "", "session_id", v.identifier(max_chars=limits.max_session_id_chars)
        ),
        messages=messages,
        prompt=prompt,
        max_tokens=v.optional(raw, "", "max_tokens", lambda x, p: _max_tokens(x, p, limits)),
        stop=v.optional(raw, "", "stop", stop),
        priority=v.optional(raw, "", "priority", v.choice(Priority)) or Priority.INTERACTIVE,
        return_token_ids=v.optional(raw, "", "return_token_ids", v.boolean) or False,
        sampling=v.optional(raw, "", "sampling", lambda x, p: _sampling(x, p, limits)),
        constraint=v.optional(raw, "", "constraint", lambda x, p: _constraint(x, p, limits)),
        logprobs=v.optional(raw, "", "logprobs", v.integer(lo=0, hi=MAX_LOGPROBS)),
        prefill_only=v.optional(raw, "", "prefill_only", v.boolean) or False,
    )


def read_score(raw: Raw, limits: Limits) -> Score:
    messages, prompt = _messages_or_prompt(raw, limits)
    candidate = v.string(max_chars=limits.max_string_chars, non_empty=True)
    return Score(
        request_id=_request_id(raw, limits),
        session_id=v.optional(
            raw, "", "session_id", v.identifier(max_chars=limits.max_session_id_chars)
        ),
        messages=messages,
        prompt=prompt,
        candidates=v.required(
            raw,
            "",
            "candidates",
            v.list_of(candidate, max_items=limits.max_candidates, min_items=1),
        ),
        priority=v.optional(raw, "", "priority", v.choice(Priority)) or Priority.INTERACTIVE,
    )


CLIENT_READERS: Mapping[str, Callable[[Raw, Limits], ClientFrame]] = MappingProxyType(
    {
        Hello.TYPE: read_hello,
        SessionOpen.TYPE: read_session_open,
        SessionResume.TYPE: read_session_resume,
        SessionClose.TYPE: read_session_close,
        Generate.TYPE: read_generate,
        Score.TYPE: read_score,
        Cancel.TYPE: read_cancel,
    }
)


# --- server frames -------------------------------------------------------------------------


def read_welcome(raw: Raw, limits: Limits) -> Welcome:
    name = v.string(max_chars=limits.max_name_chars)
    limit_map = v.required(raw, "", "limits", v.mapping)
    server_limits: dict[str, int] = {}
    for key, value in limit_map.items():
        if not isinstance(key, str):
            raise v.invalid("limits", "keys must be strings")
        server_limits[key] = v.integer(lo=0, hi=_U63)(value, f"limits.{key}")
    return Welcome(
        server_version=v.required(raw, "", "server_version", name),
        protocol=v.required(raw, "", "protocol", v.integer(lo=0, hi=_U31)),
        model=v.required(raw, "", "model", name),
        limits=MappingProxyType(server_limits),
        capabilities=v.required(
            raw, "", "capabilities", v.list_of(name, max_items=limits.max_items)
        ),
        connection_id=v.required(
            raw, "", "connection_id", v.identifier(max_chars=limits.max_session_id_chars)
        ),
    )


def read_session_info(raw: Raw, limits: Limits) -> SessionInfo:
    return SessionInfo(
        request_id=_request_id(raw, limits),
        session_id=_session_id(raw, limits),
        resumed=v.required(raw, "", "resumed", v.boolean),
        num_turns=v.required(raw, "", "num_turns", v.integer(lo=0, hi=_U63)),
    )


def read_session_closed(raw: Raw, limits: Limits) -> SessionClosed:
    return SessionClosed(request_id=_request_id(raw, limits), session_id=_session_id(raw, limits))


_LOGPROB = v.number(lo=-1e30, hi=0.0)  # log-probabilities are <= 0; -inf is sent as -1e30


def _top_entry(value: object, path: str) -> tuple[int, float]:
    pair = v.array(max_items=2, min_items=2)(value, path)
    return v.integer(lo=0, hi=_U31)(pair[0], f"{path}[0]"), _LOGPROB(pair[1], f"{path}[1]")


def _token_logprob(value: object, path: str) -> TokenLogprob:
    raw = v.mapping(value, path)
    top = v.list_of(_top_entry, max_items=MAX_LOGPROBS)
    return TokenLogprob(
        token_id=v.required(raw, path, "id", v.integer(lo=0, hi=_U31)),
        logprob=v.required(raw, path, "logprob", _LOGPROB),
        top=v.optional(raw, path, "top", top) or (),
    )


def read_delta(raw: Raw, limits: Limits) -> Delta:
    token_ids = v.list_of(v.integer(lo=0, hi=_U31), max_items=limits.max_items)
    logprobs = v.list_of(_token_logprob, max_items=limits.max_items)
    return Delta(
        request_id=_request_id(raw, limits),
        seq=v.required(raw, "", "seq", v.integer(lo=0, hi=_U63)),
        text=v.required(raw, "", "text", v.string(max_chars=limits.max_string_chars)),
        token_ids=v.optional(raw, "", "token_ids", token_ids),
        logprobs=v.optional(raw, "", "logprobs", logprobs),
    )


def _usage(value: object, path: str) -> Usage:
    raw = v.mapping(value, path)
    count = v.integer(lo=0, hi=_U63)
    return Usage(
        num_prompt_tokens=v.required(raw, path, "prompt_tokens", count),
        num_cached_tokens=v.required(raw, path, "cached_tokens", count),
        num_completion_tokens=v.required(raw, path, "completion_tokens", count),
    )


def _timings(value: object, path: str) -> Timings:
    raw = v.mapping(value, path)
    ms = v.number(lo=0.0, hi=_MS_MAX)
    return Timings(
        queue_ms=v.required(raw, path, "queue_ms", ms),
        ttft_ms=v.required(raw, path, "ttft_ms", ms),
        total_ms=v.required(raw, path, "total_ms", ms),
    )


def read_done(raw: Raw, limits: Limits) -> Done:
    return Done(
        request_id=_request_id(raw, limits),
        finish_reason=v.required(raw, "", "finish_reason", v.choice(FinishReason)),
        usage=v.required(raw, "", "usage", _usage),
        timings=v.required(raw, "", "timings", _timings),
    )


def read_scores(raw: Raw, limits: Limits) -> Scores:
    return Scores(
        request_id=_request_id(raw, limits),
        logprobs=v.required(
            raw, "", "logprobs", v.list_of(_LOGPROB, max_items=limits.max_candidates, min_items=1)
        ),
        usage=v.required(raw, "", "usage", _usage),
    )


def read_error(raw: Raw, limits: Limits) -> ErrorFrame:
    return ErrorFrame(
        request_id=v.optional(raw, "", "id", v.identifier(max_chars=limits.max_request_id_chars)),
        code=v.required(raw, "", "code", v.string(max_chars=limits.max_name_chars, non_empty=True)),
        message=v.required(raw, "", "message", v.string(max_chars=limits.max_string_chars)),
        retryable=v.required(raw, "", "retryable", v.boolean),
    )


SERVER_READERS: Mapping[str, Callable[[Raw, Limits], ServerFrame]] = MappingProxyType(
    {
        Welcome.TYPE: read_welcome,
        SessionInfo.TYPE: read_session_info,
        SessionClosed.TYPE: read_session_closed,
        Delta.TYPE: read_delta,
        Done.TYPE: read_done,
        Scores.TYPE: read_scores,
        ErrorFrame.TYPE: read_error,
    }
)
