"""Prompts from cards (a shared byte-identical card prefix, lore only when its keyword was said)
and the memory a session leaves."""

from __future__ import annotations

from pathlib import Path

import pytest

from plugins.npc.cards import load_cards
from plugins.npc.markup import Emotion
from plugins.npc.memory import Memory, remember, touches_refused
from plugins.npc.prompt import (
    NARRATOR,
    Line,
    build_messages,
    card_prompt,
    session_note,
    system_prompt,
)
from protocol import Role

CARDS = load_cards(Path(__file__).parents[3] / "plugins" / "npc" / "cards")
BROM = CARDS["blacksmith"]
DRAGON_LORE = "The dragon Skarn burned"


def test_every_player_shares_the_cards_exact_bytes_first() -> None:
    prefix = card_prompt(BROM)
    old_friend = Memory(facts=("I am a miner.",), trust=0.5, affinity=0.3, num_sessions=2)
    systems = [system_prompt(BROM, p, m) for p, m in (("ann", None), ("bob", old_friend))]
    assert all(s.startswith(prefix) for s in systems)
    assert "I am a miner." in systems[1] and "I am a miner." not in prefix
    assert "not met before" in systems[0]


def test_lore_only_when_a_keyword_was_said_lately() -> None:
    def prompt(history: list[Line], text: str) -> str:
        line = Line(speaker="ann", text=text)
        system = system_prompt(BROM, "ann", None)
        messages = build_messages(BROM, system=system, player="ann", history=history, line=line)
        return "\n".join(m.content for m in messages)

    assert DRAGON_LORE not in prompt([], "Nice anvil.")
    assert DRAGON_LORE not in prompt([], "Dragonflies everywhere.")  # whole words only
    assert DRAGON_LORE in prompt([], "Have you seen the DRAGON?")
    talk = [Line(speaker="ann", text="A wyrm!"), Line(speaker="blacksmith", text="Aye.")]
    assert DRAGON_LORE in prompt(talk, "So?")
    filler = [Line(speaker="ann", text=f"line {i}") for i in range(4)]
    assert DRAGON_LORE not in prompt(talk + filler, "So?")  # out of the recent window


def test_history_roles_and_the_per_turn_note() -> None:
    history = [
        Line(speaker="ann", text="Hello"),
        Line(speaker="blacksmith", text="Aye. [emotion:proud:0.5]"),
        Line(speaker=NARRATOR, text="A horse neighs."),
        Line(speaker="rival", text="Ha! [emotion:smug:0.6] Slow."),
    ]
    messages = build_messages(
        BROM,
        system="card",
        player="ann",
        history=history,
        line=Line(speaker="ann", text="ore?"),
        world={"time": "night"},
    )
    assert [m.role for m in messages] == [
        Role.SYSTEM,
        Role.USER,
        Role.ASSISTANT,
        Role.SYSTEM,
        Role.USER,
        Role.SYSTEM,
        Role.USER,
    ]
    assert messages[2].content == "Aye. [emotion:proud:0.5]"
    assert messages[4].content == "rival: Ha! Slow."  # another speaker's events are not copied
    note = messages[5].content
    assert "time = night" in note and "Star-iron ore lies" in note
    assert messages[6].content == "ore?"


def test_a_session_note_says_each_lore_entry_and_world_state_once() -> None:
    world = {"time": "night"}
    first = session_note(BROM, ["a dragon!"], world, already="")
    assert "time = night" in first and DRAGON_LORE in first
    assert session_note(BROM, ["the dragon again"], world, already=first) == ""
    later = session_note(BROM, ["dragon"], {"time": "dawn"}, already=first)
    assert later == "The world now: time = dawn"


def test_memory_after_a_session() -> None:
    lines = ["Hello there", "I am Ann, a miner from the north", "Tell me about magic"]
    shown = [
        Emotion(name="proud", intensity=1.0, offset=0),
        Emotion(name="angry", intensity=0.5, offset=3),
    ]
    first = remember(None, BROM, lines, shown)
    assert first.facts == ("I am Ann, a miner from the north",)
    assert first.num_sessions == 1
    assert first.affinity == pytest.approx(0.1 * (0.3 - 0.4))
    assert first.trust == pytest.approx(0.0)  # 3 lines x 0.02 - one refused topic x 0.1, floored
    second = remember(first, BROM, ["My horse is lame", "I am Ann, a miner from the north"], [])
    assert second.facts == ("I am Ann, a miner from the north", "My horse is lame")
    assert second.num_sessions == 2 and second.trust == pytest.approx(0.04)
    assert Memory.from_json(second.to_json()) == second
    assert touches_refused(BROM, "any MAGIC here?") and not touches_refused(BROM, "the king")


def test_memory_edits_are_checked_field_by_field() -> None:
    base = Memory(facts=("a",), trust=0.5)
    edited = Memory.from_mapping({"notes": "owes 5 silver", "affinity": -0.5}, base=base)
    assert edited == Memory(facts=("a",), trust=0.5, affinity=-0.5, notes="owes 5 silver")
    for bad, message in (
        ({"trust": 2}, "trust: must be a number in"),
        ({"facts": "x"}, "facts: must be a list"),
        ({"mood": 1}, "mood: unknown field"),
    ):
        with pytest.raises(ValueError, match=message):
            Memory.from_mapping(bad)
