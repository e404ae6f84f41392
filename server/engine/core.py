"""EngineCore: one step = schedule → execute → update. Single-threaded; no asyncio, no I/O.

A failure that belongs to one request ends that request alone (finish reason ERROR, blocks
freed) and the step goes on for the others: a forward that raises is retried chunk by chunk to
find the culprit, a sampling batch that raises is retried row by row, and output processing
is guarded per request. Only a failure outside any request (the scheduler itself) escapes
`step()`, and the worker's supervisor deals with that.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .config import EngineConfig
from .detokenizer import IncrementalDetokenizer, StopStringMatcher
from .errors import InvalidRequestError
from .kv_manager import KVCacheManager
from .model import Transformer
from .runner import ModelRunner, kv_bytes_per_block
from .sampler import SamplingState, sample
from .scheduler import Scheduler
from .sequence import (
    FinishedSequence,
    ScheduledChunk,
    SchedulerOutput,
    SchedulerStats,
    SequenceUpdate,
)
from .tokenizer_base import Tokenizer
from .types import EngineRequest, FinishReason, RequestOutput

_MIB = 1 << 20
log = logging.getLogger("banterbox.engine")


class _RequestState:
    """Per-request output processing: sampling state, detokenizer, stop strings."""

    def __init__(self, request: EngineRequest, tokenizer: Tokenizer) -> None:
        self.request = request
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
        self._requests: dict[str, _RequestState] = {}
        self._failed: dict[str, str] = {}  # request id -> why, for this step's failures

    def add_request(self, request: EngineRequest) -> None:
        """Queue a request; raises RequestError (invalid, overloaded, too long) to refuse it."""
        if request.request_id in self._requests:
            raise ValueError(f"duplicate request id {request.request_id!r}")
        self._check_vocabulary(request)
        self.scheduler.add_request(request)
        self._requests[request.request_id] = _RequestState(request, self.tokenizer)

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
        logits, request_ids = self._forward(scheduled.chunks)
        if not request_ids:
            return {}
        states = [self._requests[rid].sampling for rid in request_ids]
        try:
            token_ids = sample(logits, states)
        except Exception:  # find the rows at fault; the others keep their tokens
            return self._sample_rows(logits, request_ids)
        return dict(zip(request_ids, token_ids, strict=True))

    def _forward(self, chunks: Sequence[ScheduledChunk]) -> tuple[torch.Tensor, tuple[str, ...]]:
        """The batched forward; if it raises, each chunk alone, and the failing ones fail."""
        try:
            return self.runner.execute(chunks)
        except Exception:
            if len(chunks) == 1:
                self._fail(chunks[0].request_id, "the model's forward failed")
                return torch.empty(0), ()
        rows: list[torch.Tensor] = []
        request_ids: list[str] = []
        for chunk in chunks:
            try:
                logits, ids = self.runner.execute([chunk])
            except Exception:
                self._fail(chunk.request_id, "the model's forward failed")
                continue
            rows.append(logits)
            request_ids.extend(ids)
        return (torch.cat(rows) if rows else torch.empty(0)), tuple(request_ids)

    def _sample_rows(self, logits: torch.Tensor, request_ids: Sequence[str]) -> dict[str, int]:
        picked: dict[str, int] = {}
        for row, request_id in enumerate(request_ids):
            try:
                picked[request_id] = sample(
                    logits[row : row + 1], [self._requests[request_id].sampling]
                )[0]
            except Exception:
                self._fail(request_id, "sampling failed (no finite logit to draw from)")
        return picked

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
        for token_id in update.new_token_ids:
            state.sampling.append(token_id)
        finish = update.finish_reason
        text, stop_matched = state.text_of(update.new_token_ids, finish)
        if stop_matched:
            if finish is None:
                self.scheduler.finish_request(update.request_id, FinishReason.STOP)
            finish = FinishReason.STOP
        if finish is not None:
            del self._requests[update.request_id]
        return _output(update, update.new_token_ids, text, finish, state.scheduled_time)


def _output(
    source: FinishedSequence | SequenceUpdate,
    new_token_ids: tuple[int, ...],
    text: str,
    finish: FinishReason | None,
    scheduled_time: float | None,
    *,
    error: str | None = None,
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
    )
