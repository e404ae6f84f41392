"""The fused kernels against the gguf package (dequantize bit-exact, matmul within 1e-4
relative), and models over packed weights against the same models dense."""

from __future__ import annotations

import itertools

import gguf
import numpy as np
import pytest
import torch
from tiny import TinyConfig, random_hf_tensors, scheduled_chunk, write_gguf, write_hf

from server.engine.config import EngineConfig
from server.engine.errors import ModelLoadError
from server.engine.kernels import load as load_kernels
from server.engine.llm import LLM
from server.engine.model import Transformer
from server.engine.quant import KERNEL_TYPES, QuantizedWeight, Weight, quantize, stack_rows
from server.engine.runner import ModelRunner
from server.engine.types import SamplingParams
from server.engine.weights import load_checkpoint

Q = gguf.GGMLQuantizationType
CPU = torch.device("cpu")
TOKENS = torch.tensor([[1, 17, 99, 4, 250, 31, 8, 8, 120, 64, 3, 200]])
TYPES = sorted(KERNEL_TYPES, key=lambda q: q.name)
REL_TOL = 1e-4


def random_blocks(qtype: Q, num_rows: int, num_cols: int, *, seed: int = 0) -> np.ndarray:
    """(N, row bytes) packed rows: gguf's quantizer where it has one, else random valid blocks."""
    rng = np.random.default_rng(seed)
    if qtype in (Q.Q4_0, Q.Q4_1, Q.Q8_0):
        weights = rng.standard_normal((num_rows, num_cols), dtype=np.float32)
        return np.ascontiguousarray(gguf.quants.quantize(weights, qtype))
    # gguf cannot quantize K-quants: every byte pattern is a valid block once the fp16 scales
    # are finite, so random bytes with small random scales cover every field.
    block_size, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    num_blocks = num_cols // block_size
    blocks = rng.integers(0, 256, (num_rows, num_blocks, block_bytes), dtype=np.uint8)
    scale_offsets = (0, 2) if qtype == Q.Q4_K else (208,)  # Q4_K: d, dmin; Q6_K: d
    for offset in scale_offsets:
        scales = (rng.standard_normal((num_rows, num_blocks)) * 0.01).astype(np.float16)
        blocks[:, :, offset : offset + 2] = scales.view(np.uint8).reshape(num_rows, num_blocks, 2)
    return blocks.reshape(num_rows, -1)


def packed_weight(qtype: Q, num_rows: int, num_cols: int, *, seed: int = 0) -> QuantizedWeight:
    blocks = random_blocks(qtype, num_rows, num_cols, seed=seed)
    return QuantizedWeight(torch.from_numpy(blocks), qtype, num_cols)


def reference(weight: QuantizedWeight) -> torch.Tensor:
    return torch.from_numpy(gguf.quants.dequantize(weight.data.numpy(), weight.qtype).copy())


def odd_widths(qtype: Q) -> list[int]:
    block_size = gguf.GGML_QUANT_SIZES[qtype][0]
    return [block_size, 3 * block_size, 7 * block_size]


@pytest.mark.parametrize("qtype", TYPES, ids=lambda q: q.name)
def test_dequantize_is_bit_exact(qtype: Q) -> None:
    for num_rows, num_cols in zip((1, 5, 37), odd_widths(qtype), strict=True):
        weight = packed_weight(qtype, num_rows, num_cols, seed=num_rows)
        assert torch.equal(weight.dequantize(), reference(weight))


@pytest.mark.parametrize("num_rows", [1, 2, 3, 4, 5, 67, 130])  # few-row kernel; tiles, passes
@pytest.mark.parametrize("qtype", TYPES, ids=lambda q: q.name)
def test_matmul_matches_dequantize_then_matmul(qtype: Q, num_rows: int) -> None:
    g = torch.Generator().manual_seed(num_rows)
    for num_out in (1, 7, 38):  # weight tiles of 3 rows: every tail
        for num_cols in odd_widths(qtype):
            weight = packed_weight(qtype, num_out, num_cols, seed=num_out + num_cols)
            x = torch.randn(num_rows, num_cols, generator=g)
            expected = x @ reference(weight).T
            ours = weight(x)
            assert ours.shape == (num_rows, num_out) and ours.dtype == torch.float32
            scale = expected.abs().max()
            assert (ours - expected).abs().max() <= REL_TOL * scale, (num_out, num_cols)


@pytest.mark.parametrize("num_rows", [1, 3])  # the few-row kernel, its chunks on two threads
@pytest.mark.parametrize("qtype", TYPES, ids=lambda q: q.name)
def test_wide_matmul_split_across_threads(qtype: Q, num_rows: int) -> None:
    num_out, num_cols = 4099, odd_widths(qtype)[2]  # many chunks, and a tail of 3 rows
    weight = packed_weight(qtype, num_out, num_cols, seed=num_rows)
    x = torch.randn(num_rows, num_cols, generator=torch.Generator().manual_seed(num_rows))
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        runs = [weight(x) for _ in range(3)]
    finally:
        torch.set_num_threads(previous)
    expected = x @ reference(weight).T
    assert (runs[0] - expected).abs().max() <= REL_TOL * expected.abs().max()
    assert all(torch.equal(run, runs[0]) for run in runs)  # every chunk written, every time


