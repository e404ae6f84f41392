"""Finds and loads a model's tokenizer (GGUF vocabulary or HF folder). Reads model files only."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import ModelLoadError, TokenizerError
from .gguf_file import open_gguf, read_metadata
from .tokenizer_base import Tokenizer
from .tokenizer_gguf import load_gguf_tokenizer
from .tokenizer_hf import load_tokenizer_json
from .tokenizer_spm import load_sentencepiece

__all__ = ["Tokenizer", "load_tokenizer"]


def load_tokenizer(path: Path, metadata: Mapping[str, Any] | None = None) -> Tokenizer:
    """The tokenizer of a .gguf file (its embedded vocabulary; `metadata` spares re-reading
    it) or of an HF folder (tokenizer.json preferred, else tokenizer.model)."""
    path = Path(path)
    if path.is_file() and path.suffix == ".gguf":
        if metadata is None:
            try:
                metadata = read_metadata(open_gguf(path))
            except ModelLoadError as exc:
                raise TokenizerError(str(exc)) from exc
        return load_gguf_tokenizer(metadata)
    if path.is_dir():
        if (path / "tokenizer.json").is_file():
            return load_tokenizer_json(path)
        if (path / "tokenizer.model").is_file():
            return load_sentencepiece(path)
        raise TokenizerError(f"no tokenizer.json or tokenizer.model in {path}")
    if not path.exists():
        raise TokenizerError(f"tokenizer path not found: {path}")
    raise TokenizerError(f"not a .gguf file or a model folder: {path}")
