"""IncrementalDetokenizer against Tokenizer.decode, and StopStringMatcher, on random streams."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.engine.detokenizer import IncrementalDetokenizer, StopStringMatcher
from server.engine.tokenizer import Tokenizer, load_tokenizer
from server.engine.tokenizer_gguf import load_gguf_tokenizer

MULTIBYTE_TEXT = ["日本語のテキスト", "🎉👍🏽👨‍👩‍👧", "naïve café déjà", "Ωμέγα", " ελληνικά"]


@pytest.fixture(scope="module")
def byte_level(default_model: Path) -> Tokenizer:
    """The default model's byte-level BPE: CJK and emoji split across tokens."""
    return load_tokenizer(default_model)


def _sentencepiece_vocab() -> Tokenizer:
    """A SentencePiece-kind GGUF vocabulary: "▁" spaces, byte fallback, a dummy prefix."""
    pieces = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    pieces += ["▁", "▁the", "the", "é", "日本", "▁hello", "lo", "▁▁"]
    types = [2, 3, 3] + [6] * 256 + [1] * 8
    return load_gguf_tokenizer(
        {
            "tokenizer.ggml.model": "llama",
            "tokenizer.ggml.tokens": pieces,
            "tokenizer.ggml.token_type": types,
            "tokenizer.ggml.scores": [0.0] * len(pieces),
            "tokenizer.ggml.bos_token_id": 1,
            "tokenizer.ggml.eos_token_id": 2,
        }
    )


@pytest.fixture(scope="module")
def sentencepiece_kind() -> Tokenizer:
    return _sentencepiece_vocab()


def _stream(tokenizer: Tokenizer, ids: list[int], skip_special: bool) -> list[str]:
    detokenizer = IncrementalDetokenizer(tokenizer, skip_special=skip_special)
    deltas = []
    for step, token_id in enumerate(ids):
        deltas.append(detokenizer.push(token_id))
        # Eager: everything but an unfinished trailing character is out already. Its bytes may
        # come from several tokens, each of which decode() alone renders as one U+FFFD.
        emitted = "".join(deltas)
        partial = tokenizer.decode(ids[: step + 1], skip_special=skip_special)
        held = partial[len(emitted) :]
        assert partial.startswith(emitted) and set(held) <= {"\ufffd"}, (emitted, partial)
    deltas.append(detokenizer.flush())
    return deltas


def _check_deltas(tokenizer: Tokenizer, ids: list[int], skip_special: bool) -> None:
    deltas = _stream(tokenizer, ids, skip_special)
    full = tokenizer.decode(ids, skip_special=skip_special)
    assert "".join(deltas) == full
    offset = 0
    for delta in deltas:
        delta.encode("utf-8")  # no lone surrogate: whole characters only
        for index, char in enumerate(delta):
            if char == "\ufffd":
                assert full[offset + index] == "\ufffd"
        offset += len(delta)


def _id_streams(tokenizer: Tokenizer) -> st.SearchStrategy[list[int]]:
    encoded = [tokenizer.encode(text) for text in MULTIBYTE_TEXT]
    from_text = st.sampled_from(encoded)
    single = st.integers(0, tokenizer.vocab_size - 1).map(lambda i: [i])
    special = st.sampled_from(sorted(tokenizer.eos_token_ids)).map(lambda i: [i])
    chunks = st.lists(st.one_of(from_text, from_text, single, special), max_size=12)
    return chunks.map(lambda parts: [i for part in parts for i in part])


@settings(max_examples=200, deadline=None)
@given(data=st.data(), skip_special=st.booleans())
def test_byte_level_deltas_add_up_to_decode(
    byte_level: Tokenizer, data: st.DataObject, skip_special: bool
) -> None:
    _check_deltas(byte_level, data.draw(_id_streams(byte_level)), skip_special)


@settings(max_examples=200, deadline=None)
@given(data=st.data(), skip_special=st.booleans())
def test_sentencepiece_deltas_add_up_to_decode(
    sentencepiece_kind: Tokenizer, data: st.DataObject, skip_special: bool
) -> None:
    ids = data.draw(_id_streams(sentencepiece_kind))
    _check_deltas(sentencepiece_kind, ids, skip_special)


def test_emoji_is_held_until_complete(byte_level: Tokenizer) -> None:
    ids = byte_level.encode("a🎉")
    detokenizer = IncrementalDetokenizer(byte_level)
    deltas = [detokenizer.push(i) for i in ids]
    assert deltas[0] == "a" and deltas[-1] == "🎉" and set(deltas[1:-1]) == {""}
    assert detokenizer.flush() == ""


