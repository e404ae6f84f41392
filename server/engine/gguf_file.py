"""Read a GGUF file's metadata into plain Python values. Knows nothing of the model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gguf

from .errors import ModelLoadError


def open_gguf(path: str | Path) -> gguf.GGUFReader:
    """Open and validate a GGUF file; a truncated or corrupt file is a ModelLoadError."""
    try:
        return gguf.GGUFReader(str(path), "r")
    except FileNotFoundError as exc:
        raise ModelLoadError(f"model file not found: {path}") from exc
    except (ValueError, IndexError, OSError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"not a valid GGUF file ({exc}): {path}") from exc


def read_metadata(reader: gguf.GGUFReader) -> dict[str, Any]:
    """Every key/value field as str, int, float, bool or a list of those."""
    metadata: dict[str, Any] = {}
    for name, field in reader.fields.items():
        if name.startswith("GGUF."):
            continue
        try:
            metadata[name] = field.contents()
        except (ValueError, IndexError, UnicodeDecodeError) as exc:
            raise ModelLoadError(f"corrupt GGUF metadata field {name!r}: {exc}") from exc
    return metadata
