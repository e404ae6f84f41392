"""Category scores of a folded message from the game-chat lexicon and the profanity model. Pure.

Each category's score is the noisy-or of its matched phrases' weights (two weak hits add up,
one strong hit decides), a targeted phrase counting in full only when the message aims at
someone. The profanity model's probability joins the "profanity" category the same way: a
swear aimed at someone is an insult, a swear of joy ("holy shit, that clutch") is chat.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .folding import Folded, fold_word
from .lexicon import ENTRIES, TARGETS, UNTARGETED_FACTOR, Entry
from .terms import Term, TermSet


@dataclass(frozen=True, kw_only=True)
class CategoryScores:
    scores: Mapping[str, float]  # only the categories with a score above 0
    matched: tuple[Entry, ...]  # lexicon phrases found
    targeted: bool


class Lexicon:
    def __init__(self, entries: Sequence[Entry] = ENTRIES) -> None:
        self._entries = tuple(entries)
        self._terms = TermSet([Term.parse(entry.phrase) for entry in self._entries])
        self._targets = frozenset(fold_word(word) for word in TARGETS)

    def is_targeted(self, folded: Folded) -> bool:
        return "@" in folded.lowered or any(word in self._targets for word in folded.words)

    def score(self, folded: Folded, *, profanity: float = 0.0) -> CategoryScores:
        targeted = self.is_targeted(folded)
        factor = 1.0 if targeted else UNTARGETED_FACTOR
        misses: dict[str, float] = {}  # category -> product of (1 - weight)
        matched = tuple(self._entries[i] for i in self._terms.matches(folded))
        for entry in matched:
            weight = entry.weight * (factor if entry.targeted else 1.0)
            misses[entry.category] = misses.get(entry.category, 1.0) * (1.0 - weight)
        if profanity > 0:
            misses["profanity"] = misses.get("profanity", 1.0) * (1.0 - profanity * factor)
        scores = {name: 1.0 - miss for name, miss in misses.items() if miss < 1.0}
        return CategoryScores(scores=scores, matched=matched, targeted=targeted)
