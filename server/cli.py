"""The `banterbox` command: pull, generate, serve. The only place that reads argv and the env."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from .engine.config import EngineConfig
from .engine.errors import EngineError
from .engine.types import SamplingParams
from .pull import add_pull_arguments, default_model_path, run_pull


def _add_model_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        type=Path,
        default=None,
        help="a .gguf file or an HF folder (default: the pulled SmolLM2-135M-Instruct)",
    )
    parser.add_argument("--chat-template", default=None, help="a Jinja template file or text")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's choice)")
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=("auto", "float32", "bfloat16", "float16"),
        help="auto: on CPU a GGUF's quantized weights stay packed (fused kernels, float32 "
        "activations), bfloat16 on CUDA; float32: the dense reference mode",
    )
    parser.add_argument(
        "--quantize",
        default="none",
        choices=("none", "q8_0", "q4_0", "q4_1"),
        help="quantize a float checkpoint's matrices at load for the CPU kernels (default: none)",
    )


def run_bridge(args: argparse.Namespace) -> int:
    """`banterbox bridge irc ...` is `python -m clients.irc ...` (see clients/irc/README.md)."""
    from clients.irc.__main__ import main as irc_main

    irc_main(args.options)
    return 0


def model_path(args: argparse.Namespace) -> Path:
    return args.model if args.model is not None else default_model_path(os.environ)


def _read_messages(path: Path) -> list[dict[str, str]]:
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read messages from {path}: {exc}") from exc
    ok = isinstance(raw, list) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in raw
    )
    if not ok or not raw:
        raise ValueError(f"{path}: expected a non-empty JSON list of {{role, content}} objects")
    return [{"role": m["role"], "content": m["content"]} for m in raw]


def run_generate(args: argparse.Namespace) -> int:
    from .engine.llm import LLM  # torch is heavy: import it only for commands that need it

    try:
        sampling = SamplingParams(
            temperature=args.temperature,
            top_p=args.top_p,
            seed=args.seed,
            max_tokens=args.max_tokens,
        )
        messages = _read_messages(args.messages) if args.messages else None
        llm = LLM.load(
            model_path(args),
            EngineConfig(
                device=args.device,
                num_threads=args.threads,
                dtype=args.dtype,
                quantize=args.quantize,
            ),
            chat_template=args.chat_template,
        )
        if messages is not None:
            prompt_ids = llm.encode_chat(messages)
        else:
            prompt_ids = llm.encode_prompt(args.prompt)
        token_ids: list[int] = []
        text: list[str] = []
        finish = None
        for output in llm.generate(prompt_ids, sampling):
            token_ids.extend(output.new_token_ids)
            text.append(output.text_delta)
            finish = output.finish_reason
            if not args.json:
                print(output.text_delta, end="", flush=True)
    except (EngineError, ValueError) as exc:
        print(f"banterbox: error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        result = {
            "prompt_token_ids": prompt_ids,
            "token_ids": token_ids,
            "text": "".join(text),
            "finish_reason": finish.value if finish else None,
        }
        print(json.dumps(result, ensure_ascii=False))
    else:
        print()
    return 0


async def _ask(args: argparse.Namespace) -> None:
    from .client import BanterboxClient

    api_key = os.environ.get("BANTERBOX_API_KEY")
    async with BanterboxClient.connect(args.url, api_key=api_key) as client:
        messages = [{"role": "user", "content": args.text}]
        if args.system:
            messages.insert(0, {"role": "system", "content": args.system})
        sampling = {"temperature": args.temperature, "top_p": 0.95, "repetition_penalty": 1.1}
        stream = client.generate(messages=messages, max_tokens=args.max_tokens, sampling=sampling)
        async for delta in stream:
            print(delta.text, end="", flush=True)
    print()


def run_ask(args: argparse.Namespace) -> int:
    import asyncio

    from websockets.exceptions import WebSocketException

    from .client import BanterboxError

    try:
        asyncio.run(_ask(args))
    except (BanterboxError, OSError, WebSocketException) as exc:
        print(f"banterbox: error: {exc}", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="banterbox", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    pull = commands.add_parser("pull", help="fetch the default model into the model cache")
    add_pull_arguments(pull)
    pull.set_defaults(run=run_pull)

    gen = commands.add_parser("generate", help="generate locally, without the server")
    source = gen.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="a raw prompt")
    source.add_argument("--messages", type=Path, help="a JSON file: a list of {role, content}")
    _add_model_argument(gen)
    gen.add_argument("--max-tokens", type=int, default=128)
    gen.add_argument("--temperature", type=float, default=0.0, help="0 means greedy")
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--seed", type=int, default=None)
    gen.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    gen.set_defaults(run=run_generate)

    ask = commands.add_parser("ask", help="stream one answer from a running server")
    ask.add_argument("text", help="what the user says")
    ask.add_argument("--url", default="ws://127.0.0.1:8765")
    ask.add_argument("--system", default=None, help="a system prompt")
    ask.add_argument("--max-tokens", type=int, default=128)
    ask.add_argument("--temperature", type=float, default=0.7, help="0 means greedy")
    ask.set_defaults(run=run_ask)

    bridge = commands.add_parser("bridge", help="carry a chat's messages through moderation")
    bridge.add_argument("platform", choices=["irc"], help="irc: Twitch-style IRC channels")
    bridge.add_argument("options", nargs=argparse.REMAINDER, help="the bridge's own options")
    bridge.set_defaults(run=run_bridge)

    serve = commands.add_parser("serve", help="run the WebSocket server")
    _add_model_argument(serve)
    from .serve import add_serve_arguments, run_serve

    add_serve_arguments(serve)
    serve.set_defaults(run=run_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
