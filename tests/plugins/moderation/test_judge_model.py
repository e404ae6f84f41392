"""`judge_model`: the LLM judge on a second model the server loads and serves beside its own,
over a real server; the judge's reasons name that model, and a bad path is a typed error."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from server_harness import (
    encode,
    fast_config,
    raw_client,
    recv_frame,
    running_server,
    write_tiny_model,
)
from tiny import TinyConfig, random_hf_tensors, write_gguf

from plugins.api import ModelError
from protocol import PluginFrame

POLICY = "No spoilers: never reveal the ending or the final boss of the game."


def judge_config(judge_model: str) -> Any:
    return fast_config(
        plugins={
            "enabled": ["chat", "moderation"],
            "settings": {"moderation": {"judge_model": judge_model}},
        }
    )


async def ask(ws: Any, frame_type: str, rid: str, **payload: object) -> PluginFrame:
    await ws.send(encode({"type": frame_type, "id": rid, **payload}))
    while True:
        frame = await recv_frame(ws, timeout_s=60)
        if getattr(frame, "request_id", None) == rid:
            assert isinstance(frame, PluginFrame), frame
            return frame


async def test_the_judge_rules_on_the_judge_model_and_says_so(tmp_path: Path) -> None:
    model = write_tiny_model(tmp_path)
    # Another model than the server's: its own weights, its own file name.
    config = TinyConfig(num_layers=1)
    judge = write_gguf(tmp_path / "judge-tiny.gguf", config, random_hf_tensors(config, seed=7))
    async with running_server(model, judge_config(str(judge))) as server:
        assert server.models.names == ("judge-tiny.gguf",)
        async with raw_client(server) as ws:
            policy = {"judge": {"policy": POLICY, "mode": "all"}}
            await ask(ws, "mod.config", "c", channel="game", op="set", policy=policy)
            verdict = await ask(
                ws, "mod.check", "m", channel="game", message_id="m", user={"id": "u"},
                text="the final boss is her father",
            )  # fmt: skip
    reasons = verdict.payload["reasons"]
    assert isinstance(reasons, list)
    judged = [r for r in reasons if isinstance(r, Mapping) and r["source"] == "judge"]
    assert len(judged) == 1 and judged[0]["name"] == "policy", reasons
    assert "by judge-tiny.gguf" in judged[0]["detail"]
    categories = verdict.payload["categories"]
    assert isinstance(categories, Mapping) and 0.0 <= float(categories.get("policy", 0.0)) <= 1.0


@pytest.mark.parametrize("kind", ["missing", "not a model"])
async def test_a_bad_judge_model_path_fails_the_start_with_a_typed_error(
    tmp_path: Path, kind: str
) -> None:
    model = write_tiny_model(tmp_path)
    bad = tmp_path / "judge.gguf"
    if kind == "not a model":
        bad.write_bytes(b"GGUF but not really")
    with pytest.raises(ModelError, match=r"judge\.gguf"):
        async with running_server(model, judge_config(str(bad))):
            raise AssertionError("the server started with a bad judge_model")
