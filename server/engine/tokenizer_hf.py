"""An HF folder's tokenizer.json, run by the `tokenizers` library. Reads only that folder."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import tokenizers

from .errors import TokenizerError
from .tokenizer_base import (
    Tokenizer,
    Vocabulary,
    byte_level_bytes,
    gpt2_byte_decoder,
    read_folder_config,
    spm_bytes,
)


class TokenizersTokenizer(Tokenizer):
    """A `tokenizers.Tokenizer` for encoding; decoding goes through the shared byte table."""

    def __init__(self, backend: tokenizers.Tokenizer, vocab: Vocabulary) -> None:
        super().__init__(vocab)
        self._backend = backend

    def _encode_text(self, text: str) -> list[int]:
        return list(self._backend.encode(text, add_special_tokens=False).ids)


def load_tokenizer_json(folder: Path) -> TokenizersTokenizer:
    """An HF folder's tokenizer.json, with tokenizer_config.json / generation_config.json."""
    path = folder / "tokenizer.json"
    try:
        backend = tokenizers.Tokenizer.from_file(str(path))
    except Exception as exc:  # the Rust side raises plain Exception for any malformed file
        raise TokenizerError(f"cannot load {path}: {exc}") from exc
    spec = json.loads(backend.to_str())
    num_ids = max(backend.get_vocab(with_added_tokens=True).values(), default=-1) + 1
    pieces = tuple(backend.id_to_token(i) or "" for i in range(num_ids))
    added = backend.get_added_tokens_decoder()
    # HF's decode runs added tokens through the decoder like any other piece; so do we.
    to_bytes = _piece_decoder(spec.get("decoder"), path)
    table = tuple(to_bytes(piece) for piece in pieces)
    config = read_folder_config(folder)
    bos_id = _lookup(backend, config.bos_text)
    eos_id = _lookup(backend, config.eos_text)
    if config.add_bos is not None:
        add_bos = config.add_bos
    else:
        # No explicit setting: the post-processor says whether the model wants BOS.
        probe = backend.encode("", add_special_tokens=True).ids
        add_bos = bos_id is not None and probe[:1] == [bos_id]
    eos_ids = {i for i in (eos_id, *config.eos_token_ids) if i is not None}
    vocab = Vocabulary(
        pieces=pieces,
        token_bytes=table,
        special_ids=frozenset(i for i, token in added.items() if token.special),
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        eos_token_ids=frozenset(eos_ids),
        add_bos=add_bos and bos_id is not None,
        strips_leading_space=_strips_leading_space(spec.get("decoder")),
    )
    return TokenizersTokenizer(backend, vocab)


def _lookup(backend: tokenizers.Tokenizer, text: str | None) -> int | None:
    if text is None:
        return None
    token_id = backend.token_to_id(text)
    return None if token_id is None else int(token_id)


def _decoder_steps(decoder: Mapping[str, Any] | None) -> Sequence[Mapping[str, Any]]:
    if decoder is None:
        return ()
    if decoder.get("type") == "Sequence":
        return [step for inner in decoder.get("decoders", ()) for step in _decoder_steps(inner)]
    return (decoder,)


def _piece_decoder(decoder: Mapping[str, Any] | None, path: Path) -> Callable[[str], bytes]:
    """A function from a vocabulary piece to its bytes, following the file's decoder kind."""
    kinds = {str(step.get("type")) for step in _decoder_steps(decoder)}
    if "ByteLevel" in kinds:
        byte_decoder = gpt2_byte_decoder()
        return lambda piece: byte_level_bytes(piece, byte_decoder)
    if kinds & {"Metaspace", "Replace", "ByteFallback"}:
        byte_fallback = "ByteFallback" in kinds
        return lambda piece: spm_bytes(piece, byte_fallback=byte_fallback)
    raise TokenizerError(f"unsupported tokenizer.json decoder {sorted(kinds)}: {path}")


def _strips_leading_space(decoder: Mapping[str, Any] | None) -> bool:
    for step in _decoder_steps(decoder):
        kind = step.get("type")
        if kind == "Strip" and step.get("content") == " " and int(step.get("start", 0)) > 0:
            return True
        if kind == "Metaspace":
            scheme = step.get("prepend_scheme")
            if scheme is None:
                return bool(step.get("add_prefix_space", True))
            return bool(scheme != "never")
    return False
