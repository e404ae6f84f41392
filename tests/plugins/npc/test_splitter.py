"""The streaming splitter: speech and typed events from text cut anywhere, never markup in
speech; and the reply cut to what the player heard."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from plugins.npc.cards import load_cards
from plugins.npc.markup import Action, Emotion, Event, Piece, Speech
from plugins.npc.reply import heard
from plugins.npc.splitter import MarkupSplitter

CARD = load_cards(Path(__file__).parents[3] / "plugins" / "npc" / "cards")["blacksmith"]
REPLY = "Aye. [emotion:proud:0.8] Take it, lad. [action:give_item(item=sword)] Mind the edge."


def split(text: str, cuts: Sequence[int]) -> tuple[list[Piece], MarkupSplitter]:
    splitter = MarkupSplitter(CARD)
    pieces: list[Piece] = []
    bounds = [0, *sorted(cuts), len(text)]
    for start, end in itertools.pairwise(bounds):
        pieces += splitter.feed(text[start:end])
    splitter.finish()
    return pieces, splitter


def speech(pieces: Sequence[Piece]) -> str:
    return "".join(p.text for p in pieces if isinstance(p, Speech))


def events(pieces: Sequence[Piece]) -> list[Event]:
    return [p for p in pieces if not isinstance(p, Speech)]


def test_events_come_where_they_occur() -> None:
    pieces, splitter = split(REPLY, [])
    assert speech(pieces) == "Aye. Take it, lad. Mind the edge."
    assert events(pieces) == [
        Emotion(name="proud", intensity=0.8, offset=5),
        Action(name="give_item", args={"item": "sword"}, offset=19),
    ]
    assert splitter.num_dropped == 0 and splitter.num_speech_chars == 33
    # Speech goes out as soon as it cannot be part of a span; an event once its span closes.
    streaming = MarkupSplitter(CARD)
    assert streaming.feed("Aye. [emo") == [Speech(text="Aye. ")]
    assert streaming.feed("tion:proud:0.") == []
    assert streaming.feed("8] T") == [
        Emotion(name="proud", intensity=0.8, offset=5),
        Speech(text="T"),
    ]


@given(st.lists(st.integers(min_value=0, max_value=len(REPLY)), max_size=30))
def test_any_chunking_gives_the_same_pieces(cuts: list[int]) -> None:
    whole, _ = split(REPLY, [])
    pieces, _ = split(REPLY, cuts)
    assert speech(pieces) == speech(whole)
    assert events(pieces) == events(whole)
    # Speech is handed on before the span that follows it is complete.
    assert all("[" not in p.text and "]" not in p.text for p in pieces if isinstance(p, Speech))


@given(st.text(alphabet="ab []:()=,\n.", max_size=60), st.lists(st.integers(0, 60), max_size=8))
def test_debris_never_reaches_speech(text: str, cuts: list[int]) -> None:
    pieces, _ = split(text, [c for c in cuts if c <= len(text)])
    assert all("[" not in p.text and "]" not in p.text for p in pieces if isinstance(p, Speech))
    assert all(isinstance(p, Speech) for p in pieces)  # nothing here is a valid event


def test_invalid_and_unclosed_spans_are_dropped_and_counted() -> None:
    pieces, splitter = split("Hm [emotion:sad:0.5] no. [action:give_item(item=sw", [7, 30])
    assert speech(pieces) == "Hm no. " and events(pieces) == []
    assert splitter.num_dropped == 2


def test_heard_keeps_exactly_the_heard_prefix_and_the_events_reached() -> None:
    pieces, _ = split(REPLY, [3, 11, 40])
    full = speech(pieces)
    for num_chars in range(len(full) + 1):
        cut = heard(pieces, heard_chars=num_chars)
        assert cut.speech == full[:num_chars]
        assert [e.offset for e in cut.events] == [o for o in (5, 19) if o <= num_chars]
    assert heard(pieces).markup == REPLY
    assert heard(pieces, heard_chars=12).markup == "Aye. [emotion:proud:0.8] Take it"
    assert heard(pieces, heard_chars=0).markup == ""
