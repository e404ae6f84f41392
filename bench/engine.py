"""`python -m bench engine`: in-process engine throughput, side by side with llama.cpp.

Single stream: prefill tok/s of one prompt and decode tok/s of one sequence.
Batched: N sequences of random prompts submitted at once; prefill tok/s until every sequence
has its first token, then aggregate decode tok/s until all finish (llama-batched-bench's S_PP
and S_TG). Follow-up TTFT: a session's second turn after a long history, against the cold TTFT.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import random
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from server.engine.config import EngineConfig
from server.engine.llm import LLM
from server.engine.types import SamplingParams
from server.pull import default_model_path

from .peers import llama_cpp
from .report import write_json


def add_arguments(scenarios: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = scenarios.add_parser("engine", help="in-process engine throughput (and llama.cpp's)")
    p.add_argument("--model", type=Path, default=None)
    p.add_argument("--sequences", default="1,8,16,32,64", help="comma-separated batch sizes")
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--dtype", default="auto", help="auto (CPU: GGUF blocks packed), float32 or bfloat16"
    )
    p.add_argument("--quantize", default="none", help="none or q8_0, q4_0, q4_1 (float models)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--history-tokens", type=int, default=1000, help="for the follow-up TTFT")
    p.add_argument("--no-peer", action="store_true", help="skip llama.cpp even when built")
    p.add_argument("--repeats", type=int, default=3, help="rounds per system; medians reported")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    p.set_defaults(run=run)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _rss_mib() -> float:
    """This process's resident set (Linux /proc), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _random_prompt(rng: random.Random, vocab: int, length: int) -> list[int]:
    return [rng.randrange(100, vocab) for _ in range(length)]


def _batched(
    llm: LLM, num_seqs: int, prompt_tokens: int, new_tokens: int, seed: int
) -> dict[str, Any]:
    rng = random.Random(seed)
    sampling = SamplingParams(max_tokens=new_tokens, ignore_eos=True)
    vocab = llm.model.config.vocab_size
    ids = []
    for _ in range(num_seqs):
        request = llm.new_request(_random_prompt(rng, vocab, prompt_tokens), sampling)
        llm.core.add_request(request)
        ids.append(request.request_id)
    started = time.perf_counter()
    pending_first = set(ids)
    first_all = None
    num_out = 0
    while llm.core.has_unfinished():
        for out in llm.core.step():
            num_out += len(out.new_token_ids)
            if out.new_token_ids:
                pending_first.discard(out.request_id)
        if first_all is None and not pending_first:
            first_all = time.perf_counter()
    ended = time.perf_counter()
    assert first_all is not None
    return {
        "sequences": num_seqs,
        "prefill_tok_s": num_seqs * prompt_tokens / (first_all - started),
        "decode_tok_s": (num_out - num_seqs) / (ended - first_all),
        "seconds": ended - started,
    }


def _ttft(llm: LLM, prompt: list[int], session_id: str | None) -> tuple[float, list[int]]:
    request = llm.new_request(prompt, SamplingParams(max_tokens=8), session_id=session_id)
    started = time.perf_counter()
    llm.core.add_request(request)
    ttft = None
    tokens: list[int] = []
    while llm.core.has_unfinished():
        for out in llm.core.step():
            if ttft is None and out.new_token_ids:
                ttft = time.perf_counter() - started
            tokens.extend(out.new_token_ids)
    assert ttft is not None
    return ttft, tokens


def _follow_up(llm: LLM, history_tokens: int, seed: int) -> dict[str, float]:
    """Cold TTFT of a long history, then the TTFT of the next turn of the same session."""
    rng = random.Random(seed)
    vocab = llm.model.config.vocab_size
    history = _random_prompt(rng, vocab, history_tokens)
    cold, answer = _ttft(llm, history, session_id="bench-session")
    follow = history + answer + _random_prompt(rng, vocab, 24)
    warm, _ = _ttft(llm, follow, session_id="bench-session")
    return {
        "history_tokens": history_tokens,
        "cold_ttft_s": cold,
        "follow_up_ttft_s": warm,
        "ratio": warm / cold,
    }


def _peer_round(model: Path, args: argparse.Namespace, sizes: list[int]) -> dict[str, Any]:
    common = {
        "threads": args.threads,
        "prompt_tokens": args.prompt_tokens,
        "new_tokens": args.new_tokens,
    }
    single = llama_cpp.run_llama_bench(model, reps=1, **common)
    batched = llama_cpp.run_batched_bench(model, parallel=sizes, **common)
    return {"single": single, "results": batched}


