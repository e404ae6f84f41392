"""Constrained decoding on llguidance: a request's Constraint compiled to a matcher, and the
allowed-token bitmasks of a batch of matchers filled off the engine thread. Never touches
logits, the model or the scheduler: the sampler applies the masks.

Why llguidance: it builds masks for any byte-level vocabulary from the token bytes alone, with
no dependency beyond its wheel, and a mask costs about 0.1-0.5 ms per row on our 49k vocabulary
(bench/results/README.md, "Constrained decoding").
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import llguidance
import torch

from .errors import InvalidRequestError
from .tokenizer_base import Tokenizer
from .types import Constraint, ConstraintKind


class _TokenizerView:
    """What llguidance.TokenizerWrapper reads from a tokenizer: ids' bytes, EOS, an encoder."""

    def __init__(self, tokenizer: Tokenizer, vocab_size: int) -> None:
        self._tokenizer = tokenizer
        self.eos_token_id = tokenizer.eos_token_id
        self.bos_token_id = tokenizer.bos_token_id
        # Model rows past the tokenizer's vocabulary stand for no bytes: never allowed.
        self.tokens = [tokenizer.token_bytes(i) for i in range(vocab_size)]
        self.special_token_ids = [i for i in range(vocab_size) if tokenizer.is_special(i)]

    def __call__(self, text: bytes | str) -> list[int]:
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        return self._tokenizer.encode(text)


def _grammar(constraint: Constraint) -> str:
    """The llguidance grammar text of a constraint; ValueError for a schema that is not JSON."""
    if constraint.kind is ConstraintKind.REGEX:
        return llguidance.LLMatcher.grammar_from_regex(constraint.source)
    if constraint.kind is ConstraintKind.JSON_SCHEMA:
        return llguidance.LLMatcher.grammar_from_json_schema(constraint.source)
    if constraint.kind is ConstraintKind.GRAMMAR:
        # "grammar" takes Lark and GBNF alike (GBNF is converted to Lark first).
        return llguidance.grammar_from("grammar", constraint.source)
    lark = "start: " + " | ".join(json.dumps(choice) for choice in constraint.choices)
    return llguidance.LLMatcher.grammar_from_lark(lark)


class ConstraintState:
    """One request's position in its constraint: which tokens may come next, and whether done."""

    def __init__(self, matcher: llguidance.LLMatcher) -> None:
        self.matcher = matcher

    def accept(self, token_id: int) -> bool:
        """Advance past a sampled token; False if the constraint cannot take it."""
        return self.matcher.consume_token(token_id)

    @property
    def done(self) -> bool:
        """The output is complete: the constraint allows no further token (EOS aside)."""
        return self.matcher.is_stopped()

    @property
    def error(self) -> str:
        return self.matcher.get_error()


@dataclass(frozen=True)
class MaskBatch:
    """Allowed tokens of some rows: bit j of bitmask[i, j // 32] set when token j may follow."""

    bitmask: torch.Tensor  # (C, ceil(V / 32)) int32, row i for states[i] of the call
    seconds: float  # wall time spent filling it


class ConstraintCompiler:
    """Compiles constraints for one tokenizer and fills their masks on a helper thread.

    The llguidance tokenizer (about 0.3 s to build for a 49k vocabulary) is built on the first
    constrained request, so a server that never constrains never pays for it.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        *,
        vocab_size: int,  # the model's logits width, may exceed the tokenizer's vocabulary
        num_mask_threads: int = 2,  # llguidance's own pool, shared by the rows of one step
    ) -> None:
        self._tokenizer = tokenizer
        self._vocab_size = vocab_size
        self._num_mask_threads = num_mask_threads
        self._ll_tokenizer: llguidance.LLTokenizer | None = None
        self._executor: llguidance.LLExecutor | None = None
        self._thread: ThreadPoolExecutor | None = None

    def _lltokenizer(self) -> llguidance.LLTokenizer:
        if self._ll_tokenizer is None:
            view = _TokenizerView(self._tokenizer, self._vocab_size)
            self._ll_tokenizer = llguidance.LLTokenizer(
                llguidance.TokenizerWrapper(view),
                n_vocab=self._vocab_size,
                eos_token=sorted(self._tokenizer.eos_token_ids),
            )
        return self._ll_tokenizer

    def compile(self, constraint: Constraint) -> ConstraintState:
        """A fresh state at the start of the output; InvalidRequestError if it cannot compile."""
        field = f"constraint.{constraint.kind.value}"
        try:
            grammar = _grammar(constraint)
        except ValueError as exc:
            raise InvalidRequestError(field, str(exc)) from None
        matcher = llguidance.LLMatcher(self._lltokenizer(), grammar, log_level=0)
        if matcher.is_error():
            raise InvalidRequestError(field, _first_line(matcher.get_error()))
        return ConstraintState(matcher)

    def start_masks(self, states: Sequence[ConstraintState]) -> Future[MaskBatch]:
        """Fill the masks of states on the helper thread; the engine thread runs the forward."""
        if self._thread is None:
            self._executor = llguidance.LLExecutor(num_threads=self._num_mask_threads)
            self._thread = ThreadPoolExecutor(1, thread_name_prefix="banterbox-mask")
        return self._thread.submit(self._fill, [state.matcher for state in states])

    def _fill(self, matchers: list[llguidance.LLMatcher]) -> MaskBatch:
        assert self._executor is not None
        started = time.perf_counter()
        # llguidance.torch wraps this, but importing it compiles a kernel with torch.compile.
        num_words = -(-self._vocab_size // 32)
        bitmask = torch.full((len(matchers), num_words), -1, dtype=torch.int32)
        self._executor.unsafe_compute_mask_ptr(
            [(m, i) for i, m in enumerate(matchers)],
            bitmask.data_ptr(),
            num_words * 4,
            len(matchers),
        )
        return MaskBatch(bitmask=bitmask, seconds=time.perf_counter() - started)

    def close(self) -> None:
        """Stop the helper thread (a later constrained request starts a new one): queued fills
        are dropped (after a crash nobody reads them), a running one is waited for."""
        if self._thread is not None:
            self._thread.shutdown(wait=True, cancel_futures=True)
            self._thread = None
            self._executor = None


def _first_line(message: str) -> str:
    """llguidance errors carry a multi-line source excerpt; the first line says what is wrong."""
    return message.strip().splitlines()[0] if message.strip() else "invalid constraint"
