"""The default model's GGUF tokenizer (SmolLM2, byte-level BPE, pre "smollm") on tricky text."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.engine.errors import TokenizerError
from server.engine.gguf_file import open_gguf, read_metadata
from server.engine.tokenizer import Tokenizer, load_tokenizer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model_path(default_model: Path) -> Path:
    return default_model


@pytest.fixture(scope="module")
def metadata(model_path: Path) -> dict[str, Any]:
    return read_metadata(open_gguf(model_path))


@pytest.fixture(scope="module")
def tokenizer(model_path: Path, metadata: dict[str, Any]) -> Tokenizer:
    return load_tokenizer(model_path, metadata)


# Ids as HF's tokenizer.json for SmolLM2 (Digits(individual) then ByteLevel) produces them.
GOLDEN = {
    "Hello, we can use": [19556, 28, 392, 416, 722],
    "Hello world! 123": [19556, 905, 17, 216, 33, 34, 35],
    "Café déjà vu.": [51, 1939, 2756, 32564, 90, 16739, 386, 101, 30],
    "  multiple   spaces": [216, 2701, 256, 5600],
    "12345": [33, 34, 35, 36, 37],
    "I'm don't we'll": [57, 5248, 1326, 982, 392, 3060],
    "a   b\n\n\nc  ": [81, 256, 278, 1116, 198, 83, 256],
    "\t tabs\t": [197, 29416, 197],
    "<|im_start|>user\nHi<|im_end|>\n": [1, 4093, 198, 26843, 2, 198],
}

TRICKY = [
    *GOLDEN,
    "",
    " ",
    "\n",
    "3.14159 and 1,000,000 and ١٢٣",
    "héllo wörld 日本語 🎉👍🏽 👨‍👩‍👧",
    "Ünïcödé — “quotes” and ‘single’ … ellipsis",
    "   leading and trailing   ",
    "mixed\r\nline\rendings\n",
    "<|im_end|><|im_end|>text<|endoftext|>",
    "<|im_start",
    "don't STOP'S 'quoted' it's",
]


def test_default_model_vocabulary(tokenizer: Tokenizer) -> None:
    assert tokenizer.vocab_size == 49152
    assert tokenizer.bos_token_id == 1 and tokenizer.eos_token_ids == frozenset({2})
    assert (tokenizer.bos_text, tokenizer.eos_text) == ("<|im_start|>", "<|im_end|>")
    assert not tokenizer.add_bos and not tokenizer.strips_leading_space
    assert [i for i in range(100) if tokenizer.is_special(i)] == list(range(17))


@pytest.mark.parametrize(("text", "expected"), list(GOLDEN.items()))
def test_default_model_golden_ids(tokenizer: Tokenizer, text: str, expected: list[int]) -> None:
    assert tokenizer.encode(text) == expected


@pytest.mark.parametrize("text", TRICKY)
def test_default_model_round_trip(tokenizer: Tokenizer, text: str) -> None:
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text
    assert tokenizer.encode(text, add_special=True) == ids  # SmolLM2 adds no BOS


def test_default_model_digits_split_one_by_one(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("year 2024")
    assert [tokenizer.token_text(i) for i in ids] == ["year", "Ġ", "2", "0", "2", "4"]


def test_default_model_special_tokens(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("<|im_start|>assistant\nHi there<|im_end|>")
    assert ids[0] == 1 and ids[-1] == 2 and ids.count(1) == ids.count(2) == 1
    assert tokenizer.decode(ids, skip_special=True) == "assistant\nHi there"
    assert tokenizer.token_bytes(2) == b"<|im_end|>"


def test_default_model_partial_utf8_tokens(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("🎉")
    assert len(ids) > 1 and b"".join(map(tokenizer.token_bytes, ids)) == "🎉".encode()
    assert tokenizer.decode(ids[:1]) == "\ufffd"


def test_default_model_ids_outside_vocabulary(tokenizer: Tokenizer) -> None:
    assert tokenizer.decode([19556, 49152, 10**6, -1]) == "Hello"
    with pytest.raises(TokenizerError, match="outside the vocabulary"):
        tokenizer.token_text(49152)


def test_lone_surrogate_is_a_tokenizer_error(tokenizer: Tokenizer) -> None:
    with pytest.raises(TokenizerError, match="not valid Unicode at offset 2"):
        tokenizer.encode("ok\ud800")


def test_load_reads_metadata_itself(model_path: Path, tokenizer: Tokenizer) -> None:
    again = load_tokenizer(model_path)
    assert again.encode(TRICKY[4]) == tokenizer.encode(TRICKY[4])


def test_default_model_drops_bytes_its_vocabulary_lacks(tokenizer: Tokenizer) -> None:
    # SmolLM2 has no token for some bytes (0x04, lead byte 0xF1, ...) and no unknown token;
    # HF and llama.cpp drop those bytes too, and U+40000's continuation bytes stay orphaned.
    assert tokenizer.decode(tokenizer.encode("a\x04b\U00040000c")) == "ab\ufffd\ufffd\ufffdc"


# Every character whose UTF-8 bytes all have a token in SmolLM2's vocabulary.
_REPRESENTABLE = st.characters(
    max_codepoint=0x3FFFF,
    exclude_categories=["Cs"],
    exclude_characters="\x04\x06\x13\x14\x16\x1d",
)


@settings(max_examples=150, deadline=None)
@given(text=st.text(_REPRESENTABLE, max_size=80))
def test_default_model_round_trips_any_text(tokenizer: Tokenizer, text: str) -> None:
    assert tokenizer.decode(tokenizer.encode(text)) == text
