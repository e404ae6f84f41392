"""Find and load a checkpoint (GGUF file or HF folder) into a config and canonical tensors."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .config import ModelConfig
from .errors import ModelLoadError
from .gguf_file import open_gguf, read_metadata
from .gguf_weights import load_gguf_weights
from .hf_weights import load_hf_weights


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint: where it came from, its shape, its weights, its GGUF metadata."""

    path: Path
    config: ModelConfig
    tensors: dict[str, torch.Tensor]
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


def _check_shapes(config: ModelConfig, tensors: dict[str, torch.Tensor]) -> None:
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


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Load a .gguf file or an HF folder; every failure is one ModelLoadError line."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ModelLoadError(f"model path does not exist: {path}")
    metadata: dict[str, Any] | None = None
    if path.is_dir():
        config, tensors = load_hf_weights(path)
    else:
        reader = open_gguf(path)
        metadata = read_metadata(reader)
        config, tensors = load_gguf_weights(reader, metadata)
    _check_shapes(config, tensors)
    return Checkpoint(path=path, config=config, tensors=tensors, gguf_metadata=metadata)