@pytest.mark.parametrize("qtype", TYPES, ids=lambda q: q.name)
def test_rows_are_an_embedding_lookup(qtype: Q) -> None:
    weight = packed_weight(qtype, 29, odd_widths(qtype)[1])
    ids = torch.tensor([3, 0, 28, 3, 17])
    assert torch.equal(weight.rows(ids), reference(weight)[ids])


def test_batched_leading_dims_and_empty_inputs() -> None:
    weight = packed_weight(Q.Q4_1, 9, 64)
    x = torch.randn(2, 3, 64, generator=torch.Generator().manual_seed(0))
    expected = (x.reshape(6, 64) @ reference(weight).T).view(2, 3, 9)
    assert torch.allclose(weight(x), expected, rtol=0, atol=REL_TOL * float(expected.abs().max()))
    assert weight(torch.empty(0, 64)).shape == (0, 9)


def test_stacked_rows_are_one_fused_projection() -> None:
    parts = [packed_weight(Q.Q8_0, n, 96, seed=n) for n in (4, 2, 5)]
    fused = stack_rows(parts)
    x = torch.randn(3, 96)
    assert fused.shape == (11, 96)
    assert torch.allclose(fused(x), torch.cat([p(x) for p in parts], dim=-1), rtol=0, atol=0)


@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q4_0, Q.Q4_1], ids=lambda q: q.name)
def test_quantize_writes_what_gguf_writes(qtype: Q) -> None:
    weight = torch.randn(6, 64)
    ours = quantize(weight, qtype)
    theirs = gguf.quants.quantize(weight.numpy(), qtype)
    assert np.array_equal(ours.data.numpy(), theirs)
    assert ours.shape == (6, 64)


def test_bad_packed_rows_are_refused() -> None:
    weight = packed_weight(Q.Q4_1, 4, 64)
    bad = QuantizedWeight(weight.data[:, :-1].contiguous(), Q.Q4_1, 64)
    with pytest.raises(RuntimeError, match="bytes"):
        bad(torch.randn(1, 64))
    with pytest.raises(RuntimeError, match="activations"):
        weight(torch.randn(1, 64, dtype=torch.float64))


def _dense(tensors: dict[str, Weight]) -> dict[str, Weight]:
    return {n: t.dequantize() if isinstance(t, QuantizedWeight) else t for n, t in tensors.items()}


def test_every_block_type_mixed_in_one_model(tmp_path) -> None:
    # Wide enough for the 256-value K-quant blocks; one type per matrix, cycling, so fused
    # projections (q|k|v, gate|up) mix types and must be applied part by part.
    config = TinyConfig(hidden_size=256, intermediate_size=512)
    ck = load_checkpoint(write_gguf(tmp_path / "m.gguf", config, random_hf_tensors(config)))
    types = itertools.cycle(TYPES)
    tensors: dict[str, Weight] = {}
    for seed, (name, tensor) in enumerate(ck.tensors.items()):
        assert isinstance(tensor, torch.Tensor)
        if tensor.ndim == 2:
            rows, cols = tensor.shape
            tensors[name] = packed_weight(next(types), rows, cols, seed=seed)
        else:
            tensors[name] = tensor
    packed = Transformer(ck.config, tensors, device=CPU, dtype=torch.float32)
    dense = Transformer(ck.config, _dense(tensors), device=CPU, dtype=torch.float32)
    ours, expected = packed.forward_full(TOKENS), dense.forward_full(TOKENS)
    assert torch.allclose(ours, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q4_1, Q.Q4_0], ids=lambda q: q.name)
def test_default_mode_keeps_a_gguf_packed(tmp_path, qtype: Q) -> None:
    config = TinyConfig()
    path = write_gguf(tmp_path / "m.gguf", config, random_hf_tensors(config), qtype=qtype)
    default = LLM.load(path, EngineConfig(num_kv_blocks=32))
    reference = LLM.load(path, EngineConfig(num_kv_blocks=32, dtype="float32"))
    assert f"{qtype.name} x" in default.info.weights and "packed" in default.info.weights
    assert "packed" not in reference.info.weights and reference.info.dtype == "float32"
    assert "dequantize-matmul" in default.model.kernels  # what the serve log says
    assert reference.model.kernels.startswith("torch ops")
    ours = default.model.forward_full(TOKENS)
    expected = reference.model.forward_full(TOKENS)
    assert torch.allclose(ours, expected, rtol=0, atol=1e-4)
    prompt = TOKENS[0].tolist()
    sampling = SamplingParams(max_tokens=12, ignore_eos=True)
    greedy = [
        [t for o in llm.generate(prompt, sampling) for t in o.new_token_ids]
        for llm in (default, reference)
    ]
    assert greedy[0] == greedy[1]


