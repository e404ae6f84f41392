"""GGUF (F32 and quantized) and HF folders of the same tiny model load to the same logits."""

from __future__ import annotations

import json

import gguf
import pytest
import torch
from tiny import TinyConfig, random_hf_tensors, round_trip_quantized, write_gguf, write_hf

from server.engine.errors import ModelLoadError, UnsupportedModelError
from server.engine.model import Transformer
from server.engine.weights import load_checkpoint

Q = gguf.GGMLQuantizationType
TOKENS = torch.tensor([[1, 17, 99, 4, 250, 31, 8, 8, 120, 64, 3, 200]])


def _logits(path) -> torch.Tensor:
    ck = load_checkpoint(path)
    model = Transformer(ck.config, ck.tensors, device=torch.device("cpu"), dtype=torch.float32)
    return model.forward_full(TOKENS)


@pytest.mark.parametrize("qtype", [Q.F32, Q.Q8_0, Q.Q4_1], ids=lambda q: q.name)
@pytest.mark.parametrize(
    "config",
    [TinyConfig(), TinyConfig(architecture="qwen2"), TinyConfig(tie_embeddings=True)],
    ids=["llama", "qwen2", "tied"],
)
def test_gguf_and_hf_load_to_the_same_logits(tmp_path, config: TinyConfig, qtype: Q) -> None:
    tensors = round_trip_quantized(random_hf_tensors(config, seed=3), qtype)
    hf = _logits(write_hf(tmp_path / "hf", config, tensors))
    from_gguf = _logits(write_gguf(tmp_path / "m.gguf", config, tensors, qtype=qtype))
    assert torch.allclose(hf, from_gguf, atol=1e-4, rtol=0)


def test_gguf_config_reads_the_metadata(tmp_path) -> None:
    config = TinyConfig(num_kv_heads=1)
    ck = load_checkpoint(write_gguf(tmp_path / "m.gguf", config, random_hf_tensors(config)))
    assert (ck.config.num_heads, ck.config.num_kv_heads, ck.config.head_dim) == (4, 1, 16)
    assert ck.config.rope_interleaved and not ck.config.tie_embeddings
    assert ck.name == "tiny-test-model"


def test_sharded_hf_folder(tmp_path) -> None:
    from safetensors.torch import save_file

    config = TinyConfig()
    tensors = random_hf_tensors(config)
    whole = _logits(write_hf(tmp_path / "one", config, tensors))
    folder = write_hf(tmp_path / "two", config, tensors)
    (folder / "model.safetensors").unlink()
    names = sorted(tensors)
    halves = {"a.safetensors": names[::2], "b.safetensors": names[1::2]}
    for shard, members in halves.items():
        save_file({n: tensors[n] for n in members}, str(folder / shard))
    weight_map = {n: shard for shard, members in halves.items() for n in members}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    assert torch.allclose(whole, _logits(folder), atol=0, rtol=0)


def test_missing_path(tmp_path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.gguf")


def test_truncated_gguf(tmp_path) -> None:
    path = write_gguf(tmp_path / "m.gguf", TinyConfig(), random_hf_tensors(TinyConfig()))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError):
        load_checkpoint(path)


def test_not_a_gguf(tmp_path) -> None:
    path = tmp_path / "m.gguf"
    path.write_bytes(b"this is not a model" * 100)
    with pytest.raises(ModelLoadError, match="not a valid GGUF"):
        load_checkpoint(path)


def test_unknown_architecture(tmp_path) -> None:
    config = TinyConfig()
    path = write_gguf(tmp_path / "m.gguf", config, random_hf_tensors(config), architecture="falcon")
    with pytest.raises(UnsupportedModelError, match="unsupported architecture 'falcon'"):
        load_checkpoint(path)


def test_unsupported_rope_scaling(tmp_path) -> None:
    config = TinyConfig()
    folder = write_hf(tmp_path / "hf", config, random_hf_tensors(config))
    raw = json.loads((folder / "config.json").read_text())
    raw["rope_scaling"] = {"rope_type": "yarn", "factor": 4.0}
    (folder / "config.json").write_text(json.dumps(raw))
    with pytest.raises(UnsupportedModelError, match="unsupported rope scaling kind 'yarn'"):
        load_checkpoint(folder)


def test_shape_mismatch_is_named(tmp_path) -> None:
    config = TinyConfig()
    folder = write_hf(tmp_path / "hf", config, random_hf_tensors(config))
    raw = json.loads((folder / "config.json").read_text())
    raw["intermediate_size"] = 96
    (folder / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ModelLoadError, match="gate_proj"):
        load_checkpoint(folder)
