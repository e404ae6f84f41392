"""Log-probabilities, scoring and prefill-only requests on a tiny model, against forward_full."""

from __future__ import annotations

import pytest
import torch
from engine_runs import random_prompt as _prompt
from engine_runs import run_requests as _run
from tiny import TinyConfig, random_hf_tensors, write_gguf

from server.engine.config import EngineConfig
from server.engine.errors import InvalidRequestError
from server.engine.llm import LLM
from server.engine.types import (
    FinishReason,
    Priority,
    SamplingParams,
)

BLOCK = 16


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    config = TinyConfig(max_position=1024)
    return write_gguf(tmp_path_factory.mktemp("lp") / "m.gguf", config, random_hf_tensors(config))


def _llm(path) -> LLM:
    return LLM.load(path, EngineConfig(kv_cache_mib=4, block_size=BLOCK, num_threads=1))


def _oracle(llm: LLM, token_ids: list[int]) -> torch.Tensor:
    """(T, V) log-probabilities of the no-cache forward."""
    return torch.log_softmax(llm.model.forward_full(torch.tensor([token_ids]))[0], dim=-1)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_logprobs_equal_log_softmax_of_forward_full(model_path, temperature: float) -> None:
    llm = _llm(model_path)
    prompt = _prompt(1, 37)
    sampling = SamplingParams(
        temperature=temperature,
        seed=5,
        max_tokens=8,
        ignore_eos=True,
        logprobs=5,
        repetition_penalty=1.3,  # adjusts sampling, never the reported log-probabilities
    )
    outputs = list(llm.generate(prompt, sampling))
    tokens = [t for out in outputs for t in out.new_token_ids]
    logprobs = [lp for out in outputs for lp in out.logprobs]
    assert len(logprobs) == len(tokens) == 8
    oracle = _oracle(llm, prompt + tokens)
    for i, (token_id, lp) in enumerate(zip(tokens, logprobs, strict=True)):
        row = oracle[len(prompt) - 1 + i]
        assert lp.token_id == token_id
        assert lp.logprob == pytest.approx(float(row[token_id]), abs=1e-4)
        values, ids = row.topk(5)
        assert [t for t, _ in lp.top] == ids.tolist()
        assert [v for _, v in lp.top] == pytest.approx(values.tolist(), abs=1e-4)


def test_logprobs_zero_gives_the_sampled_token_alone_and_none_gives_nothing(model_path) -> None:
    llm = _llm(model_path)
    zero = list(llm.generate(_prompt(2, 9), SamplingParams(max_tokens=3, logprobs=0)))
    assert all(len(out.logprobs) == len(out.new_token_ids) for out in zero)
    assert all(lp.top == () for out in zero for lp in out.logprobs)
    off = list(llm.generate(_prompt(2, 9), SamplingParams(max_tokens=3)))
    assert all(out.logprobs == () for out in off)


def test_logprobs_outside_zero_to_twenty_are_refused() -> None:
    with pytest.raises(ValueError, match="logprobs"):
        SamplingParams(logprobs=21)


def test_score_equals_the_sum_of_token_logprobs_of_forward_full(model_path) -> None:
    llm = _llm(model_path)
    prompt = _prompt(3, 50)
    candidates = [[7], [8, 9, 10], _prompt(4, 23), _prompt(5, 40)]  # one spans 3 blocks
    result = llm.score(prompt, candidates)
    assert result.num_prompt_tokens == 50
    for candidate, total, per_token in zip(
        candidates, result.logprobs, result.token_logprobs, strict=True
    ):
        oracle = _oracle(llm, prompt + candidate)
        expected = [float(oracle[len(prompt) - 1 + j, t]) for j, t in enumerate(candidate)]
        assert list(per_token) == pytest.approx(expected, abs=1e-4)
        assert total == pytest.approx(sum(expected), abs=1e-4)


