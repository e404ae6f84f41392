"""`python -m bench.profile_step`: torch.profiler's top ops of steady decode steps, as Markdown.

N sequences of random prompts are prefilled, then `--steps` decode steps are profiled (after
`--warmup` unprofiled ones); the table is sorted by self CPU time. In-process, no server.
"""

from __future__ import annotations

import argparse
import os
import random
import time
from pathlib import Path

from torch.profiler import ProfilerActivity, profile

from server.engine.config import EngineConfig
from server.engine.llm import LLM
from server.engine.types import SamplingParams
from server.pull import default_model_path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.profile_step", description=__doc__)
    p.add_argument("--model", type=Path, default=None)
    p.add_argument("--sequences", default="1,32", help="comma-separated batch sizes")
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--rows", type=int, default=15, help="ops in each table")
    p.add_argument("--markdown", type=Path, default=None, help="write the tables here")
    return p


def _profile(llm: LLM, num_seqs: int, args: argparse.Namespace) -> str:
    rng = random.Random(num_seqs)
    vocab = llm.model.config.vocab_size
    budget = args.warmup + 2 * args.steps + 2
    sampling = SamplingParams(max_tokens=budget, ignore_eos=True)
    for _ in range(num_seqs):
        prompt = [rng.randrange(100, vocab) for _ in range(args.prompt_tokens)]
        llm.core.add_request(llm.new_request(prompt, sampling))
    while any(not out.new_token_ids for out in llm.core.step()):
        pass  # until every prefill has produced its first token
    for _ in range(args.warmup):
        llm.core.step()
    started = time.perf_counter()
    for _ in range(args.steps):
        llm.core.step()
    step_ms = (time.perf_counter() - started) / args.steps * 1e3
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            llm.core.step()
    while llm.core.has_unfinished():
        llm.core.step()
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows)
    header = f"### {num_seqs} sequence(s): {step_ms:.1f} ms a decode step unprofiled\n"
    return f"{header}\n```\n{table}\n```\n"


def main() -> int:
    args = _parser().parse_args()
    model = args.model or default_model_path(os.environ)
    sizes = [int(s) for s in args.sequences.split(",") if s]
    config = EngineConfig(
        dtype=args.dtype, num_threads=args.threads, max_num_seqs=max(sizes), kv_cache_mib=512
    )
    llm = LLM.load(model, config)
    parts = [
        f"Model {llm.info.name} ({model.name}), weights {llm.info.weights}, "
        f"activations {llm.info.dtype}, {args.threads} threads, {args.prompt_tokens}-token "
        f"prompts, {args.steps} profiled decode steps.\n"
    ]
    parts += [_profile(llm, n, args) for n in sizes]
    text = "\n".join(parts)
    print(text)
    if args.markdown:
        args.markdown.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
