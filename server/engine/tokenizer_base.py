"""The Tokenizer interface and the byte-table decoding every implementation shares. No file I/O."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import TokenizerError


@dataclass(frozen=True)
class Vocabulary:
    """What a tokenizer knows about each id, decided once at load time.

    `pieces` are the token strings as the vocabulary spells them ("Ġhello", "▁hello", "<s>");
    `token_bytes` are the raw bytes each id stands for when decoded.
    """

    pieces: tuple[str, ...]
    token_bytes: tuple[bytes, ...]
    # Control tokens: dropped by decode(skip_special=True).
    special_ids: frozenset[int]
    bos_token_id: int | None
    # The primary EOS, the one a chat template's `eos_token` names.
    eos_token_id: int | None
    # Every id that ends generation: EOS plus end-of-turn / end-of-message tokens.
    eos_token_ids: frozenset[int]
    # Whether encode(add_special=True) prepends BOS.
    add_bos: bool
    # SentencePiece's dummy prefix: decoding drops one space at the very start of the text.
    strips_leading_space: bool


class Tokenizer(ABC):
    """Text ↔ token ids. Special tokens written literally in text encode to their own id."""

    def __init__(self, vocab: Vocabulary) -> None:
        self._vocab = vocab
        self._table = vocab.token_bytes

    @abstractmethod
    def _encode_text(self, text: str) -> list[int]:
        """Token ids for `text`, special tokens matched literally, no BOS."""

    @property
    def vocab_size(self) -> int:
        return len(self._table)

    @property
    def bos_token_id(self) -> int | None:
        return self._vocab.bos_token_id

    @property
    def eos_token_id(self) -> int | None:
        return self._vocab.eos_token_id

    @property
    def eos_token_ids(self) -> frozenset[int]:
        return self._vocab.eos_token_ids

    @property
    def add_bos(self) -> bool:
        return self._vocab.add_bos

    @property
    def strips_leading_space(self) -> bool:
        return self._vocab.strips_leading_space

    @property
    def bos_text(self) -> str:
        return "" if self.bos_token_id is None else self.token_text(self.bos_token_id)

    @property
    def eos_text(self) -> str:
        return "" if self.eos_token_id is None else self.token_text(self.eos_token_id)

    def encode(self, text: str, *, add_special: bool = False) -> list[int]:
        if not text.isascii():
            _check_encodable(text)
        ids = self._encode_text(text)
        if add_special and self.add_bos and self.bos_token_id is not None:
            ids.insert(0, self.bos_token_id)
        return ids

    def decode(self, ids: Iterable[int], *, skip_special: bool = False) -> str:
        if skip_special:
            special = self._vocab.special_ids
            ids = [i for i in ids if i not in special]
        text = b"".join(self.token_bytes(i) for i in ids).decode("utf-8", errors="replace")
        if self.strips_leading_space and text.startswith(" "):
            return text[1:]
        return text

    def token_bytes(self, token_id: int) -> bytes:
        """The raw bytes `token_id` stands for; ids past the vocabulary (padded embedding
        rows a model may still sample) stand for nothing, as in HF tokenizers."""
        if 0 <= token_id < len(self._table):
            return self._table[token_id]
        return b""

    @property
    def special_texts(self) -> tuple[str, ...]:
        """How each control token is spelled, e.g. "<|im_start|>"."""
        return tuple(self._vocab.pieces[i] for i in sorted(self._vocab.special_ids))

    def is_special(self, token_id: int) -> bool:
        return token_id in self._vocab.special_ids

    def token_text(self, token_id: int) -> str:
        """The token as the vocabulary spells it (e.g. "<|im_end|>", "Ġhello")."""
        if not 0 <= token_id < len(self._table):
            raise TokenizerError(f"token id {token_id} is outside the vocabulary")
        return self._vocab.pieces[token_id]


def _check_encodable(text: str) -> None:
    # A lone surrogate (JSON lets a client send "\\ud800") has no UTF-8 bytes to tokenize.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise TokenizerError(
            f"text is not valid Unicode at offset {exc.start}: {exc.reason}"
        ) from None


def gpt2_byte_decoder() -> dict[str, int]:
    """GPT-2's printable stand-in character for each byte, inverted: char → byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    chars = {b: chr(b) for b in printable}
    num_shifted = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + num_shifted)
            num_shifted += 1
    return {c: b for b, c in chars.items()}


def byte_level_bytes(piece: str, byte_decoder: Mapping[str, int]) -> bytes:
    """A byte-level BPE piece's bytes; a piece outside the byte alphabet (an added token's
    literal text) stands for its own UTF-8, as HF's ByteLevel decoder does."""
    try:
        return bytes(byte_decoder[c] for c in piece)
    except KeyError:
        return piece.encode()


def byte_fallback_value(piece: str) -> int | None:
    """The byte a SentencePiece "<0xAB>" piece stands for, or None."""
    if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
        try:
            return int(piece[3:5], 16)
        except ValueError:
            return None
    return None


def spm_bytes(piece: str, *, byte_fallback: bool = True) -> bytes:
    """A SentencePiece piece's bytes: "▁" is a space, "<0xAB>" one raw byte."""
    value = byte_fallback_value(piece) if byte_fallback else None
    if value is not None:
        return bytes([value])
    return piece.replace("▁", " ").encode()


@dataclass(frozen=True)
class FolderConfig:
    """Special-token settings an HF model folder states in its JSON side files."""

    bos_text: str | None
    eos_text: str | None
    add_bos: bool | None
    eos_token_ids: tuple[int, ...]


def read_folder_config(folder: Path) -> FolderConfig:
    """tokenizer_config.json's bos/eos/add_bos_token, and the EOS ids of generation_config.json
    (else config.json): chat models list their end-of-turn tokens there."""
    try:
        config = read_json_object(folder / "tokenizer_config.json")
        generation = read_json_object(folder / "generation_config.json")
        model_config = read_json_object(folder / "config.json")
    except ValueError as exc:
        raise TokenizerError(str(exc)) from exc
    add_bos = config.get("add_bos_token")
    eos_ids = generation.get("eos_token_id", model_config.get("eos_token_id", []))
    eos_ids = [eos_ids] if isinstance(eos_ids, int) else eos_ids
    return FolderConfig(
        bos_text=token_content(config.get("bos_token")),
        eos_text=token_content(config.get("eos_token")),
        add_bos=add_bos if isinstance(add_bos, bool) else None,
        eos_token_ids=tuple(i for i in eos_ids if isinstance(i, int)),
    )


def token_content(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or {"content": ...}."""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return str(value["content"])
    return None


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON side file's top-level object, {} when the file is absent; ValueError if unreadable."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from exc
    return data if isinstance(data, dict) else {}
