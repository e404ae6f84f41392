"""EngineCore: one step = schedule → execute → update. Single-threaded; no asyncio, no I/O.

A failure that belongs to one request ends that request alone (finish reason ERROR, blocks
freed) and the step goes on for the others: a forward that raises is retried chunk by chunk to
find the culprit, a sampling batch that raises is retried row by row, and output processing
is guarded per request. Only a failure outside any request (the scheduler itself) escapes
`step()`, and the worker's supervisor deals with that.

Constrained rows: their masks are filled on a helper thread while the forward runs, and only
for the rows that sample this step, so free rows wait for no mask and a step costs in masks
what its constrained rows need. A constraint that does not compile refuses its request at
`add_request`; one that cannot take the sampled token fails its request alone.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass

import torch

from .config import EngineConfig
from .constraints import ConstraintCompiler, ConstraintState, MaskBatch
from .detokenizer import IncrementalDetokenizer, StopStringMatcher
from .errors import InvalidRequestError
from .kv_manager import KVCacheManager
from .model import Transformer
from .runner import ModelRunner, ScoredSpan, StepLogits, kv_bytes_per_block
from .sampler import SamplingState, TokenMask, sample, token_logprobs
from .scheduler import Scheduler
from .sequence import (
    FinishedSequence,
    ScheduledChunk,
    SchedulerOutput,
    SchedulerStats,
    SequenceUpdate,
)
from .tokenizer_base import Tokenizer
from .types import EngineRequest, FinishReason, RequestOutput, TokenLogprob

_MIB = 1 << 20
log = logging.getLogger("banterbox.engine")


class _RequestState:
    """Per-request output processing: sampling state, detokenizer, stop strings."""

    def __init__(
        self,
        request: EngineRequest,
        tokenizer: Tokenizer,
        constraint: ConstraintState | None = None,
    ) -> None:
        self.request = request
        self.constraint = constraint
        self.logprobs: list[TokenLogprob] = []  # of tokens sampled but not yet output
        self.prompt_logprobs: list[float] = []  # scoring requests: of the scored tokens so far
        self.sampling = SamplingState(request.sampling, prompt_token_ids=request.prompt_token_ids)
        self.detokenizer = IncrementalDetokenizer(tokenizer)
        self.stops = StopStringMatcher(request.sampling.stop) if request.sampling.stop else None
        stop_ids = set(request.sampling.stop_token_ids)
        if not request.sampling.ignore_eos:
            stop_ids |= tokenizer.eos_token_ids
        self.stop_token_ids = frozenset(stop_ids)
        self.scheduled_time: float | None = None

    def text_of(self, token_ids: tuple[int, ...], finish: FinishReason | None) -> tuple[str, bool]:
        """Text for the new tokens; True when a stop string ended the request."""
        parts = []
        for i, token_id in enumerate(token_ids):
            is_last = i == len(token_ids) - 1
            # A stop token ends the turn; its text is never part of the answer.
            if not (is_last and finish is FinishReason.STOP and token_id in self.stop_token_ids):
                parts.append(self.detokenizer.push(token_id))
        if finish is not None:
            parts.append(self.detokenizer.flush())
        text = "".join(parts)
        if self.stops is None:
            return text, False
        safe, matched = self.stops.feed(text)
        if finish is not None and not matched:
            safe += self.stops.flush()
        return safe, matched


@dataclass(frozen=True, kw_only=True)
class EngineStats:
    """Figures the server exports: queue, running sequences, KV memory, cache hits."""

    scheduler: SchedulerStats
    num_kv_blocks: int
    block_size: int
    num_mask_steps_total: int = 0  # steps that filled constraint masks
    mask_seconds_total: float = 0.0  # time spent filling them (overlapped with the forward)


class EngineCore:
    """Owns the scheduler, the KV memory and the model runner; driven by `step()`."""

    def __init__(self, model: Transformer, tokenizer: Tokenizer, *, config: EngineConfig) -> None:
        self.config = config
        self.tokenizer = tokenizer
        num_blocks = config.num_kv_blocks or max(
            2, config.kv_cache_mib * _MIB // kv_bytes_per_block(model, config.block_size)
        )
        self.num_kv_blocks = num_blocks
        self.kv_manager = KVCacheManager(
            num_blocks=num_blocks,
            block_size=config.block_size,
            session_ttl_s=config.session_ttl_s,
            max_session_share=config.max_session_share,
        )
        self.max_model_len = config.max_model_len or model.config.max_position
        self.scheduler = Scheduler(
            self.kv_manager,
            max_num_batched_tokens=config.max_num_batched_tokens,
            max_num_seqs=config.max_num_seqs,
            max_waiting=config.max_waiting,
            max_model_len=self.max_model_len,
            eos_token_ids=tokenizer.eos_token_ids,
        )
        self.runner = ModelRunner(model, num_blocks=num_blocks, block_size=config.block_size)
        self.vocab_size = model.config.vocab_size
        self.constraints = ConstraintCompiler(tokenizer, vocab_size=self.vocab_size)
        self._num_mask_steps_total = 0
        self._mask_seconds_total = 0.0
        self._requests: dict[str, _RequestState] = {}
        self._failed: dict[str, str] = {}  # request id -> why, for this step's failures

    def close(self) -> None:
        """Release what outlives a step: the constraint masks' helper thread."""
        self.constraints.close()

    def add_request(self, request: EngineRequest) -> None:
        """Queue a request; raises RequestError (invalid, overloaded, too long) to refuse it."""
        if request.request_id in self._requests:
            raise ValueError(f"duplicate request id {request.request_id!r}")
        self._check_vocabulary(request)
        constraint = request.sampling.constraint
        state = None if constraint is None else self.constraints.compile(constraint)
        self.scheduler.add_request(request)
        self._requests[request.request_id] = _RequestState(request, self.tokenizer, state)

    def _check_vocabulary(self, request: EngineRequest) -> None:
        """Every token id the request names must index the model's logits."""
        vocab = self.vocab_size
        checks = (
            ("prompt", request.prompt_token_ids),
            ("sampling.logit_bias", tuple(request.sampling.logit_bias)),
            ("sampling.stop_token_ids", request.sampling.stop_token_ids),
        )
        for field, token_ids in checks:
            bad = next((t for t in token_ids if not 0 <= t < vocab), None)
            if bad is not None:
                raise InvalidRequestError(
                    field, f"token id {bad} is outside the model's vocabulary (0..{vocab - 1})"
                )

    def abort_request(self, request_id: str) -> None:
        """Cancel in any state; applied at the start of the next step."""
        self.scheduler.abort_request(request_id)

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    def expire_sessions(self) -> int:
        """Unpin the KV of sessions idle past their TTL (schedule() does it on busy engines)."""
        return self.kv_manager.expire_sessions()

    def stats(self) -> EngineStats:
        return EngineStats(
            scheduler=self.scheduler.stats(),
            num_kv_blocks=self.num_kv_blocks,
            block_size=self.config.block_size,
            num_mask_steps_total=self._num_mask_steps_total,
            mask_seconds_total=self._mask_seconds_total,
        )

    def step(self) -> list[RequestOutput]:
        scheduled = self.scheduler.schedule()
        sampled = self._execute(scheduled)
        failed = self._retire_failed()
        updates = self.scheduler.update_from_output(scheduled, sampled)
        return [*failed, *self._process(scheduled.finished, updates)]

    def _execute(self, scheduled: SchedulerOutput) -> dict[str, int]:
        if not scheduled.chunks:
            return {}
        for chunk in scheduled.chunks:
            state = self._requests[chunk.request_id]
            if state.scheduled_time is None:
                state.scheduled_time = chunk.seq.first_scheduled_time
        constrained = [
            chunk.request_id
            for chunk in scheduled.chunks
            if chunk.sample and self._requests[chunk.request_id].constraint is not None
        ]
        masks = self._start_masks(constrained)
        step = self._forward(scheduled.chunks)
        self._record_scores(step)
        request_ids = step.sampled_request_ids
        mask = self._finish_masks(masks, constrained, request_ids)
        if not request_ids:
            return {}
        logits = step.sampled
        states = [self._requests[rid].sampling for rid in request_ids]
        try:
            token_ids = sample(logits, states, mask)
        except Exception:  # find the rows at fault; the others keep their tokens
            picked = self._sample_rows(logits, request_ids, mask)
        else:
            picked = dict(zip(request_ids, token_ids, strict=True))
        self._record_logprobs(logits, request_ids, picked)
        return picked

    def _start_masks(self, request_ids: Sequence[str]) -> Future[MaskBatch] | None:
        if not request_ids:
            return None
        states = [self._requests[rid].constraint for rid in request_ids]
        return self.constraints.start_masks([s for s in states if s is not None])

    def _finish_masks(
        self,
        masks: Future[MaskBatch] | None,
        constrained: Sequence[str],
        request_ids: Sequence[str],
    ) -> TokenMask | None:
        """The filled masks, placed on the sampled rows (a failed forward drops some rows)."""
        if masks is None:
            return None
        try:
            batch = masks.result()
        except Exception:
            for request_id in constrained:
                self._fail(request_id, "the constraint's token mask failed")
            return None
        self._num_mask_steps_total += 1
        self._mask_seconds_total += batch.seconds
        row_of = {request_id: row for row, request_id in enumerate(request_ids)}
        kept = [(row_of[rid], i) for i, rid in enumerate(constrained) if rid in row_of]
        if not kept:
            return None
        index = torch.tensor([i for _, i in kept])
        return TokenMask(rows=tuple(row for row, _ in kept), bitmask=batch.bitmask[index])

    def _forward(self, chunks: Sequence[ScheduledChunk]) -> StepLogits:
        """The batched forward; if it raises, each chunk alone, and the failing ones fail."""
        try:
            return self.runner.execute(chunks)
        except Exception:
            if len(chunks) == 1:
                self._fail(chunks[0].request_id, "the model's forward failed")
                return StepLogits(torch.empty(0), ())
        parts: list[StepLogits] = []
        for chunk in chunks:
            try:
                parts.append(self.runner.execute([chunk]))
            except Exception:
                self._fail(chunk.request_id, "the model's forward failed")
        return _merge(parts)

    def _sample_rows(
        self, logits: torch.Tensor, request_ids: Sequence[str], mask: TokenMask | None
    ) -> dict[str, int]:
        picked: dict[str, int] = {}
        for row, request_id in enumerate(request_ids):
            row_mask = None if mask is None else mask.for_row(row)
            try:
                picked[request_id] = sample(
                    logits[row : row + 1], [self._requests[request_id].sampling], row_mask
                )[0]
            except Exception:
                self._fail(request_id, "sampling failed (no finite logit to draw from)")
        return picked

    def _record_logprobs(
        self, logits: torch.Tensor, request_ids: Sequence[str], picked: dict[str, int]
    ) -> None:
        rows = [
            (row, rid)
            for row, rid in enumerate(request_ids)
            if rid in picked and self._requests[rid].request.sampling.logprobs is not None
        ]
        if not rows:
            return
        try:
            index = torch.tensor([row for row, _ in rows], device=logits.device)
            found = token_logprobs(
                logits[index],
                [picked[rid] for _, rid in rows],
                [self._requests[rid].request.sampling.logprobs or 0 for _, rid in rows],
            )
        except Exception:
            for _, rid in rows:
                self._fail(rid, "log-probabilities failed")
            return
        for (_, rid), logprob in zip(rows, found, strict=True):
            self._requests[rid].logprobs.append(logprob)

    def _record_scores(self, step: StepLogits) -> None:
        """Scoring rows: log-probability of the token after each scored position."""
        row = len(step.sampled_request_ids)
        for span in step.scored:
            rows = step.logits[row : row + span.num_rows]
            row += span.num_rows
            try:
                self._score_span(span, rows)
            except Exception:
                self._fail(span.request_id, "scoring failed")

    def _score_span(self, span: ScoredSpan, rows: torch.Tensor) -> None:
        state = self._requests[span.request_id]
        start = span.start_position + 1
        targets = state.request.prompt_token_ids[start : start + span.num_rows]
        found = token_logprobs(rows, targets, [0] * len(targets))
        state.prompt_logprobs.extend(logprob.logprob for logprob in found)

    def _fail(self, request_id: str, reason: str) -> None:
        log.exception("request %s failed: %s", request_id, reason)
        self._failed[request_id] = reason

    def _retire_failed(self) -> list[RequestOutput]:
        """End this step's failed requests: blocks freed, no session pin, an ERROR output."""
        outputs = []
        for request_id, reason in self._failed.items():
            state = self._requests.pop(request_id, None)
            if state is None:
                continue
            done = self.scheduler.finish_request(request_id, FinishReason.ERROR, keep_kv=False)
            if done is None:  # the scheduler had already ended it (failed on its last token)
                outputs.append(
                    RequestOutput(
                        request_id=request_id,
                        new_token_ids=(),
                        text_delta="",
                        finish_reason=FinishReason.ERROR,
                        error=reason,
                    )
                )
                continue
            outputs.append(
                _output(done, (), "", FinishReason.ERROR, state.scheduled_time, error=reason)
            )
        self._failed.clear()
        return outputs

    def _process(
        self, finished: tuple[FinishedSequence, ...], updates: list[SequenceUpdate]
    ) -> list[RequestOutput]:
        outputs = []
        for done in finished:  # aborted or unfittable inside schedule()
            state = self._requests.pop(done.request_id, None)
            if state is None:
                continue
            text, _ = state.text_of((), done.finish_reason)
            outputs.append(_output(done, (), text, done.finish_reason, state.scheduled_time))
        for update in updates:
            try:
                outputs.append(self._process_update(update))
            except Exception:
                self._fail(update.request_id, "output processing failed")
        return [*outputs, *self._retire_failed()]

    def _process_update(self, update: SequenceUpdate) -> RequestOutput:
        state = self._requests[update.request_id]
        finish = update.finish_reason
        for token_id in update.new_token_ids:
            state.sampling.append(token_id)
            if state.constraint is not None and finish is None:
                finish = self._advance_constraint(update.request_id, state.constraint, token_id)
        text, stop_matched = state.text_of(update.new_token_ids, finish)
        if stop_matched:
            if finish is None:
                self.scheduler.finish_request(update.request_id, FinishReason.STOP)
            finish = FinishReason.STOP
        if finish is not None:
            del self._requests[update.request_id]
        logprobs, state.logprobs = tuple(state.logprobs), []
        return _output(
            update,
            update.new_token_ids,
            text,
            finish,
            state.scheduled_time,
            logprobs=logprobs,
            prompt_logprobs=tuple(state.prompt_logprobs) if finish is not None else (),
        )

    def _advance_constraint(
        self, request_id: str, constraint: ConstraintState, token_id: int
    ) -> FinishReason | None:
        """STOP once the constraint is complete: the output matches and cannot grow."""
        if not constraint.accept(token_id):
            raise RuntimeError(f"the constraint refused token {token_id}: {constraint.error}")
        if constraint.done:
            self.scheduler.finish_request(request_id, FinishReason.STOP)
            return FinishReason.STOP
        return None


