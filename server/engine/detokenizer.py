"""Streaming token-ids → text deltas, and stop-string matching on those deltas. Pure; no I/O.

IncrementalDetokenizer: the deltas of one sequence add up to exactly tokenizer.decode(all ids),
and a delta never ends inside a UTF-8 character.
StopStringMatcher: holds back text that could still become a stop string.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence

from .tokenizer_base import Tokenizer


class IncrementalDetokenizer:
    """Turns one sequence's token ids into text deltas, O(token length) per token."""

    def __init__(self, tokenizer: Tokenizer, *, skip_special: bool = True) -> None:
        self._tokenizer = tokenizer
        self._skip_special = skip_special
        # The stateful decoder holds an incomplete UTF-8 sequence until its last byte arrives,
        # and replaces invalid bytes exactly as a one-shot bytes.decode(errors="replace").
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._strip_pending = tokenizer.strips_leading_space

    def push(self, token_id: int) -> str:
        """The new text `token_id` completes; "" while a character is still incomplete."""
        if self._skip_special and self._tokenizer.is_special(token_id):
            return ""
        return self._emit(self._decoder.decode(self._tokenizer.token_bytes(token_id)))

    def flush(self) -> str:
        """What is left at the end: an unfinished character comes out as U+FFFD, as in decode."""
        return self._emit(self._decoder.decode(b"", final=True))

    def _emit(self, text: str) -> str:
        # decode() drops one space at the very start of the whole text (SentencePiece's dummy
        # prefix), so the first non-empty delta is where that space can be.
        if self._strip_pending and text:
            self._strip_pending = False
            if text.startswith(" "):
                return text[1:]
        return text


class StopStringMatcher:
    """Cuts a text stream at the first stop string to be complete.

    feed() returns what is safe to emit now: it never emits any part of a matched stop string
    or anything after it, and holds back a tail that may still grow into a stop string. The
    stream stops as soon as some stop string is complete (the engine then stops generating);
    of those complete within the same feed, the text is cut where the earliest begins. A
    longer stop string that began earlier but is not complete yet does not hold it up.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        if any(not stop for stop in stops):
            raise ValueError("a stop string must not be empty")
        self._stops = tuple(dict.fromkeys(stops))
        self._held = ""
        self._matched = False

    @property
    def matched(self) -> bool:
        return self._matched

    def feed(self, delta: str) -> tuple[str, bool]:
        """(text safe to emit, whether a stop string has matched)."""
        if self._matched:
            return "", True
        text = self._held + delta
        cut = min((i for i in (text.find(stop) for stop in self._stops) if i >= 0), default=-1)
        if cut >= 0:
            self._matched = True
            self._held = ""
            return text[:cut], True
        keep = self._partial_suffix(text)
        self._held = text[len(text) - keep :]
        return text[: len(text) - keep], False

    def flush(self) -> str:
        """The held-back tail once the stream has ended without a match."""
        held, self._held = self._held, ""
        return "" if self._matched else held

    def _partial_suffix(self, text: str) -> int:
        """Length of the longest tail of `text` that is a proper prefix of some stop string."""
        longest = 0
        for stop in self._stops:
            for size in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:size]):
                    longest = size
                    break
        return longest
