"""The npc plugin on the default model over a real server: 100+ seeded sampled turns across
the three sample cards give only the card's events and speech without markup; lore reaches a
session only when its keyword was said; memory crosses to the next session."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from server_harness import encode, fast_config, raw_client, recv_frame, running_server
from websockets.asyncio.client import ClientConnection

from plugins.npc.cards import Card, ParamKind
from plugins.npc.library import SAMPLE_CARDS, load_folder
from plugins.npc.markup import ArgValue
from protocol import Delta, Done, ErrorFrame, PluginFrame, ServerFrame

pytestmark = pytest.mark.slow

CARDS = load_folder(SAMPLE_CARDS)
LINES = (
    "Hello! What do you have for me today?",
    "Have you heard about the dragon?",
    "I am Ann, a miner from the north. Can you help me?",
    "Why does the well run dry?",
    "Show me how you feel about that.",
    "Is there a bounty I could claim?",
)
NUM_PLAYERS = 34  # x 3 cards: 102 turns
MAX_TOKENS = 12
NUM_CONNECTIONS = 4
MAX_IN_FLIGHT = 12


def _valid_args(card: Card, name: str, args: dict[str, ArgValue]) -> bool:
    action = card.action(name)
    if action is None or list(args) != [p.name for p in action.params]:
        return False
    for param in action.params:
        value = args[param.name]
        if param.kind is ParamKind.CHOICE and value not in param.choices:
            return False
        if param.kind is ParamKind.INT and (isinstance(value, bool) or not isinstance(value, int)):
            return False
        if param.kind is ParamKind.STR and not isinstance(value, str):
            return False
    return True


async def _run_turns(
    ws: ClientConnection, turns: list[dict[str, Any]]
) -> dict[str, list[ServerFrame]]:
    """Every turn, at most MAX_IN_FLIGHT at once (the connection's request limit is 16)."""
    frames: dict[str, list[ServerFrame]] = {t["id"]: [] for t in turns}
    waiting = list(turns)
    pending: set[str] = set()
    while waiting or pending:
        while waiting and len(pending) < MAX_IN_FLIGHT:
            turn = waiting.pop(0)
            pending.add(turn["id"])
            await ws.send(encode(turn))
        frame = await recv_frame(ws, timeout_s=300)
        request_id = getattr(frame, "request_id", None)
        if request_id in frames:
            frames[request_id].append(frame)
            if isinstance(frame, Done | ErrorFrame):
                pending.discard(request_id)
    return frames


async def test_sampled_turns_give_only_valid_events(default_model: Path) -> None:
    config = fast_config(
        plugins={"enabled": ["chat", "npc"], "settings": {"npc": {"temperature": 1.0}}},
        engine={"kv_cache_mib": 512, "threads": 2, "max_num_seqs": 64},
    )
    turns_by_ws: list[list[dict[str, Any]]] = [[] for _ in range(NUM_CONNECTIONS)]
    index = 0
    for player in range(NUM_PLAYERS):
        for card_id in sorted(CARDS):
            turns_by_ws[index % NUM_CONNECTIONS].append({
                "type": "npc.say", "id": f"t{index}", "npc": card_id, "player": f"p{player}",
                "text": LINES[index % len(LINES)], "max_tokens": MAX_TOKENS, "seed": index,
            })  # fmt: skip
            index += 1
    async with running_server(default_model, config) as server:
        async with (
            raw_client(server) as a,
            raw_client(server) as b,
            raw_client(server) as c,
            raw_client(server) as d,
        ):
            results = await asyncio.gather(
                *(
                    _run_turns(ws, turns)
                    for ws, turns in zip((a, b, c, d), turns_by_ws, strict=True)
                )
            )
        counts = {"turns": 0, "emotion": 0, "action": 0, "cached": 0}
        for turns, frames_of in zip(turns_by_ws, results, strict=True):
            for turn in turns:
                frames = frames_of[turn["id"]]
                card = CARDS[turn["npc"]]
                assert isinstance(frames[-1], Done), frames[-1]
                counts["turns"] += 1
                counts["cached"] += frames[-1].usage.num_cached_tokens
                speech = "".join(f.text for f in frames if isinstance(f, Delta))
                assert not {"[", "]"} & set(speech), speech
                for frame in frames:
                    if not isinstance(frame, PluginFrame) or frame.type == "npc.session":
                        continue
                    if frame.type == "npc.emotion":
                        assert frame.payload["emotion"] in dict(card.emotions)
                        assert 0.0 <= frame.payload["intensity"] <= 1.0  # type: ignore[operator]
                    else:
                        assert frame.type == "npc.action"
                        args = frame.payload["args"]
                        assert isinstance(args, dict)
                        assert _valid_args(card, str(frame.payload["name"]), args), frame
                    counts[frame.type.removeprefix("npc.")] += 1
                transcript = server.sessions.get("default", f"npc:{card.card_id}:{turn['player']}")
                notes = [m.content for m in transcript.messages if m.role.value == "system"]
                for entry in card.lore:
                    said = any(k in turn["text"].lower() for k in entry.keywords)
                    assert said == any(entry.text in note for note in notes), (turn, entry)
        print("npc default-model turns:", counts)
        assert counts["turns"] >= 100
        # Every player's prompt starts with the card's shared blocks.
        assert counts["cached"] > 0
