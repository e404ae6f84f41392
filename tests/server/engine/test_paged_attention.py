"""The C++ decode attention over the paged KV cache (kernels/attention.cpp) against plain
softmax attention over gathered keys, its RoPE-and-KV-write against torch's elementwise ops, and
the packed model's cached, batched decode that runs on both against the no-cache oracle."""

from __future__ import annotations

import gguf
import pytest
import torch
from tiny import TinyConfig, random_hf_tensors, scheduled_chunk, write_gguf

from server.engine.kernels import load as load_kernels
from server.engine.model import Transformer
from server.engine.runner import ModelRunner
from server.engine.weights import load_checkpoint

NUM_BLOCKS = 64


def reference(
    q: torch.Tensor, cache: torch.Tensor, table: torch.Tensor, lengths: torch.Tensor
) -> torch.Tensor:
    """Row by row: the row's keys gathered, kv heads repeated per query group, float64 softmax."""
    _, nkv, _, _, hd = cache.shape
    groups = q.shape[1] // (nkv * hd)
    out = []
    for row, length in enumerate(lengths.tolist()):
        ctx = cache[:, :, table[row]].reshape(2, nkv, -1, hd)[:, :, :length].double()
        keys = ctx[0].repeat_interleave(groups, dim=0)  # (nh, L, hd)
        values = ctx[1].repeat_interleave(groups, dim=0)
        query = q[row].view(-1, 1, hd).double()  # (nh, 1, hd)
        scores = (query @ keys.transpose(1, 2)) * hd**-0.5
        out.append((scores.softmax(-1) @ values).reshape(-1))
    return torch.stack(out).float()


def poisoned_cache(nkv: int, bs: int, hd: int, seed: int) -> torch.Tensor:
    """Random K/V, and NaN in the null block: a kernel that reads past a row's length fails."""
    g = torch.Generator().manual_seed(seed)
    cache = torch.randn(2, nkv, NUM_BLOCKS, bs, hd, generator=g)
    cache[:, :, 0] = float("nan")
    return cache


def random_rows(lengths: list[int], bs: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Scattered block tables, no block shared by two rows, padded with the null block."""
    free = (
        torch.randperm(NUM_BLOCKS - 1, generator=torch.Generator().manual_seed(seed)) + 1
    ).tolist()
    width = max((n + bs - 1) // bs for n in lengths)
    table = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, n in enumerate(lengths):
        nb = (n + bs - 1) // bs
        table[row, :nb] = torch.tensor([free.pop() for _ in range(nb)])
    return table, torch.tensor(lengths)


@pytest.mark.parametrize("hd", [16, 32, 64, 128])
@pytest.mark.parametrize("nkv,groups", [(1, 1), (2, 3), (3, 3)])
def test_matches_softmax_attention(hd: int, nkv: int, groups: int) -> None:
    bs = 16
    cache = poisoned_cache(nkv, bs, hd, seed=hd + nkv)
    # One key, a partial block, a block edge, many splits, and rows of mixed lengths together.
    lengths = [1, 7, 16, 17, 333, 16 * 36 - 3]  # 58 of the 63 blocks
    table, lens = random_rows(lengths, bs, seed=hd)
    for row, n in enumerate(lengths):  # stale K/V past the length in the row's last block
        last = table[row, (n - 1) // bs]
        cache[:, :, last, (n - 1) % bs + 1 :] = float("nan")
    q = torch.randn(len(lengths), nkv * groups * hd, generator=torch.Generator().manual_seed(1)) * 4
    ours = load_kernels().paged_decode_attention(q, cache, table, lens, hd**-0.5)
    expected = reference(q, cache, table, lens)
    assert torch.isfinite(ours).all()
    assert torch.allclose(ours, expected, rtol=1e-5, atol=1e-5)
    # q as the model passes it: a view of the fused projection's rows, wider than q itself.
    wide = torch.full((len(lengths), q.shape[1] + 2 * nkv * hd), float("nan"))
    wide[:, : q.shape[1]] = q
    strided = load_kernels().paged_decode_attention(
        wide[:, : q.shape[1]], cache, table, lens, hd**-0.5
    )
    assert torch.equal(strided, ours)


def test_peaked_scores_underflow_to_the_max_alone() -> None:
    # Scores hundreds apart: every exp but the max's underflows to 0, as in float32 softmax.
    bs, hd = 8, 32
    cache = poisoned_cache(1, bs, hd, seed=3)
    table, lens = random_rows([40], bs, seed=3)
    q = torch.zeros(1, hd)
    q[0, 0] = 1.0
    keys = cache[0, 0, table[0]].reshape(-1, hd)
    keys[:, 0] = torch.arange(40, dtype=torch.float32) * 1000.0  # 39 wins by 1000 / sqrt(32)
    cache[0, 0, table[0]] = keys.view(-1, bs, hd)
    ours = load_kernels().paged_decode_attention(q, cache, table, lens, hd**-0.5)
    assert torch.equal(ours[0], cache[1, 0, table[0, -1], 7])


def test_bad_arguments_are_refused() -> None:
    ops = load_kernels()
    cache = torch.zeros(2, 2, 4, 8, 16)
    table = torch.tensor([[1, 2]])
    q = torch.zeros(1, 2 * 16)
    with pytest.raises(RuntimeError, match="length"):
        ops.paged_decode_attention(q, cache, table, torch.tensor([17]), 0.25)
    with pytest.raises(RuntimeError, match="length"):
        ops.paged_decode_attention(q, cache, table, torch.tensor([0]), 0.25)
    with pytest.raises(RuntimeError, match="block id"):
        ops.paged_decode_attention(q, cache, torch.tensor([[1, 9]]), torch.tensor([9]), 0.25)
    with pytest.raises(RuntimeError, match="multiple of 8"):
        ops.paged_decode_attention(q, torch.zeros(2, 2, 4, 4, 16), table, torch.tensor([3]), 0.25)
    with pytest.raises(RuntimeError, match="head size"):
        ops.paged_decode_attention(
            torch.zeros(1, 24), torch.zeros(2, 1, 4, 8, 24), table, torch.tensor([3]), 0.25
        )


def rotated(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool
) -> torch.Tensor:
    """x (T, heads, hd) rotated by torch's elementwise ops, the reference rounding."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    if interleaved:
        x1, x2 = x[..., 0::2], x[..., 1::2]
        return torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2)
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


