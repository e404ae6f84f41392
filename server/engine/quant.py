"""Weights kept in GGUF block formats, and the projections over them. No model or loader code.

A `QuantizedWeight` holds an (N, K) matrix as the file stores it: N rows of packed blocks,
byte for byte. The kernels (kernels/quant.cpp) dequantize each weight to exactly the float32
value `gguf.quants.dequantize` gives and accumulate in float32, so a product equals the dense
reference's up to summation order; activations stay float32 throughout.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import gguf
import numpy as np
import torch

from .kernels import load as load_kernels

Q = gguf.GGMLQuantizationType
# The block formats the kernels read: the legacy 32-blocks and the K-quants small models use.
KERNEL_TYPES = frozenset({Q.Q4_0, Q.Q4_1, Q.Q8_0, Q.Q4_K, Q.Q6_K})
# What --quantize can turn a float checkpoint into (gguf can write these).
QUANTIZE_CHOICES = {"q8_0": Q.Q8_0, "q4_0": Q.Q4_0, "q4_1": Q.Q4_1}


@dataclass(frozen=True)
class QuantizedWeight:
    """An (out, in) matrix as packed GGUF rows, applied as x @ W^T by the fused kernel."""

    data: torch.Tensor  # (N, row_bytes) uint8, row n = the blocks of output n
    qtype: gguf.GGMLQuantizationType  # one of KERNEL_TYPES
    num_cols: int  # K, the input width

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.data.shape[0]), self.num_cols

    def dequantize(self) -> torch.Tensor:
        """The dense (N, K) float32 matrix, exactly as gguf dequantizes it."""
        out: torch.Tensor = load_kernels().dequantize(self.data, int(self.qtype), self.num_cols)
        return out

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Dequantized rows `ids` (T,) → (T, K) float32: an embedding lookup."""
        packed = self.data.index_select(0, ids)
        out: torch.Tensor = load_kernels().dequantize(packed, int(self.qtype), self.num_cols)
        return out

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., K) float32 → (..., N) float32."""
        kernels = load_kernels()
        if x.dim() == 2:  # the engine's packed rows: no reshape round trip (121 calls a step)
            out2d: torch.Tensor = kernels.qmatmul(x, self.data, int(self.qtype), self.num_cols)
            return out2d
        flat = x.reshape(-1, self.num_cols)
        out: torch.Tensor = kernels.qmatmul(flat, self.data, int(self.qtype), self.num_cols)
        return out.view(*x.shape[:-1], self.data.shape[0])


Weight = torch.Tensor | QuantizedWeight  # a checkpoint tensor: float, or packed blocks


def stack_rows(weights: Sequence[QuantizedWeight]) -> QuantizedWeight:
    """Weights of one type and width, their output rows concatenated: one fused projection."""
    first = weights[0]
    assert all(w.qtype == first.qtype and w.num_cols == first.num_cols for w in weights)
    return QuantizedWeight(torch.cat([w.data for w in weights]), first.qtype, first.num_cols)


def quantize(weight: torch.Tensor, qtype: gguf.GGMLQuantizationType) -> QuantizedWeight:
    """Quantize a float (N, K) matrix with gguf's reference quantizer (llama.cpp's rounding)."""
    array = weight.detach().to(torch.float32).contiguous().numpy()
    packed = np.ascontiguousarray(gguf.quants.quantize(array, qtype))
    return QuantizedWeight(torch.from_numpy(packed), qtype, int(weight.shape[1]))


class Projection(Protocol):
    """x (..., in) → (..., out): a dense matrix or a quantized one."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class DenseProjection:
    """A float matrix stored (in, out) and applied as x @ w (see model.Layer for why)."""

    weight: torch.Tensor  # (in, out)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight


@dataclass(frozen=True)
class ConcatProjection:
    """Projections of different block types side by side (a K-quant file mixes Q4_K and Q6_K
    within one layer): each applied, outputs concatenated."""

    parts: tuple[Projection, ...]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([part(x) for part in self.parts], dim=-1)


def describe_weights(tensors: Mapping[str, Weight]) -> str:
    """Which tensors the fused kernels read and which stay dense, for the serve log."""
    packed = Counter(t.qtype.name for t in tensors.values() if isinstance(t, QuantizedWeight))
    dense = Counter(
        str(t.dtype).removeprefix("torch.") for t in tensors.values() if isinstance(t, torch.Tensor)
    )
    parts = []
    if packed:
        kinds = ", ".join(f"{name} x{n}" for name, n in sorted(packed.items()))
        parts.append(f"{kinds} packed (fused dequantize-matmul, AVX2/FMA, float32 accumulation)")
    if dense:
        parts.append(", ".join(f"{name} x{n}" for name, n in sorted(dense.items())) + " dense")
    return "; ".join(parts)
