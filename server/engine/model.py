"""The Llama-family decoder (RMSNorm, RoPE, GQA, SwiGLU) over a paged KV cache. Torch only.

Two entry points share the weights:
- `forward`: the serving path. Tokens of many sequences are packed into one row of T tokens,
  each with its own position; K/V are written to the paged cache by slot index and read back a
  whole block at a time.

The cache of one layer is one tensor (2, num_kv_heads, num_blocks, block_size, head_dim): K and
V, then kv head, then block. Gathering a sequence's blocks along dim 2 yields keys already laid
out (kv head, sequence, position, head_dim), so the attention matmuls read them with no further
copy; at long contexts that gather-and-read is most of a decode step.
- `forward_full`: a plain causal forward without any cache, the oracle the tests hold
  `forward` against.

Projections are dense (float, stored (in, out)) or quantized (GGUF blocks as the file holds
them, applied by the fused dequantize-matmul kernel with float32 activations): see quant.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .config import ModelConfig, RopeScaling
from .errors import ModelLoadError
from .kernels import load as load_kernels
from .quant import (
    ConcatProjection,
    DenseProjection,
    Projection,
    QuantizedWeight,
    Weight,
    stack_rows,
)


@dataclass(frozen=True)
class PrefillSpan:
    """One sequence's prefill chunk inside the packed batch."""

    query_start: int  # index of the chunk's first token in the packed batch
    query_len: int
    start_position: int  # position of the chunk's first token in its sequence
    context_blocks: torch.Tensor | None  # (B,) blocks of positions 0..start+len-1; None: no prefix


@dataclass(frozen=True)
class Rotation:
    """Each packed row's RoPE angle, as the (T, 1, hd/2) tables the rotation multiplies by."""

    cos: torch.Tensor
    sin: torch.Tensor
    cis: torch.Tensor | None  # cos + i sin, complex64: float32 pairwise RoPE as one multiply


@dataclass(frozen=True)
class AttentionMetadata:
    """Where each packed token's K/V goes, and which K/V each query reads."""

    slot_mapping: torch.Tensor  # (T,) KV slot each token's K/V is written to
    num_decode_tokens: int  # the first tokens of the batch are decodes, one per sequence
    decode_blocks: torch.Tensor | None  # (D, B) block table of each decode row, padded
    decode_lengths: torch.Tensor | None  # (D,) int64 keys each decode row sees (its position + 1)
    prefills: tuple[PrefillSpan, ...]


@dataclass
class Layer:
    """One block's weights. Dense projections are stored (in, out) and applied as x @ w: for
    the one row of a single-stream decode that product streams the weight ~1.3x (the (H, V)
    lm_head ~1.9x) faster on CPU than F.linear over the (out, in) layout, and is level from 4
    rows up (bench: python -m bench engine)."""

    input_norm: torch.Tensor  # (H,)
    qkv: Projection  # H → nh*hd + 2*nkv*hd, q, k and v fused: one matmul
    qkv_bias: torch.Tensor | None
    o_proj: Projection  # nh*hd → H
    post_norm: torch.Tensor  # (H,)
    gate_up: Projection  # H → 2*I, gate and up fused
    down: Projection  # I → H


def rope_inv_freq(config: ModelConfig, freq_factors: torch.Tensor | None) -> torch.Tensor:
    hd = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
    scaling = config.rope_scaling
    if scaling is not None:
        inv_freq = _scale_inv_freq(inv_freq, scaling)
    if freq_factors is not None:
        inv_freq = inv_freq / freq_factors.to(torch.float64)
    return inv_freq


def _scale_inv_freq(inv_freq: torch.Tensor, scaling: RopeScaling) -> torch.Tensor:
    if scaling.kind == "linear":
        return inv_freq / scaling.factor
    # llama3: long wavelengths are slowed by `factor`, short ones kept, the middle blended.
    low_wavelen = scaling.original_max_position / scaling.low_freq_factor
    high_wavelen = scaling.original_max_position / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    smooth = (scaling.original_max_position / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor
    )
    blended = (1 - smooth) * inv_freq / scaling.factor + smooth * inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / scaling.factor, inv_freq)
    middle = (wavelen <= low_wavelen) & (wavelen >= high_wavelen)
    return torch.where(middle, blended, scaled)