def test_hf_quantized_at_load_equals_the_same_gguf(tmp_path) -> None:
    config = TinyConfig()
    tensors = random_hf_tensors(config, seed=5)
    hf = load_checkpoint(write_hf(tmp_path / "hf", config, tensors), quantize_to=Q.Q8_0)
    path = write_gguf(tmp_path / "m.gguf", config, tensors, qtype=Q.Q8_0)
    from_gguf = load_checkpoint(path, keep_packed=True)
    assert isinstance(hf.tensors["layers.0.down_proj"], QuantizedWeight)
    ours = Transformer(hf.config, hf.tensors, device=CPU, dtype=torch.float32)
    theirs = Transformer(from_gguf.config, from_gguf.tensors, device=CPU, dtype=torch.float32)
    expected = theirs.forward_full(TOKENS)
    assert torch.allclose(ours.forward_full(TOKENS), expected, rtol=0, atol=1e-4)


def test_hf_quantized_at_load_decodes_like_its_no_cache_oracle(tmp_path) -> None:
    # An HF checkpoint rotates by halves (not pairs): the cached decode's RoPE-and-KV-write
    # kernel in that layout, step by step against the no-cache forward of the same weights.
    config = TinyConfig()
    folder = write_hf(tmp_path / "hf", config, random_hf_tensors(config, seed=8))
    ck = load_checkpoint(folder, quantize_to=Q.Q8_0)
    model = Transformer(ck.config, ck.tensors, device=CPU, dtype=torch.float32)
    assert not ck.config.rope_interleaved and "RoPE" in model.kernels
    runner = ModelRunner(model, num_blocks=32, block_size=8)
    tokens, blocks = TOKENS[0].tolist(), (4, 9, 2, 17)
    logits = runner.execute([scheduled_chunk("r", tokens, 0, blocks)]).logits[0]
    for _ in range(12):  # across block edges
        full = model.forward_full(torch.tensor([tokens]))[0, -1]
        assert torch.allclose(logits, full, atol=1e-4, rtol=0)
        tokens.append(int(full.argmax()))
        chunk = scheduled_chunk("r", tokens[-1:], len(tokens) - 1, blocks)
        logits = runner.execute([chunk]).logits[0]


def test_quantize_needs_cpu_float32(tmp_path) -> None:
    config = TinyConfig()
    folder = write_hf(tmp_path / "hf", config, random_hf_tensors(config))
    with pytest.raises(ModelLoadError, match="float32"):
        LLM.load(folder, EngineConfig(quantize="q8_0", dtype="bfloat16"))
    with pytest.raises(ModelLoadError, match="unknown quantize"):
        LLM.load(folder, EngineConfig(quantize="q3_x"))


@pytest.mark.parametrize("num_rows", [1, 3, 67])
def test_fused_rms_norm_matches_torch(num_rows: int) -> None:
    g = torch.Generator().manual_seed(num_rows)
    x, weight = torch.randn(num_rows, 77, generator=g) * 3, torch.randn(77, generator=g)
    expected = torch.nn.functional.rms_norm(x, (77,), weight, 1e-5)
    ours = load_kernels().rms_norm(x.t().contiguous().t(), weight, 1e-5)  # strided input too
    assert torch.allclose(ours, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("num_rows", [1, 3, 67])
def test_fused_silu_mul_matches_torch(num_rows: int) -> None:
    gate_up = torch.randn(num_rows, 2 * 45, generator=torch.Generator().manual_seed(num_rows)) * 4
    gate, up = gate_up.chunk(2, dim=-1)
    expected = torch.nn.functional.silu(gate) * up
    assert torch.allclose(load_kernels().silu_mul(gate_up), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("vocab", [1, 7, 49152 + 5])
def test_argmax_rows_answers_as_torch_argmax(vocab: int) -> None:
    g = torch.Generator().manual_seed(vocab)
    logits = torch.randn(9, vocab, generator=g)
    logits[1] = float("-inf")  # all -inf: index 0
    logits[2, vocab // 2 :] = logits[2].max() + 1  # ties: the first of them
    logits[3, -1] = float("inf")
    logits[4, vocab // 3] = float("nan")  # a NaN is the largest
    logits[4, -1] = float("nan")
    logits[5] = 0.0
    logits[5, vocab // 2] = -0.0  # signed zeros compare equal: the first zero wins
    logits[6, -1] = 1e30  # the tail past the last full vector
    expected = logits.argmax(dim=-1)
    assert torch.equal(load_kernels().argmax_rows(logits), expected)
    assert torch.equal(load_kernels().argmax_rows(logits.t().contiguous().t()), expected)


def test_fused_ops_refuse_bad_shapes() -> None:
    with pytest.raises(RuntimeError, match="weight"):
        load_kernels().rms_norm(torch.randn(2, 8), torch.randn(7), 1e-5)
    with pytest.raises(RuntimeError, match="silu_mul"):
        load_kernels().silu_mul(torch.randn(2, 7))
    with pytest.raises(RuntimeError, match="argmax_rows"):
        load_kernels().argmax_rows(torch.randn(2, 0))
    with pytest.raises(RuntimeError, match="argmax_rows"):
        load_kernels().argmax_rows(torch.randn(2, 3).double())
