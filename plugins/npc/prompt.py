"""Cards, memories and transcripts made into prompts. Pure: never calls the model.

Builds text only.

Order matters for the KV cache: the card's own text comes first and is the same bytes for
every player (so every player talking to one NPC shares its cached blocks); what differs per
player (memory) follows it in the same system message; the history follows, unchanged from
turn to turn; what changes every turn (world state, lore triggered by recent words) sits in a
note right before the new line, so it never invalidates the history's cached blocks.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from protocol import ChatMessage, Role

from .cards import Card, LoreEntry, ParamKind
from .memory import Memory


@dataclass(frozen=True, kw_only=True)
class Line:
    """One line of a conversation as the next prompt needs it."""

    speaker: str  # a player id, a card id, or NARRATOR
    text: str  # what was said; an NPC's line in markup form (speech and event spans)


NARRATOR = "narrator"  # the speaker of game events (npc.event)


def card_prompt(card: Card) -> str:
    """The card's shared part: the same bytes for every player and session."""
    parts = [
        f"You are {card.name}, {card.role}, a character in a game. Stay in character and never "
        "say you are an AI.",
        f"Persona: {card.persona}",
    ]
    if card.backstory:
        parts.append(f"Backstory: {card.backstory}")
    if card.style:
        parts.append(f"Speaking style: {card.style}")
    parts += _bullets("Your goals:", card.goals)
    parts += _bullets("Facts you know:", card.facts)
    if card.refuses:
        parts.append(
            "You refuse to talk about: " + "; ".join(card.refuses) + ". If asked, deflect in "
            "character."
        )
    parts.append(_markup_help(card))
    parts += _bullets("Example lines:", card.examples)
    if card.greeting:
        parts.append(f"Your greeting: {card.greeting}")
    return "\n".join(parts) + "\n"


def _bullets(title: str, items: Sequence[str]) -> list[str]:
    return [title, *(f"- {item}" for item in items)] if items else []


def _markup_help(card: Card) -> str:
    lines = [f"Reply with one short spoken line as {card.name}."]
    if card.emotions:
        names = ", ".join(name for name, _ in card.emotions)
        lines.append(
            "Show a feeling where it happens with [emotion:NAME:INTENSITY], INTENSITY from 0.0 "
            f"to 1.0; NAME is one of: {names}."
        )
    if card.actions:
        lines.append("Act where it happens with one of:")
        for action in card.actions:
            args = ", ".join(f"{p.name}={_param_hint(p.kind, p.choices)}" for p in action.params)
            about = f" ({action.description})" if action.description else ""
            lines.append(f"- [action:{action.name}({args})]{about}")
    return "\n".join(lines)


def _param_hint(kind: ParamKind, choices: Sequence[str]) -> str:
    return "|".join(choices) if kind is ParamKind.CHOICE else kind.value.upper()


def player_prompt(player: str, memory: Memory | None) -> str:
    """The per-player part after the card: what this NPC remembers of PLAYER."""
    if memory is None or (memory.num_sessions == 0 and not (memory.facts or memory.notes)):
        return f"\nYou are talking with {player}, whom you have not met before.\n"
    lines = [
        f"\nYou are talking with {player}. You have talked {memory.num_sessions} time(s) before.",
        f"Your trust in them: {memory.trust:.2f} (0 to 1). Your warmth to them: "
        f"{memory.affinity:.2f} (-1 to 1).",
    ]
    lines += _bullets("What they told you before:", memory.facts)
    if memory.notes:
        lines.append(f"Notes: {memory.notes}")
    return "\n".join(lines) + "\n"


def system_prompt(card: Card, player: str, memory: Memory | None) -> str:
    """A session's system prompt: the shared card part, then this player's part."""
    return card_prompt(card) + player_prompt(player, memory)


def scene_prompt(card: Card, others: Sequence[str]) -> str:
    """A scene's system prompt for CARD: the shared card part, then who else is there."""
    return card_prompt(card) + f"\nYou are in a scene with: {', '.join(others)}.\n"


def session_note(
    card: Card,
    recent: Sequence[str],
    world: Mapping[str, str],
    *,
    already: str,
    max_lore: int = 3,
) -> str:
    """The note a session's next turn records before its line: lore that RECENT words trigger
    and the world state, each left out when ALREADY (the transcript so far) holds it, so a
    session's history stays a stable prefix and says each thing once."""
    lore = [e for e in select_lore(card, recent, max_entries=max_lore) if e.text not in already]
    world_line = _world_line(world)
    parts = [world_line] if world_line and world_line not in already else []
    parts += _bullets("You recall:", [entry.text for entry in lore])
    return "\n".join(parts)


def _world_line(world: Mapping[str, str]) -> str:
    if not world:
        return ""
    return "The world now: " + "; ".join(f"{k} = {v}" for k, v in sorted(world.items()))


def select_lore(
    card: Card, recent: Sequence[str], *, max_entries: int = 3
) -> tuple[LoreEntry, ...]:
    """The card's lore entries one of whose keywords occurs (as a word) in RECENT texts."""
    text = "\n".join(recent).lower()
    found = [
        entry
        for entry in card.lore
        if any(re.search(rf"\b{re.escape(k)}\b", text) for k in entry.keywords)
    ]
    return tuple(found[:max_entries])


def context_note(lore: Sequence[LoreEntry], world: Mapping[str, str]) -> str:
    """The per-turn note before the new line: world state and triggered lore ("" if neither)."""
    world_line = _world_line(world)
    parts = [world_line] if world_line else []
    parts += _bullets("You recall:", [entry.text for entry in lore])
    return "\n".join(parts)


def build_messages(
    card: Card,
    *,
    system: str,
    player: str,
    history: Sequence[Line],
    line: Line | None,
    world: Mapping[str, str] | None = None,
    lore_window: int = 4,
    max_lore: int = 3,
) -> tuple[ChatMessage, ...]:
    """The whole prompt of CARD's next turn without a server session (a scene): SYSTEM, then
    HISTORY, a note of world and lore, and the new LINE (None: the NPC speaks unprompted).
    Lines of PLAYER go in plain; other speakers' are prefixed with their name ("" for none).
    LORE_WINDOW is how many recent lines trigger lore."""
    messages = [ChatMessage(role=Role.SYSTEM, content=system)]
    messages += [_message(card, player, past) for past in history]
    recent = [past.text for past in history[-lore_window:]]
    if line is not None:
        recent.append(line.text)
    note = context_note(select_lore(card, recent, max_entries=max_lore), world or {})
    if note:
        messages.append(ChatMessage(role=Role.SYSTEM, content=note))
    if line is not None:
        messages.append(_message(card, player, line))
    return tuple(messages)


def _message(card: Card, player: str, line: Line) -> ChatMessage:
    if line.speaker == card.card_id:
        return ChatMessage(role=Role.ASSISTANT, content=line.text)
    if line.speaker == NARRATOR:
        return ChatMessage(role=Role.SYSTEM, content=f"(In the game: {line.text})")
    if line.speaker == player:
        return ChatMessage(role=Role.USER, content=line.text)
    # Another speaker of a scene: its words only; its events are not this NPC's to copy.
    return ChatMessage(role=Role.USER, content=f"{line.speaker}: {strip_markup(line.text)}")


def strip_markup(text: str) -> str:
    return re.sub(r" ?\[[^\]]*\]", "", text).strip()
