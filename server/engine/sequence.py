"""The scheduler's data: a mutable Sequence per request and the frozen per-step products. No logic
beyond bookkeeping: no KV allocation, no scheduling decisions."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from .kv_manager import BlockHash, KVUsage
from .types import EngineRequest, FinishReason, Priority


class SequenceStatus(enum.Enum):
    WAITING = "waiting"  # admitted to the queue, never scheduled
    RUNNING = "running"  # holds blocks, scheduled every step the budget allows
    PREEMPTED = "preempted"  # blocks freed; back in the queue to be recomputed
    FINISHED = "finished"


_LEGAL_MOVES = frozenset(
    {
        (SequenceStatus.WAITING, SequenceStatus.RUNNING),
        (SequenceStatus.WAITING, SequenceStatus.FINISHED),
        (SequenceStatus.RUNNING, SequenceStatus.PREEMPTED),
        (SequenceStatus.RUNNING, SequenceStatus.FINISHED),
        (SequenceStatus.PREEMPTED, SequenceStatus.RUNNING),
        (SequenceStatus.PREEMPTED, SequenceStatus.FINISHED),
    }
)


@dataclass(eq=False, kw_only=True)
class Sequence:
    """One request's tokens and KV bookkeeping.

    all_token_ids holds the prompt then the outputs. The KV of all_token_ids[:num_computed_tokens]
    is in block_ids; the last sampled token's KV is never computed until the next step. After
    a preemption num_computed_tokens drops to 0 and prompt + outputs are prefilled again.
    """

    request: EngineRequest
    arrival_index: int  # order of add_request: FIFO within a priority class, preemption order
    status: SequenceStatus = SequenceStatus.WAITING
    all_token_ids: list[int] = field(default_factory=list)
    num_prompt_tokens: int = 0
    num_computed_tokens: int = 0
    num_cached_tokens: int = 0  # prompt tokens found in the prefix cache at first admission
    block_ids: list[int] = field(default_factory=list)
    block_hashes: list[BlockHash] = field(default_factory=list)  # of the computed full blocks
    output_token_ids: list[int] = field(default_factory=list)
    finish_reason: FinishReason | None = None
    first_scheduled_time: float | None = None
    num_preemptions: int = 0
    # False once its session is closed mid-turn: the turn's KV must not be pinned at the end.
    pins_session: bool = True

    @classmethod
    def from_request(cls, request: EngineRequest, *, arrival_index: int) -> Sequence:
        return cls(
            request=request,
            arrival_index=arrival_index,
            all_token_ids=list(request.prompt_token_ids),
            num_prompt_tokens=len(request.prompt_token_ids),
        )

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def num_tokens(self) -> int:
        return len(self.all_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def num_uncomputed_tokens(self) -> int:
        return len(self.all_token_ids) - self.num_computed_tokens

    @property
    def preemption_key(self) -> tuple[Priority, int]:
        """The largest key is preempted first: lowest priority, then latest arrival."""
        return self.request.priority, self.arrival_index

    def move_to(self, status: SequenceStatus) -> None:
        if (self.status, status) not in _LEGAL_MOVES:
            raise RuntimeError(f"{self.request_id}: illegal move {self.status} -> {status}")
        self.status = status

    def append_token(self, token_id: int) -> None:
        self.all_token_ids.append(token_id)
        self.output_token_ids.append(token_id)

    def drop_blocks(self) -> list[int]:
        """Forget the KV (the caller frees the returned block ids)."""
        block_ids = self.block_ids
        self.block_ids = []
        self.block_hashes = []
        self.num_computed_tokens = 0
        return block_ids


@dataclass(frozen=True, kw_only=True)
class ScheduledChunk:
    """Tokens of one sequence to run this step: a prefill chunk or a single decode token."""

    request_id: str
    token_ids: tuple[int, ...]
    start_position: int  # position of token_ids[0]
    block_ids: tuple[int, ...]  # the whole block table, covering start_position + len(token_ids)
    sample: bool  # this chunk reaches the end of the known tokens: sample from its last row
    seq: Sequence = field(compare=False, repr=False)
    # Positions [lo, hi) of this chunk whose next-token logits a scoring request wants.
    scored_positions: tuple[int, int] | None = None


@dataclass(frozen=True, kw_only=True)
class FinishedSequence:
    """A sequence the scheduler ended inside schedule(): an abort, or one that can never fit."""

    request_id: str
    finish_reason: FinishReason
    num_prompt_tokens: int
    num_cached_tokens: int
    num_output_tokens: int


@dataclass(frozen=True, kw_only=True)
class SchedulerOutput:
    chunks: tuple[ScheduledChunk, ...]
    num_scheduled_tokens: int
    preempted_request_ids: tuple[str, ...]
    finished: tuple[FinishedSequence, ...]


@dataclass(frozen=True, kw_only=True)
class SequenceUpdate:
    """What update_from_output did to one sequence that sampled a token this step."""

    request_id: str
    new_token_ids: tuple[int, ...]
    finish_reason: FinishReason | None
    num_prompt_tokens: int
    num_cached_tokens: int
    num_output_tokens: int


@dataclass(frozen=True, kw_only=True)
class SchedulerStats:
    num_waiting: int
    num_running: int
    num_preemptions_total: int
    num_prefix_hit_tokens_total: int
    kv: KVUsage
