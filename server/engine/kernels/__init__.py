"""Builds and loads the C++ kernels as torch.ops.banterbox.*: the quantized matmul, RMSNorm and
SiLU-mul (quant.cpp), and decode attention over the paged KV cache (attention.cpp). Touches no
model state."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelLoadError

SOURCES = [Path(__file__).with_name(name) for name in ("quant.cpp", "attention.cpp")]
# Zen 3 / Haswell and later; the kernels use no AVX-512.
_CFLAGS = ["-O3", "-mavx2", "-mfma", "-mf16c", "-fopenmp"]


def build_directory() -> Path:
    """Inside the virtual environment: a fresh venv builds afresh, and nothing else is touched."""
    return Path(sys.prefix) / "share" / "banterbox" / "kernels"


@functools.cache
def load(*, verbose: bool = False) -> Any:
    """torch.ops.banterbox, built with ninja on first use (a minute) and only checked after."""
    from torch.utils.cpp_extension import load as load_extension

    directory = build_directory()
    directory.mkdir(parents=True, exist_ok=True)
    try:
        load_extension(
            name="banterbox_quant",
            sources=[str(source) for source in SOURCES],
            extra_cflags=_CFLAGS,
            extra_ldflags=["-fopenmp"],
            build_directory=str(directory),
            is_python_module=False,
            verbose=verbose,
        )
    except (RuntimeError, OSError, ImportError) as exc:
        raise ModelLoadError(f"cannot build the C++ kernels: {exc}") from exc
    return torch.ops.banterbox
