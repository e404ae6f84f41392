"""Builds a `tokenizers.Tokenizer` from the vocabulary embedded in GGUF metadata. Reads no files.

"gpt2" vocabularies become byte-level BPE with llama.cpp's split regexes for the `pre` name;
"llama" (SentencePiece) vocabularies become BPE with byte fallback whose merges are ranked by
piece score, which is what llama.cpp's SPM tokenizer (and HF's converter) computes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tokenizers import AddedToken, Regex, normalizers, pre_tokenizers
from tokenizers import Tokenizer as Backend
from tokenizers.models import BPE

from .errors import TokenizerError
from .tokenizer_base import Vocabulary, byte_level_bytes, gpt2_byte_decoder, spm_bytes
from .tokenizer_hf import TokenizersTokenizer

# tokenizer.ggml.token_type values.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_CONTRACTIONS = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
_LLAMA3 = (
    _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2 = (
    _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_GPT4O = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_TEKKEN = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_PORO = r" ?[^(\s|.,!?…。，、।۔،)]+"

# llama.cpp's pre-tokenizer regexes per `tokenizer.ggml.pre` name (llama-vocab.cpp): each
# regex in turn splits every piece further, keeping matched and unmatched text.
_SPLITS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("default", (r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", r"[0-9][0-9][0-9]")),
    (
        "llama3 llama-v3 llama-bpe falcon3 falcon-h1 pixtral dbrx smaug-bpe glm4 chatglm-bpe "
        "midm-2.0 lfm2",
        (_LLAMA3,),
    ),
    (
        "gpt-2 gpt2 phi-2 mpt olmo jais trillion granite-docling exaone4 roberta-bpe gigachat "
        "mellum a.x-4.0",
        (_GPT2,),
    ),
    ("smollm starcoder refact command-r codeshell exaone minerva-7b", (r"\p{N}", _GPT2)),
    ("qwen2 deepseek-r1-qwen stablelm2 megrez hunyuan kormo", (_QWEN2,)),
    ("falcon", (r"[\p{P}\$\+<=>\^~\|`]+", _GPT2, r"[0-9][0-9][0-9]")),
    ("deepseek-coder", (r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", r"[一-龥ࠀ-一가-퟿]+", r"\p{N}")),
    ("poro-chat bloom gpt3-finnish", (_PORO,)),
    ("viking", (_PORO, r"\p{N}")),
    ("tekken", (_TEKKEN,)),
    ("gpt-4o llama4", (_GPT4O,)),
)
# llama.cpp takes a whole pre-split word as one token when the vocabulary has it.
_IGNORE_MERGES = frozenset(
    {
        "llama3",
        "llama-v3",
        "llama-bpe",
        "falcon3",
        "falcon-h1",
        "pixtral",
        "midm-2.0",
        "lfm2",
        "tekken",
    }
)


def split_regexes(pre: str) -> tuple[str, ...]:
    for names, regexes in _SPLITS:
        if pre in names.split():
            return regexes
    raise TokenizerError(f"unsupported GGUF pre-tokenizer {pre!r} (tokenizer.ggml.pre)")


def load_gguf_tokenizer(metadata: Mapping[str, Any]) -> TokenizersTokenizer:
    """The tokenizer a GGUF file's `tokenizer.ggml.*` metadata describes."""
    kind = metadata.get("tokenizer.ggml.model")
    pieces = tuple(str(t) for t in metadata.get("tokenizer.ggml.tokens", ()))
    if not pieces:
        raise TokenizerError("GGUF file has no vocabulary (tokenizer.ggml.tokens)")
    default_types = (NORMAL,) * len(pieces)
    types = tuple(int(t) for t in metadata.get("tokenizer.ggml.token_type", default_types))
    if len(types) != len(pieces):
        raise TokenizerError("GGUF tokenizer.ggml.token_type does not match the vocabulary size")
    if kind == "gpt2":
        backend, table = _byte_level_bpe(metadata, pieces, types)
        strips_leading_space = False
    elif kind == "llama":
        backend, table = _sentencepiece_bpe(metadata, pieces, types)
        strips_leading_space = bool(metadata.get("tokenizer.ggml.add_space_prefix", True))
    else:
        raise TokenizerError(f"unsupported GGUF tokenizer model {kind!r} (tokenizer.ggml.model)")
    _add_literal_tokens(backend, pieces, types)
    bos_id = _optional_id(metadata, "tokenizer.ggml.bos_token_id", len(pieces))
    eos_id = _optional_id(metadata, "tokenizer.ggml.eos_token_id", len(pieces))
    end_ids = (
        _optional_id(metadata, f"tokenizer.ggml.{key}_token_id", len(pieces))
        for key in ("eot", "eom")
    )
    # llama.cpp adds BOS for SentencePiece vocabularies unless the file says otherwise.
    add_bos = bool(metadata.get("tokenizer.ggml.add_bos_token", kind == "llama"))
    vocab = Vocabulary(
        pieces=pieces,
        token_bytes=table,
        special_ids=frozenset(i for i, t in enumerate(types) if t in (CONTROL, UNKNOWN)),
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        eos_token_ids=frozenset(i for i in (eos_id, *end_ids) if i is not None),
        add_bos=add_bos and bos_id is not None,
        strips_leading_space=strips_leading_space,
    )
    return TokenizersTokenizer(backend, vocab)


