"""The cached, paged, batched forward against the no-cache oracle, on tiny random models."""

from __future__ import annotations

import pytest
import torch
from tiny import TinyConfig, random_hf_tensors, scheduled_chunk, write_hf

from server.engine.model import Transformer
from server.engine.runner import ModelRunner
from server.engine.weights import load_checkpoint

BLOCK = 4


def _model(tmp_path, config: TinyConfig) -> Transformer:
    folder = write_hf(tmp_path / "hf", config, random_hf_tensors(config, seed=7))
    ck = load_checkpoint(folder)
    return Transformer(ck.config, ck.tensors, device=torch.device("cpu"), dtype=torch.float32)


@pytest.mark.parametrize(
    "config",
    [
        TinyConfig(),
        TinyConfig(architecture="qwen2", tie_embeddings=True),
        TinyConfig(num_kv_heads=4),
    ],
    ids=["llama-gqa", "qwen2-tied", "mha"],
)
def test_incremental_decode_equals_full_forward(tmp_path, config: TinyConfig) -> None:
    model = _model(tmp_path, config)
    runner = ModelRunner(model, num_blocks=32, block_size=BLOCK)
    blocks = (5, 9, 2, 17, 11, 3, 8, 20)  # deliberately scattered
    tokens = [3, 77, 140, 12, 9, 250, 33, 61, 7, 100, 101]
    logits = runner.execute([scheduled_chunk("a", tokens, 0, blocks)]).logits
    for _ in range(12):
        full = model.forward_full(torch.tensor([tokens]))[0, -1]
        assert torch.allclose(logits[0], full, atol=1e-4, rtol=0)
        tokens.append(int(logits[0].argmax()))
        logits = runner.execute([scheduled_chunk("a", tokens[-1:], len(tokens) - 1, blocks)]).logits


def test_chunked_prefill_over_a_cached_prefix_equals_full_forward(tmp_path) -> None:
    model = _model(tmp_path, TinyConfig())
    runner = ModelRunner(model, num_blocks=16, block_size=BLOCK)
    blocks = (1, 4, 6, 2)
    tokens = [5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17]
    runner.execute([scheduled_chunk("a", tokens[:5], 0, blocks)])
    logits = runner.execute([scheduled_chunk("a", tokens[5:], 5, blocks)]).logits
    full = model.forward_full(torch.tensor([tokens]))[0, -1]
    assert torch.allclose(logits[0], full, atol=1e-4, rtol=0)


def test_sequences_of_different_lengths_batched_equal_alone(tmp_path) -> None:
    model = _model(tmp_path, TinyConfig())
    prompts = {"a": [1, 2, 3], "b": [40, 41, 42, 43, 44, 45, 46, 47, 48, 49], "c": [200] * 6}
    tables = {"a": (1, 2, 3, 4, 5, 6), "b": (7, 8, 9, 10, 11, 12), "c": (13, 14, 15, 16, 17, 18)}

    def run(ids: list[str], runner: ModelRunner, steps: int) -> dict[str, list[torch.Tensor]]:
        seqs = {i: list(prompts[i]) for i in ids}
        out: dict[str, list[torch.Tensor]] = {i: [] for i in ids}
        chunks = [scheduled_chunk(i, seqs[i], 0, tables[i]) for i in ids]
        for _ in range(steps):
            step = runner.execute(chunks)
            logits, order = step.logits, step.sampled_request_ids
            chunks = []
            for row, rid in enumerate(order):
                out[rid].append(logits[row])
                seqs[rid].append(int(logits[row].argmax()))
                chunks.append(scheduled_chunk(rid, seqs[rid][-1:], len(seqs[rid]) - 1, tables[rid]))
        return out

    together = run(["a", "b", "c"], ModelRunner(model, num_blocks=24, block_size=BLOCK), 8)
    for rid in prompts:
        alone = run([rid], ModelRunner(model, num_blocks=24, block_size=BLOCK), 8)[rid]
        for step, (x, y) in enumerate(zip(together[rid], alone, strict=True)):
            assert torch.allclose(x, y, atol=1e-4, rtol=0), (rid, step)
            assert int(x.argmax()) == int(y.argmax())


def test_decode_mixed_with_a_prefill_in_one_step(tmp_path) -> None:
    model = _model(tmp_path, TinyConfig())
    runner = ModelRunner(model, num_blocks=24, block_size=BLOCK)
    a = [9, 8, 7, 6, 5]
    logits = runner.execute([scheduled_chunk("a", a, 0, (1, 2, 3))]).logits
    a.append(int(logits[0].argmax()))
    b = [100, 101, 102, 103, 104, 105, 106]
    step = runner.execute(
        [scheduled_chunk("a", a[-1:], len(a) - 1, (1, 2, 3)), scheduled_chunk("b", b, 0, (4, 5, 6))]
    )
    logits, order = step.logits, step.sampled_request_ids
    assert order == ("a", "b")
    assert torch.allclose(logits[0], model.forward_full(torch.tensor([a]))[0, -1], atol=1e-4)
    assert torch.allclose(logits[1], model.forward_full(torch.tensor([b]))[0, -1], atol=1e-4)
