"""Hugging Face folder (config.json + *.safetensors) → ModelConfig + canonical tensors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from .config import SUPPORTED_ARCHITECTURES, ModelConfig, RopeScaling
from .errors import ModelLoadError, UnsupportedModelError

_SUPPORTED = ", ".join(sorted(SUPPORTED_ARCHITECTURES))

_LAYER_TENSORS = {
    "input_layernorm.weight": "input_norm",
    "self_attn.q_proj.weight": "q_proj",
    "self_attn.k_proj.weight": "k_proj",
    "self_attn.v_proj.weight": "v_proj",
    "self_attn.q_proj.bias": "q_bias",
    "self_attn.k_proj.bias": "k_bias",
    "self_attn.v_proj.bias": "v_bias",
    "self_attn.o_proj.weight": "o_proj",
    "post_attention_layernorm.weight": "post_norm",
    "mlp.gate_proj.weight": "gate_proj",
    "mlp.up_proj.weight": "up_proj",
    "mlp.down_proj.weight": "down_proj",
}
_GLOBAL_TENSORS = {
    "model.embed_tokens.weight": "embed_tokens",
    "model.norm.weight": "norm",
    "lm_head.weight": "lm_head",
}


def _rope_scaling(raw: dict[str, Any] | None) -> RopeScaling | None:
    if not raw:
        return None
    kind = raw.get("rope_type", raw.get("type", "default"))
    if kind == "default":
        return None
    if kind == "linear":
        return RopeScaling(kind="linear", factor=float(raw["factor"]))
    if kind == "llama3":
        return RopeScaling(
            kind="llama3",
            factor=float(raw["factor"]),
            low_freq_factor=float(raw.get("low_freq_factor", 1.0)),
            high_freq_factor=float(raw.get("high_freq_factor", 4.0)),
            original_max_position=int(raw.get("original_max_position_embeddings", 8192)),
        )
    raise UnsupportedModelError(f"unsupported rope scaling kind {kind!r}")


def config_from_hf(raw: dict[str, Any]) -> ModelConfig:
    arch = raw.get("model_type")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedModelError(f"unsupported architecture {arch!r} (supported: {_SUPPORTED})")
    try:
        hidden = int(raw["hidden_size"])
        num_heads = int(raw["num_attention_heads"])
        return ModelConfig(
            architecture=arch,
            vocab_size=int(raw["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(raw["intermediate_size"]),
            num_layers=int(raw["num_hidden_layers"]),
            num_heads=num_heads,
            num_kv_heads=int(raw.get("num_key_value_heads") or num_heads),
            head_dim=int(raw.get("head_dim") or hidden // num_heads),
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            rope_theta=float(raw.get("rope_theta", 10000.0)),
            rope_interleaved=False,
            rope_scaling=_rope_scaling(raw.get("rope_scaling")),
            max_position=int(raw.get("max_position_embeddings", 2048)),
            tie_embeddings=bool(raw.get("tie_word_embeddings", False)),
            qkv_bias=arch == "qwen2" or bool(raw.get("attention_bias", False)),
        )
    except KeyError as exc:
        raise ModelLoadError(f"config.json lacks {exc.args[0]!r}") from exc


def _shard_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError) as exc:
            raise ModelLoadError(f"corrupt {index.name}: {exc}") from exc
        return [folder / name for name in sorted(set(weight_map.values()))]
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"no *.safetensors files in {folder}")
    return files


def _canonical_name(name: str) -> str | None:
    if name in _GLOBAL_TENSORS:
        return _GLOBAL_TENSORS[name]
    if name.startswith("model.layers."):
        _, _, index, rest = name.split(".", 3)
        if rest in _LAYER_TENSORS:
            return f"layers.{index}.{_LAYER_TENSORS[rest]}"
    return None


def load_hf_weights(folder: Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    config_path = folder / "config.json"
    if not config_path.exists():
        raise ModelLoadError(f"no config.json in {folder}")
    try:
        config = config_from_hf(json.loads(config_path.read_text()))
    except ValueError as exc:
        raise ModelLoadError(f"corrupt config.json: {exc}") from exc
    tensors: dict[str, torch.Tensor] = {}
    for shard in _shard_files(folder):
        try:
            loaded = load_file(str(shard))
        except (SafetensorError, OSError) as exc:
            raise ModelLoadError(f"cannot read {shard.name}: {exc}") from exc
        for name, tensor in loaded.items():
            canonical = _canonical_name(name)
            if canonical is not None:
                tensors[canonical] = tensor.to(torch.float32)
    if config.tie_embeddings:
        tensors.pop("lm_head", None)
    return config, tensors