def test_unfinished_character_is_replaced_at_flush(byte_level: Tokenizer) -> None:
    ids = byte_level.encode("🎉")[:1]
    detokenizer = IncrementalDetokenizer(byte_level)
    assert detokenizer.push(ids[0]) == ""
    assert detokenizer.flush() == "\ufffd" == byte_level.decode(ids)


def test_sentencepiece_leading_space(sentencepiece_kind: Tokenizer) -> None:
    ids = sentencepiece_kind.encode(" hello the", add_special=True)
    assert ids[0] == 1
    for skip_special, expected in ((True, " hello the"), (False, "<s>  hello the")):
        detokenizer = IncrementalDetokenizer(sentencepiece_kind, skip_special=skip_special)
        text = "".join(detokenizer.push(i) for i in ids) + detokenizer.flush()
        assert text == expected == sentencepiece_kind.decode(ids, skip_special=skip_special)


def test_special_tokens_skipped_or_kept(byte_level: Tokenizer) -> None:
    ids = byte_level.encode("Hi<|im_end|>")
    kept = IncrementalDetokenizer(byte_level, skip_special=False)
    assert [kept.push(i) for i in ids] == ["Hi", "<|im_end|>"]
    skipped = IncrementalDetokenizer(byte_level)
    assert [skipped.push(i) for i in ids] == ["Hi", ""]


# --- StopStringMatcher -------------------------------------------------------------------------


def _run(stops: list[str], deltas: list[str]) -> tuple[str, bool]:
    matcher = StopStringMatcher(stops)
    out = []
    for delta in deltas:
        text, matched = matcher.feed(delta)
        out.append(text)
        if matched:
            return "".join(out), True
    return "".join(out) + matcher.flush(), False


def test_stop_split_across_many_deltas() -> None:
    assert _run(["</end>"], ["Hello <", "/", "en", "d", "> tail"]) == ("Hello ", True)


def test_overlapping_prefix() -> None:
    assert _run(["ab"], ["a", "a", "b", "c"]) == ("a", True)
    assert _run(["ab"], ["aab"]) == ("a", True)


def test_held_back_text_is_released_once_it_cannot_match() -> None:
    matcher = StopStringMatcher(["STOP"])
    assert matcher.feed("go ST") == ("go ", False)
    assert matcher.feed("ay") == ("STay", False)
    assert matcher.feed("S") == ("", False)
    assert matcher.flush() == "S"


def test_earliest_of_several_stops_wins() -> None:
    assert _run(["world", "lo w"], ["hel", "lo wor", "ld"]) == ("hel", True)
    assert _run(["\n\n", "User:"], ["Sure.\n", "\nUser: hi"]) == ("Sure.", True)


def test_no_match_releases_everything_at_flush() -> None:
    assert _run(["xyz"], ["abc x", "y"]) == ("abc xy", False)


def test_nothing_after_a_match() -> None:
    matcher = StopStringMatcher(["."])
    assert matcher.feed("one. two") == ("one", True)
    assert matcher.feed("three") == ("", True) and matcher.matched
    assert matcher.flush() == ""


def test_empty_stop_string_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        StopStringMatcher(["ok", ""])


_SMALL = st.text("ab\n", max_size=4)


@settings(max_examples=300, deadline=None)
@given(
    text=st.text("abc\n", max_size=30),
    stops=st.lists(_SMALL.filter(bool), max_size=3),
    cuts=st.lists(st.integers(0, 30), max_size=8),
)
def test_stop_matcher_equals_cutting_the_whole_text(
    text: str, stops: list[str], cuts: list[int]
) -> None:
    bounds = sorted({0, len(text), *(c for c in cuts if c <= len(text))})
    deltas = [text[a:b] for a, b in itertools.pairwise(bounds)]
    # The stream stops with the first delta after which some stop string is complete (it
    # cannot wait for a longer one that began earlier), and the text is cut where the
    # earliest stop string complete by then begins.
    ends = [i + len(stop) for stop in stops if (i := text.find(stop)) >= 0]
    if ends:
        seen = text[: min(b for b in bounds if b >= min(ends))]
        starts = [i for i in (seen.find(stop) for stop in stops) if i >= 0]
        expected = (text[: min(starts)], True)
    else:
        expected = (text, False)
    assert _run(stops, deltas) == expected


def test_a_complete_stop_string_ends_the_stream_before_a_longer_one_could() -> None:
    # "\n" is complete after the first delta; "a\na", which began earlier, is not yet.
    assert _run(["\n", "a\na"], ["a\n", "a"]) == ("a", True)
    # Both complete in one delta: the cut is where the earlier one begins.
    assert _run(["\n", "a\na"], ["a\na"]) == ("", True)
