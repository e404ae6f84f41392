"""GGUF → ModelConfig + canonical tensors (float, or packed blocks), via `gguf`. No model code."""

from __future__ import annotations

from typing import Any

import gguf
import numpy as np
import torch

from .config import SUPPORTED_ARCHITECTURES, ModelConfig, RopeScaling
from .errors import ModelLoadError, UnsupportedModelError
from .quant import KERNEL_TYPES, QuantizedWeight, Weight

_SUPPORTED = ", ".join(sorted(SUPPORTED_ARCHITECTURES))

# GGUF tensor name (after "blk.N.") → our canonical per-layer name.
_LAYER_TENSORS = {
    "attn_norm.weight": "input_norm",
    "attn_q.weight": "q_proj",
    "attn_k.weight": "k_proj",
    "attn_v.weight": "v_proj",
    "attn_q.bias": "q_bias",
    "attn_k.bias": "k_bias",
    "attn_v.bias": "v_bias",
    "attn_output.weight": "o_proj",
    "ffn_norm.weight": "post_norm",
    "ffn_gate.weight": "gate_proj",
    "ffn_up.weight": "up_proj",
    "ffn_down.weight": "down_proj",
}
_GLOBAL_TENSORS = {
    "token_embd.weight": "embed_tokens",
    "output_norm.weight": "norm",
    "output.weight": "lm_head",
    "rope_freqs.weight": "rope_freqs",
}
# Architectures whose GGUF q/k rows are permuted to the pairwise (Meta) RoPE layout by the
# converter; the others (Qwen2) keep HF's rotate-half layout and run llama.cpp's NEOX rope.
_INTERLEAVED_ROPE = frozenset({"llama", "mistral"})


def _get(md: dict[str, Any], key: str, default: Any = None) -> Any:
    value = md.get(key, default)
    if value is None:
        raise ModelLoadError(f"GGUF metadata lacks {key!r}")
    return value


def config_from_metadata(md: dict[str, Any], num_vocab_rows: int) -> ModelConfig:
    arch = md.get("general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedModelError(f"unsupported architecture {arch!r} (supported: {_SUPPORTED})")
    hidden = int(_get(md, f"{arch}.embedding_length"))
    num_heads = int(_get(md, f"{arch}.attention.head_count"))
    head_dim = int(md.get(f"{arch}.attention.key_length") or hidden // num_heads)
    scaling_kind = md.get(f"{arch}.rope.scaling.type", "none")
    rope_scaling = None
    if scaling_kind == "linear":
        rope_scaling = RopeScaling(
            kind="linear", factor=float(_get(md, f"{arch}.rope.scaling.factor"))
        )
    elif scaling_kind != "none":
        raise UnsupportedModelError(f"unsupported rope scaling kind {scaling_kind!r}")
    return ModelConfig(
        architecture=arch,
        vocab_size=int(md.get(f"{arch}.vocab_size") or num_vocab_rows),
        hidden_size=hidden,
        intermediate_size=int(_get(md, f"{arch}.feed_forward_length")),
        num_layers=int(_get(md, f"{arch}.block_count")),
        num_heads=num_heads,
        num_kv_heads=int(md.get(f"{arch}.attention.head_count_kv") or num_heads),
        head_dim=head_dim,
        rms_norm_eps=float(_get(md, f"{arch}.attention.layer_norm_rms_epsilon")),
        rope_theta=float(md.get(f"{arch}.rope.freq_base", 10000.0)),
        rope_interleaved=arch in _INTERLEAVED_ROPE,
        rope_scaling=rope_scaling,
        max_position=int(md.get(f"{arch}.context_length", 2048)),
        tie_embeddings=False,  # set by the caller once it knows whether output.weight exists
        qkv_bias=False,
    )


def _canonical_name(name: str) -> str | None:
    if name in _GLOBAL_TENSORS:
        return _GLOBAL_TENSORS[name]
    if name.startswith("blk."):
        _, index, rest = name.split(".", 2)
        if rest in _LAYER_TENSORS:
            return f"layers.{index}.{_LAYER_TENSORS[rest]}"
    return None


def dequantize(tensor: gguf.ReaderTensor) -> torch.Tensor:
    """One GGUF tensor as float32 in PyTorch's (rows, cols) order."""
    qtype = tensor.tensor_type
    try:
        array = gguf.quants.dequantize(tensor.data, qtype)
    except NotImplementedError as exc:
        raise UnsupportedModelError(
            f"unsupported tensor type {qtype.name} in tensor {tensor.name!r}"
        ) from exc
    except (ValueError, IndexError) as exc:
        raise ModelLoadError(f"corrupt tensor {tensor.name!r}: {exc}") from exc
    shape = tuple(int(d) for d in reversed(tensor.shape))
    try:
        # Copy: the reader's arrays are read-only views of the memory-mapped file.
        array = np.array(array, dtype=np.float32, copy=True).reshape(shape)
    except ValueError as exc:
        raise ModelLoadError(f"corrupt tensor {tensor.name!r}: {exc}") from exc
    return torch.from_numpy(array)


def packed(tensor: gguf.ReaderTensor) -> QuantizedWeight:
    """One 2-D GGUF tensor of a kernel type, its blocks copied out of the mapped file as-is."""
    num_rows, num_cols = (int(d) for d in reversed(tensor.shape))
    try:
        data = np.array(tensor.data, dtype=np.uint8, copy=True).reshape(num_rows, -1)
    except ValueError as exc:
        raise ModelLoadError(f"corrupt tensor {tensor.name!r}: {exc}") from exc
    block_size, block_bytes = gguf.GGML_QUANT_SIZES[tensor.tensor_type]
    if num_cols % block_size or data.shape[1] != num_cols // block_size * block_bytes:
        raise ModelLoadError(f"corrupt tensor {tensor.name!r}: rows of {data.shape[1]} bytes")
    return QuantizedWeight(torch.from_numpy(data), tensor.tensor_type, num_cols)


def load_gguf_weights(
    reader: gguf.GGUFReader, md: dict[str, Any], *, keep_packed: bool = False
) -> tuple[ModelConfig, dict[str, Weight]]:
    """keep_packed: 2-D tensors in a block format the kernels read stay packed; the rest (and
    everything when False, the float32 reference mode) are dequantized by gguf."""
    tensors: dict[str, Weight] = {}
    for tensor in reader.tensors:
        name = _canonical_name(tensor.name)
        if name is None:
            continue
        if keep_packed and len(tensor.shape) == 2 and tensor.tensor_type in KERNEL_TYPES:
            tensors[name] = packed(tensor)
        else:
            tensors[name] = dequantize(tensor)
    if "embed_tokens" not in tensors:
        raise ModelLoadError("GGUF has no token_embd.weight tensor")
    config = config_from_metadata(md, num_vocab_rows=tensors["embed_tokens"].shape[0])
    config = _with_file_facts(config, tensors)
    return config, tensors


def _with_file_facts(config: ModelConfig, tensors: dict[str, Weight]) -> ModelConfig:
    from dataclasses import replace

    return replace(
        config,
        tie_embeddings="lm_head" not in tensors,
        qkv_bias="layers.0.q_bias" in tensors,
    )
