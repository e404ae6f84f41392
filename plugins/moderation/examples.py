"""Policy by example: a per-channel classifier learned from the channel's allowed and disallowed
examples and its moderators' review decisions. Pure: no store, no asyncio.

A multinomial naive Bayes over the folded words and word pairs of each message (folding.py,
so "n00b" and "noob" are one feature), with Laplace smoothing and equal class priors: a few
dozen examples already separate a channel's own rules ("no backseating") from its chat, it
trains in microseconds per example, and it is rebuilt from the examples alone, so the store's
log of decisions is the only state. The plugin retrains it in the background after each
decision; the cascade asks it about every message once it has `min_per_class` of each label.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import pairwise

from .folding import fold


@dataclass(frozen=True, kw_only=True)
class Example:
    text: str
    disallowed: bool


def features(words: Sequence[str]) -> list[str]:
    return [*words, *(f"{a} {b}" for a, b in pairwise(words))]


class ExampleModel:
    def __init__(self, examples: Iterable[Example], *, min_per_class: int = 3) -> None:
        self._counts = (Counter[str](), Counter[str]())  # allowed, disallowed
        num = [0, 0]
        for example in examples:
            self._counts[example.disallowed].update(features(fold(example.text).words))
            num[example.disallowed] += 1
        self.num_examples = tuple(num)
        self.ready = min(num) >= min_per_class
        self._totals = (sum(self._counts[0].values()), sum(self._counts[1].values()))
        self._vocabulary = len(set(self._counts[0]) | set(self._counts[1])) + 1

    def predict(self, words: Sequence[str]) -> float:
        """P(disallowed) of one folded message; 0.5 when no feature was ever seen."""
        log_odds = 0.0
        for feature in features(words):
            allowed, disallowed = self._counts[0][feature], self._counts[1][feature]
            if allowed == 0 and disallowed == 0:
                continue
            log_odds += math.log((disallowed + 1) / (self._totals[1] + self._vocabulary))
            log_odds -= math.log((allowed + 1) / (self._totals[0] + self._vocabulary))
        return 1.0 / (1.0 + math.exp(-max(-30.0, min(30.0, log_odds))))
