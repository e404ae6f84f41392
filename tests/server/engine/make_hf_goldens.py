"""Writes goldens/hf_smollm2_greedy.json: HF transformers' greedy tokens on the default GGUF.

Not a test and not part of the project: it runs in a separate virtualenv that holds
transformers (the project venv must not), and only reads the local GGUF file.

Set up the reference venv once (torch pinned first, or pip pulls a CUDA build):

    python3 -m venv /tmp/hfvenv
    /tmp/hfvenv/bin/pip install torch==2.13.0
    /tmp/hfvenv/bin/pip install transformers accelerate gguf sentencepiece

Then, from the repository root, after `make model`:

    HF_HUB_OFFLINE=1 /tmp/hfvenv/bin/python tests/server/engine/make_hf_goldens.py

It takes about two minutes on two cores. test_hf_goldens.py holds our engine to the result.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MAX_NEW_TOKENS = 48
NUM_TOP_LOGITS = 8  # first-step logits kept so a test can compare raw numbers, not just argmax
OUT = Path(__file__).with_name("goldens") / "hf_smollm2_greedy.json"

Message = dict[str, str]

CASES: list[tuple[str, list[Message]]] = [
    (
        "blacksmith_single_turn",
        [
            {
                "role": "system",
                "content": "You are Brom, a gruff dwarven blacksmith in the mountain town of "
                "Emberfall. Stay in character and answer in one or two short sentences.",
            },
            {"role": "user", "content": "Can you fix my sword? The blade snapped in two."},
        ],
    ),
    (
        "tavern_keeper_multi_turn",
        [
            {
                "role": "system",
                "content": "You are Mira, the cheerful keeper of the Gilded Goose tavern. "
                "You know every rumour in town and love to gossip.",
            },
            {"role": "user", "content": "Evening, Mira! What's on the menu tonight?"},
            {
                "role": "assistant",
                "content": "Lamb stew, fresh rye bread and our honey ale — 3 silver for the lot!",
            },
            {"role": "user", "content": "I'll take the stew. Heard any rumours lately?"},
        ],
    ),
    (
        "city_guard_multi_turn",
        [
            {
                "role": "system",
                "content": "You are a stern city guard at the north gate of Highmoor. Nobody "
                "enters after dusk without a writ from the magistrate.",
            },
            {"role": "user", "content": "Let me through, I have business in the city."},
            {"role": "assistant", "content": "Papers first. It's past dusk."},
            {"role": "user", "content": "I lost them on the road."},
            {
                "role": "assistant",
                "content": "Then you'll wait until morning, like everyone else.",
            },
            {"role": "user", "content": "Can't you make an exception, just this once?"},
        ],
    ),
    (
        "chat_moderation",
        [
            {
                "role": "system",
                "content": "You are the moderator of a live-stream chat. For each message, "
                "answer with exactly one word: ALLOW, WARN or BAN.",
            },
            {
                "role": "user",
                "content": 'Message from @xX_gamer_Xx: "this streamer is trash lol 🗑️ go back '
                'to school"',
            },
        ],
    ),
    (
        "chat_bot_unicode",
        [
            {
                "role": "system",
                "content": "You are Pip, a friendly bot in a Twitch chat. Keep replies short.",
            },
            {
                "role": "user",
                "content": "¿Qué tal, Pip? We just got raided by 1,337 viewers!!  café ☕ time\n\n"
                "what's   next?",
            },
        ],
    ),
]


def model_path() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "banterbox" / "models" / MODEL_FILE


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def run_case(model: Any, tokenizer: Any, name: str, messages: list[Message]) -> dict[str, Any]:
    prompt_text = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=False
    )
    # The template writes <|im_start|> itself; the tokenizer must add nothing more.
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False).input_ids
    out = model.generate(
        torch.tensor([prompt_ids]),
        attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
        do_sample=False,
        max_new_tokens=MAX_NEW_TOKENS,
        repetition_penalty=1.0,
        return_dict_in_generate=True,
        output_logits=True,
    )
    new_ids = out.sequences[0, len(prompt_ids) :].tolist()
    eos_id = tokenizer.eos_token_id
    if eos_id in new_ids:
        new_ids = new_ids[: new_ids.index(eos_id) + 1]
    margins = []
    for step_logits in out.logits[: len(new_ids)]:
        top2 = step_logits[0].float().topk(2).values
        margins.append(float(top2[0] - top2[1]))
    first = out.logits[0][0].float().topk(NUM_TOP_LOGITS)
    return {
        "name": name,
        "messages": messages,
        "prompt_text": prompt_text,
        "prompt_token_ids": prompt_ids,
        "output_token_ids": new_ids,
        "output_text": tokenizer.decode(new_ids, skip_special_tokens=False),
        "step_margins": margins,
        "min_margin": min(margins),
        "first_step_top_logits": [
            [int(i), float(v)] for i, v in zip(first.indices, first.values, strict=True)
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=model_path())
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    torch.set_num_threads(2)
    folder, filename = str(args.model.parent), args.model.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, dtype=torch.float32)
    model.eval()
    cases = [run_case(model, tokenizer, name, messages) for name, messages in CASES]
    golden = {
        "model_sha256": sha256_of(args.model),
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "max_new_tokens": MAX_NEW_TOKENS,
        "cases": cases,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(golden, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    for case in cases:
        print(
            f"{case['name']}: {len(case['output_token_ids'])} tokens, "
            f"min margin {case['min_margin']:.3f}: {case['output_text']!r}"
        )


if __name__ == "__main__":
    main()
