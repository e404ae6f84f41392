"""An HF folder's SentencePiece tokenizer.model, via `sentencepiece`. Reads only that folder."""

from __future__ import annotations

import re
from pathlib import Path

import sentencepiece

from .errors import TokenizerError
from .tokenizer_base import Tokenizer, Vocabulary, read_folder_config, spm_bytes


class SentencePieceTokenizer(Tokenizer):
    """SentencePiece never produces control pieces from text, so those are split out first."""

    def __init__(self, processor: sentencepiece.SentencePieceProcessor, vocab: Vocabulary) -> None:
        super().__init__(vocab)
        self._processor = processor
        literal = {vocab.pieces[i]: i for i in sorted(vocab.special_ids, reverse=True)}
        # Longest first, so a special token that prefixes another never wins over it.
        alternatives = sorted(literal, key=len, reverse=True)
        self._literal_ids = literal
        self._literal_re = re.compile("|".join(map(re.escape, alternatives))) if literal else None

    def _encode_text(self, text: str) -> list[int]:
        if self._literal_re is None:
            return self._encode_plain(text)
        ids: list[int] = []
        start = 0
        for match in self._literal_re.finditer(text):
            ids += self._encode_plain(text[start : match.start()])
            ids.append(self._literal_ids[match.group()])
            start = match.end()
        ids += self._encode_plain(text[start:])
        return ids

    def _encode_plain(self, text: str) -> list[int]:
        if not text:
            return []
        return list(self._processor.encode(text, out_type=int))


def load_sentencepiece(folder: Path) -> SentencePieceTokenizer:
    """An HF folder's tokenizer.model, with tokenizer_config.json / generation_config.json."""
    path = folder / "tokenizer.model"
    processor = sentencepiece.SentencePieceProcessor()
    try:
        processor.Load(str(path))
    except (OSError, RuntimeError) as exc:
        raise TokenizerError(f"cannot load SentencePiece model {path}: {exc}") from exc
    num_pieces = processor.get_piece_size()
    pieces = tuple(processor.id_to_piece(i) for i in range(num_pieces))
    special = frozenset(
        i for i in range(num_pieces) if processor.is_control(i) or processor.is_unknown(i)
    )
    table = tuple(
        p.encode() if i in special else spm_bytes(p, byte_fallback=processor.is_byte(i))
        for i, p in enumerate(pieces)
    )
    config = read_folder_config(folder)
    bos_id = _resolve(processor, config.bos_text, processor.bos_id())
    eos_id = _resolve(processor, config.eos_text, processor.eos_id())
    # The dummy-prefix setting lives in the model proto; its effect is visible on any text.
    probe = b"".join(table[i] for i in processor.encode("a", out_type=int))
    vocab = Vocabulary(
        pieces=pieces,
        token_bytes=table,
        special_ids=special,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        eos_token_ids=frozenset({i for i in (eos_id, *config.eos_token_ids) if i is not None}),
        # HF's Llama tokenizers add BOS unless their config says not to.
        add_bos=bos_id is not None and config.add_bos is not False,
        strips_leading_space=probe.startswith(b" "),
    )
    return SentencePieceTokenizer(processor, vocab)


def _resolve(
    processor: sentencepiece.SentencePieceProcessor, text: str | None, default_id: int
) -> int | None:
    if text is not None:
        token_id = processor.piece_to_id(text)
        # piece_to_id answers the unknown id for a piece it lacks.
        if processor.id_to_piece(token_id) == text:
            return int(token_id)
    return int(default_id) if default_id >= 0 else None