@pytest.mark.parametrize("interleaved", [True, False])
@pytest.mark.parametrize("num_tokens", [1, 5, 300])  # 300 rows: the threaded path
def test_rope_write_kv_rotates_like_torch_and_fills_only_its_slots(
    interleaved: bool, num_tokens: int
) -> None:
    nh, nkv, hd, bs = 6, 2, 32, 8
    g = torch.Generator().manual_seed(num_tokens)
    qkv = torch.randn(num_tokens, (nh + 2 * nkv) * hd, generator=g) * 4
    angles = torch.rand(num_tokens, hd // 2, generator=g) * 300
    cos, sin = angles.cos(), angles.sin()
    cache = torch.full((2, nkv, 64, bs, hd), float("nan"))
    slots = torch.randperm(64 * bs, generator=g)[:num_tokens]
    heads = qkv.view(num_tokens, -1, hd)
    want_qk = rotated(heads[:, : nh + nkv], cos, sin, interleaved)
    want_v = heads[:, nh + nkv :].clone()
    load_kernels().rope_write_kv(qkv, cos, sin, cache, slots, nh, interleaved)
    assert torch.equal(heads[:, : nh + nkv], want_qk)  # bit for bit: no fused multiply-add
    assert torch.equal(heads[:, nh + nkv :], want_v)  # v is not rotated
    by_slot = cache.view(2, nkv, -1, hd)
    assert torch.equal(by_slot[0][:, slots].transpose(0, 1), want_qk[:, nh:])
    assert torch.equal(by_slot[1][:, slots].transpose(0, 1), want_v)
    untouched = torch.ones(64 * bs, dtype=torch.bool)
    untouched[slots] = False
    assert by_slot[:, :, untouched].isnan().all()


def test_rope_write_kv_refuses_bad_arguments() -> None:
    ops = load_kernels()
    cache = torch.zeros(2, 1, 4, 8, 16)
    cos = sin = torch.zeros(2, 8)
    qkv = torch.zeros(2, 4 * 16)  # two q heads, one kv head
    with pytest.raises(RuntimeError, match="outside the cache"):
        ops.rope_write_kv(qkv, cos, sin, cache, torch.tensor([0, 32]), 2, True)
    with pytest.raises(RuntimeError, match="outside the cache"):
        ops.rope_write_kv(qkv, cos, sin, cache, torch.tensor([-1, 3]), 2, True)
    with pytest.raises(RuntimeError, match="width"):
        ops.rope_write_kv(qkv, cos, sin, cache, torch.tensor([0, 1]), 3, True)
    with pytest.raises(RuntimeError, match="cos and sin"):
        ops.rope_write_kv(qkv, cos[:1], sin, cache, torch.tensor([0, 1]), 2, True)
    with pytest.raises(RuntimeError, match="contiguous"):
        ops.rope_write_kv(qkv.t(), cos, sin, cache, torch.tensor([0, 1]), 2, True)


def test_packed_model_decodes_on_the_kernel_like_the_oracle(tmp_path) -> None:
    config = TinyConfig(hidden_size=128, num_heads=4, num_kv_heads=2)  # head size 32, GQA 2
    path = write_gguf(
        tmp_path / "m.gguf",
        config,
        random_hf_tensors(config, seed=11),
        qtype=gguf.GGMLQuantizationType.Q8_0,
    )
    ck = load_checkpoint(path, keep_packed=True)
    model = Transformer(ck.config, ck.tensors, device=torch.device("cpu"), dtype=torch.float32)
    assert "paged decode attention" in model.kernels
    runner = ModelRunner(model, num_blocks=32, block_size=8)
    rows = {"a": ([3, 77, 140, 12, 9], (5, 9, 2, 17)), "b": ([250, 33] * 7, (11, 3, 8, 20))}
    steps = [runner.execute([scheduled_chunk(r, t, 0, b) for r, (t, b) in rows.items()])]
    for _ in range(14):  # both rows decode in one step, across block edges, lengths apart
        for (tokens, _), logits in zip(rows.values(), steps[-1].logits, strict=True):
            full = model.forward_full(torch.tensor([tokens]))[0, -1]
            assert torch.allclose(logits, full, atol=1e-4, rtol=0)
            tokens.append(int(logits.argmax()))
        chunks = [scheduled_chunk(r, t[-1:], len(t) - 1, b) for r, (t, b) in rows.items()]
        steps.append(runner.execute(chunks))
