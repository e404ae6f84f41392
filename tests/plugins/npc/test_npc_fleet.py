"""An NPC session on a fleet: two `banterbox serve` replicas (real processes) sharing one real
redis-server. A conversation started on one replica continues on the other with its whole
transcript, and back again, because the plugin's session access goes through the store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from redis_server import redis_server
from tiny import TinyConfig, random_hf_tensors, write_gguf

from bench.procs import RedisServer, ServerProcess
from protocol import Done, PluginFrame
from server.client import BanterboxClient
from server.store.redis_store import RedisStore

__all__ = ["redis_server"]

CARD = """
name = "Bo"
role = "a guard"
persona = "Terse."
[emotions]
calm = 0.2
"""
SESSION = "npc:guard:p1"


@pytest.fixture
def replicas(tmp_path: Path, redis_server: RedisServer) -> Iterator[tuple[str, str, str]]:
    config = TinyConfig(max_position=4096)  # the tiny model reads bytes: room for the card
    model = write_gguf(tmp_path / "tiny.gguf", config, random_hf_tensors(config))
    (tmp_path / "cards").mkdir()
    (tmp_path / "cards" / "guard.toml").write_text(CARD)
    (tmp_path / "banterbox.toml").write_text(
        '[plugins]\nenabled = ["chat", "npc"]\n'
        f'[plugins.settings.npc]\ncards = "{tmp_path / "cards"}"\n'
    )
    url = redis_server.url.replace("/0", "/5")  # this test's own database
    args = ("--config", str(tmp_path / "banterbox.toml"), "--threads", "1",
            "--kv-cache-mib", "32")  # fmt: skip
    one = ServerProcess(model, store_url=url, args=args).start()
    two = ServerProcess(model, store_url=url, args=args).start()
    try:
        yield one.url, two.url, url
    finally:
        one.stop()
        two.stop()


async def say(url: str, text: str) -> Done:
    async with BanterboxClient.connect(url) as client:
        frames = [f async for f in client.npc_say("guard", "p1", text, max_tokens=6, seed=1)]
    assert isinstance(frames[-1], Done), frames[-1]
    return frames[-1]


async def narrate(url: str, text: str, **who: str) -> None:
    async with BanterboxClient.connect(url) as client:
        stream = client.send_plugin(
            "npc.event", {**who, "text": text}, end_types=frozenset({"npc.noted"})
        )
        frames = [f async for f in stream]
    assert isinstance(frames[-1], PluginFrame) and frames[-1].type == "npc.noted", frames


async def test_an_npc_session_continues_on_the_other_replica_with_its_transcript(
    replicas: tuple[str, str, str],
) -> None:
    one, two, store_url = replicas
    first = await say(one, "I need a blade.")
    await narrate(one, "The bell rings.", npc="guard", player="p1")
    second = await say(two, "Is it sharp?")  # replica two has never seen this session
    # Its prompt held the first turn and the narration (a fresh session's would not).
    assert second.usage is not None and first.usage is not None
    grown = second.usage.num_prompt_tokens - first.usage.num_prompt_tokens
    assert grown > len("I need a blade.The bell rings.")
    await narrate(two, "A cart passes.", session_id=SESSION)  # by id, on replica two
    await say(one, "Thanks.")  # replica one's copy is two changes behind: it reloads
    store = RedisStore(store_url)
    record = await store.load_session("default", SESSION)
    await store.close()
    assert record is not None
    lines = [content for role, content in record.messages if role == "user"]
    assert lines == ["I need a blade.", "Is it sharp?", "Thanks."]
    narration = [content for role, content in record.messages if "In the game" in content]
    assert narration == ["(In the game: The bell rings.)", "(In the game: A cart passes.)"]
    assert record.num_turns == 3
