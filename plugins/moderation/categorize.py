"""Category scores of a folded message from the game-chat lexicon and the profanity model. Pure.

Each category's score is the noisy-or of its matched phrases' weights (two weak hits add up,
one strong hit decides), a targeted phrase counting in full only when it is aimed: a target
word ("you", "ur", "@name") within `TARGET_WINDOW` words of it, and no "I" right before it
("i'm so bad at this" is not an insult). The profanity model's probability joins the
"profanity" category the same way: a swear aimed at someone is an insult, a swear of joy
("holy shit, that clutch") is chat; it counts in full when a phrase was aimed, or when the
message aims at someone and the lexicon knows none of its words.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import re2

from .folding import Folded, fold_word
from .lexicon import ENTRIES, TARGETS, UNTARGETED_FACTOR, Entry
from .terms import Term, TermSet, word_pattern

TARGET_WINDOW = 3  # words either side of a phrase that may aim it
FIRST_PERSON = frozenset({"i", "im", "m", "me", "my", "myself", "iam"})


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
        self._spans: dict[int, re2._Regexp] = {}  # entry -> its pattern, compiled when first aimed

    def is_targeted(self, folded: Folded) -> bool:
        return "@" in folded.lowered or any(word in self._targets for word in folded.words)

    def _aimed(self, index: int, folded: Folded) -> bool:
        pattern = self._spans.get(index)
        if pattern is None:
            pattern = self._spans[index] = re2.compile(word_pattern(self._terms.terms[index]))
        joined, words = folded.joined, folded.words
        for match in pattern.finditer(joined):
            first = joined.count(" ", 0, match.start() + 1) - 1  # the phrase's first word
            last = first + match.group(0).strip().count(" ")
            if first > 0 and words[first - 1] in FIRST_PERSON:
                continue
            window = words[max(0, first - TARGET_WINDOW) : last + 1 + TARGET_WINDOW]
            if "@" in folded.lowered or any(word in self._targets for word in window):
                return True
        return False

    def score(self, folded: Folded, *, profanity: float = 0.0) -> CategoryScores:
        misses: dict[str, float] = {}  # category -> product of (1 - weight)
        found = self._terms.matches(folded)
        aimed = False
        for index in found:
            entry = self._entries[index]
            weight = entry.weight
            if entry.targeted:
                hit = self._aimed(index, folded)
                aimed = aimed or hit
                weight *= 1.0 if hit else UNTARGETED_FACTOR
            misses[entry.category] = misses.get(entry.category, 1.0) * (1.0 - weight)
        targeted = aimed or (not found and self.is_targeted(folded))
        if profanity > 0:
            factor = 1.0 if targeted else UNTARGETED_FACTOR
            misses["profanity"] = misses.get("profanity", 1.0) * (1.0 - profanity * factor)
        scores = {name: 1.0 - miss for name, miss in misses.items() if miss < 1.0}
        matched = tuple(self._entries[i] for i in found)
        return CategoryScores(scores=scores, matched=matched, targeted=targeted)