def test_score_shares_the_prompt_through_the_prefix_cache(model_path) -> None:
    llm = _llm(model_path)
    prompt = _prompt(6, 64)  # exactly 4 blocks: the last one is recomputed for its logits
    first = llm.score(prompt, [[1, 2], [3]])
    hits_before = llm.core.stats().scheduler.num_prefix_hit_tokens_total
    second = llm.score(prompt, [[1, 2], [3]])
    assert first.num_cached_tokens == 0
    assert second.num_cached_tokens == 48  # across calls; the warm-up recomputes block 4
    assert second.logprobs == pytest.approx(first.logprobs, abs=1e-5)
    # Within a call, each candidate found the prompt's first three blocks cached.
    hits = llm.core.stats().scheduler.num_prefix_hit_tokens_total - hits_before
    assert hits == 48 + 2 * 48


def test_score_with_a_long_chunked_candidate(model_path) -> None:
    llm = LLM.load(
        model_path,
        EngineConfig(kv_cache_mib=4, block_size=BLOCK, num_threads=1, max_num_batched_tokens=24),
    )
    prompt, candidate = _prompt(7, 30), _prompt(8, 70)  # prefilled over several steps
    result = llm.score(prompt, [candidate])
    oracle = _oracle(llm, prompt + candidate)
    expected = sum(float(oracle[len(prompt) - 1 + j, t]) for j, t in enumerate(candidate))
    assert result.logprobs[0] == pytest.approx(expected, abs=1e-4)


def test_bad_score_calls_are_refused(model_path) -> None:
    llm = _llm(model_path)
    with pytest.raises(InvalidRequestError, match="candidates"):
        llm.score(_prompt(1, 5), [])
    with pytest.raises(InvalidRequestError, match=r"candidates\.1"):
        llm.score(_prompt(1, 5), [[1], []])


def test_prefill_only_then_the_real_turn_reports_the_prefill_as_cached(model_path) -> None:
    llm = _llm(model_path)
    history = _prompt(9, 70)
    warm = llm.new_request(
        history,
        request_id="warm",
        session_id="s",
        prefill_only=True,
        priority=Priority.BACKGROUND,
    )
    out = _run(llm, [warm])["warm"]
    assert [o.finish_reason for o in out] == [FinishReason.PREFILLED]
    assert out[-1].new_token_ids == () and out[-1].num_output_tokens == 0
    assert llm.core.kv_manager.session_num_tokens("s") == 64  # its full blocks, pinned
    turn = history + _prompt(10, 12)
    sampling = SamplingParams(max_tokens=5, ignore_eos=True)
    real = _run(llm, [llm.new_request(turn, sampling, request_id="t", session_id="s")])["t"]
    assert real[-1].num_cached_tokens == 64
    fresh = _llm(model_path)
    alone = [t for o in fresh.generate(turn, sampling) for t in o.new_token_ids]
    assert [t for o in real for t in o.new_token_ids] == alone


def test_a_newer_request_of_the_session_cancels_its_prefill(model_path) -> None:
    llm = LLM.load(
        model_path,
        EngineConfig(kv_cache_mib=4, block_size=BLOCK, num_threads=1, max_num_batched_tokens=16),
    )
    old = llm.new_request(_prompt(11, 200), request_id="old", session_id="s", prefill_only=True)
    llm.core.add_request(old)
    llm.core.step()  # the old prefill is under way: 16 of 200 tokens
    new = llm.new_request(_prompt(11, 210), request_id="new", session_id="s", prefill_only=True)
    other = llm.new_request(_prompt(12, 30), request_id="other", session_id="t", prefill_only=True)
    outputs = _run(llm, [new, other])
    assert outputs["old"][-1].finish_reason is FinishReason.CANCELLED
    assert outputs["new"][-1].finish_reason is FinishReason.PREFILLED
    assert outputs["new"][-1].num_cached_tokens == 16  # the old one's computed block
    assert outputs["other"][-1].finish_reason is FinishReason.PREFILLED