def _optional_id(metadata: Mapping[str, Any], key: str, vocab_size: int) -> int | None:
    value = metadata.get(key)
    if value is None:
        return None
    if not 0 <= int(value) < vocab_size:
        raise TokenizerError(f"GGUF {key}={value} is outside the vocabulary")
    return int(value)


def _first_ids(pieces: Sequence[str]) -> dict[str, int]:
    # Some vocabularies repeat a piece (padding tokens); the first id wins, as in llama.cpp.
    ids: dict[str, int] = {}
    for token_id, piece in enumerate(pieces):
        ids.setdefault(piece, token_id)
    return ids


def _byte_level_bpe(
    metadata: Mapping[str, Any], pieces: Sequence[str], types: Sequence[int]
) -> tuple[Backend, tuple[bytes, ...]]:
    pre = str(metadata.get("tokenizer.ggml.pre", "default"))
    regexes = split_regexes(pre)
    merges = [_merge_pair(m) for m in metadata.get("tokenizer.ggml.merges", ())]
    try:
        model = BPE(vocab=_first_ids(pieces), merges=merges, ignore_merges=pre in _IGNORE_MERGES)
    except Exception as exc:  # the Rust side reports a merge naming an unknown piece this way
        raise TokenizerError(f"GGUF BPE vocabulary is inconsistent: {exc}") from exc
    backend = Backend(model)
    splits: list[pre_tokenizers.PreTokenizer] = [
        pre_tokenizers.Split(Regex(r), behavior="isolated") for r in regexes
    ]
    splits.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False))
    backend.pre_tokenizer = pre_tokenizers.Sequence(splits)
    byte_decoder = gpt2_byte_decoder()
    table = tuple(
        byte_level_bytes(p, byte_decoder) if t in (NORMAL, BYTE, UNUSED) else p.encode()
        for p, t in zip(pieces, types, strict=True)
    )
    return backend, table


def _merge_pair(merge: str) -> tuple[str, str]:
    left, sep, right = merge.partition(" ")
    if not sep:
        raise TokenizerError(f"malformed GGUF merge {merge!r} (tokenizer.ggml.merges)")
    return left, right


def _sentencepiece_bpe(
    metadata: Mapping[str, Any], pieces: Sequence[str], types: Sequence[int]
) -> tuple[Backend, tuple[bytes, ...]]:
    scores = tuple(float(s) for s in metadata.get("tokenizer.ggml.scores", (0.0,) * len(pieces)))
    unk_id = next((i for i, t in enumerate(types) if t == UNKNOWN), None)
    model = BPE(
        vocab=_first_ids(pieces),
        merges=_score_merges(pieces, types, scores),
        unk_token=None if unk_id is None else pieces[unk_id],
        fuse_unk=True,
        byte_fallback=True,
    )
    backend = Backend(model)
    steps: list[normalizers.Normalizer] = []
    if metadata.get("tokenizer.ggml.add_space_prefix", True):
        steps.append(normalizers.Prepend("▁"))
    steps.append(normalizers.Replace(" ", "▁"))
    backend.normalizer = normalizers.Sequence(steps)
    table = tuple(
        # llama.cpp unescapes "▁" in user-defined pieces too (Gemma's whitespace runs).
        spm_bytes(p) if t in (NORMAL, BYTE, UNUSED, USER_DEFINED) else p.encode()
        for p, t in zip(pieces, types, strict=True)
    )
    return backend, table


def _score_merges(
    pieces: Sequence[str], types: Sequence[int], scores: Sequence[float]
) -> list[tuple[str, str]]:
    """Every split of a normal piece into two normal pieces, best-scored result first.

    SentencePiece BPE repeatedly merges the adjacent pair whose concatenation scores highest,
    so ranking merges by that score makes HF's rank-ordered BPE produce the same pieces.
    """
    normal = {
        p: i
        for i, (p, t) in reversed(list(enumerate(zip(pieces, types, strict=True))))
        if t == NORMAL
    }
    ranked: list[tuple[float, int, int, str, str]] = []
    for piece, piece_id in normal.items():
        for cut in range(1, len(piece)):
            left_id = normal.get(piece[:cut])
            right_id = normal.get(piece[cut:])
            if left_id is not None and right_id is not None:
                ranked.append((-scores[piece_id], left_id, right_id, piece[:cut], piece[cut:]))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


def _add_literal_tokens(backend: Backend, pieces: Sequence[str], types: Sequence[int]) -> None:
    """Control and user-defined tokens are matched literally in text, before any splitting."""
    backend.add_special_tokens(
        [
            AddedToken(p, special=True, normalized=False)
            for p, t in zip(pieces, types, strict=True)
            if t == CONTROL
        ]
    )
    backend.add_tokens(
        [
            AddedToken(p, special=False, normalized=False)
            for p, t in zip(pieces, types, strict=True)
            if t == USER_DEFINED
        ]
    )
