"""What the plugin keeps in its store, and under which keys. Pure data: no store calls."""

from __future__ import annotations

import json
from dataclasses import dataclass

from .markup import Emotion, Event
from .memory import Memory

WORLD_KEY = "world"


def session_key(session_id: str) -> str:
    return f"session/{session_id}"


def memory_key(card_id: str, player: str) -> str:
    return f"memory/{card_id}/{player}"


def default_session_id(card_id: str, player: str) -> str:
    """The one session of a (player, npc) pair: reopening after a reconnect finds it."""
    return f"npc:{card_id}:{player}"


@dataclass(frozen=True, kw_only=True)
class SessionRecord:
    """An open NPC session: who talks, the memory its prompt was built with (fixed for the
    session so its system prompt, hence its KV, stays the same), and what memory needs."""

    session_id: str
    card_id: str
    player: str
    memory: Memory | None = None
    player_lines: tuple[str, ...] = ()
    emotions: tuple[tuple[str, float], ...] = ()  # (name, intensity) the player saw

    def after_turn(self, line: str, events: tuple[Event, ...]) -> SessionRecord:
        shown = tuple((e.name, e.intensity) for e in events if isinstance(e, Emotion))
        return SessionRecord(
            session_id=self.session_id,
            card_id=self.card_id,
            player=self.player,
            memory=self.memory,
            player_lines=(*self.player_lines, line),
            emotions=(*self.emotions, *shown),
        )

    def shown(self) -> tuple[Emotion, ...]:
        return tuple(Emotion(name=n, intensity=i, offset=0) for n, i in self.emotions)

    def to_json(self) -> str:
        return json.dumps(
            {
                "session_id": self.session_id,
                "card_id": self.card_id,
                "player": self.player,
                "memory": None if self.memory is None else self.memory.to_json(),
                "player_lines": list(self.player_lines),
                "emotions": [list(e) for e in self.emotions],
            }
        )

    @classmethod
    def from_json(cls, text: str) -> SessionRecord:
        data = json.loads(text)
        memory = data["memory"]
        return cls(
            session_id=data["session_id"],
            card_id=data["card_id"],
            player=data["player"],
            memory=None if memory is None else Memory.from_json(memory),
            player_lines=tuple(data["player_lines"]),
            emotions=tuple((str(n), float(i)) for n, i in data["emotions"]),
        )
