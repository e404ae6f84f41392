"""Typed frames of the Banterbox wire protocol, client and server. Pure data: no I/O, no codec.

Python names follow the house style (`request_id`, `num_*`); the wire names differ only where
SPEC.md says so (`id`, and the `usage` counts). Constructors do not validate: decoding does.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import ClassVar

from protocol.errors import ProtocolError

PROTOCOL_VERSION = 1
SUPPORTED_PROTOCOLS = frozenset({PROTOCOL_VERSION})


class Role(enum.StrEnum):
    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"


class Priority(enum.StrEnum):
    INTERACTIVE = "interactive"  # a player or viewer is waiting on it
    BACKGROUND = "background"  # summaries, moderation sweeps: runs when there is room


class FinishReason(enum.StrEnum):
    STOP = "stop"  # end-of-sequence token or a stop string
    LENGTH = "length"  # max_tokens or the model's context window
    CANCELLED = "cancelled"  # cancel frame, disconnect or shutdown
    PREFILLED = "prefilled"  # generate.prefill_only: the prompt's KV is cached, nothing sampled


class ConstraintKind(enum.StrEnum):
    """The one key of a generate.constraint map."""

    REGEX = "regex"  # the whole output matches the regular expression (Rust regex syntax)
    JSON_SCHEMA = "json_schema"  # the output is one JSON value valid under the schema
    GRAMMAR = "grammar"  # a Lark (llguidance dialect) or GBNF grammar
    CHOICE = "choice"  # the output is exactly one of the strings


# --- parts ---------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ChatMessage:
    role: Role
    content: str


@dataclass(frozen=True, kw_only=True)
class Sampling:
    """Sampling overrides; None leaves the server's default for that knob."""

    temperature: float | None = None  # >= 0; 0 is greedy
    top_p: float | None = None  # (0, 1]
    top_k: int | None = None  # >= 0; 0 disables
    min_p: float | None = None  # [0, 1]
    repetition_penalty: float | None = None  # > 0; 1 disables
    presence_penalty: float | None = None  # [-2, 2]
    frequency_penalty: float | None = None  # [-2, 2]
    seed: int | None = None  # [0, 2**63)
    logit_bias: Mapping[int, float] | None = None  # token id -> bias in [-100, 100]


@dataclass(frozen=True)
class Constraint:
    """What a turn's output must match. `source` is the regex, the grammar, or the schema as
    JSON text (its key order kept: the output lists properties in that order); `choices` are
    the strings of a CHOICE. Build one with the class methods."""

    kind: ConstraintKind
    source: str = ""
    choices: tuple[str, ...] = ()

    @classmethod
    def regex(cls, pattern: str) -> Constraint:
        return cls(ConstraintKind.REGEX, pattern)

    @classmethod
    def json_schema(cls, schema: Mapping[str, object]) -> Constraint:
        return cls(ConstraintKind.JSON_SCHEMA, json.dumps(schema, allow_nan=False))

    @classmethod
    def grammar(cls, grammar: str) -> Constraint:
        return cls(ConstraintKind.GRAMMAR, grammar)

    @classmethod
    def choice(cls, choices: Sequence[str]) -> Constraint:
        return cls(ConstraintKind.CHOICE, choices=tuple(choices))


@dataclass(frozen=True, kw_only=True)
class TokenLogprob:
    """A sampled token's log-probability and the top alternatives at its step."""

    token_id: int  # wire: id
    logprob: float
    top: tuple[tuple[int, float], ...] = ()  # (token id, logprob), most likely first


@dataclass(frozen=True, kw_only=True)
class Usage:
    num_prompt_tokens: int  # wire: prompt_tokens
    num_cached_tokens: int  # wire: cached_tokens; prompt tokens served from the KV cache
    num_completion_tokens: int  # wire: completion_tokens


@dataclass(frozen=True, kw_only=True)
class Timings:
    queue_ms: float  # waiting for admission
    ttft_ms: float  # receipt of the frame to the first token
    total_ms: float  # receipt of the frame to the done frame


# --- client -> server ----------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Hello:
    TYPE: ClassVar[str] = "hello"
    protocol: int
    client: str | None = None  # free-form, e.g. "unity-sdk/0.3"
    api_key: str | None = field(default=None, repr=False)


@dataclass(frozen=True, kw_only=True)
class SessionOpen:
    TYPE: ClassVar[str] = "session.open"
    request_id: str
    session_id: str | None = None  # proposed by the client; else the server picks one
    metadata: Mapping[str, str] | None = None


@dataclass(frozen=True, kw_only=True)
class SessionResume:
    TYPE: ClassVar[str] = "session.resume"
    request_id: str
    session_id: str