def _in_out(weight: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A checkpoint's (out, in) projection as a contiguous (in, out) tensor."""
    return weight.to(device=device, dtype=dtype).t().contiguous()


def _projection(parts: list[Weight], device: torch.device, dtype: torch.dtype) -> Projection:
    """(out, in) matrices fused along out: runs of one block type stacked, floats concatenated."""
    runs: list[list[Weight]] = []
    for part in parts:
        previous = runs[-1][-1] if runs else None
        same_kind = (
            isinstance(part, QuantizedWeight)
            and isinstance(previous, QuantizedWeight)
            and part.qtype == previous.qtype
        ) or (isinstance(part, torch.Tensor) and isinstance(previous, torch.Tensor))
        if same_kind:
            runs[-1].append(part)
        else:
            runs.append([part])
    projections: list[Projection] = []
    for run in runs:
        if isinstance(run[0], QuantizedWeight):
            projections.append(stack_rows([w for w in run if isinstance(w, QuantizedWeight)]))
        else:
            dense = torch.cat([w for w in run if isinstance(w, torch.Tensor)], dim=0)
            projections.append(DenseProjection(_in_out(dense, device, dtype)))
    return projections[0] if len(projections) == 1 else ConcatProjection(tuple(projections))


class Transformer:
    """Weights plus the two forwards. Holds no per-request state."""

    def __init__(
        self,
        config: ModelConfig,
        tensors: dict[str, Weight],
        *,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        """Quantized tensors (QuantizedWeight) run on the CPU kernels, float32 activations."""
        self.config = config
        self.device = device
        self.dtype = dtype
        packed = [n for n, t in tensors.items() if isinstance(t, QuantizedWeight)]
        if packed and (device.type != "cpu" or dtype != torch.float32):
            raise ModelLoadError(f"quantized weights run on CPU in float32, not {device} {dtype}")
        # Packed models also take the C++ RMSNorm, SiLU-mul and RoPE-and-KV-write (one op each
        # where torch runs several); the dense float32 reference mode stays on torch's own ops.
        self._fused = load_kernels() if packed else None
        # ... and decode attention reads the paged cache in place (kernels/attention.cpp), where
        # the reference mode gathers each row's blocks and runs torch's batched matmuls.
        self._paged_decode = self._fused is not None and config.head_dim in (16, 32, 64, 128)

        def w(name: str) -> torch.Tensor:
            tensor = tensors[name]
            assert isinstance(tensor, torch.Tensor), f"{name} is a vector, never packed"
            return tensor.to(device=device, dtype=dtype).contiguous()

        embed = tensors["embed_tokens"]
        # (V, H); packed, a lookup dequantizes just the rows it reads.
        self.embed_tokens = embed if isinstance(embed, QuantizedWeight) else w("embed_tokens")
        self.norm = w("norm")
        head = tensors["embed_tokens" if config.tie_embeddings else "lm_head"]
        self.lm_head = _projection([head], device, dtype)  # H → V
        self.layers = [self._layer(tensors, i, w) for i in range(config.num_layers)]
        freqs = tensors.get("rope_freqs")
        self.inv_freq = rope_inv_freq(config, freqs if isinstance(freqs, torch.Tensor) else None)
        self._cos = torch.empty(0, device=device)
        self._sin = torch.empty(0, device=device)
        self._grow_rope_table(max(config.max_position, 1))

    @property
    def kernels(self) -> str:
        """What runs the step, for the serve log."""
        if self._fused is None:
            return f"torch ops ({self.dtype}, {self.device})"
        ops = ["dequantize-matmul", "RMSNorm", "SiLU-mul", "RoPE and KV write"]
        if self._paged_decode:
            ops.append("paged decode attention")
        return f"C++ AVX2/FMA {', '.join(ops)}; torch SDPA for prefill attention"

    def _layer(
        self, tensors: dict[str, Weight], i: int, get: Callable[[str], torch.Tensor]
    ) -> Layer:
        p = f"layers.{i}."
        device, dtype = self.device, self.dtype

        def project(*names: str) -> Projection:
            return _projection([tensors[p + n] for n in names], device, dtype)

        bias = None
        if self.config.qkv_bias:
            bias = torch.cat([get(p + n) for n in ("q_bias", "k_bias", "v_bias")], dim=0)
        return Layer(
            input_norm=get(p + "input_norm"),
            qkv=project("q_proj", "k_proj", "v_proj"),
            qkv_bias=bias,
            o_proj=project("o_proj"),
            post_norm=get(p + "post_norm"),
            gate_up=project("gate_proj", "up_proj"),
            down=project("down_proj"),
        )

    def embed(self, token_ids: torch.Tensor) -> torch.Tensor:
        """(T,) → (T, H)."""
        if isinstance(self.embed_tokens, QuantizedWeight):
            return self.embed_tokens.rows(token_ids)
        return self.embed_tokens[token_ids]

    def _grow_rope_table(self, num_positions: int) -> None:
        t = torch.arange(num_positions, dtype=torch.float64)
        freqs = torch.outer(t, self.inv_freq)  # (P, hd/2)
        # float32 tables, like the reference implementation computes them.
        self._cos = freqs.cos().to(device=self.device, dtype=torch.float32)
        self._sin = freqs.sin().to(device=self.device, dtype=torch.float32)

    def rope_tables(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin of each position: (T, hd/2) each, in the model dtype."""
        needed = int(positions.max()) + 1 if positions.numel() else 0
        if needed > self._cos.shape[0]:
            self._grow_rope_table(max(needed, 2 * self._cos.shape[0]))
        return self._cos[positions].to(self.dtype), self._sin[positions].to(self.dtype)

    def rotation(self, positions: torch.Tensor, *, torch_rope: bool = True) -> Rotation:
        """torch_rope=False: the rotation runs in rope_write_kv, which needs no complex table."""
        cos, sin = self.rope_tables(positions)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (T, 1, hd/2)
        pairwise_fp32 = self.config.rope_interleaved and self.dtype == torch.float32
        cis = torch.complex(cos, sin) if pairwise_fp32 and torch_rope else None
        return Rotation(cos, sin, cis)

    def _rope(self, x: torch.Tensor, rot: Rotation) -> torch.Tensor:
        """Rotate x (T, heads, hd) by its rows' positions."""
        cos, sin = rot.cos, rot.sin
        if rot.cis is not None:
            # (x1 + i x2)(cos + i sin) is the pairwise rotation below, as one op instead of ten.
            pairs = torch.view_as_complex(x.view(*x.shape[:-1], -1, 2))  # (T, heads, hd/2)
            return torch.view_as_real(pairs * rot.cis).flatten(-2)
        if self.config.rope_interleaved:
            pairs = x.view(*x.shape[:-1], -1, 2)  # (T, heads, hd/2, 2)
            x1, x2 = pairs[..., 0], pairs[..., 1]
            return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)
        half = x.shape[-1] // 2
        x1, x2 = x[..., :half], x[..., half:]
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)

    def _rms_norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if self._fused is not None and x.dim() == 2:
            out: torch.Tensor = self._fused.rms_norm(x, weight, self.config.rms_norm_eps)
            return out
        if self.dtype == torch.float32:  # the same math below as one fused op
            return F.rms_norm(x, (x.shape[-1],), weight, self.config.rms_norm_eps)
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.config.rms_norm_eps)
        return weight * x32.to(self.dtype)

    def _qkv(
        self, layer: Layer, x: torch.Tensor, rot: Rotation
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Project and rotate: q (T, nh, hd), k and v (T, nkv, hd)."""
        c = self.config
        qkv = self._project_qkv(layer, x)
        qk = self._rope(qkv[:, : c.num_heads + c.num_kv_heads], rot)
        q, k = qk[:, : c.num_heads], qk[:, c.num_heads :]
        v = qkv[:, c.num_heads + c.num_kv_heads :]
        return q, k, v

    def _project_qkv(self, layer: Layer, x: torch.Tensor) -> torch.Tensor:
        """The fused q|k|v projection (and bias) as (T, nh + 2 nkv, hd) heads."""
        qkv = layer.qkv(x)
        if layer.qkv_bias is not None:
            qkv = qkv + layer.qkv_bias
        return qkv.view(x.shape[0], -1, self.config.head_dim)

    def _qkv_into_cache(
        self,
        layer: Layer,
        x: torch.Tensor,
        rot: Rotation,
        cache: torch.Tensor,
        slot_mapping: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """_qkv, and k and v written to their cache slots: one kernel call for the rotation and
        the write (the packed mode's float32 math, rounded as the elementwise ops round)."""
        c = self.config
        qkv = self._project_qkv(layer, x)
        assert self._fused is not None
        self._fused.rope_write_kv(
            qkv.flatten(1), rot.cos, rot.sin, cache, slot_mapping, c.num_heads, c.rope_interleaved
        )
        kv_start = c.num_heads + c.num_kv_heads
        return qkv[:, : c.num_heads], qkv[:, c.num_heads : kv_start], qkv[:, kv_start:]

    def _mlp(self, layer: Layer, x: torch.Tensor) -> torch.Tensor:
        if self._fused is not None and x.dim() == 2:
            return layer.down(self._fused.silu_mul(layer.gate_up(x)))
        gate, up = layer.gate_up(x).chunk(2, dim=-1)
        return layer.down(F.silu(gate) * up)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self._rms_norm(hidden, self.norm)).float()

    @torch.inference_mode()
    def forward(
        self,
        token_ids: torch.Tensor,  # (T,) packed tokens of every scheduled sequence
        positions: torch.Tensor,  # (T,) each token's position in its own sequence
        kv: list[torch.Tensor],  # per layer (2, nkv, num_blocks, block_size, hd)
        meta: AttentionMetadata,
        logits_indices: torch.Tensor,  # (S,) rows whose next-token logits are wanted
    ) -> torch.Tensor:
        """Run one engine step; returns float32 logits (S, V)."""
        c = self.config
        x = self.embed(token_ids)  # (T, H)
        rot = self.rotation(positions, torch_rope=self._fused is None)
        block_size = kv[0].shape[3]
        paged = self._paged_decode and block_size % 8 == 0  # the kernel reads 8 keys at once
        decode_bias = None if paged else self._decode_bias(meta, block_size)
        for layer, cache in zip(self.layers, kv, strict=True):
            h = self._rms_norm(x, layer.input_norm)
            if self._fused is not None:
                q, k, v = self._qkv_into_cache(layer, h, rot, cache, meta.slot_mapping)
            else:
                q, k, v = self._qkv(layer, h, rot)
                by_slot = cache.view(2, c.num_kv_heads, -1, c.head_dim)
                by_slot.index_copy_(2, meta.slot_mapping, torch.stack((k, v)).transpose(1, 2))
            attn = self._paged_attention(q, k, v, cache, meta, decode_bias, paged)  # (T, nh*hd)
            x = x + layer.o_proj(attn)
            x = x + self._mlp(layer, self._rms_norm(x, layer.post_norm))
        return self.logits(x[logits_indices])

    def _paged_attention(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        cache: torch.Tensor,
        meta: AttentionMetadata,
        decode_bias: torch.Tensor | None,
        paged: bool,
    ) -> torch.Tensor:
        """paged: decode rows on the C++ kernel, reading the cache in place; else gathered."""
        c = self.config
        num_decode = meta.num_decode_tokens
        decoded: torch.Tensor | None = None
        if num_decode and paged:
            assert meta.decode_blocks is not None and meta.decode_lengths is not None
            decoded = self._fused.paged_decode_attention(  # type: ignore[union-attr]
                q[:num_decode].reshape(num_decode, -1),
                cache,
                meta.decode_blocks,
                meta.decode_lengths,
                c.head_dim**-0.5,
            )
        elif num_decode:
            assert meta.decode_blocks is not None and decode_bias is not None
            decoded = self._decode_attention(q[:num_decode], cache, meta.decode_blocks, decode_bias)
        if decoded is not None and not meta.prefills:
            return decoded  # a decode-only step: no packing copy
        out = torch.empty(q.shape[0], c.num_heads * c.head_dim, device=q.device, dtype=q.dtype)
        if decoded is not None:
            out[:num_decode] = decoded
        for span in meta.prefills:
            rows = slice(span.query_start, span.query_start + span.query_len)
            out[rows] = self._prefill_attention(q[rows], k[rows], v[rows], cache, span)
        return out

    def _decode_bias(self, meta: AttentionMetadata, block_size: int) -> torch.Tensor | None:
        """(nkv*D, 1, L): 0 where a decode row sees the key, -inf where not. Built once a step,
        so each layer adds it inside its score matmul."""
        if meta.decode_blocks is None or meta.decode_lengths is None:
            return None
        num_rows, width = meta.decode_blocks.shape[0], meta.decode_blocks.shape[1] * block_size
        keys = torch.arange(width, device=self.device)
        hidden = keys.unsqueeze(0) >= meta.decode_lengths.unsqueeze(1)  # (D, L)
        bias = torch.zeros(num_rows, 1, width, device=self.device, dtype=self.dtype)
        bias.masked_fill_(hidden.view(num_rows, 1, width), float("-inf"))
        return bias.expand(self.config.num_kv_heads, -1, -1, -1).reshape(-1, 1, width)

    def _decode_attention(
        self, q: torch.Tensor, cache: torch.Tensor, blocks: torch.Tensor, bias: torch.Tensor
    ) -> torch.Tensor:
        """One query per row. GQA folds each kv head's query group into the query axis."""
        c = self.config
        num_rows, width = blocks.shape[0], bias.shape[-1]
        rows = c.num_kv_heads * num_rows
        ctx = cache.index_select(2, blocks.flatten()).view(2, rows, width, c.head_dim)
        keys, values = ctx[0], ctx[1]  # (nkv*D, L, hd), contiguous
        grouped_q = q.view(num_rows, c.num_kv_heads, c.num_kv_groups, c.head_dim).transpose(0, 1)
        grouped_q = grouped_q.reshape(rows, c.num_kv_groups, c.head_dim)
        # Plain batched matmuls: for a handful of query rows they beat the fused SDPA kernel on
        # CPU; baddbmm scales and masks in the same call.
        scale = c.head_dim**-0.5
        scores = torch.baddbmm(bias, grouped_q, keys.transpose(1, 2), alpha=scale).softmax(-1)
        out = torch.bmm(scores, values)  # (nkv*D, groups, hd)
        out = out.view(c.num_kv_heads, num_rows, c.num_kv_groups * c.head_dim).transpose(0, 1)
        return out.reshape(num_rows, c.num_heads * c.head_dim)

    def _prefill_attention(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        cache: torch.Tensor,
        span: PrefillSpan,
    ) -> torch.Tensor:
        c = self.config
        qh = q.transpose(0, 1).unsqueeze(0)  # (1, nh, Tq, hd)
        if span.context_blocks is None:
            keys, values = k.transpose(0, 1).unsqueeze(0), v.transpose(0, 1).unsqueeze(0)
            attn = F.scaled_dot_product_attention(qh, keys, values, is_causal=True, enable_gqa=True)
        else:
            context_len = span.start_position + span.query_len
            ctx = cache.index_select(2, span.context_blocks).view(2, c.num_kv_heads, -1, c.head_dim)
            keys = ctx[0, :, :context_len].unsqueeze(0)  # (1, nkv, C, hd)
            values = ctx[1, :, :context_len].unsqueeze(0)
            query_pos = torch.arange(span.query_len, device=q.device) + span.start_position
            key_pos = torch.arange(context_len, device=q.device)
            mask = key_pos.unsqueeze(0) <= query_pos.unsqueeze(1)  # (Tq, C)
            attn = F.scaled_dot_product_attention(qh, keys, values, attn_mask=mask, enable_gqa=True)
        return attn.squeeze(0).transpose(0, 1).reshape(span.query_len, c.num_heads * c.head_dim)

    @torch.inference_mode()
    def forward_full(self, token_ids: torch.Tensor) -> torch.Tensor:
        """No-cache causal forward of (B, T) tokens at positions 0..T-1 → float32 (B, T, V)."""
        c = self.config
        batch, length = token_ids.shape
        positions = torch.arange(length, device=token_ids.device)
        rot = self.rotation(positions)
        x = self.embed(token_ids.flatten())  # (B*T, H)
        for layer in self.layers:
            h = self._rms_norm(x, layer.input_norm)
            per_row = []
            for row in h.view(batch, length, -1):
                q, k, v = self._qkv(layer, row, rot)
                # Expand kv heads explicitly: this path must not share the GQA trick under test.
                k = k.repeat_interleave(c.num_kv_groups, dim=1)
                v = v.repeat_interleave(c.num_kv_groups, dim=1)
                attn = F.scaled_dot_product_attention(
                    q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), is_causal=True
                )
                per_row.append(attn.transpose(0, 1).reshape(length, -1))
            x = x + layer.o_proj(torch.cat(per_row))
            x = x + self._mlp(layer, self._rms_norm(x, layer.post_norm))
        return self.logits(x).view(batch, length, -1)
