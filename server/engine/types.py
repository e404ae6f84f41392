"""The engine's vocabulary: requests, sampling parameters, outputs. Pure data, no torch."""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType


class Priority(enum.IntEnum):
    """Scheduling class; lower runs first. Interactive turns beat background work."""

    INTERACTIVE = 0
    BACKGROUND = 1


class FinishReason(enum.StrEnum):
    STOP = "stop"  # an EOS / stop token id / stop string
    LENGTH = "length"  # max_tokens, or the model's context window
    CANCELLED = "cancelled"  # aborted by the client (cancel, disconnect, shutdown)
    ERROR = "error"  # this request failed inside the engine; the others went on
    PREFILLED = "prefilled"  # a prefill-only request: its prompt's KV is computed and cached


MAX_LOGPROBS = 20  # the most alternatives SamplingParams.logprobs may ask for per token


class ConstraintKind(enum.StrEnum):
    REGEX = "regex"  # the whole output matches the regular expression (Rust regex syntax)
    JSON_SCHEMA = "json_schema"  # the output is one JSON value valid under the schema
    GRAMMAR = "grammar"  # a Lark (llguidance dialect) or GBNF grammar
    CHOICE = "choice"  # the output is exactly one of the strings


@dataclass(frozen=True)
class Constraint:
    """What the output must match, as source text; compiled (and refused) at admission.

    `source` is the regex, the grammar, or the schema as JSON text (text keeps the dataclass
    hashable and frozen); `choices` holds the strings of a CHOICE. Build one with the class
    methods rather than by hand.
    """

    kind: ConstraintKind
    source: str = ""
    choices: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if (self.kind is ConstraintKind.CHOICE) != bool(self.choices):
            raise ValueError("choices are given exactly for a choice constraint")
        if self.kind is not ConstraintKind.CHOICE and not self.source:
            raise ValueError(f"a {self.kind.value} constraint needs its source text")
        if any(not choice for choice in self.choices):
            raise ValueError("a choice must not be the empty string")

    @classmethod
    def regex(cls, pattern: str) -> Constraint:
        return cls(ConstraintKind.REGEX, pattern)

    @classmethod
    def json_schema(cls, schema: Mapping[str, object] | str) -> Constraint:
        # Key order is kept: llguidance emits properties in the order the schema lists them.
        text = schema if isinstance(schema, str) else json.dumps(schema)
        return cls(ConstraintKind.JSON_SCHEMA, text)

    @classmethod
    def grammar(cls, grammar: str) -> Constraint:
        return cls(ConstraintKind.GRAMMAR, grammar)

    @classmethod
    def choice(cls, choices: Sequence[str]) -> Constraint:
        return cls(ConstraintKind.CHOICE, choices=tuple(choices))


def _no_bias() -> Mapping[int, float]:
    return MappingProxyType({})


@dataclass(frozen=True, kw_only=True)
class SamplingParams:
    """How to pick each next token and when to stop. Defaults are greedy, 256 tokens."""

    temperature: float = 0.0  # 0 means greedy (argmax)
    top_k: int = 0  # 0 disables
    top_p: float = 1.0  # 1.0 disables
    min_p: float = 0.0  # 0.0 disables; keep tokens with p >= min_p * p_max
    repetition_penalty: float = 1.0  # CTRL-style, over prompt + output; 1.0 disables
    presence_penalty: float = 0.0  # OpenAI-style, over output tokens
    frequency_penalty: float = 0.0  # OpenAI-style, over output tokens
    logit_bias: Mapping[int, float] = field(default_factory=_no_bias)
    seed: int | None = None  # same seed, same tokens
    max_tokens: int = 256
    stop_token_ids: tuple[int, ...] = ()  # in addition to the model's EOS ids
    stop: tuple[str, ...] = ()  # stop strings; never part of the returned text
    ignore_eos: bool = False
    constraint: Constraint | None = None  # the output must match it; None: free text
    # None: no log-probabilities. N >= 0: each sampled token's own log-probability and the
    # top N of its distribution, from log_softmax of the model's raw logits (before bias,
    # penalties, temperature and constraint mask: what the model itself believed).
    logprobs: int | None = None

    def __post_init__(self) -> None:
        numbers = {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "min_p": self.min_p,
            "repetition_penalty": self.repetition_penalty,
            "presence_penalty": self.presence_penalty,
            "frequency_penalty": self.frequency_penalty,
        }
        for name, value in numbers.items():
            if not math.isfinite(value):
                raise ValueError(f"{name} must be finite, got {value}")
        # -inf bans a token; NaN and +inf have no meaning as a bias.
        if not all(math.isfinite(b) or b == -math.inf for b in self.logit_bias.values()):
            raise ValueError("logit_bias values must be finite or -inf")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0.0 <= self.min_p <= 1.0:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_LOGPROBS:
            raise ValueError(f"logprobs must be in [0, {MAX_LOGPROBS}], got {self.logprobs}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(frozen=True, kw_only=True)
class EngineRequest:
    """One generation request as the engine sees it: token ids in, tokens out."""

    request_id: str
    prompt_token_ids: tuple[int, ...]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    priority: Priority = Priority.INTERACTIVE
    session_id: str | None = None  # keep this request's KV for the session's next turn
    # Salts the prefix-cache hashes: requests see cached blocks only of their own salt (tenant).
    cache_salt: str = ""
    arrival_time: float = 0.0  # time.monotonic() when submitted
    # Compute the prompt's KV (its full blocks cached, the session pinned), sample nothing,
    # and finish PREFILLED. A newer request of the same session cancels it.
    prefill_only: bool = False
    # Prefill-only scoring: return the log-probability of each of the last N prompt tokens
    # given the tokens before it (RequestOutput.prompt_logprobs). 0: none.
    num_scored_tokens: int = 0

    def __post_init__(self) -> None:
        if self.num_scored_tokens and not self.prefill_only:
            raise ValueError("num_scored_tokens needs prefill_only")
        if not 0 <= self.num_scored_tokens < max(1, len(self.prompt_token_ids)):
            raise ValueError(
                f"num_scored_tokens must be in [0, {len(self.prompt_token_ids)}), "
                f"got {self.num_scored_tokens}"
            )


@dataclass(frozen=True, kw_only=True)
class TokenLogprob:
    """One sampled token's log-probability and the most likely alternatives at its step."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()  # (token id, logprob), most likely first


@dataclass(frozen=True, kw_only=True)
class RequestOutput:
    """What one engine step produced for one request: new tokens, their text, maybe the end."""

    request_id: str
    new_token_ids: tuple[int, ...]
    text_delta: str
    finish_reason: FinishReason | None = None
    num_prompt_tokens: int = 0
    num_cached_tokens: int = 0  # prompt tokens served from the prefix/session cache
    num_output_tokens: int = 0
    scheduled_time: float | None = None  # time.monotonic() the request first ran in a step
    error: str | None = None  # why, when finish_reason is ERROR
    logprobs: tuple[TokenLogprob, ...] = ()  # one per new token, when sampling.logprobs is set
    # Scoring requests, on the PREFILLED output: the log-probability of each scored token.
    prompt_logprobs: tuple[float, ...] = ()

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass(frozen=True, kw_only=True)
class ScoreOutput:
    """Log-probabilities of candidate continuations of one prompt, in the candidates' order."""

    logprobs: tuple[float, ...]  # per candidate: the sum of its tokens' log-probabilities
    token_logprobs: tuple[tuple[float, ...], ...]  # per candidate, per token
    num_prompt_tokens: int
    num_cached_tokens: int  # prompt tokens found in the prefix cache
