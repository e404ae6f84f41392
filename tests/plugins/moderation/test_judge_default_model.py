"""The LLM judge on the default model: a message that breaks a plain-words policy ranks above
one that keeps it (P(" yes") from ctx.score on the channel's cached policy prefix)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest
from server_harness import encode, fast_config, raw_client, recv_frame, running_server

from protocol import PluginFrame

pytestmark = pytest.mark.slow

POLICY = (
    "No spoilers: never reveal the story, the ending, who dies, or the final boss of the game "
    "the streamer is playing for the first time."
)
BREAKS = "SPOILER: the final boss is her father and he dies at the ending"
KEEPS = "love the music in this zone, great stream today"


async def policy_score(ws: object, text: str, rid: str) -> float:
    await ws.send(  # type: ignore[attr-defined]
        encode(
            {
                "type": "mod.check",
                "id": rid,
                "channel": "game",
                "message_id": rid,
                "user": {"id": rid},
                "text": text,
            }
        )
    )
    frame = await recv_frame(ws, timeout_s=120)  # type: ignore[arg-type]
    assert isinstance(frame, PluginFrame) and frame.type == "mod.verdict", frame
    categories = frame.payload["categories"]
    assert isinstance(categories, Mapping)
    reasons = frame.payload["reasons"]
    assert isinstance(reasons, list)
    assert any(r["source"] == "judge" and "the server's model" in r["detail"] for r in reasons), (
        reasons
    )
    return float(categories["policy"])


async def test_judge_ranks_a_spoiler_above_chat(default_model: Path) -> None:
    config = fast_config(
        # A loaded CI machine runs the 135M model slowly: the judge may take its time here.
        plugins={"enabled": ["moderation"], "settings": {"moderation": {"judge_timeout_s": 120}}},
        engine={"kv_cache_mib": 64, "threads": 2},
    )
    async with running_server(default_model, config) as server, raw_client(server) as ws:
        policy = {"judge": {"policy": POLICY, "mode": "all", "threshold": 0.99}}
        await ws.send(encode({"type": "mod.config", "id": "p", "channel": "game", "op": "set",
                              "policy": policy}))  # fmt: skip
        assert (await recv_frame(ws)).type == "mod.policy"  # type: ignore[union-attr]
        breaks = await policy_score(ws, BREAKS, "a")
        keeps = await policy_score(ws, KEEPS, "b")
        assert breaks > keeps, (breaks, keeps)
