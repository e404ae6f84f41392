"""Verdicts, reasons and actions: the plain data the cascade hands the wire. Pure: stdlib only."""

from __future__ import annotations

import enum
import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType


class Action(enum.StrEnum):
    """What the bot should do with a message, mildest first (`max` picks the harshest)."""

    ALLOW = "allow"
    HOLD = "hold"  # kept from chat until a moderator approves it (mod.review) or it expires
    DELETE = "delete"
    TIMEOUT = "timeout"  # delete, and mute the user for duration_s
    BAN = "ban"

    @property
    def severity(self) -> int:
        return _SEVERITY[self]


_SEVERITY = {action: rank for rank, action in enumerate(Action)}
MIN_WIRE_SCORE = 0.05


class Source(enum.StrEnum):
    RULE = "rule"  # a channel's blocked term or regex, slow mode, unique chat, escalation
    FILTER = "filter"  # a spam filter, flood or duplicate window
    CLASSIFIER = "classifier"  # the profanity model and the game-chat lexicon
    JUDGE = "judge"  # the LLM judge on the channel's plain-words policy


@dataclass(frozen=True, kw_only=True)
class Reason:
    source: Source
    name: str  # the rule, filter or category
    detail: str  # for humans: what matched, which score, which model

    def to_wire(self) -> dict[str, str]:
        return {"source": self.source.value, "name": self.name, "detail": self.detail}


def _no_scores() -> Mapping[str, float]:
    return MappingProxyType({})


@dataclass(frozen=True, kw_only=True)
class Finding:
    """One layer's opinion of one message; the cascade folds findings into a Verdict."""

    action: Action
    reason: Reason
    score: float = 1.0  # how sure the layer is that the message breaks the rule
    duration_s: int = 0  # for timeouts and bans (0: permanent ban)
    silent: bool = False  # act, but do not tell subscribers or the audit log the user's name


@dataclass(frozen=True, kw_only=True)
class Verdict:
    action: Action
    score: float  # overall risk in [0, 1]
    categories: Mapping[str, float] = field(default_factory=_no_scores)
    reasons: tuple[Reason, ...] = ()
    duration_s: int = 0
    silent: bool = False

    def to_wire(self) -> dict[str, object]:
        """The verdict's wire fields (a new dict; its values are shared, never mutate them)."""
        return dict(self._wire)

    @functools.cached_property
    def _wire(self) -> dict[str, object]:
        # Built once: an allowed line that chat repeats shares one Verdict (the cascade's memo).
        return {
            "action": self.action.value,
            "score": round(self.score, 4),
            # Scores under MIN_WIRE_SCORE are noise (every text has some profanity probability):
            # left out, they keep an allowed message's verdict small.
            "categories": {
                name: round(value, 3)
                for name, value in self.categories.items()
                if value >= MIN_WIRE_SCORE
            },
            "reasons": [reason.to_wire() for reason in self.reasons],
            "duration_s": self.duration_s,
        }
