"""NPC lines through the moderation plugin, both loaded in a real server (tiny random model):
a blocked player line gets the card's in-character refusal, never the verdict; a reply that
fails output moderation is cut and replaced, in the stream and in the transcript."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from server_harness import encode, fast_config, raw_client, recv_frame, running_server
from tiny import TinyConfig, random_hf_tensors, write_gguf
from websockets.asyncio.client import ClientConnection

from protocol import Delta, Done, ErrorFrame, PluginFrame, Role, ServerFrame

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

GUARD = """
name = "Bo"
role = "a guard"
persona = "Terse."
[emotions]
calm = 0.2
[safety]
refusal = "Bo spits on the ground and turns away."
"""
# Its replies go to a channel whose policy blocks any text: every spoken reply fails.
HERALD = """
name = "Hal"
role = "a herald"
persona = "Loud."
[emotions]
calm = 0.2
[safety]
input = false
channel = "npc_strict"
replacement = "Hal clears his throat and says nothing."
"""


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = TinyConfig(max_position=4096)
    folder = tmp_path_factory.mktemp("model")
    return write_gguf(folder / "tiny.gguf", config, random_hf_tensors(config))


def config(cards: Path) -> Any:
    return fast_config(
        plugins={
            "enabled": ["chat", "npc", "moderation"],
            "settings": {"npc": {"cards": str(cards)}},
        },
        engine={"kv_cache_mib": 64},
    )


async def ask(ws: ClientConnection, frame: dict[str, object]) -> list[ServerFrame]:
    """The frames answering FRAME, up to its final one."""
    await ws.send(encode(frame))
    frames: list[ServerFrame] = []
    while True:
        got = await recv_frame(ws, timeout_s=60)
        if getattr(got, "request_id", None) != frame["id"]:
            continue
        frames.append(got)
        if isinstance(got, Done | ErrorFrame) or (
            isinstance(got, PluginFrame)
            and got.type not in ("npc.emotion", "npc.action", "npc.session")
        ):
            return frames


async def test_a_blocked_player_line_gets_the_cards_refusal(tmp_path: Path, model: Path) -> None:
    (tmp_path / "guard.toml").write_text(GUARD)
    async with running_server(model, config(tmp_path)) as server, raw_client(server) as ws:
        base = {"type": "npc.say", "npc": "guard", "player": "ann", "max_tokens": 4}
        frames = await ask(ws, base | {"id": "bad", "text": "k.y.s you noob"})
        last = frames[-1]
        assert isinstance(last, PluginFrame) and last.type == "npc.refused", frames
        assert dict(last.payload) == {
            "session_id": "npc:guard:ann",
            "text": "Bo spits on the ground and turns away.",
        }
        assert not any(isinstance(f, Delta) for f in frames)  # nothing of a reply, no verdict
        frames = await ask(ws, base | {"id": "ok", "text": "Good morning, guard."})
        assert isinstance(frames[-1], Done), frames
        lines = [m.content for m in server.sessions.get("default", "npc:guard:ann").messages]
        assert "k.y.s you noob" not in lines and "Good morning, guard." in lines


async def test_a_reply_that_fails_output_moderation_is_cut_and_replaced(
    tmp_path: Path, model: Path
) -> None:
    (tmp_path / "herald.toml").write_text(HERALD)
    async with running_server(model, config(tmp_path)) as server, raw_client(server) as ws:
        policy = {"blocked_terms": ["re:[^ ]"]}
        await ws.send(encode({"type": "mod.config", "id": "cfg", "channel": "npc_strict",
                              "op": "set", "policy": policy}))  # fmt: skip
        while not isinstance(got := await recv_frame(ws, timeout_s=30), PluginFrame):
            assert not isinstance(got, ErrorFrame), got
        replaced = 0
        for seed in range(6):  # the random model sometimes speaks no words, only events
            say = {"type": "npc.say", "id": f"s{seed}", "npc": "herald", "player": "bo"}
            frames = await ask(ws, say | {"text": f"News {seed}?", "max_tokens": 24, "seed": seed})
            last = frames[-1]
            spoke = any(isinstance(f, Delta) and f.text.strip() for f in frames)
            if isinstance(last, Done):
                assert not spoke, frames  # a spoken reply never gets past the policy
                continue
            assert isinstance(last, PluginFrame) and last.type == "npc.replaced", frames
            assert dict(last.payload) == {
                "turn_id": f"s{seed}",
                "text": "Hal clears his throat and says nothing.",
            }
            messages = server.sessions.get("default", "npc:herald:bo").messages
            assert (messages[-2].content, messages[-1].role) == (f"News {seed}?", Role.ASSISTANT)
            assert messages[-1].content == "Hal clears his throat and says nothing."
            replaced += 1
        assert replaced > 0
