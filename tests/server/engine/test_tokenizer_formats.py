"""Each tokenizer source on tiny vocabularies built here: tokenizer.model, tokenizer.json, GGUF."""

from __future__ import annotations

import json
import random
from pathlib import Path

import gguf
import pytest
import sentencepiece
from tokenizers import AddedToken, decoders, normalizers, pre_tokenizers
from tokenizers import Tokenizer as Backend
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer

from server.engine.errors import TokenizerError
from server.engine.tokenizer import Tokenizer, load_tokenizer
from server.engine.tokenizer_base import gpt2_byte_decoder
from server.engine.tokenizer_gguf import load_gguf_tokenizer

WORDS = ("the quick brown fox jumps over lazy dog", "hello world tokens stream game chat")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
SAMPLES = [
    "hello world",
    " the  quick   brown fox ",
    "jumps\nover\n\nthe lazy dog\t!",
    "héllo wörld — naïve café",
    "日本語のテキスト 🎉👍🏽 emoji",
    "numbers 12345 and 3.14159",
    "I'm sure they'll say we've done it",
    "",
    " ",
]


def _corpus(num_lines: int = 400) -> list[str]:
    rng = random.Random(7)
    words = " ".join(WORDS).split()
    return [" ".join(rng.choices(words, k=rng.randint(3, 12))) for _ in range(num_lines)]


# --- SentencePiece tokenizer.model -----------------------------------------------------------


@pytest.fixture(scope="module")
def spm_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("spm")
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus()),
        model_prefix=str(folder / "tokenizer"),
        model_type="bpe",
        vocab_size=300,
        byte_fallback=True,
        character_coverage=1.0,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        control_symbols=["<|im_end|>"],
        minloglevel=2,
    )
    return folder


@pytest.fixture(scope="module")
def spm_processor(spm_folder: Path) -> sentencepiece.SentencePieceProcessor:
    return sentencepiece.SentencePieceProcessor(model_file=str(spm_folder / "tokenizer.model"))


@pytest.fixture(scope="module")
def spm_tokenizer(spm_folder: Path) -> Tokenizer:
    return load_tokenizer(spm_folder)


@pytest.mark.parametrize("text", SAMPLES)
def test_spm_matches_sentencepiece_and_round_trips(
    spm_tokenizer: Tokenizer, spm_processor: sentencepiece.SentencePieceProcessor, text: str
) -> None:
    ids = spm_tokenizer.encode(text)
    assert ids == spm_processor.encode(text)
    assert spm_tokenizer.decode(ids) == text
    assert spm_tokenizer.decode(ids) == spm_processor.decode(ids)


def test_spm_specials_and_bos(spm_tokenizer: Tokenizer) -> None:
    assert spm_tokenizer.vocab_size == 300
    assert (spm_tokenizer.bos_token_id, spm_tokenizer.eos_token_ids) == (1, frozenset({2}))
    assert spm_tokenizer.add_bos and spm_tokenizer.strips_leading_space
    assert (spm_tokenizer.bos_text, spm_tokenizer.eos_text) == ("<s>", "</s>")
    end_id = spm_tokenizer.encode("<|im_end|>")
    assert len(end_id) == 1 and spm_tokenizer.is_special(end_id[0])
    ids = spm_tokenizer.encode("<s>hello</s><|im_end|>", add_special=True)
    assert ids[:2] == [1, 1] and ids[-2:] == [2, end_id[0]]
    assert spm_tokenizer.decode(ids, skip_special=True) == "hello"
    assert spm_tokenizer.decode(ids) == "<s><s> hello</s><|im_end|>"


def test_spm_byte_fallback_pieces(spm_tokenizer: Tokenizer) -> None:
    ids = spm_tokenizer.encode("🎉")
    assert b"".join(spm_tokenizer.token_bytes(i) for i in ids) == " 🎉".encode()
    assert all(len(spm_tokenizer.token_bytes(i)) == 1 for i in ids[1:])


def test_spm_folder_config_overrides(spm_folder: Path, tmp_path: Path) -> None:
    (tmp_path / "tokenizer.model").write_bytes((spm_folder / "tokenizer.model").read_bytes())
    config = {"add_bos_token": False, "eos_token": {"content": "<|im_end|>"}}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    (tmp_path / "config.json").write_text(json.dumps({"eos_token_id": [2]}))
    tokenizer = load_tokenizer(tmp_path)
    end_id = tokenizer.encode("<|im_end|>")[0]
    assert not tokenizer.add_bos and tokenizer.encode("hi", add_special=True)[0] != 1
    assert tokenizer.eos_token_id == end_id
    assert tokenizer.eos_token_ids == frozenset({end_id, 2})


