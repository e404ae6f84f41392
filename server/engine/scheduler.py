"""Continuous-batching scheduler: one token budget per step over decodes and chunked prefills.
Pure Python bookkeeping over KVCacheManager block ids: no torch, no model, no I/O."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from .errors import OverloadedError, PromptTooLongError, RequestError
from .kv_manager import KVCacheManager
from .sequence import (
    FinishedSequence,
    ScheduledChunk,
    SchedulerOutput,
    SchedulerStats,
    Sequence,
    SequenceStatus,
    SequenceUpdate,
)
from .types import EngineRequest, FinishReason, Priority

__all__ = [
    "FinishedSequence",
    "ScheduledChunk",
    "Scheduler",
    "SchedulerOutput",
    "SchedulerStats",
    "Sequence",
    "SequenceStatus",
    "SequenceUpdate",
]


@dataclass
class _Step:
    """What one schedule() call has decided so far."""

    budget: int
    chunks: dict[str, ScheduledChunk] = field(default_factory=dict)
    preempted: list[str] = field(default_factory=list)
    finished: list[FinishedSequence] = field(default_factory=list)

    def add(self, chunk: ScheduledChunk) -> None:
        self.chunks[chunk.request_id] = chunk
        self.budget -= len(chunk.token_ids)

    def take_back(self, request_id: str) -> None:
        chunk = self.chunks.pop(request_id, None)
        if chunk is not None:
            self.budget += len(chunk.token_ids)


class Scheduler:
    """Decides, each step, which tokens of which sequences run; then records what they produced.

    Running sequences are served first (decodes, then unfinished chunked prefills), then waiting
    ones, interactive before background, FIFO within a class. When a running sequence needs a
    block and none can be had, the lowest-priority, latest-arrived running sequence is preempted
    and later recomputed from its tokens.
    """

    def __init__(
        self,
        kv: KVCacheManager,
        *,
        max_num_batched_tokens: int = 512,  # token budget of one step, decodes and prefills
        max_num_seqs: int = 64,  # running sequences at once
        max_waiting: int = 256,  # queued requests before add_request answers "overloaded"
        max_model_len: int,  # context window: prompt + outputs
        eos_token_ids: frozenset[int],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        for name, value, minimum in (
            ("max_num_batched_tokens", max_num_batched_tokens, 1),
            ("max_num_seqs", max_num_seqs, 1),
            ("max_waiting", max_waiting, 1),
            ("max_model_len", max_model_len, 2),  # one prompt token and one to generate
        ):
            if value < minimum:
                raise ValueError(f"{name} must be >= {minimum}, got {value}")
        self._kv = kv
        self._max_num_batched_tokens = max_num_batched_tokens
        self._max_num_seqs = max_num_seqs
        self._max_waiting = max_waiting
        self._max_model_len = max_model_len
        self._eos_token_ids = eos_token_ids
        self._clock = clock
        self._waiting: dict[Priority, deque[Sequence]] = {p: deque() for p in sorted(Priority)}
        self._running: list[Sequence] = []
        self._seqs: dict[str, Sequence] = {}  # every unfinished sequence
        self._pending_aborts: dict[str, None] = {}  # ordered set
        self._num_arrivals = 0
        self._num_preemptions_total = 0

    @property
    def num_waiting(self) -> int:
        return sum(len(queue) for queue in self._waiting.values())

    @property
    def num_running(self) -> int:
        return len(self._running)

    def add_request(self, request: EngineRequest) -> None:
        """Queue a request, or refuse it: RequestError and its subclasses say why."""
        num_prompt = len(request.prompt_token_ids)
        if request.request_id in self._seqs:
            raise RequestError(f"request id {request.request_id!r} is already in use")
        if num_prompt == 0:
            raise RequestError("the prompt is empty")
        if num_prompt + 1 > self._max_model_len:
            raise PromptTooLongError(
                f"{num_prompt} prompt tokens leave no room to generate within "
                f"the {self._max_model_len}-token context window"
            )
        if self._kv.blocks_for(num_prompt) > self._kv.num_usable_blocks:
            raise PromptTooLongError(
                f"{num_prompt} prompt tokens exceed the KV budget of "
                f"{self._kv.num_usable_blocks * self._kv.block_size} tokens"
            )
        if self.num_waiting >= self._max_waiting:
            raise OverloadedError(f"{self._max_waiting} requests are already waiting")
        if request.session_id is not None:
            self._supersede_prefills(request.session_id)
        seq = Sequence.from_request(request, arrival_index=self._num_arrivals)
        self._num_arrivals += 1
        self._seqs[request.request_id] = seq
        self._waiting[request.priority].append(seq)

    def abort_request(self, request_id: str) -> None:
        """Cancel at the start of the next schedule(), whatever the state. Unknown ids: ignored."""
        if request_id in self._seqs:
            self._pending_aborts[request_id] = None

    def _supersede_prefills(self, session_id: str) -> None:
        """A new request of a session makes its unfinished prefill-only requests moot."""
        for seq in self._seqs.values():
            if seq.request.prefill_only and seq.request.session_id == session_id:
                self._pending_aborts[seq.request_id] = None

    def finish_request(
        self, request_id: str, reason: FinishReason, *, keep_kv: bool = True
    ) -> FinishedSequence | None:
        """End a sequence now (a stop string matched, a failure) and free its blocks.

        keep_kv=False skips the session pin (a failed turn leaves the session as it was).
        Returns what ended, or None for an id that is not unfinished. Not reported again.
        """
        seq = self._seqs.get(request_id)
        return self._finish(seq, reason, keep_kv=keep_kv) if seq is not None else None

    def release_session(self, session_id: str) -> None:
        """The session is closed: its pin goes, and its unfinished turns will not pin again."""
        for seq in self._seqs.values():
            if seq.request.session_id == session_id:
                seq.pins_session = False
        self._kv.release_session(session_id)

    def get_sequence(self, request_id: str) -> Sequence | None:
        """The unfinished sequence of request_id, or None."""
        return self._seqs.get(request_id)

    def has_unfinished(self) -> bool:
        return bool(self._seqs)

    def stats(self) -> SchedulerStats:
        return SchedulerStats(
            num_waiting=self.num_waiting,
            num_running=self.num_running,
            num_preemptions_total=self._num_preemptions_total,
            num_prefix_hit_tokens_total=self._kv.num_prefix_hit_tokens_total,
            kv=self._kv.usage(),
        )

    def schedule(self) -> SchedulerOutput:
        """Apply pending aborts, then split this step's token budget: running, then waiting."""
        step = _Step(budget=self._max_num_batched_tokens)
        aborted = [self._seqs[request_id] for request_id in self._pending_aborts]
        self._pending_aborts.clear()
        step.finished.extend(self._finish(seq, FinishReason.CANCELLED) for seq in aborted)
        self._kv.expire_sessions()
        # Decodes first, then unfinished prefills; a background prefill (speculative work, such
        # as warming a session while its player types) goes after interactive admissions, so
        # it never delays a turn someone waits on.
        running = sorted(self._running, key=lambda s: s.num_uncomputed_tokens > 1)
        later = [s for s in running if s.num_uncomputed_tokens > 1 and _background(s)]
        self._schedule_running(step, [s for s in running if s not in later])
        # A preemption means blocks are short: admitting more would only preempt again.
        admit = not step.preempted and self._schedule_waiting(step, Priority.INTERACTIVE)
        self._schedule_running(step, later)
        if admit and not step.preempted:
            self._schedule_waiting(step, Priority.BACKGROUND)
        chunks = tuple(step.chunks.values())
        return SchedulerOutput(
            chunks=chunks,
            num_scheduled_tokens=sum(len(chunk.token_ids) for chunk in chunks),
            preempted_request_ids=tuple(step.preempted),
            finished=tuple(step.finished),
        )

    def update_from_output(
        self, output: SchedulerOutput, sampled_token_ids: Mapping[str, int]
    ) -> list[SequenceUpdate]:
        """Record that output's chunks ran; sampled_token_ids holds one token per sampling chunk."""
        updates: list[SequenceUpdate] = []
        for chunk in output.chunks:
            seq = chunk.seq
            if seq.status is not SequenceStatus.RUNNING:
                continue  # finished by finish_request since it was scheduled
            if seq.num_computed_tokens != chunk.start_position:
                raise RuntimeError(f"{seq.request_id}: output of a stale schedule")
            seq.num_computed_tokens += len(chunk.token_ids)
            seq.block_hashes.extend(
                self._kv.cache_computed_blocks(
                    seq.block_ids,
                    seq.all_token_ids,
                    num_computed_tokens=seq.num_computed_tokens,
                    block_hashes=seq.block_hashes,
                    cache_salt=seq.request.cache_salt,
                )
            )
            if seq.request.prefill_only and seq.num_uncomputed_tokens == 0:
                self._finish(seq, FinishReason.PREFILLED)
                updates.append(_update(seq, (), FinishReason.PREFILLED))
                continue
            if not chunk.sample:
                continue
            token_id = sampled_token_ids[chunk.request_id]
            seq.append_token(token_id)
            reason = self._stop_reason(seq, token_id)
            if reason is not None:
                self._finish(seq, reason)
            updates.append(_update(seq, (token_id,), reason))
        return updates

    def _schedule_running(self, step: _Step, seqs: list[Sequence]) -> None:
        # Decodes come first in seqs: one token each keeps every stream moving under a long
        # prefill.
        for seq in seqs:
            if step.budget == 0:
                return
            if seq.status is not SequenceStatus.RUNNING:
                continue  # preempted as a victim earlier in this loop
            num_new = min(seq.num_uncomputed_tokens, step.budget)
            if self._grow(seq, seq.num_computed_tokens + num_new, step):
                step.add(self._chunk(seq, num_new))

    def _grow(self, seq: Sequence, num_tokens: int, step: _Step) -> bool:
        """Give seq blocks for num_tokens, preempting others if needed. False: seq is out."""
        num_blocks = self._kv.blocks_for(num_tokens) - len(seq.block_ids)
        while num_blocks > 0:
            block_ids = self._kv.allocate(num_blocks)
            if block_ids is not None:
                seq.block_ids.extend(block_ids)
                return True
            victim = max(self._running, key=lambda s: s.preemption_key)
            if victim is seq and len(self._running) == 1:
                # Alone and still short of blocks: it can never fit, so stop it here.
                step.finished.append(self._finish(seq, FinishReason.LENGTH))
                return False
            self._preempt(victim, step)
            if victim is seq:
                return False
        return True

    def _preempt(self, seq: Sequence, step: _Step) -> None:
        self._running.remove(seq)
        self._kv.free(seq.drop_blocks())
        seq.move_to(SequenceStatus.PREEMPTED)
        seq.num_preemptions += 1
        self._waiting[seq.request.priority].appendleft(seq)
        self._num_preemptions_total += 1
        step.preempted.append(seq.request_id)
        step.take_back(seq.request_id)

    def _schedule_waiting(self, step: _Step, priority: Priority) -> bool:
        """Admit the class's waiting sequences in order; False when the first could not have
        its blocks (strict order: later ones, of any class, wait until running ones free
        blocks)."""
        queue = self._waiting[priority]
        while queue:
            if step.budget == 0 or len(self._running) >= self._max_num_seqs:
                return True
            seq = queue[0]
            if self._admit(seq, step):
                queue.popleft()
            elif self._running:
                return False
            else:
                # Nothing else holds blocks, so this sequence can never fit.
                step.finished.append(self._finish(seq, FinishReason.LENGTH))
        return True

    def _admit(self, seq: Sequence, step: _Step) -> bool:
        # A scoring request needs the logits of the position before its first scored token,
        # so the cached prefix must stop short of it.
        lookup_len = seq.num_tokens - seq.request.num_scored_tokens
        cached_block_ids, num_cached = self._kv.find_cached_prefix(
            seq.all_token_ids[:lookup_len], cache_salt=seq.request.cache_salt
        )
        num_new = min(seq.num_tokens - num_cached, step.budget)
        num_blocks = self._kv.blocks_for(num_cached + num_new) - len(cached_block_ids)
        block_ids = self._kv.allocate(num_blocks, cached_block_ids=cached_block_ids)
        if block_ids is None:
            return False
        seq.block_ids = block_ids
        seq.num_computed_tokens = num_cached
        if seq.first_scheduled_time is None:
            seq.first_scheduled_time = self._clock()
            seq.num_cached_tokens = num_cached
        seq.move_to(SequenceStatus.RUNNING)
        self._running.append(seq)
        step.add(self._chunk(seq, num_new))
        return True

    def _chunk(self, seq: Sequence, num_new: int) -> ScheduledChunk:
        start, stop = seq.num_computed_tokens, seq.num_computed_tokens + num_new
        request = seq.request
        scored = None
        if request.num_scored_tokens:
            # The logits at position p score token p + 1: positions [P-N-1, P-1) of the prompt.
            lo = max(start, seq.num_prompt_tokens - request.num_scored_tokens - 1)
            hi = min(stop, seq.num_prompt_tokens - 1)
            scored = (lo, hi) if lo < hi else None
        return ScheduledChunk(
            request_id=seq.request_id,
            token_ids=tuple(seq.all_token_ids[start:stop]),
            start_position=start,
            block_ids=tuple(seq.block_ids),
            sample=stop == seq.num_tokens and not request.prefill_only,
            seq=seq,
            scored_positions=scored,
        )

    def _stop_reason(self, seq: Sequence, token_id: int) -> FinishReason | None:
        sampling = seq.request.sampling
        if token_id in sampling.stop_token_ids or (
            not sampling.ignore_eos and token_id in self._eos_token_ids
        ):
            return FinishReason.STOP
        if seq.num_output_tokens >= sampling.max_tokens or seq.num_tokens >= self._max_model_len:
            return FinishReason.LENGTH
        return None

    def _finish(
        self, seq: Sequence, reason: FinishReason, *, keep_kv: bool = True
    ) -> FinishedSequence:
        """Take seq out of every queue, keep its KV for its session if any, free its blocks."""
        if seq.status is SequenceStatus.RUNNING:
            self._running.remove(seq)
        else:
            self._waiting[seq.request.priority].remove(seq)
        session_id = seq.request.session_id
        num_full = seq.num_computed_tokens // self._kv.block_size
        if session_id is not None and num_full > 0 and keep_kv and seq.pins_session:
            # Pin before freeing, so the blocks never drop to ref 0 on the way.
            self._kv.pin_session(
                session_id, seq.block_ids[:num_full], num_full * self._kv.block_size
            )
        self._kv.free(seq.drop_blocks())
        seq.finish_reason = reason
        seq.move_to(SequenceStatus.FINISHED)
        del self._seqs[seq.request_id]
        self._pending_aborts.pop(seq.request_id, None)
        return FinishedSequence(
            request_id=seq.request_id,
            finish_reason=reason,
            num_prompt_tokens=seq.num_prompt_tokens,
            num_cached_tokens=seq.num_cached_tokens,
            num_output_tokens=seq.num_output_tokens,
        )


def _background(seq: Sequence) -> bool:
    return seq.request.priority is Priority.BACKGROUND


def _update(
    seq: Sequence, new_token_ids: tuple[int, ...], reason: FinishReason | None
) -> SequenceUpdate:
    return SequenceUpdate(
        request_id=seq.request_id,
        new_token_ids=new_token_ids,
        finish_reason=reason,
        num_prompt_tokens=seq.num_prompt_tokens,
        num_cached_tokens=seq.num_cached_tokens,
        num_output_tokens=seq.num_output_tokens,
    )