def _ours_round(llm: LLM, args: argparse.Namespace, sizes: list[int], seed: int) -> dict[str, Any]:
    single = _batched(llm, 1, args.prompt_tokens, args.new_tokens, seed=seed)
    batched = [_batched(llm, n, args.prompt_tokens, args.new_tokens, seed=seed + n) for n in sizes]
    return {"single": single, "results": batched}


def _median_of(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Per figure, the median over rounds: these machines are shared and noisy."""
    keys = ("prefill_tok_s", "decode_tok_s")
    single = {k: statistics.median(r["single"][k] for r in rounds) for k in keys}
    results = []
    for i, first in enumerate(rounds[0]["results"]):
        row = {"sequences": first["sequences"]}
        row |= {k: statistics.median(r["results"][i][k] for r in rounds) for k in keys}
        results.append(row)
    return {"single": single, "results": results}


def _rates(label: str, figures: dict[str, float]) -> str:
    prefill, decode = figures["prefill_tok_s"], figures["decode_tok_s"]
    return f"{label}: prefill {prefill:.1f} tok/s, decode {decode:.1f} tok/s"


def _print_table(report: dict[str, Any]) -> None:
    peer = {r["sequences"]: r for r in (report.get("peer") or {}).get("results", [])}
    header = ("seqs", "prefill tok/s", "decode tok/s", "llama.cpp decode", "ratio")
    widths = (5, 14, 13, 17, 6)
    print(" ".join(f"{h:>{w}}" for h, w in zip(header, widths, strict=True)))
    for r in report["results"]:
        p = peer.get(r["sequences"])
        cells = (
            str(r["sequences"]),
            f"{r['prefill_tok_s']:.1f}",
            f"{r['decode_tok_s']:.1f}",
            f"{p['decode_tok_s']:.1f}" if p else "-",
            f"{r['decode_tok_s'] / p['decode_tok_s']:.2f}" if p else "-",
        )
        print(" ".join(f"{c:>{w}}" for c, w in zip(cells, widths, strict=True)))
    print(f"weights: {report['config']['weights']}")
    rss = report["rss_mib"]
    print(f"resident set: {rss['loaded']:.0f} MiB loaded, {rss['after_runs']:.0f} MiB after")
    print(_rates("single stream", report["single"]))
    if report.get("peer"):
        print(_rates("llama.cpp single", report["peer"]["single"]))
    f = report["follow_up"]
    print(
        f"follow-up TTFT after {f['history_tokens']} tokens: {f['follow_up_ttft_s'] * 1e3:.0f} ms "
        f"vs cold {f['cold_ttft_s'] * 1e3:.0f} ms (ratio {f['ratio']:.3f})"
    )


def run(args: argparse.Namespace) -> int:
    model = args.model or default_model_path(os.environ)
    sizes = [int(s) for s in args.sequences.split(",") if s]
    config = EngineConfig(
        device=args.device,
        dtype=args.dtype,
        quantize=args.quantize,
        num_threads=args.threads,
        max_num_seqs=max(sizes),
        kv_cache_mib=1024,
    )
    llm = LLM.load(model, config)
    _batched(llm, 1, 16, 4, seed=0)  # warm-up: first-call allocations, thread pool start
    rss_loaded = _rss_mib()
    with_peer = not args.no_peer and llama_cpp.find_binary("llama-batched-bench") is not None
    ours_rounds, peer_rounds = [], []
    for round_index in range(args.repeats):  # alternate the systems so both see the same noise
        ours_rounds.append(_ours_round(llm, args, sizes, seed=1000 * round_index))
        if with_peer:
            peer_rounds.append(_peer_round(model, args, sizes))
    ours = _median_of(ours_rounds)
    peer = None
    if with_peer:
        peer = {"name": "llama.cpp", "version": llama_cpp.LLAMA_CPP_PYTHON_VERSION}
        peer |= _median_of(peer_rounds) | {"rounds": peer_rounds}
    report: dict[str, Any] = {
        "benchmark": "engine",
        "model": {"name": llm.info.name, "file": model.name, "sha256": _sha256(model)},
        "config": {
            "prompt_tokens": args.prompt_tokens,
            "new_tokens": args.new_tokens,
            "threads": args.threads,
            "dtype": llm.info.dtype,
            "weights": llm.info.weights,
            "device": llm.info.device,
            "kv_cache_mib": config.kv_cache_mib,
        },
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
        },
        "repeats": args.repeats,
        "single": ours["single"],
        "results": ours["results"],
        "rounds": ours_rounds,
        "follow_up": _follow_up(llm, args.history_tokens, seed=99),
        "rss_mib": {"loaded": rss_loaded, "after_runs": _rss_mib()},
        "peer": peer,
    }
    _print_table(report)
    if args.json:
        write_json(args.json, report)
    return 0
