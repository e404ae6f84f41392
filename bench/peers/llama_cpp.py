"""Runs the built llama.cpp peer binaries and parses their reports; never builds anything."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

LLAMA_CPP_PYTHON_VERSION = "0.3.36"  # keep in step with VERSION in build_llama_cpp.sh
BUILD_SCRIPT = Path(__file__).with_name("build_llama_cpp.sh")


def default_peers_dir() -> Path:
    """The cache folder build_llama_cpp.sh builds into (same env lookup, read at call time)."""
    explicit = os.environ.get("BANTERBOX_PEERS_DIR")
    if explicit:
        return Path(explicit)
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "banterbox" / "peers"


def find_binary(name: str, *, peers_dir: Path | None = None) -> Path | None:
    """Path of a built llama.cpp tool (e.g. "llama-bench"), or None when not built yet."""
    root = peers_dir if peers_dir is not None else default_peers_dir()
    path = root / f"llama.cpp-{LLAMA_CPP_PYTHON_VERSION}" / "bin" / name
    return path if path.is_file() and os.access(path, os.X_OK) else None


def _require_binary(name: str, binary: Path | None) -> Path:
    found = binary if binary is not None else find_binary(name)
    if found is None:
        raise FileNotFoundError(f"{name} is not built; run {BUILD_SCRIPT}")
    return found


def parse_llama_bench_json(text: str) -> dict[str, float]:
    """Prefill and decode rates from `llama-bench -o json` with one -p and one -n test."""
    prefill: float | None = None
    decode: float | None = None
    for test in json.loads(text):
        if test["n_prompt"] > 0 and test["n_gen"] == 0:
            prefill = float(test["avg_ts"])
        elif test["n_gen"] > 0 and test["n_prompt"] == 0:
            decode = float(test["avg_ts"])
    if prefill is None or decode is None:
        raise ValueError("llama-bench output lacks a prompt-only or a generation-only test")
    return {"prefill_tok_s": prefill, "decode_tok_s": decode}


def parse_batched_bench_jsonl(text: str) -> list[dict[str, float | int]]:
    """One row per batch size from `llama-batched-bench --output-format jsonl`.

    Log lines are interleaved on the same streams, so only lines that are JSON objects count.
    """
    rows: list[dict[str, float | int]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        record: dict[str, Any] = json.loads(line)
        rows.append(
            {
                "sequences": int(record["pl"]),
                "prompt_tokens": int(record["pp"]),
                "new_tokens": int(record["tg"]),
                "prefill_tok_s": float(record["speed_pp"]),
                "decode_tok_s": float(record["speed_tg"]),
            }
        )
    return rows


def run_llama_bench(
    model: Path,
    *,
    threads: int = 2,
    prompt_tokens: int = 512,
    new_tokens: int = 128,
    reps: int = 3,
    binary: Path | None = None,
    timeout_s: float = 600.0,
) -> dict[str, float]:
    """Single-sequence prefill and decode tokens/s of llama.cpp on model."""
    command = [
        str(_require_binary("llama-bench", binary)),
        "-m", str(model),
        "-t", str(threads),
        "-p", str(prompt_tokens),
        "-n", str(new_tokens),
        "-r", str(reps),
        "-o", "json",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=True)
    return parse_llama_bench_json(done.stdout)


def run_batched_bench(
    model: Path,
    *,
    threads: int = 2,
    prompt_tokens: int = 64,
    new_tokens: int = 64,
    parallel: list[int],
    binary: Path | None = None,
    timeout_s: float = 600.0,
) -> list[dict[str, float | int]]:
    """Aggregate prefill and decode tokens/s for each number of parallel sequences."""
    # Every sequence holds its own prompt and output in the KV cache; batched-bench silently
    # skips batch sizes that do not fit, so size the context for the largest one.
    context_tokens = max(parallel) * (prompt_tokens + new_tokens)
    command = [
        str(_require_binary("llama-batched-bench", binary)),
        "-m", str(model),
        "-t", str(threads),
        "-c", str(context_tokens),
        "-npp", str(prompt_tokens),
        "-ntg", str(new_tokens),
        "-npl", ",".join(str(n) for n in parallel),
        "--output-format", "jsonl",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=True)
    return parse_batched_bench_jsonl(done.stdout)
