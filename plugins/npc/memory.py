"""What an NPC remembers of a player between sessions. Pure: never touches the store.

The store holds it as JSON, written by the plugin.

Memory is deliberately plain: facts the player said about themselves (their own words), and
two relationship numbers the game can read and edit. Affinity moves with the emotions the NPC
showed (each one's card valence times its intensity); trust grows with every answered line
and drops when the player pressed on a topic the card refuses.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

from .cards import Card
from .markup import Emotion, Event

# A line in which the player tells something about themselves.
_SELF_TELLING = re.compile(r"\b(i am|i'm|i have|i've|i was|my|call me|i live|i come)\b", re.I)
AFFINITY_STEP = 0.1  # per unit of (valence x intensity) shown
TRUST_STEP = 0.02  # per player line answered
TRUST_REFUSAL_PENALTY = 0.1  # per player line on a refused topic


@dataclass(frozen=True, kw_only=True)
class Memory:
    facts: tuple[str, ...] = ()  # the player's own words about themselves, oldest first
    trust: float = 0.0  # [0, 1]
    affinity: float = 0.0  # [-1, 1]: how warm the NPC is to the player
    num_sessions: int = 0  # sessions that ended with this memory written
    notes: str = ""  # free text set by the game through npc.memory

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Memory:
        return cls.from_mapping(json.loads(text))

    @classmethod
    def from_mapping(cls, data: Mapping[str, object], *, base: Memory | None = None) -> Memory:
        """A memory from a wire or store mapping; fields left out keep BASE's. ValueError names
        the field that is wrong."""
        base = base or cls()
        unknown = set(data) - {"facts", "trust", "affinity", "num_sessions", "notes"}
        if unknown:
            raise ValueError(f"{sorted(unknown)[0]}: unknown field")
        facts = data.get("facts", list(base.facts))
        if not isinstance(facts, list | tuple) or not all(isinstance(f, str) for f in facts):
            raise ValueError("facts: must be a list of strings")
        notes = data.get("notes", base.notes)
        if not isinstance(notes, str):
            raise ValueError("notes: must be a string")
        num_sessions = data.get("num_sessions", base.num_sessions)
        if isinstance(num_sessions, bool) or not isinstance(num_sessions, int) or num_sessions < 0:
            raise ValueError("num_sessions: must be an int >= 0")
        return cls(
            facts=tuple(facts),
            trust=_number(data, "trust", base.trust, 0.0, 1.0),
            affinity=_number(data, "affinity", base.affinity, -1.0, 1.0),
            num_sessions=num_sessions,
            notes=notes,
        )


def _number(data: Mapping[str, object], key: str, default: float, low: float, high: float) -> float:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ValueError(f"{key}: must be a number in [{low}, {high}]")
    return float(value)


def remember(
    previous: Memory | None,
    card: Card,
    player_lines: Sequence[str],
    events: Sequence[Event],
    *,
    max_facts: int = 8,
    max_fact_chars: int = 200,
) -> Memory:
    """The memory after a session in which the player said PLAYER_LINES and the NPC showed
    EVENTS (only what the player heard)."""
    previous = previous or Memory()
    told = [line[:max_fact_chars] for line in player_lines if _SELF_TELLING.search(line)]
    facts = tuple(dict.fromkeys([*previous.facts, *told]))[-max_facts:]
    warmth = sum(card.valence(e.name) * e.intensity for e in events if isinstance(e, Emotion))
    refused = sum(1 for line in player_lines if touches_refused(card, line))
    trust = previous.trust + TRUST_STEP * len(player_lines) - TRUST_REFUSAL_PENALTY * refused
    return Memory(
        facts=facts,
        trust=round(min(1.0, max(0.0, trust)), 4),
        affinity=round(min(1.0, max(-1.0, previous.affinity + AFFINITY_STEP * warmth)), 4),
        num_sessions=previous.num_sessions + 1,
        notes=previous.notes,
    )


def touches_refused(card: Card, line: str) -> bool:
    """Whether LINE names one of the card's refused topics (any of its words of 4+ letters)."""
    words = set(re.findall(r"[a-z']+", line.lower()))
    return any(
        word in words for topic in card.refuses for word in re.findall(r"[a-z']{4,}", topic.lower())
    )
