"""Obfuscation folding: text to the canonical words that rules and the lexicon match. Pure.

Both sides are folded the same way, so a term matches every spelling that folds to its own
folding: NFKC and case folding, combining marks dropped (accents, zalgo), look-alike letters
mapped (confusables.py), leetspeak decoded inside words ("ph4ggot", "sh!t"), runs of one
letter collapsed ("fuuuck" and "fuck" both fold to "fuck"; "kill" folds to "kil"), and runs
of single letters joined ("f.u.c.k", "k y s").
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from .confusables import CONFUSABLES

_LEET = str.maketrans(
    {"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "8": "b", "9": "g", "@": "a",
     "$": "s", "!": "i", "|": "l", "+": "t", "€": "e", "(": "c"}
)  # fmt: skip
# A token is a run of letters, digits and the symbols leetspeak writes letters with.
_TOKEN = re.compile(r"[^\W_]+(?:[@$!|+€(][^\W_]*)*|[@$!|+€(]+[^\W_]+[^\W_@$!|+€(]*", re.UNICODE)
_REPEATS = re.compile(r"(.)\1+")
_CONFUSE = str.maketrans(dict(CONFUSABLES))
_MIN_SINGLES_JOINED = 3  # "f u c k" joins; "u r" (two) stays apart: it is how chat writes "you are"


@dataclass(frozen=True, kw_only=True)
class Folded:
    """A message as the matchers see it."""

    lowered: str  # NFKC + casefold of the original: what channel regexes run on
    words: tuple[str, ...]  # folded words
    joined: str  # " " + " ".join(words) + " ": phrases match as " kil yourself "


def lower(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold()


def fold_word(token: str) -> str:
    """One token's canonical spelling; assumes it is already lowered."""
    if not token.isascii():
        token = _strip_marks(token).translate(_CONFUSE)
    if not token.isalpha():
        token = _leet(token)
    return _REPEATS.sub(r"\1", token.replace("ph", "f"))


def fold(text: str) -> Folded:
    lowered = lower(text)
    base = lowered if lowered.isascii() else _strip_marks(lowered).translate(_CONFUSE)
    # Most tokens are plain letters: only the others pay for leetspeak decoding, and the
    # "ph" and repeated-letter passes run once over the whole message.
    tokens = [t if t.isalpha() else _leet(t) for t in _TOKEN.findall(base)]
    collapsed = _REPEATS.sub(r"\1", " ".join(t for t in tokens if t).replace("ph", "f"))
    words = _join_singles(collapsed.split())
    return Folded(lowered=lowered, words=words, joined=f" {' '.join(words)} ")


def _leet(token: str) -> str:
    if token.startswith("@"):  # a mention ("@streamer"), not an "a"
        token = token.lstrip("@")
    if any(ch.isalpha() for ch in token):
        token = token.strip("!|+(").translate(_LEET)
    return token


def fold_phrase(phrase: str) -> str:
    """A term or lexicon phrase folded like messages are, `*` wildcards kept."""
    words = []
    for word in lower(phrase).split():
        pieces = [" ".join(fold_word(t) for t in _TOKEN.findall(p)) for p in word.split("*")]
        words.append("*".join(pieces))
    return " ".join(word for word in words if word.strip("*"))


def _strip_marks(text: str) -> str:
    if text.isascii():
        return text
    decomposed = unicodedata.normalize("NFD", text)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def _join_singles(words: list[str]) -> tuple[str, ...]:
    out: list[str] = []
    run: list[str] = []
    for word in [*words, ""]:
        if len(word) == 1:
            run.append(word)
            continue
        if len(run) >= _MIN_SINGLES_JOINED:
            out.append(_REPEATS.sub(r"\1", "".join(run)))
        else:
            out.extend(run)
        run = []
        if word:
            out.append(word)
    return tuple(out)
