"""Tests for bench.peers.llama_cpp on captured llama.cpp output; needs no llama.cpp build."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from bench.peers.llama_cpp import (
    LLAMA_CPP_PYTHON_VERSION,
    find_binary,
    parse_batched_bench_jsonl,
    parse_llama_bench_json,
    run_batched_bench,
    run_llama_bench,
)

DATA = Path(__file__).parent / "data"  # real output of the 0.3.36 tools on SmolLM2-135M Q4_1


def fake_tool(path: Path, sample: Path) -> Path:
    """An executable that records its argv next to itself and prints a captured sample."""
    path.write_text(f'#!/bin/sh\necho "$@" > "{path}.args"\ncat "{sample}"\n')
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_parse_llama_bench_json() -> None:
    rates = parse_llama_bench_json((DATA / "llama_bench.json").read_text())
    assert rates == {
        "prefill_tok_s": pytest.approx(468.382555),
        "decode_tok_s": pytest.approx(179.399414),
    }


def test_parse_llama_bench_json_needs_both_tests() -> None:
    with pytest.raises(ValueError):
        parse_llama_bench_json('[{"n_prompt": 64, "n_gen": 0, "avg_ts": 1.0}]')


def test_parse_batched_bench_jsonl() -> None:
    rows = parse_batched_bench_jsonl((DATA / "batched_bench.jsonl").read_text())
    assert [row["sequences"] for row in rows] == [1, 8, 32]
    assert rows[0] == {
        "sequences": 1,
        "prompt_tokens": 64,
        "new_tokens": 64,
        "prefill_tok_s": pytest.approx(482.272705),
        "decode_tok_s": pytest.approx(183.425247),
    }
    assert rows[2]["decode_tok_s"] == pytest.approx(37.850449)


def test_parse_batched_bench_skips_log_lines() -> None:
    sample = (DATA / "batched_bench.jsonl").read_text()
    noisy = "main: loading model\n| PP | TG |\n" + sample + "\nllama_perf: done\n"
    assert parse_batched_bench_jsonl(noisy) == parse_batched_bench_jsonl(sample)


def test_find_binary_looks_in_the_versioned_cache(tmp_path: Path) -> None:
    bin_dir = tmp_path / f"llama.cpp-{LLAMA_CPP_PYTHON_VERSION}" / "bin"
    assert find_binary("llama-bench", peers_dir=tmp_path) is None
    bin_dir.mkdir(parents=True)
    tool = bin_dir / "llama-bench"
    tool.write_text("")
    assert find_binary("llama-bench", peers_dir=tmp_path) is None  # not executable
    tool.chmod(0o755)
    assert find_binary("llama-bench", peers_dir=tmp_path) == tool


def test_find_binary_honours_peers_dir_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tool = tmp_path / f"llama.cpp-{LLAMA_CPP_PYTHON_VERSION}" / "bin" / "llama-server"
    tool.parent.mkdir(parents=True)
    fake_tool(tool, DATA / "llama_bench.json")
    monkeypatch.setenv("BANTERBOX_PEERS_DIR", str(tmp_path))
    assert find_binary("llama-server") == tool


def test_run_llama_bench_passes_settings(tmp_path: Path) -> None:
    tool = fake_tool(tmp_path / "llama-bench", DATA / "llama_bench.json")
    rates = run_llama_bench(
        Path("m.gguf"), threads=2, prompt_tokens=64, new_tokens=32, reps=2, binary=tool
    )
    assert rates["decode_tok_s"] == pytest.approx(179.399414)
    args = Path(f"{tool}.args").read_text().split()
    assert args == ["-m", "m.gguf", "-t", "2", "-p", "64", "-n", "32", "-r", "2", "-o", "json"]


def test_run_batched_bench_sizes_context_for_largest_batch(tmp_path: Path) -> None:
    tool = fake_tool(tmp_path / "llama-batched-bench", DATA / "batched_bench.jsonl")
    rows = run_batched_bench(
        Path("m.gguf"), prompt_tokens=64, new_tokens=64, parallel=[1, 8, 32], binary=tool
    )
    assert len(rows) == 3
    args = Path(f"{tool}.args").read_text().split()
    assert args[args.index("-c") + 1] == str(32 * 128)
    assert args[args.index("-npl") + 1] == "1,8,32"
    assert args[args.index("--output-format") + 1] == "jsonl"


def test_run_without_a_build_says_how_to_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BANTERBOX_PEERS_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"build_llama_cpp\.sh"):
        run_llama_bench(Path("m.gguf"), prompt_tokens=8, new_tokens=8, reps=1)
