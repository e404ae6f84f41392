"""The Python client's plugin helpers (mod.*, npc.*) and the README's client examples, run as
they are written, against a real server with the npc and moderation plugins."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

import pytest
from server_harness import fast_config, running_server, url_of
from tiny import TinyConfig, random_hf_tensors, write_gguf

from protocol import PluginFrame
from server.app import BanterboxServer
from server.client import BanterboxClient, BanterboxError, Verdict, mod_user
from server.config import ServerConfig

ROOT = Path(__file__).resolve().parents[2]
README_URL = "ws://127.0.0.1:8765"


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = TinyConfig(max_position=4096)  # a sample card's prompt fits (the tokens are bytes)
    return write_gguf(tmp_path_factory.mktemp("model") / "tiny.gguf", config,
                      random_hf_tensors(config))  # fmt: skip


def plugin_config() -> ServerConfig:
    return fast_config(
        plugins={"enabled": ["chat", "npc", "moderation"], "settings": {"npc": {"max_tokens": 8}}},
        engine={"kv_cache_mib": 64},
    )


async def test_moderation_helpers_hold_review_audit_and_subscribe(model: Path) -> None:
    async with (
        running_server(model, plugin_config()) as server,
        BanterboxClient.connect(url_of(server)) as bot,
        BanterboxClient.connect(url_of(server)) as dashboard,
    ):
        assert await dashboard.mod_subscribe("arena") is True
        policy = (await bot.mod_config("arena", "set", policy={"hold_s": 300}))["policy"]
        assert isinstance(policy, dict) and policy["hold_s"] == 300
        assert (await bot.mod_config("arena"))["policy"] == policy

        held = await bot.mod_check("arena", "m1", mod_user("u1", roles=["viewer"]), "your mom")
        assert isinstance(held, Verdict) and held.action == "hold" and held.message_id == "m1"
        assert "family" in held.categories and held.reasons[0]["source"] == "classifier"
        event = await asyncio.wait_for(dashboard.events.get(), 10)
        assert isinstance(event, PluginFrame) and event.type == "mod.action"
        assert event.payload["kind"] == "verdict" and event.payload["message_id"] == "m1"

        batch = [
            {"message_id": "m2", "user": mod_user("u2"), "text": "gg well played"},
            {"message_id": "m3", "user": mod_user("u3"), "text": "k.y.s noob"},
        ]
        verdicts = await bot.mod_check_batch("arena", batch)
        assert [v.message_id for v in verdicts] == ["m2", "m3"]
        assert verdicts[0].action == "allow" and verdicts[1].action in ("timeout", "ban")

        holds = (await bot.mod_review("arena"))["holds"]
        assert isinstance(holds, list) and [h["message_id"] for h in holds] == ["m1"]
        reviewed = await bot.mod_review("arena", "approve", message_id="m1", moderator="ann")
        assert reviewed["decision"] == "approve" and reviewed["action"] == "allow"
        approvals = await bot.mod_audit("arena", action="approve")
        assert [(e["message_id"], e["moderator"]) for e in approvals] == [("m1", "ann")]

        with pytest.raises(BanterboxError) as refused:
            await bot.mod_check("arena", "m4", {"name": "no id"}, "hello")
        assert refused.value.code == "invalid_field" and "user.id" in str(refused.value)


async def test_npc_helpers_typing_interrupt_and_memory(model: Path) -> None:
    async with (
        running_server(model, plugin_config()) as server,
        BanterboxClient.connect(url_of(server)) as game,
    ):
        typed = await game.npc_typing("blacksmith", "ann", "Can you fix")
        assert typed["session_id"] == "npc:blacksmith:ann" and typed["prefilled"] is True
        async for _ in game.npc_say("blacksmith", "ann", "Can you fix my sword?"):
            pass
        await game.call_plugin("npc.close", {"npc": "blacksmith", "player": "ann"})
        assert await game.npc_memory("blacksmith", "ann") is not None
        assert await game.npc_memory("blacksmith", "ann", "forget") is None
        assert await game.npc_memory("blacksmith", "ann") is None
        with pytest.raises(BanterboxError) as unknown:
            await game.npc_interrupt("no-such-turn", 3)
        assert unknown.value.code == "unknown_request"


def readme_examples() -> list[str]:
    """The README's Python blocks that talk to a server."""
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    return [block for block in blocks if README_URL in block]


async def run_example(code: str, server: BanterboxServer) -> str:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code.replace(README_URL, url_of(server)), cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, err.decode()
    return out.decode()


async def test_the_readme_client_examples_run_as_written(model: Path) -> None:
    examples = readme_examples()
    assert len(examples) >= 2  # the NPC turn and the moderation bot
    async with running_server(model, plugin_config()) as server:
        outputs = [await run_example(code, server) for code in examples]
    bot = next(out for code, out in zip(examples, outputs, strict=True) if "mod_check" in code)
    assert re.search(r"^m2 (timeout|ban) ", bot, flags=re.MULTILINE), bot
    assert not re.search(r"^m1 ", bot, flags=re.MULTILINE), bot  # "gg that was insane" is fine
