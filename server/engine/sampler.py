"""Batched next-token sampling, each row under its own params and generator. No model, KV or I/O.

Order per row: logit bias → penalties → constraint mask → temperature → top-k → top-p → min-p
→ draw. Rows are
processed together where the maths is the same for all of them; only the final draw loops over
the stochastic rows, because each one owns its torch.Generator (same seed, same tokens, whatever
else shares the batch). Nothing here syncs with the device except the final `.tolist()` and,
off the all-greedy fast path, one finiteness check that refuses to draw from a row with no
finite score (a `SamplingError` naming the rows, raised before any generator advances).

The maths cannot make inf or NaN out of valid params: temperature and the repetition penalty
are floored (below the floors every choice is already the argmax), and each row is shifted by
its maximum before dividing by the temperature, so the largest score is exactly 0.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from server.engine.errors import ModelLoadError
from server.engine.kernels import load as load_kernels
from server.engine.types import SamplingParams, TokenLogprob

_SEED_MASK = (1 << 64) - 1  # torch seeds are 64-bit; any Python int seed maps into that range
# 1e-50 underflows to 0 in float32; below this floor a sampled row is an argmax anyway.
MIN_TEMPERATURE = 1e-6
# A penalty of 1e-300 is 0 in float32 and would divide by it; far past any useful value.
MIN_REPETITION_PENALTY = 1e-6
MAX_REPETITION_PENALTY = 1e6


class SamplingError(ValueError):
    """Some rows have no finite score to sample from; `rows` are their indices in the batch."""

    def __init__(self, rows: Sequence[int]) -> None:
        super().__init__(f"no finite logit to sample from in rows {list(rows)}")
        self.rows = tuple(rows)


@dataclass(frozen=True)
class TokenMask:
    """Allowed tokens of some rows of a batch (constrained rows); other rows are unmasked."""

    rows: tuple[int, ...]  # batch rows, one per bitmask row
    bitmask: torch.Tensor  # (R, ceil(V / 32)) int32: bit j % 32 of word j // 32 allows token j

    def for_row(self, row: int) -> TokenMask | None:
        """The mask of one batch row alone, renumbered as row 0 (for row-by-row retries)."""
        if row not in self.rows:
            return None
        i = self.rows.index(row)
        return TokenMask(rows=(0,), bitmask=self.bitmask[i : i + 1])

    def allowed(self, vocab_size: int, device: torch.device) -> torch.Tensor:
        """(R, V) bool."""
        bitmask = self.bitmask.to(device)
        shifts = torch.arange(32, dtype=torch.int32, device=device)
        bits = (bitmask.unsqueeze(-1) >> shifts) & 1  # (R, W, 32)
        return bits.flatten(1)[:, :vocab_size].bool()


class SamplingState:
    """One request's sampling state: its params, its random stream, the token counts it penalizes.

    `sample` never records the token it picks: the caller calls `append` for every token it keeps,
    so penalties see exactly the request's output. Count tensors are built once, on the first
    step that needs them, and then updated one token at a time.
    """

    def __init__(
        self,
        params: SamplingParams,
        *,
        prompt_token_ids: Sequence[int] = (),
        output_token_ids: Sequence[int] = (),
    ) -> None:
        self.params = params
        self.prompt_token_ids = tuple(prompt_token_ids)
        self.output_token_ids = list(output_token_ids)
        # Unseeded rows still need a private stream, so that no row steals another's draws.
        seed = params.seed if params.seed is not None else int.from_bytes(os.urandom(8), "little")
        self.seed = seed & _SEED_MASK
        self.has_penalties = (
            params.repetition_penalty != 1.0
            or params.presence_penalty != 0.0
            or params.frequency_penalty != 0.0
        )
        # Plain greedy rows need nothing but an argmax: the batch fast path.
        self.plain_greedy = (
            params.greedy
            and not self.has_penalties
            and not params.logit_bias
            and params.constraint is None
        )
        self._generator: torch.Generator | None = None
        self._seen: torch.Tensor | None = None  # (V,) bool: in the prompt or the output
        self._counts: torch.Tensor | None = None  # (V,) float32: times output so far

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    def append(self, token_id: int) -> None:
        """Record one emitted token (the caller's job after each step)."""
        self.output_token_ids.append(token_id)
        if self._counts is not None and self._seen is not None:
            self._counts[token_id] += 1.0
            self._seen[token_id] = True

    def generator(self, device: torch.device) -> torch.Generator:
        """This request's generator, created on `device` the first time it is asked for."""
        if self._generator is None:
            self._generator = torch.Generator(device=device)
            self._generator.manual_seed(self.seed)
        elif self._generator.device != device:
            raise ValueError(
                f"sampling state lives on {self._generator.device}, logits are on {device}"
            )
        return self._generator

    def token_counts(
        self, vocab_size: int, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(seen, counts), each (V,): built from the history once, then kept by `append`."""
        if self._seen is None or self._counts is None:
            seen = torch.zeros(vocab_size, dtype=torch.bool, device=device)
            counts = torch.zeros(vocab_size, dtype=torch.float32, device=device)
            if self.prompt_token_ids:
                seen[_to_device(self.prompt_token_ids, torch.int64, device)] = True
            if self.output_token_ids:
                output = _to_device(self.output_token_ids, torch.int64, device)
                seen[output] = True
                counts.index_put_(
                    (output,), torch.ones_like(output, dtype=torch.float32), accumulate=True
                )
            self._seen, self._counts = seen, counts
        return self._seen, self._counts


def sample(
    logits: torch.Tensor, states: Sequence[SamplingState], mask: TokenMask | None = None
) -> list[int]:
    """One token id per row of `logits` (B, V); row i is sampled under `states[i]`, and only
    among its allowed tokens when `mask` covers it."""
    if logits.dim() != 2 or logits.shape[0] != len(states):
        raise ValueError(f"need logits (B, V) with B={len(states)}, got {tuple(logits.shape)}")
    if mask is None and all(state.plain_greedy for state in states):
        fast: list[int] = _argmax(logits).tolist()
        return fast
    scores = adjust_logits(logits, states)  # (B, V)
    if mask is not None:
        rows = _to_device(mask.rows, torch.int64, logits.device)
        allowed = mask.allowed(scores.shape[1], logits.device)  # (R, V)
        scores[rows] = scores[rows].masked_fill(~allowed, -math.inf)
    finite = torch.isfinite(scores.amax(dim=-1))  # (B,): NaN or +inf anywhere, or all -inf
    if not bool(finite.all()):
        raise SamplingError([i for i, ok in enumerate(finite.tolist()) if not ok])
    token_ids = _argmax(scores)  # (B,): final for the greedy rows
    random_rows = [i for i, state in enumerate(states) if not state.params.greedy]
    if random_rows:
        rows = _to_device(random_rows, torch.int64, logits.device)
        token_ids[rows] = _draw(scores[rows], [states[i] for i in random_rows])
    picked: list[int] = token_ids.tolist()
    return picked


def token_logprobs(
    logits: torch.Tensor, token_ids: Sequence[int], num_top: Sequence[int]
) -> list[TokenLogprob]:
    """Each row's token_ids[i] log-probability and its num_top[i] most likely tokens, from
    log_softmax of `logits` (R, V) as given: the raw model logits, before any adjustment."""
    logprobs = torch.log_softmax(logits.to(torch.float32), dim=-1)  # (R, V)
    device = logits.device
    picked = logprobs.gather(1, _to_device(token_ids, torch.int64, device).unsqueeze(1))
    k = max(num_top, default=0)
    top_values, top_ids = logprobs.topk(k, dim=-1) if k else (logprobs[:, :0], logprobs[:, :0])
    values, ids, own = top_values.tolist(), top_ids.tolist(), picked.squeeze(1).tolist()
    return [
        TokenLogprob(
            token_id=token_id,
            logprob=own[i],
            top=tuple(zip(map(int, ids[i][: num_top[i]]), values[i][: num_top[i]], strict=True)),
        )
        for i, token_id in enumerate(token_ids)
    ]


def adjust_logits(logits: torch.Tensor, states: Sequence[SamplingState]) -> torch.Tensor:
    """A float32 copy of `logits` (B, V) with each row's logit bias and penalties applied."""
    scores = logits.to(dtype=torch.float32, copy=True)  # the caller's logits stay untouched
    _apply_logit_bias(scores, states)
    _apply_penalties(scores, states)
    return scores


def _apply_logit_bias(scores: torch.Tensor, states: Sequence[SamplingState]) -> None:
    rows: list[int] = []
    token_ids: list[int] = []
    biases: list[float] = []
    for i, state in enumerate(states):
        for token_id, bias in state.params.logit_bias.items():
            rows.append(i)
            token_ids.append(token_id)
            biases.append(bias)
    if not rows:
        return
    device = scores.device
    index = (_to_device(rows, torch.int64, device), _to_device(token_ids, torch.int64, device))
    scores.index_put_(index, _to_device(biases, torch.float32, device), accumulate=True)


def _apply_penalties(scores: torch.Tensor, states: Sequence[SamplingState]) -> None:
    """CTRL repetition penalty over prompt + output, then OpenAI presence/frequency over output."""
    penalized = [i for i, state in enumerate(states) if state.has_penalties]
    if not penalized:
        return
    device = scores.device
    seen_rows: list[torch.Tensor] = []
    count_rows: list[torch.Tensor] = []
    for i in penalized:
        seen, counts = states[i].token_counts(scores.shape[1], device)
        seen_rows.append(seen)
        count_rows.append(counts)
    seen_mask = torch.stack(seen_rows)  # (P, V)
    counts = torch.stack(count_rows)  # (P, V)
    params = [states[i].params for i in penalized]
    repetition = _column(
        [
            min(max(p.repetition_penalty, MIN_REPETITION_PENALTY), MAX_REPETITION_PENALTY)
            for p in params
        ],
        device,
    )  # (P, 1)
    presence = _column([p.presence_penalty for p in params], device)
    frequency = _column([p.frequency_penalty for p in params], device)

    rows = _to_device(penalized, torch.int64, device)
    sub = scores[rows]  # (P, V)
    # Dividing a positive logit and multiplying a negative one both make the token less likely.
    repeated = torch.where(sub > 0, sub / repetition, sub * repetition)
    sub = torch.where(seen_mask, repeated, sub)
    sub = sub - frequency * counts - presence * (counts > 0).to(torch.float32)
    scores[rows] = sub


def _draw(scores: torch.Tensor, states: Sequence[SamplingState]) -> torch.Tensor:
    """Sample one token per row of `scores` (R, V) for non-greedy rows; returns (R,) int64."""
    device = scores.device
    params = [state.params for state in states]
    temperature = _column([max(p.temperature, MIN_TEMPERATURE) for p in params], device)
    scores = (scores - scores.amax(dim=-1, keepdim=True)) / temperature  # max score exactly 0
    if any(p.top_k > 0 or p.top_p < 1.0 for p in params):
        scores = _top_k_top_p(scores, params)
    if any(p.min_p > 0.0 for p in params):
        # p >= min_p * p_max  <=>  logit >= max logit + log(min_p); log(0) = -inf keeps all.
        log_min_p = _column(
            [math.log(p.min_p) if p.min_p > 0 else -math.inf for p in params], device
        )
        threshold = scores.amax(dim=-1, keepdim=True) + log_min_p  # (R, 1)
        scores = scores.masked_fill(scores < threshold, -math.inf)
    probs = torch.softmax(scores, dim=-1)  # (R, V)
    picks = [
        torch.multinomial(probs[j], 1, generator=state.generator(device))
        for j, state in enumerate(states)
    ]
    return torch.cat(picks)


def _top_k_top_p(scores: torch.Tensor, params: Sequence[SamplingParams]) -> torch.Tensor:
    """Mask all but each row's top-k tokens, then all but its top-p nucleus of what is left."""
    device = scores.device
    vocab_size = scores.shape[1]
    # A stable sort keeps the kept set independent of how ties happen to be laid out.
    sorted_scores, order = scores.sort(dim=-1, descending=True, stable=True)  # (R, V)
    top_k = _to_device(
        [p.top_k if 0 < p.top_k < vocab_size else vocab_size for p in params], torch.int64, device
    ).unsqueeze(1)  # (R, 1)
    positions = torch.arange(vocab_size, device=device).unsqueeze(0)  # (1, V)
    remove = positions >= top_k  # (R, V), in sorted order
    sorted_probs = torch.softmax(sorted_scores.masked_fill(remove, -math.inf), dim=-1)
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs  # probability ranked above
    top_p = _column([p.top_p for p in params], device)
    # Keep every token until the nucleus reaches top_p; the first token always survives.
    remove |= (mass_before > top_p) & (top_p < 1.0)
    unsorted_remove = torch.empty_like(remove).scatter_(1, order, remove)
    return scores.masked_fill(unsorted_remove, -math.inf)


def _column(values: Sequence[float], device: torch.device) -> torch.Tensor:
    return _to_device(values, torch.float32, device).unsqueeze(1)


def _argmax(logits: torch.Tensor) -> torch.Tensor:
    """torch.argmax over the last axis; CPU float32 rows on the C++ kernel (a third of torch's
    time at 32 x 49,152), with torch's answer: the first largest, a NaN counting as largest."""
    cpu_rows = logits.device.type == "cpu" and logits.dtype == torch.float32
    kernels = _kernels() if cpu_rows and logits.dim() == 2 and logits.shape[1] > 0 else None
    if kernels is not None:
        out: torch.Tensor = kernels.argmax_rows(logits)
        return out
    return logits.argmax(dim=-1)


@functools.cache
def _kernels() -> Any:
    """torch.ops.banterbox, or None where they cannot be built (torch's reductions then)."""
    try:
        return load_kernels()
    except ModelLoadError:
        return None


def _to_device(values: Sequence[float], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A small host list as a tensor on `device`, without waiting for the device's queue."""
    host = torch.tensor(values, dtype=dtype)
    if device.type == "cpu":
        return host
    # A blocking copy from pageable memory would wait for the model's kernels to finish.
    return host.pin_memory().to(device, non_blocking=True)
