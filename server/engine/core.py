"""EngineCore: one step = schedule → execute → update. Single-threaded; no asyncio, no I/O."""

from __future__ import annotations

from dataclasses import dataclass

from .config import EngineConfig
from .detokenizer import IncrementalDetokenizer, StopStringMatcher
from .kv_manager import KVCacheManager
from .model import Transformer
from .runner import ModelRunner, kv_bytes_per_block
from .sampler import SamplingState, sample
from .scheduler import Scheduler
from .sequence import FinishedSequence, SchedulerOutput, SchedulerStats, SequenceUpdate
from .tokenizer_base import Tokenizer
from .types import EngineRequest, FinishReason, RequestOutput

_MIB = 1 << 20


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
        self._requests: dict[str, _RequestState] = {}

    def add_request(self, request: EngineRequest) -> None:
        """Queue a request; raises RequestError (overloaded, too long) when it is refused."""
        if request.request_id in self._requests:
            raise ValueError(f"duplicate request id {request.request_id!r}")
        self.scheduler.add_request(request)
        self._requests[request.request_id] = _RequestState(request, self.tokenizer)

    def abort_request(self, request_id: str) -> None:
        """Cancel in any state; applied at the start of the next step."""
        self.scheduler.abort_request(request_id)

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    def stats(self) -> EngineStats:
        return EngineStats(
            scheduler=self.scheduler.stats(),
            num_kv_blocks=self.num_kv_blocks,
            block_size=self.config.block_size,
        )

    def step(self) -> list[RequestOutput]:
        scheduled = self.scheduler.schedule()
        sampled = self._execute(scheduled)
        updates = self.scheduler.update_from_output(scheduled, sampled)
        return self._process(scheduled.finished, updates)

    def _execute(self, scheduled: SchedulerOutput) -> dict[str, int]:
        if not scheduled.chunks:
            return {}
        for chunk in scheduled.chunks:
            state = self._requests[chunk.request_id]
            if state.scheduled_time is None:
                state.scheduled_time = chunk.seq.first_scheduled_time
        logits, request_ids = self.runner.execute(scheduled.chunks)
        if not request_ids:
            return {}
        states = [self._requests[rid].sampling for rid in request_ids]
        return dict(zip(request_ids, sample(logits, states), strict=True))

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
            output = _output(update, update.new_token_ids, text, finish, state.scheduled_time)
            outputs.append(output)
        return outputs


def _output(
    source: FinishedSequence | SequenceUpdate,
    new_token_ids: tuple[int, ...],
    text: str,
    finish: FinishReason | None,
    scheduled_time: float | None,
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
    )
