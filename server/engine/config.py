"""Model and engine configuration: frozen dataclasses, every default explained once."""

from __future__ import annotations

from dataclasses import dataclass

SUPPORTED_ARCHITECTURES = frozenset({"llama", "mistral", "qwen2"})


@dataclass(frozen=True, kw_only=True)
class RopeScaling:
    """RoPE frequency scaling. Only the kinds we implement can be constructed by the loaders."""

    kind: str  # "linear" or "llama3"
    factor: float
    low_freq_factor: float = 1.0  # llama3 only
    high_freq_factor: float = 4.0  # llama3 only
    original_max_position: int = 8192  # llama3 only


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """The shape of a Llama-family decoder, read from GGUF metadata or an HF config.json."""

    architecture: str  # one of SUPPORTED_ARCHITECTURES
    vocab_size: int
    hidden_size: int
    intermediate_size: int  # SwiGLU inner width
    num_layers: int
    num_heads: int
    num_kv_heads: int  # < num_heads means grouped-query attention
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_interleaved: bool  # True: GGUF's (Meta) pairwise layout; False: HF's rotate-half
    rope_scaling: RopeScaling | None = None
    max_position: int = 2048  # the context window the model was trained for
    tie_embeddings: bool = False  # lm_head shares the token embedding
    qkv_bias: bool = False  # Qwen2 has biases on q, k and v

    @property
    def num_kv_groups(self) -> int:
        return self.num_heads // self.num_kv_heads


@dataclass(frozen=True, kw_only=True)
class EngineConfig:
    """Runtime limits of one engine. Every field is a named, defaulted setting."""

    device: str = "cpu"  # "cpu", "cuda" or "cuda:N"
    # "auto": on CPU a GGUF's quantized matrices stay packed and run on the fused kernels with
    # float32 activations; bfloat16 on CUDA when supported. "float32": every weight dequantized
    # to dense float32, the reference mode. "bfloat16", "float16": dense in that dtype.
    dtype: str = "auto"
    # "none", or "q8_0", "q4_0", "q4_1": float matrices (an HF checkpoint's) quantized at load
    # into that GGUF format for the CPU kernels; a GGUF's quantized matrices stay as they are.
    quantize: str = "none"
    num_threads: int = 0  # torch intra-op threads; 0 keeps torch's default
    kv_cache_mib: int = 2048  # KV memory budget, cut into blocks
    num_kv_blocks: int = 0  # > 0 overrides kv_cache_mib with an exact block count
    block_size: int = 16  # tokens per KV block (also the prefix-sharing granularity)
    max_num_batched_tokens: int = 512  # token budget of one step (decodes + prefill chunks)
    max_num_seqs: int = 64  # running sequences at most
    max_waiting: int = 256  # waiting queue bound; beyond it requests are rejected as overloaded
    max_model_len: int = 0  # 0: the model's own context window
    session_ttl_s: float = 600.0  # an idle session's KV is kept this long
    max_session_share: float = 0.5  # sessions may pin at most this share of the KV blocks