def _output(
    source: FinishedSequence | SequenceUpdate,
    new_token_ids: tuple[int, ...],
    text: str,
    finish: FinishReason | None,
    scheduled_time: float | None,
    *,
    error: str | None = None,
    logprobs: tuple[TokenLogprob, ...] = (),
    prompt_logprobs: tuple[float, ...] = (),
) -> RequestOutput:
    return RequestOutput(
        request_id=source.request_id,
        new_token_ids=new_token_ids,
        text_delta=text,
        finish_reason=finish,
        num_prompt_tokens=source.num_prompt_tokens,
        num_cached_tokens=source.num_cached_tokens,
        num_output_tokens=source.num_output_tokens,
        scheduled_time=scheduled_time,
        error=error,
        logprobs=logprobs,
        prompt_logprobs=prompt_logprobs,
    )


def _merge(parts: Sequence[StepLogits]) -> StepLogits:
    """Chunk-by-chunk forwards as one: every sampled row first, then every scored span."""
    if not parts:
        return StepLogits(torch.empty(0), ())
    sampled = [part.sampled for part in parts]
    scored = [part.logits[len(part.sampled_request_ids) :] for part in parts]
    return StepLogits(
        torch.cat([*sampled, *scored]),
        tuple(rid for part in parts for rid in part.sampled_request_ids),
        tuple(span for part in parts for span in part.scored),
    )
