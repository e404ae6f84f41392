"""The npc plugin's settings table (`[plugins.settings.npc]`), checked once. Pure data."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .library import SAMPLE_CARDS


@dataclass(frozen=True, kw_only=True)
class NpcSettings:
    cards: Path = SAMPLE_CARDS  # the folder of character cards
    max_tokens: int = 64  # a reply's default cap
    temperature: float = 0.7  # unless npc.say says
    lore_window: int = 4  # recent lines whose words trigger lore
    lead_emotion: bool = True  # every reply opens with an emotion
    summarize_at: float = 0.75  # of the context window: summarise older lines past it
    keep_recent: int = 6  # newest transcript messages a summary never covers
    summary_max_tokens: int = 128  # a summary's length cap

    @classmethod
    def from_mapping(cls, settings: Mapping[str, object]) -> NpcSettings:
        """ValueError naming the setting for a value of the wrong type or range."""
        folder = settings.get("cards", str(SAMPLE_CARDS))
        if not isinstance(folder, str):
            raise ValueError(f"npc.cards must be a folder's path, got {folder!r}")
        lead = settings.get("lead_emotion", True)
        if not isinstance(lead, bool):
            raise ValueError(f"npc.lead_emotion must be true or false, got {lead!r}")
        return cls(
            cards=Path(folder),
            max_tokens=_int(settings, "max_tokens", 64),
            temperature=_float(settings, "temperature", 0.7, hi=2.0),
            lore_window=_int(settings, "lore_window", 4),
            lead_emotion=lead,
            summarize_at=_float(settings, "summarize_at", 0.75, hi=1.0),
            keep_recent=_int(settings, "keep_recent", 6),
            summary_max_tokens=_int(settings, "summary_max_tokens", 128),
        )


def _int(settings: Mapping[str, object], name: str, default: int) -> int:
    value = settings.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"npc.{name} must be an int >= 1, got {value!r}")
    return value


def _float(settings: Mapping[str, object], name: str, default: float, *, hi: float) -> float:
    value = settings.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= hi:
        raise ValueError(f"npc.{name} must be a number in [0, {hi:g}], got {value!r}")
    return float(value)
