"""Tiny random Llama-family checkpoints, written as HF folders and as GGUF files, for tests."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import torch
from safetensors.torch import save_file

from server.engine.sequence import ScheduledChunk

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass(frozen=True)
class TinyConfig:
    architecture: str = "llama"
    hidden_size: int = 64
    intermediate_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    max_position: int = 512
    tie_embeddings: bool = False

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def qkv_bias(self) -> bool:
        return self.architecture == "qwen2"


def byte_vocab() -> list[str]:
    """GPT-2's byte-to-unicode alphabet (256 tokens) followed by the special tokens."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)] + SPECIALS


VOCAB_SIZE = len(byte_vocab())


def random_hf_tensors(config: TinyConfig, *, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under HF names, in HF's rotate-half q/k layout."""
    g = torch.Generator().manual_seed(seed)
    h, hd, inter = config.hidden_size, config.head_dim, config.intermediate_size

    def rnd(*shape: int, scale: float = 0.08) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * scale

    t = {"model.embed_tokens.weight": rnd(VOCAB_SIZE, h, scale=0.5)}
    t["model.norm.weight"] = 1 + rnd(h)
    if not config.tie_embeddings:
        t["lm_head.weight"] = rnd(VOCAB_SIZE, h, scale=0.3)
    for i in range(config.num_layers):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = 1 + rnd(h)
        t[p + "post_attention_layernorm.weight"] = 1 + rnd(h)
        t[p + "self_attn.q_proj.weight"] = rnd(config.num_heads * hd, h, scale=0.2)
        t[p + "self_attn.k_proj.weight"] = rnd(config.num_kv_heads * hd, h, scale=0.2)
        t[p + "self_attn.v_proj.weight"] = rnd(config.num_kv_heads * hd, h)
        t[p + "self_attn.o_proj.weight"] = rnd(h, config.num_heads * hd)
        t[p + "mlp.gate_proj.weight"] = rnd(inter, h)
        t[p + "mlp.up_proj.weight"] = rnd(inter, h)
        t[p + "mlp.down_proj.weight"] = rnd(h, inter)
        if config.qkv_bias:
            t[p + "self_attn.q_proj.bias"] = rnd(config.num_heads * hd)
            t[p + "self_attn.k_proj.bias"] = rnd(config.num_kv_heads * hd)
            t[p + "self_attn.v_proj.bias"] = rnd(config.num_kv_heads * hd)
    return t


def round_trip_quantized(
    tensors: dict[str, torch.Tensor], qtype: gguf.GGMLQuantizationType
) -> dict[str, torch.Tensor]:
    """The values a quantized GGUF will hold: 2-D weights quantized then dequantized."""
    out = {}
    for name, tensor in tensors.items():
        if tensor.ndim == 2 and qtype != gguf.GGMLQuantizationType.F32:
            packed = gguf.quants.quantize(tensor.numpy(), qtype)
            tensor = torch.from_numpy(gguf.quants.dequantize(packed, qtype).copy())
        out[name] = tensor
    return out


def write_hf(folder: Path, config: TinyConfig, tensors: dict[str, torch.Tensor]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    raw = {
        "model_type": config.architecture,
        "vocab_size": VOCAB_SIZE,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads,
        "rms_norm_eps": config.rms_norm_eps,
        "rope_theta": config.rope_theta,
        "max_position_embeddings": config.max_position,
        "tie_word_embeddings": config.tie_embeddings,
    }
    (folder / "config.json").write_text(json.dumps(raw))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "model.safetensors"))
    return folder


def _to_interleaved(w: torch.Tensor, num_heads: int) -> torch.Tensor:
    """HF rotate-half rows → the pairwise layout llama.cpp's converter writes."""
    rows = w.shape[0]
    return (
        w.reshape(num_heads, 2, rows // num_heads // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


_GGUF_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def _gguf_name(name: str) -> str:
    globals_ = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    if name in globals_:
        return globals_[name]
    _, _, index, rest = name.split(".", 3)
    return f"blk.{index}.{_GGUF_NAMES[rest]}"


def write_gguf(
    path: Path,
    config: TinyConfig,
    tensors: dict[str, torch.Tensor],
    *,
    qtype: gguf.GGMLQuantizationType = gguf.GGMLQuantizationType.F32,
    architecture: str | None = None,
) -> Path:
    """Write like llama.cpp's converter: q/k permuted for llama, a byte-level BPE vocab."""
    arch = architecture or config.architecture
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny-test-model")
    w.add_block_count(config.num_layers)
    w.add_context_length(config.max_position)
    w.add_embedding_length(config.hidden_size)
    w.add_feed_forward_length(config.intermediate_size)
    w.add_head_count(config.num_heads)
    w.add_head_count_kv(config.num_kv_heads)
    w.add_rope_freq_base(config.rope_theta)
    w.add_layer_norm_rms_eps(config.rms_norm_eps)
    w.add_vocab_size(VOCAB_SIZE)
    vocab = byte_vocab()
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(vocab)
    w.add_token_types([1] * 256 + [3] * len(SPECIALS))
    w.add_token_merges([])
    w.add_bos_token_id(256 + 1)
    w.add_eos_token_id(256 + 2)
    w.add_add_bos_token(False)
    w.add_chat_template(CHAT_TEMPLATE)
    permute = arch in ("llama", "mistral")
    for name, tensor in tensors.items():
        if permute and name.endswith("q_proj.weight"):
            tensor = _to_interleaved(tensor, config.num_heads)
        elif permute and name.endswith("k_proj.weight"):
            tensor = _to_interleaved(tensor, config.num_kv_heads)
        array = tensor.numpy().astype(np.float32)
        if array.ndim == 2 and qtype != gguf.GGMLQuantizationType.F32:
            w.add_tensor(_gguf_name(name), gguf.quants.quantize(array, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(_gguf_name(name), array)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def scheduled_chunk(
    rid: str, tokens: list[int], start: int, blocks: tuple[int, ...]
) -> ScheduledChunk:
    """One sequence's chunk for ModelRunner.execute, sampled, with no Sequence behind it."""
    return ScheduledChunk(
        request_id=rid,
        token_ids=tuple(tokens),
        start_position=start,
        block_ids=blocks,
        sample=True,
        seq=None,  # type: ignore[arg-type]  # the runner never reads it
    )
