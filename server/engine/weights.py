"""Find and load a checkpoint (GGUF file or HF folder) into a config and canonical tensors."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf

from .config import ModelConfig
from .errors import ModelLoadError
from .gguf_file import open_gguf, read_metadata
from .gguf_weights import load_gguf_weights
from .hf_weights import load_hf_weights
from .quant import QuantizedWeight, Weight, quantize


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint: where it came from, its shape, its weights, its GGUF metadata."""

    path: Path
    config: ModelConfig
    tensors: dict[str, Weight]  # float tensors, or packed blocks (QuantizedWeight)
    gguf_metadata: dict[str, Any] | None  # None for HF folders

    @property
    def name(self) -> str:
        if self.gguf_metadata and self.gguf_metadata.get("general.name"):
            return str(self.gguf_metadata["general.name"])
        return self.path.stem if self.path.is_file() else self.path.name


def _required_names(config: ModelConfig) -> list[str]:
    names = ["embed_tokens", "norm"]
    if not config.tie_embeddings:
        names.append("lm_head")
    per_layer = ["input_norm", "q_proj", "k_proj", "v_proj", "o_proj", "post_norm"]
    per_layer += ["gate_proj", "up_proj", "down_proj"]
    if config.qkv_bias:
        per_layer += ["q_bias", "k_bias", "v_bias"]
    for i in range(config.num_layers):
        names += [f"layers.{i}.{n}" for n in per_layer]
    return names


def _check_shapes(config: ModelConfig, tensors: dict[str, Weight]) -> None:
    missing = [n for n in _required_names(config) if n not in tensors]
    if missing:
        raise ModelLoadError(f"checkpoint lacks {len(missing)} tensors, first {missing[0]!r}")
    h, hd = config.hidden_size, config.head_dim
    expected = {
        "embed_tokens": (config.vocab_size, h),
        "layers.0.q_proj": (config.num_heads * hd, h),
        "layers.0.k_proj": (config.num_kv_heads * hd, h),
        "layers.0.gate_proj": (config.intermediate_size, h),
        "layers.0.down_proj": (h, config.intermediate_size),
    }
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            raise ModelLoadError(
                f"tensor {name!r} has shape {tuple(tensors[name].shape)}, config implies {shape}"
            )


def _quantize_floats(
    tensors: dict[str, Weight], qtype: gguf.GGMLQuantizationType
) -> dict[str, Weight]:
    """Every float matrix whose rows split into whole blocks, packed; vectors stay float."""
    block_size = gguf.GGML_QUANT_SIZES[qtype][0]
    out: dict[str, Weight] = {}
    for name, tensor in tensors.items():
        if isinstance(tensor, QuantizedWeight) or tensor.ndim != 2 or tensor.shape[1] % block_size:
            out[name] = tensor
        else:
            out[name] = quantize(tensor, qtype)
    return out


def load_checkpoint(
    path: str | Path,
    *,
    keep_packed: bool = False,
    quantize_to: gguf.GGMLQuantizationType | None = None,
) -> Checkpoint:
    """Load a .gguf file or an HF folder; every failure is one ModelLoadError line.

    keep_packed: a GGUF's quantized matrices stay in their blocks (else dequantized to float32).
    quantize_to: float matrices (an HF folder's, an F16 GGUF's) are quantized to this format.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise ModelLoadError(f"model path does not exist: {path}")
    metadata: dict[str, Any] | None = None
    if path.is_dir():
        config, float_tensors = load_hf_weights(path)
        tensors: dict[str, Weight] = dict(float_tensors)
    else:
        reader = open_gguf(path)
        metadata = read_metadata(reader)
        config, tensors = load_gguf_weights(reader, metadata, keep_packed=keep_packed)
    if quantize_to is not None:
        tensors = _quantize_floats(tensors, quantize_to)
    _check_shapes(config, tensors)
    return Checkpoint(path=path, config=config, tensors=tensors, gguf_metadata=metadata)
