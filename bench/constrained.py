"""`python -m bench constrained`: the cost of constrained decoding and the gain of prefill-only.

Decode: N sequences (16) of one chat prompt asking for JSON, sampled at temperature 1, every row
under a JSON-schema constraint against none; the two alternate round by round in one process,
medians reported, and the constraint masks' time per step read from the engine's counters.
Prefill-only: the TTFT of a turn after a 1,000-token history, when a prefill-only turn of the
history plus the partial line ran first (while the player typed) against when it did not, for
a history that is not in the KV yet (a resumed or evicted session) and for one pinned by its
session.
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
from server.engine.types import Constraint, Priority, SamplingParams
from server.pull import default_model_path

from .report import write_json

SCHEMA = {
    "type": "object",
    "properties": {
        "mood": {"enum": ["calm", "angry", "afraid", "amused"]},
        "level": {"type": "integer", "minimum": 0, "maximum": 10},
        # Longer than the run: every row decodes to the last step, as the free rows do.
        "line": {"type": "string", "minLength": 400, "maxLength": 600},
    },
    "required": ["mood", "level", "line"],
    "additionalProperties": False,
}
QUESTION = (
    "You are Brom, a gruff blacksmith. The player asks about the dragon. Answer as JSON with "
    "your mood, its level from 0 to 10, and your spoken line."
)


def add_arguments(scenarios: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = scenarios.add_parser("constrained", help="constrained decode cost, prefill-only TTFT")
    p.add_argument("--model", type=Path, default=None)
    p.add_argument("--sequences", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dtype", default="auto", help="auto, float32 or bfloat16")
    p.add_argument("--device", default="cpu")
    p.add_argument("--history-tokens", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=3, help="rounds per variant; medians reported")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    p.set_defaults(run=run)


def _decode_round(llm: LLM, num_seqs: int, new_tokens: int, constrained: bool) -> dict[str, Any]:
    """Prefill all, then aggregate decode tok/s from the first token of the last row on."""
    prompt = llm.encode_chat([{"role": "user", "content": QUESTION}])
    constraint = Constraint.json_schema(SCHEMA) if constrained else None
    ids = []
    for seed in range(num_seqs):
        sampling = SamplingParams(
            temperature=1.0,
            seed=seed,
            max_tokens=new_tokens,
            ignore_eos=not constrained,
            constraint=constraint,
        )
        request = llm.new_request(prompt, sampling)
        llm.core.add_request(request)
        ids.append(request.request_id)
    pending_first = set(ids)
    first_all = None
    num_decoded = 0
    before = llm.core.stats()
    steps = 0
    while llm.core.has_unfinished():
        outputs = llm.core.step()
        if first_all is not None:
            steps += 1
            num_decoded += sum(len(out.new_token_ids) for out in outputs)
        for out in outputs:
            if out.new_token_ids:
                pending_first.discard(out.request_id)
        if first_all is None and not pending_first:
            first_all = time.perf_counter()
    ended = time.perf_counter()
    after = llm.core.stats()
    assert first_all is not None
    num_masks = after.num_mask_steps_total - before.num_mask_steps_total
    mask_s = after.mask_seconds_total - before.mask_seconds_total
    return {
        "decode_tok_s": num_decoded / (ended - first_all),
        "decode_steps": steps,
        "step_ms": 1e3 * (ended - first_all) / max(1, steps),
        "mask_ms_per_step": 1e3 * mask_s / num_masks if num_masks else 0.0,
    }


def _ttft(llm: LLM, prompt: list[int], session_id: str) -> float:
    request = llm.new_request(prompt, SamplingParams(max_tokens=4), session_id=session_id)
    started = time.perf_counter()
    llm.core.add_request(request)
    ttft = None
    while llm.core.has_unfinished():
        for out in llm.core.step():
            if ttft is None and out.new_token_ids:
                ttft = time.perf_counter() - started
    assert ttft is not None
    return ttft


def _prefill(llm: LLM, prompt: list[int], session_id: str) -> float:
    request = llm.new_request(
        prompt, session_id=session_id, prefill_only=True, priority=Priority.BACKGROUND
    )
    started = time.perf_counter()
    llm.core.add_request(request)
    while llm.core.has_unfinished():
        llm.core.step()
    return time.perf_counter() - started


def _prefill_round(llm: LLM, history_tokens: int, seed: int) -> dict[str, float]:
    """TTFT of the turn that completes a partial line, with and without a prefill before it."""
    rng = random.Random(seed)
    vocab = llm.model.config.vocab_size

    def tokens(n: int) -> list[int]:
        return [rng.randrange(100, vocab) for _ in range(n)]

    figures: dict[str, float] = {}
    for case in ("cold", "pinned"):
        for prefilled in (False, True):
            session = f"{case}-{prefilled}-{seed}"
            history, partial, rest = tokens(history_tokens), tokens(24), tokens(8)
            if case == "pinned":  # the history's KV is the session's, from its last turn
                _prefill(llm, history, session)
            if prefilled:  # while the player types: history + the line so far
                figures[f"{case}_prefill_s"] = _prefill(llm, history + partial, session)
            key = f"{case}_{'after_prefill' if prefilled else 'without'}_ttft_s"
            figures[key] = _ttft(llm, history + partial + rest, session)
    return figures


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _median(rounds: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}


def run(args: argparse.Namespace) -> int:
    model = args.model or default_model_path(os.environ)
    config = EngineConfig(
        device=args.device,
        dtype=args.dtype,
        num_threads=args.threads,
        max_num_seqs=max(args.sequences, 16),
        kv_cache_mib=1024,
    )
    llm = LLM.load(model, config)
    _decode_round(llm, 2, 4, constrained=True)  # warm-up: the llguidance tokenizer, allocations
    free_rounds, constrained_rounds, prefill_rounds = [], [], []
    for i in range(args.repeats):  # alternate the variants so both see the same noise
        free_rounds.append(_decode_round(llm, args.sequences, args.new_tokens, constrained=False))
        constrained_rounds.append(
            _decode_round(llm, args.sequences, args.new_tokens, constrained=True)
        )
        prefill_rounds.append(_prefill_round(llm, args.history_tokens, seed=i))
    free, constrained = _median(free_rounds), _median(constrained_rounds)
    prefill = _median(prefill_rounds)
    report: dict[str, Any] = {
        "benchmark": "constrained",
        "model": {"name": llm.info.name, "file": model.name, "sha256": _sha256(model)},
        "config": {
            "sequences": args.sequences,
            "new_tokens": args.new_tokens,
            "history_tokens": args.history_tokens,
            "threads": args.threads,
            "dtype": llm.info.dtype,
            "device": llm.info.device,
            "weights": llm.info.weights,
            "schema": SCHEMA,
        },
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
        },
        "repeats": args.repeats,
        "decode": {
            "free": free,
            "json_schema": constrained,
            "ratio": constrained["decode_tok_s"] / free["decode_tok_s"],
        },
        "prefill_only": prefill,
        "rounds": {
            "free": free_rounds,
            "json_schema": constrained_rounds,
            "prefill_only": prefill_rounds,
        },
    }
    _print(report)
    if args.json:
        write_json(args.json, report)
    return 0


def _print(report: dict[str, Any]) -> None:
    d, p = report["decode"], report["prefill_only"]
    n = report["config"]["sequences"]
    print(
        f"decode at {n} sequences: free {d['free']['decode_tok_s']:.1f} tok/s, JSON schema "
        f"{d['json_schema']['decode_tok_s']:.1f} tok/s (ratio {d['ratio']:.2f}); masks "
        f"{d['json_schema']['mask_ms_per_step']:.2f} ms per step (step "
        f"{d['json_schema']['step_ms']:.1f} ms, free {d['free']['step_ms']:.1f} ms)"
    )
    h = report["config"]["history_tokens"]
    for case in ("cold", "pinned"):
        print(
            f"TTFT after a {h}-token history ({case}): "
            f"{p[f'{case}_after_prefill_ttft_s'] * 1e3:.0f} ms after a prefill-only turn "
            f"({p[f'{case}_prefill_s'] * 1e3:.0f} ms, while the player types) vs "
            f"{p[f'{case}_without_ttft_s'] * 1e3:.0f} ms without"
        )