# --- HF tokenizer.json ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def byte_level_backend() -> Backend:
    backend = Backend(BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(
        vocab_size=400,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_corpus(), trainer=trainer)
    return backend


@pytest.fixture(scope="module")
def byte_level_folder(
    byte_level_backend: Backend, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    folder = tmp_path_factory.mktemp("hf")
    byte_level_backend.save(str(folder / "tokenizer.json"))
    config = {"bos_token": "<|endoftext|>", "eos_token": "<|im_end|>", "add_bos_token": False}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("text", [*SAMPLES, "<|im_start|>user\nhello<|im_end|>\n"])
def test_tokenizer_json_matches_backend(
    byte_level_folder: Path, byte_level_backend: Backend, text: str
) -> None:
    tokenizer = load_tokenizer(byte_level_folder)
    ids = tokenizer.encode(text)
    assert ids == byte_level_backend.encode(text).ids
    assert (
        tokenizer.decode(ids) == text == byte_level_backend.decode(ids, skip_special_tokens=False)
    )


def test_tokenizer_json_specials(byte_level_folder: Path) -> None:
    tokenizer = load_tokenizer(byte_level_folder)
    start, end = tokenizer.encode("<|im_start|><|im_end|>")
    assert (start, end) == (1, 2)
    assert tokenizer.is_special(start) and not tokenizer.is_special(tokenizer.encode("the")[0])
    assert tokenizer.eos_token_ids == frozenset({2}) and tokenizer.bos_token_id == 0
    assert not tokenizer.add_bos and not tokenizer.strips_leading_space
    assert tokenizer.decode([1, *tokenizer.encode("hi"), 2], skip_special=True) == "hi"


def _sentencepiece_style_backend() -> Backend:
    """A Llama-style tokenizer.json: BPE with byte fallback, "▁" for spaces, a stripped prefix."""
    pieces = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    pieces += ["▁", "h", "e", "l", "o", "w", "r", "d", "he", "ll", "▁he", "llo", "▁hello", "▁w"]
    merges = [("h", "e"), ("l", "l"), ("▁", "he"), ("ll", "o"), ("▁he", "llo"), ("▁", "w")]
    backend = Backend(
        BPE({p: i for i, p in enumerate(pieces)}, merges, unk_token="<unk>", byte_fallback=True)
    )
    backend.normalizer = normalizers.Sequence(
        [normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")]
    )
    backend.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    backend.add_special_tokens([AddedToken(p, normalized=False) for p in pieces[:3]])
    # Gemma-style whitespace run, matched after normalization and decoded through "▁" → " ".
    backend.add_tokens([AddedToken("▁▁▁▁", normalized=True, special=False)])
    return backend


@pytest.mark.parametrize(
    "text", ["hello world", "  hello\nhé🎉", "<s>hello</s>", "ω", " ", "hello     world"]
)
def test_sentencepiece_style_tokenizer_json(tmp_path: Path, text: str) -> None:
    backend = _sentencepiece_style_backend()
    backend.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>"}))
    tokenizer = load_tokenizer(tmp_path)
    ids = tokenizer.encode(text)
    assert ids == backend.encode(text).ids
    for skip in (False, True):
        assert tokenizer.decode(ids, skip_special=skip) == backend.decode(
            ids, skip_special_tokens=skip
        )
    if "<s>" not in text:  # after a special token the dummy prefix space comes back
        assert tokenizer.decode(ids) == text
    assert tokenizer.strips_leading_space and tokenizer.encode("", add_special=True) == []


# --- GGUF vocabularies ------------------------------------------------------------------------


def _write_gguf(path: Path, **fields: object) -> Path:
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tokenizer_model(str(fields["model"]))
    if "pre" in fields:
        writer.add_tokenizer_pre(str(fields["pre"]))
    writer.add_token_list(fields["tokens"])  # type: ignore[arg-type]
    writer.add_token_types(fields["types"])  # type: ignore[arg-type]
    if "scores" in fields:
        writer.add_token_scores(fields["scores"])  # type: ignore[arg-type]
    if "merges" in fields:
        writer.add_token_merges(fields["merges"])  # type: ignore[arg-type]
    writer.add_bos_token_id(int(fields["bos"]))  # type: ignore[call-overload]
    writer.add_eos_token_id(int(fields["eos"]))  # type: ignore[call-overload]
    if "eot" in fields:
        writer.add_eot_token_id(int(fields["eot"]))  # type: ignore[call-overload]
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def gpt2_gguf(byte_level_backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec = json.loads(byte_level_backend.to_str())
    vocab: dict[str, int] = spec["model"]["vocab"]
    tokens = sorted(vocab, key=vocab.__getitem__)
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    return _write_gguf(
        tmp_path_factory.mktemp("gguf") / "gpt2.gguf",
        model="gpt2",
        pre="gpt-2",
        tokens=tokens,
        types=[3 if t in SPECIALS else 1 for t in tokens],
        merges=merges,
        bos=0,
        eos=0,
        eot=2,
    )


@pytest.mark.parametrize("text", [*SAMPLES, "<|im_start|>user\nhello<|im_end|>\n"])
def test_gguf_gpt2_matches_tokenizer_json(
    gpt2_gguf: Path, byte_level_backend: Backend, text: str
) -> None:
    tokenizer = load_tokenizer(gpt2_gguf)
    ids = tokenizer.encode(text)
    assert ids == byte_level_backend.encode(text).ids
    assert tokenizer.decode(ids) == text


def test_gguf_gpt2_metadata(gpt2_gguf: Path) -> None:
    tokenizer = load_tokenizer(gpt2_gguf)
    assert tokenizer.eos_token_ids == frozenset({0, 2}) and tokenizer.eos_token_id == 0
    assert not tokenizer.add_bos and tokenizer.bos_text == "<|endoftext|>"
    assert tokenizer.is_special(1) and tokenizer.token_text(1) == "<|im_start|>"


@pytest.fixture(scope="module")
def llama_gguf(
    spm_processor: sentencepiece.SentencePieceProcessor, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    sp = spm_processor
    num_pieces = sp.get_piece_size()

    def kind(i: int) -> int:
        if sp.is_unknown(i):
            return 2
        if sp.is_control(i):
            return 3
        return 6 if sp.is_byte(i) else 1

    return _write_gguf(
        tmp_path_factory.mktemp("gguf") / "llama.gguf",
        model="llama",
        tokens=[sp.id_to_piece(i) for i in range(num_pieces)],
        types=[kind(i) for i in range(num_pieces)],
        scores=[sp.get_score(i) for i in range(num_pieces)],
        bos=1,
        eos=2,
    )


@pytest.mark.parametrize("text", [*SAMPLES, "the<|im_end|>lazy dog", "</s>"])
def test_gguf_llama_matches_sentencepiece(
    llama_gguf: Path, spm_tokenizer: Tokenizer, text: str
) -> None:
    tokenizer = load_tokenizer(llama_gguf)
    ids = tokenizer.encode(text)
    assert ids == spm_tokenizer.encode(text)
    assert tokenizer.decode(ids) == spm_tokenizer.decode(ids)
    assert tokenizer.add_bos and tokenizer.strips_leading_space


def test_gguf_llama_random_words_match_sentencepiece(
    llama_gguf: Path, spm_processor: sentencepiece.SentencePieceProcessor
) -> None:
    tokenizer = load_tokenizer(llama_gguf)
    rng = random.Random(3)
    letters = "abcdefghijklmnopqrstuvwxyz  "
    for _ in range(200):
        text = "".join(rng.choices(letters, k=rng.randint(1, 30)))
        assert tokenizer.encode(text) == spm_processor.encode(text), text


# --- errors ------------------------------------------------------------------------------------


def test_missing_and_unsupported_sources(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match="not found"):
        load_tokenizer(tmp_path / "nope.gguf")
    with pytest.raises(TokenizerError, match=r"no tokenizer\.json or tokenizer\.model"):
        load_tokenizer(tmp_path)
    (tmp_path / "bad.gguf").write_bytes(b"not a gguf")
    with pytest.raises(TokenizerError, match="not a valid GGUF"):
        load_tokenizer(tmp_path / "bad.gguf")
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(TokenizerError, match="cannot load"):
        load_tokenizer(tmp_path)


def test_unsupported_gguf_vocabularies(tmp_path: Path) -> None:
    fields = dict(tokens=["a", "b"], types=[1, 1], bos=0, eos=1)
    bert = _write_gguf(tmp_path / "bert.gguf", model="bert", **fields)
    with pytest.raises(TokenizerError, match="unsupported GGUF tokenizer model 'bert'"):
        load_tokenizer(bert)
    odd_pre = _write_gguf(tmp_path / "pre.gguf", model="gpt2", pre="martian", merges=[], **fields)
    with pytest.raises(TokenizerError, match="unsupported GGUF pre-tokenizer 'martian'"):
        load_tokenizer(odd_pre)
    with pytest.raises(TokenizerError, match="no vocabulary"):
        load_tokenizer(tmp_path / "pre.gguf", {"tokenizer.ggml.model": "gpt2"})


@pytest.mark.parametrize(
    "pre",
    [
        *("default", "llama-bpe", "gpt-2", "smollm", "qwen2", "falcon", "deepseek-coder"),
        *("bloom", "viking", "tekken", "gpt-4o"),
    ],
)
def test_every_pre_tokenizer_regex_compiles_and_keeps_all_text(pre: str) -> None:
    byte_chars = sorted(gpt2_byte_decoder(), key=gpt2_byte_decoder().__getitem__)
    metadata = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": pre,
        "tokenizer.ggml.tokens": byte_chars,
        "tokenizer.ggml.token_type": [1] * 256,
        "tokenizer.ggml.merges": [],
    }
    tokenizer = load_gguf_tokenizer(metadata)
    text = "Hello, World's 12345 café\n\n  日本語 🎉 a+b=c"
    ids = tokenizer.encode(text)
    assert len(ids) == len(text.encode()) and tokenizer.decode(ids) == text