@dataclass(frozen=True, kw_only=True)
class SessionClose:
    TYPE: ClassVar[str] = "session.close"
    request_id: str
    session_id: str


@dataclass(frozen=True, kw_only=True)
class Generate:
    TYPE: ClassVar[str] = "generate"
    request_id: str
    session_id: str | None = None
    messages: tuple[ChatMessage, ...] | None = None  # exactly one of messages and prompt
    prompt: str | None = None  # raw text, no chat template applied
    max_tokens: int | None = None
    stop: tuple[str, ...] | None = None
    priority: Priority = Priority.INTERACTIVE
    return_token_ids: bool = False
    sampling: Sampling | None = None
    constraint: Constraint | None = None
    logprobs: int | None = None  # 0..20: each token's logprob and its top N alternatives
    prefill_only: bool = False  # cache the prompt's KV, sample nothing; done says "prefilled"


@dataclass(frozen=True, kw_only=True)
class Score:
    """Log-probabilities of candidate continuations of a prompt (an LLM judge's yes / no)."""

    TYPE: ClassVar[str] = "score"
    request_id: str
    session_id: str | None = None  # the prompt continues this session (which stays unchanged)
    messages: tuple[ChatMessage, ...] | None = None  # exactly one of messages and prompt
    prompt: str | None = None
    candidates: tuple[str, ...]
    priority: Priority = Priority.INTERACTIVE


@dataclass(frozen=True, kw_only=True)
class Cancel:
    TYPE: ClassVar[str] = "cancel"
    request_id: str  # the id of the in-flight request to cancel


def _empty_payload() -> Mapping[str, object]:
    return MappingProxyType({})


@dataclass(frozen=True, kw_only=True)
class PluginFrame:
    """A frame of a plugin's namespace ("npc.say"), either direction; payload is the rest."""

    type: str
    request_id: str | None = None  # required from clients; server events may have none
    payload: Mapping[str, object] = field(default_factory=_empty_payload)


# --- server -> client ----------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Welcome:
    TYPE: ClassVar[str] = "welcome"
    server_version: str
    protocol: int
    model: str
    limits: Mapping[str, int]
    capabilities: tuple[str, ...]
    connection_id: str


@dataclass(frozen=True, kw_only=True)
class SessionInfo:
    TYPE: ClassVar[str] = "session"
    request_id: str
    session_id: str
    resumed: bool
    num_turns: int


@dataclass(frozen=True, kw_only=True)
class SessionClosed:
    TYPE: ClassVar[str] = "session.closed"
    request_id: str
    session_id: str


@dataclass(frozen=True, kw_only=True)
class Delta:
    TYPE: ClassVar[str] = "delta"
    request_id: str
    seq: int  # 0, 1, 2, ... per request
    text: str
    token_ids: tuple[int, ...] | None = None  # only when generate.return_token_ids
    logprobs: tuple[TokenLogprob, ...] | None = None  # only when generate.logprobs; per token


@dataclass(frozen=True, kw_only=True)
class Done:
    TYPE: ClassVar[str] = "done"
    request_id: str
    finish_reason: FinishReason
    usage: Usage
    timings: Timings


@dataclass(frozen=True, kw_only=True)
class Scores:
    TYPE: ClassVar[str] = "scores"
    request_id: str
    logprobs: tuple[float, ...]  # per candidate, in order: the sum over its tokens
    usage: Usage  # completion_tokens is 0


@dataclass(frozen=True, kw_only=True)
class ErrorFrame:
    TYPE: ClassVar[str] = "error"
    request_id: str | None
    code: str  # an ErrorCode value; clients must accept codes they do not know
    message: str
    retryable: bool

    @classmethod
    def from_error(cls, error: ProtocolError) -> ErrorFrame:
        return cls(
            request_id=error.request_id,
            code=error.code.value,
            message=error.message,
            retryable=error.retryable,
        )


ClientFrame = (
    Hello | SessionOpen | SessionResume | SessionClose | Generate | Score | Cancel | PluginFrame
)
ServerFrame = (
    Welcome | SessionInfo | SessionClosed | Delta | Done | Scores | ErrorFrame | PluginFrame
)
Frame = ClientFrame | ServerFrame

CLIENT_TYPES: frozenset[str] = frozenset(
    cls.TYPE for cls in (Hello, SessionOpen, SessionResume, SessionClose, Generate, Score, Cancel)
)
SERVER_TYPES: frozenset[str] = frozenset(
    cls.TYPE for cls in (Welcome, SessionInfo, SessionClosed, Delta, Done, Scores, ErrorFrame)
)
# Plugin types may not live in a namespace the core uses.
RESERVED_NAMESPACES = frozenset({"session"})
