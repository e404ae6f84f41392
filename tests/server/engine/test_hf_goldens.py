"""Our engine against HF transformers on the default GGUF: same prompt, same greedy tokens.

Run in both CPU modes: the default (the file's Q4_1/Q8_0 blocks kept packed, fused kernels)
and the dense float32 reference (`--dtype float32`). The goldens come from make_hf_goldens.py
(run in a separate venv holding transformers).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from server.engine.config import EngineConfig
from server.engine.llm import LLM
from server.engine.types import FinishReason, SamplingParams

pytestmark = pytest.mark.slow

GOLDEN_PATH = Path(__file__).with_name("goldens") / "hf_smollm2_greedy.json"
GOLDEN: dict[str, Any] = json.loads(GOLDEN_PATH.read_text(encoding="utf-8"))
CASES: list[dict[str, Any]] = GOLDEN["cases"]
EOS_TOKEN_ID = 2  # <|im_end|>
# float32 on both sides, different op order (fused qkv, interleaved RoPE): logits agree to
# about 2e-5. A real layout or norm mistake moves them by far more than this bound.
LOGIT_ATOL = 1e-3
# Greedy picks between two logits this close may flip under a different summation order.
TIE_MARGIN = 0.01
MODES = {
    "default": EngineConfig(num_threads=2),
    "float32": EngineConfig(num_threads=2, dtype="float32"),
}


@pytest.fixture(scope="module", params=sorted(MODES))
def llm(default_model: Path, request: pytest.FixtureRequest) -> LLM:
    llm = LLM.load(default_model, MODES[request.param])
    packed = "packed" in llm.info.weights
    assert packed == (request.param == "default"), llm.info.weights
    return llm


def _by_name(case: dict[str, Any]) -> str:
    return str(case["name"])


def _first_difference(ours: list[int], expected: list[int]) -> int:
    for step, (a, b) in enumerate(zip(ours, expected, strict=False)):
        if a != b:
            return step
    return min(len(ours), len(expected))


def test_goldens_are_for_the_default_model(default_model: Path) -> None:
    digest = hashlib.sha256(default_model.read_bytes()).hexdigest()
    assert digest == GOLDEN["model_sha256"], "model file changed: regenerate the goldens"
    assert GOLDEN["max_new_tokens"] == 48
    assert len(CASES) >= 4
    assert sum(len(c["messages"]) > 2 for c in CASES) >= 2  # multi-turn transcripts


@pytest.mark.parametrize("case", CASES, ids=_by_name)
def test_chat_prompt_matches_hf(llm: LLM, case: dict[str, Any]) -> None:
    assert llm.render_chat(case["messages"]) == case["prompt_text"]
    assert llm.encode_chat(case["messages"]) == case["prompt_token_ids"]


@pytest.mark.parametrize("case", CASES, ids=_by_name)
def test_first_step_logits_match_hf(llm: LLM, case: dict[str, Any]) -> None:
    prompt = torch.tensor([case["prompt_token_ids"]])
    logits = llm.model.forward_full(prompt)[0, -1]
    for token_id, hf_logit in case["first_step_top_logits"]:
        assert float(logits[token_id]) == pytest.approx(hf_logit, abs=LOGIT_ATOL), token_id


@pytest.mark.parametrize("case", CASES, ids=_by_name)
def test_greedy_tokens_match_hf(llm: LLM, case: dict[str, Any]) -> None:
    max_tokens = GOLDEN["max_new_tokens"]
    outputs = list(llm.generate(case["prompt_token_ids"], SamplingParams(max_tokens=max_tokens)))
    ours = [t for output in outputs for t in output.new_token_ids]
    expected = case["output_token_ids"]
    if ours != expected:
        step = _first_difference(ours, expected)
        if step < len(expected) and case["step_margins"][step] < TIE_MARGIN:
            return  # a near-tie in the reference itself: identical up to here is identical
        pytest.fail(
            f"first difference at step {step}: ours {ours[step : step + 4]}, "
            f"HF {expected[step : step + 4]}; HF's top-2 margin there "
            f"{case['step_margins'][min(step, len(expected) - 1)]:.4f}"
        )
    # Both stop at (and include) <|im_end|>; otherwise both ran the full budget.
    ended_on_eos = expected[-1] == EOS_TOKEN_ID
    assert outputs[-1].finish_reason is (FinishReason.STOP if ended_on_eos else FinishReason.LENGTH)
    assert ended_on_eos or len(expected) == max_tokens
    text = "".join(output.text_delta for output in outputs)
    assert text == case["output_text"].removesuffix("<|im_end|>")
