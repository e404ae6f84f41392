"""Term matching: plain terms, `*` wildcards and regexes, compiled into linear-time re2 sets. Pure.

Plain and wildcard terms are folded (folding.py) and matched as whole words or phrases of the
folded message; regexes run on the message after NFKC and case folding only, so a channel
writes them against what users type. re2 runs in time linear in the message whatever the
pattern; what it cannot do in linear time (backreferences, lookaround) is refused, as are
patterns whose compiled program would exceed `max_mem`.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

import re2

from .folding import Folded, fold_phrase


class TermKind(enum.StrEnum):
    PLAIN = "plain"
    WILDCARD = "wildcard"
    REGEX = "regex"


class TermError(ValueError):
    """A term or pattern that cannot be compiled within the limits."""


@dataclass(frozen=True, kw_only=True)
class Term:
    pattern: str
    kind: TermKind = TermKind.PLAIN

    @classmethod
    def parse(cls, pattern: str) -> Term:
        """A term as channels write them: "re:..." is a regex, a `*` makes a wildcard."""
        if pattern.startswith("re:"):
            return cls(pattern=pattern[3:], kind=TermKind.REGEX)
        return cls(pattern=pattern, kind=TermKind.WILDCARD if "*" in pattern else TermKind.PLAIN)


def _options(max_mem: int) -> re2.Options:
    options = re2.Options()
    options.max_mem = max_mem
    options.log_errors = False  # a refused channel pattern is the channel's error, not a log line
    return options


def word_pattern(term: Term) -> str:
    """The re2 source matching a folded plain or wildcard term inside Folded.joined."""
    folded = fold_phrase(term.pattern)
    if not any(ch.isalnum() for ch in folded):
        raise TermError(f"term {term.pattern!r} has no letters or digits to match")
    body = "[^ ]*".join(re2.escape(piece) for piece in folded.split("*"))
    return f" {body} "


class TermSet:
    """Many terms matched in one pass; `matches` gives the indices of those found."""

    def __init__(
        self,
        terms: Sequence[Term],
        *,
        max_terms: int = 2000,
        max_pattern_chars: int = 512,
        max_mem: int = 8 << 20,
    ) -> None:
        if len(terms) > max_terms:
            raise TermError(f"{len(terms)} terms, more than the {max_terms} allowed")
        self.terms = tuple(terms)
        self._words: re2.Set | None = None
        self._regexes: re2.Set | None = None
        self._word_index: list[int] = []
        self._regex_index: list[int] = []
        for index, term in enumerate(self.terms):
            if len(term.pattern) > max_pattern_chars:
                raise TermError(f"term {term.pattern[:40]!r}...: over {max_pattern_chars} chars")
            if term.kind is TermKind.REGEX:
                self._regexes = self._regexes or re2.Set.SearchSet(_options(max_mem))
                self._add(self._regexes, term.pattern, term)
                self._regex_index.append(index)
            else:
                self._words = self._words or re2.Set.SearchSet(_options(max_mem))
                self._add(self._words, word_pattern(term), term)
                self._word_index.append(index)
        for compiled in (self._words, self._regexes):
            if compiled is None:
                continue
            try:
                compiled.Compile()
            except re2.error:
                detail = f"the terms need more than {max_mem} bytes of regex memory"
                raise TermError(detail) from None

    @staticmethod
    def _add(target: re2.Set, source: str, term: Term) -> None:
        try:
            re2.compile(source, options=_options(1 << 20))  # the error message Set.Add lacks
            target.Add(source)
        except re2.error as exc:
            detail = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else exc
            raise TermError(f"pattern {term.pattern!r} refused: {detail}") from None

    def matches(self, folded: Folded) -> list[int]:
        found: list[int] = []
        if self._words is not None:
            found += [self._word_index[i] for i in self._words.Match(folded.joined) or ()]
        if self._regexes is not None:
            found += [self._regex_index[i] for i in self._regexes.Match(folded.lowered) or ()]
        return sorted(found)

    def cut(self, folded: Folded) -> Folded:
        """The message with every occurrence of these (plain or wildcard) terms blanked out."""
        if self._words is None or not self.matches(folded):
            return folded
        joined = folded.joined
        for index in self._word_index:
            joined = re2.sub(word_pattern(self.terms[index]), "  ", joined)
        words = tuple(joined.split())
        return Folded(lowered=folded.lowered, words=words, joined=f" {' '.join(words)} ")
