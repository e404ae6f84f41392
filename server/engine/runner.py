"""Turns one SchedulerOutput into one batched forward over the paged KV cache. Torch only."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .model import AttentionMetadata, PrefillSpan, Transformer
from .sequence import ScheduledChunk


@dataclass(frozen=True)
class ScoredSpan:
    """Logits rows of one scoring chunk: the next-token logits of positions start.. in order."""

    request_id: str
    start_position: int
    num_rows: int


@dataclass(frozen=True)
class ModelInput:
    """Everything one forward needs, built on the host from the step's chunks."""

    token_ids: torch.Tensor  # (T,)
    positions: torch.Tensor  # (T,)
    meta: AttentionMetadata
    logits_indices: torch.Tensor  # (S + R,): the sampled rows, then the scored rows
    sampled_request_ids: tuple[str, ...]  # the request of each of the S sampled rows
    scored: tuple[ScoredSpan, ...]  # what the R scored rows are, in order


@dataclass(frozen=True)
class StepLogits:
    """A forward's float32 logits: one row per sampling chunk, then each scored span's rows."""

    logits: torch.Tensor  # (S + R, V)
    sampled_request_ids: tuple[str, ...]  # the request of each of the first S rows
    scored: tuple[ScoredSpan, ...] = ()

    @property
    def sampled(self) -> torch.Tensor:
        """(S, V): the rows to sample from."""
        return self.logits[: len(self.sampled_request_ids)]


def kv_bytes_per_block(model: Transformer, block_size: int) -> int:
    c = model.config
    element = torch.empty(0, dtype=model.dtype).element_size()
    return block_size * c.num_layers * 2 * c.num_kv_heads * c.head_dim * element


class ModelRunner:
    """Owns the KV tensors: one per layer, (2, nkv, num_blocks, block_size, hd).

    A token's slot is block * block_size + offset; writes go by slot, reads by whole block.
    """

    def __init__(self, model: Transformer, *, num_blocks: int, block_size: int) -> None:
        c = model.config
        self.model = model
        self.block_size = block_size
        self.kv = [
            torch.zeros(
                2,
                c.num_kv_heads,
                num_blocks,
                block_size,
                c.head_dim,
                device=model.device,
                dtype=model.dtype,
            )
            for _ in range(c.num_layers)
        ]

    def _slots(self, block_ids: Sequence[int], start: int, stop: int) -> list[int]:
        bs = self.block_size
        return [block_ids[p // bs] * bs + p % bs for p in range(start, stop)]

    def prepare(self, chunks: Sequence[ScheduledChunk]) -> ModelInput:
        # Decodes (one token) first: they share one batched attention call.
        decodes = [c for c in chunks if len(c.token_ids) == 1]
        prefills = [c for c in chunks if len(c.token_ids) > 1]
        token_ids: list[int] = []
        positions: list[int] = []
        slot_mapping: list[int] = []
        logits_rows: list[int] = []
        sampled: list[str] = []
        scored_rows: list[int] = []
        scored: list[ScoredSpan] = []
        spans: list[PrefillSpan] = []
        for chunk in [*decodes, *prefills]:
            n, start = len(chunk.token_ids), chunk.start_position
            if n > 1:
                context = None
                if start > 0:
                    num_blocks = -(-(start + n) // self.block_size)
                    context = torch.tensor(chunk.block_ids[:num_blocks], device=self.model.device)
                spans.append(PrefillSpan(len(token_ids), n, start, context))
            token_ids.extend(chunk.token_ids)
            positions.extend(range(start, start + n))
            slot_mapping.extend(self._slots(chunk.block_ids, start, start + n))
            if chunk.sample:
                logits_rows.append(len(token_ids) - 1)
                sampled.append(chunk.request_id)
            if chunk.scored_positions is not None:
                lo, hi = chunk.scored_positions
                first_row = len(token_ids) - n - start
                scored_rows.extend(range(first_row + lo, first_row + hi))
                scored.append(ScoredSpan(chunk.request_id, lo, hi - lo))
        decode_blocks, decode_lengths = self._decode_context(decodes)
        device = self.model.device
        meta = AttentionMetadata(
            slot_mapping=torch.tensor(slot_mapping, device=device),
            num_decode_tokens=len(decodes),
            decode_blocks=decode_blocks,
            decode_lengths=decode_lengths,
            prefills=tuple(spans),
        )
        return ModelInput(
            token_ids=torch.tensor(token_ids, device=device),
            positions=torch.tensor(positions, device=device),
            meta=meta,
            logits_indices=torch.tensor(
                [*logits_rows, *scored_rows], device=device, dtype=torch.long
            ),
            sampled_request_ids=tuple(sampled),
            scored=tuple(scored),
        )

    def _decode_context(
        self, decodes: Sequence[ScheduledChunk]
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Padded (D, B) block table of the decode rows and their (D,) lengths (keys seen)."""
        if not decodes:
            return None, None
        bs = self.block_size
        lengths = torch.tensor([c.start_position + 1 for c in decodes])
        num_blocks = [(c.start_position + bs) // bs for c in decodes]
        width = max(num_blocks)
        table = torch.zeros(len(decodes), width, dtype=torch.long)  # pad with the null block
        for row, (chunk, nb) in enumerate(zip(decodes, num_blocks, strict=True)):
            table[row, :nb] = torch.tensor(chunk.block_ids[:nb])
        device = self.model.device
        return table.to(device), lengths.to(device)

    def execute(self, chunks: Sequence[ScheduledChunk]) -> StepLogits:
        """Run the step's forward; returns the sampled rows' and the scored spans' logits."""
        inputs = self.prepare(chunks)
        logits = self.model.forward(
            inputs.token_ids, inputs.positions, self.kv, inputs.meta, inputs.logits_indices
        )
        return StepLogits(logits, inputs.sampled_request_ids, inputs.scored)
