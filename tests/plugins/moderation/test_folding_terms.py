"""Folding and term matching: obfuscated spellings match their terms, regexes stay linear."""

from __future__ import annotations

import pytest

from plugins.moderation.folding import fold, fold_phrase
from plugins.moderation.terms import Term, TermError, TermKind, TermSet


@pytest.mark.parametrize(
    ("text", "term"),
    [
        ("f.u.c.k this", "fuck"),
        ("fuuuuuck", "fuck"),
        ("ph4ggot", "faggot"),
        ("sh!t happens", "shit"),
        ("ＦＵＣＫ", "fuck"),  # fullwidth: NFKC
        ("𝐟𝐮𝐜𝐤", "fuck"),  # mathematical bold: NFKC
        ("fцck", "fuck"),  # Cyrillic look-alike
        ("ғᴜᴄᴋ", "fuck"),  # small capitals
        ("f̷u̸c̵k̴", "fuck"),  # zalgo marks
        ("k y s", "kys"),
        ("K-Y-S", "kys"),
        ("KILL YOURSELF!!!", "kill yourself"),
        ("n00b", "noob"),
    ],
)
def test_obfuscated_spellings_match(text: str, term: str) -> None:
    assert TermSet([Term.parse(term)]).matches(fold(text)) == [0]


def test_folding_keeps_ordinary_chat_apart() -> None:
    assert fold("@streamer hi").words == ("streamer", "hi")  # a mention, not an "a"
    assert fold("u r trash").words == ("u", "r", "trash")  # two single letters stay words
    assert fold("gg!").words == ("g",)  # a trailing "!" is punctuation, not an "i"
    assert fold_phrase("Kill *self") == "kil *self"
    # Whole words only: the "ass" in "class" and "assassin" is not a match.
    assert TermSet([Term.parse("ass")]).matches(fold("classic assassin play")) == []


def test_wildcards_and_regexes() -> None:
    terms = TermSet([Term.parse(p) for p in ("*bitch*", "re:free\\s+v-?bucks", "noob")])
    assert [t.kind for t in terms.terms] == [TermKind.WILDCARD, TermKind.REGEX, TermKind.PLAIN]
    assert terms.matches(fold("sonofabitch")) == [0]
    assert terms.matches(fold("FREE   V-BUCKS at my site")) == [1]
    assert terms.matches(fold("nice shot")) == []


def test_permitted_terms_are_cut_before_matching() -> None:
    permitted = TermSet([Term.parse("scunthorpe")])
    blocked = TermSet([Term.parse("*cunt*")])
    assert blocked.matches(fold("Scunthorpe United")) == [0]
    assert blocked.matches(permitted.cut(fold("Scunthorpe United"))) == []
    assert blocked.matches(permitted.cut(fold("Scunthorpe cunt"))) == [0]


@pytest.mark.parametrize(
    ("pattern", "why"),
    [
        ("re:(a)\\1", "invalid escape"),  # backreference: not linear, refused
        ("re:(?=a)b", "perl operator"),  # lookahead
        ("re:((a{100}){100}){100}", "repetition"),
        ("re:(", "missing"),
        ("...", "no letters"),
    ],
)
def test_bad_patterns_are_refused(pattern: str, why: str) -> None:
    with pytest.raises(TermError, match=why):
        TermSet([Term.parse(pattern)])


def test_limits_on_terms() -> None:
    with pytest.raises(TermError, match="more than"):
        TermSet([Term.parse("a1")] * 3, max_terms=2)
    with pytest.raises(TermError, match="over 8 chars"):
        TermSet([Term.parse("re:abcdefghij")], max_pattern_chars=8)
    with pytest.raises(TermError, match="regex memory"):
        TermSet([Term.parse("re:[a-z]{1000}")], max_mem=1 << 12)


def test_a_catastrophic_pattern_runs_in_linear_time() -> None:
    # (x+x+)+y backtracks exponentially in Python's re; re2 answers at once.
    terms = TermSet([Term.parse("re:(x+x+)+y")])
    assert terms.matches(fold("x" * 50_000)) == []
