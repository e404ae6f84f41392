"""One request's failure ends that request only: validation, numerics, failing rows and chunks."""

from __future__ import annotations

import math

import pytest
import torch
from engine_runs import random_prompt as _prompt
from engine_runs import run_requests as _run
from engine_runs import tokens_of as _tokens
from tiny import TinyConfig, random_hf_tensors, write_gguf

from server.engine.config import EngineConfig
from server.engine.errors import InvalidRequestError
from server.engine.llm import LLM
from server.engine.runner import ModelRunner
from server.engine.sampler import SamplingError, SamplingState, sample
from server.engine.types import FinishReason, SamplingParams

GREEDY = SamplingParams(max_tokens=10, ignore_eos=True)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    config = TinyConfig()
    return write_gguf(tmp_path_factory.mktemp("fi") / "m.gguf", config, random_hf_tensors(config))


def _llm(path) -> LLM:
    return LLM.load(path, EngineConfig(kv_cache_mib=4, num_threads=1))


def _kv_at_rest(llm: LLM) -> None:
    usage = llm.core.kv_manager.usage()
    assert usage.num_used_by_running == 0
    assert usage.num_pinned_by_sessions == 0


@pytest.mark.parametrize(
    ("sampling", "field"),
    [
        ({"logit_bias": {10**6: 1.0}}, "sampling.logit_bias"),
        ({"logit_bias": {-1: 1.0}}, "sampling.logit_bias"),
        ({"stop_token_ids": (10**6,)}, "sampling.stop_token_ids"),
    ],
)
def test_token_ids_outside_the_vocabulary_are_refused_at_admission(
    model_path, sampling, field
) -> None:
    llm = _llm(model_path)
    vocab = llm.core.vocab_size
    params = SamplingParams(max_tokens=4, **sampling)
    with pytest.raises(InvalidRequestError) as caught:
        llm.core.add_request(llm.new_request(_prompt(1), params))
    assert caught.value.field == field
    assert str(vocab - 1) in str(caught.value)
    with pytest.raises(InvalidRequestError, match="prompt"):
        llm.core.add_request(llm.new_request([1, 2, vocab], GREEDY))
    assert not llm.core.has_unfinished()


def test_the_first_id_past_the_vocabulary_is_refused_and_the_last_inside_is_not(
    model_path,
) -> None:
    llm = _llm(model_path)
    vocab = llm.core.vocab_size
    with pytest.raises(InvalidRequestError):
        llm.core.add_request(llm.new_request(_prompt(2), SamplingParams(logit_bias={vocab: 1.0})))
    ok = llm.new_request(_prompt(2), SamplingParams(max_tokens=3, logit_bias={vocab - 1: 1.0}))
    outputs = _run(llm, [ok])
    assert outputs[ok.request_id][-1].finish_reason is FinishReason.LENGTH


@pytest.mark.parametrize("temperature", [1e-50, 1e-40, 5e-324, 1e-7])
def test_a_vanishing_temperature_samples_the_argmax(temperature: float) -> None:
    logits = torch.randn(3, 97, generator=torch.Generator().manual_seed(0)) * 5
    states = [
        SamplingState(SamplingParams(temperature=temperature, seed=i, top_p=0.9, min_p=0.05))
        for i in range(3)
    ]
    assert sample(logits, states) == logits.argmax(dim=-1).tolist()


@pytest.mark.parametrize(("penalty", "temperature"), [(1e-300, 1.0), (5e-324, 0.7), (1e300, 1.0)])
def test_extreme_repetition_penalties_still_give_a_valid_token(
    penalty: float, temperature: float
) -> None:
    logits = torch.randn(2, 64, generator=torch.Generator().manual_seed(1)) * 3
    params = SamplingParams(temperature=temperature, repetition_penalty=penalty, seed=3)
    states = [SamplingState(params, prompt_token_ids=list(range(0, 64, 2))) for _ in range(2)]
    picked = sample(logits, states)
    assert all(0 <= t < 64 for t in picked)


def test_non_finite_params_are_refused_by_the_params_themselves() -> None:
    for bad in (math.nan, math.inf):
        with pytest.raises(ValueError, match="finite"):
            SamplingParams(temperature=bad)
        with pytest.raises(ValueError, match="finite"):
            SamplingParams(presence_penalty=bad)
    with pytest.raises(ValueError, match="logit_bias"):
        SamplingParams(logit_bias={3: math.nan})
    SamplingParams(logit_bias={3: -math.inf})  # a ban is a valid bias


def test_a_row_with_nothing_to_draw_raises_before_any_generator_moves() -> None:
    logits = torch.zeros(2, 8)
    banned = SamplingParams(temperature=1.0, seed=1, logit_bias=dict.fromkeys(range(8), -math.inf))
    fine = SamplingParams(temperature=1.0, seed=2)
    states = [SamplingState(fine), SamplingState(banned)]
    with pytest.raises(SamplingError) as caught:
        sample(logits, states)
    assert caught.value.rows == (1,)
    # The fine row's generator never advanced: alone it draws what it would have drawn first.
    again = SamplingState(fine)
    assert sample(logits[:1], [states[0]]) == sample(logits[:1], [again])


def test_a_request_that_cannot_be_sampled_fails_alone(model_path) -> None:
    llm = _llm(model_path)
    vocab = llm.core.vocab_size
    ban_all = SamplingParams(
        temperature=1.0, seed=5, max_tokens=8, logit_bias=dict.fromkeys(range(vocab), -math.inf)
    )
    good = [llm.new_request(_prompt(i), GREEDY, request_id=f"ok{i}") for i in range(3)]
    bad = llm.new_request(_prompt(9), ban_all, request_id="bad")
    expected = {r.request_id: _tokens(_run(_llm(model_path), [r])[r.request_id]) for r in good}
    outputs = _run(llm, [good[0], bad, good[1], good[2]])
    assert outputs["bad"][-1].finish_reason is FinishReason.ERROR
    assert "sampling" in (outputs["bad"][-1].error or "")
    for request in good:
        assert _tokens(outputs[request.request_id]) == expected[request.request_id]
        assert outputs[request.request_id][-1].finish_reason is FinishReason.LENGTH
    _kv_at_rest(llm)


def test_a_failing_forward_is_pinned_on_its_chunk_and_the_rest_go_on(
    model_path, monkeypatch
) -> None:
    llm = _llm(model_path)
    execute = ModelRunner.execute
    poison = _prompt(7)[:5]

    def execute_failing_on_the_poison(self, chunks):
        # A fault no validation can foresee: this one prompt breaks the forward, in any batch.
        if any(list(c.seq.all_token_ids[:5]) == poison for c in chunks):
            raise RuntimeError("injected fault")
        return execute(self, chunks)

    good = [llm.new_request(_prompt(i), GREEDY, request_id=f"ok{i}") for i in range(3)]
    expected = {r.request_id: _tokens(_run(_llm(model_path), [r])[r.request_id]) for r in good}
    monkeypatch.setattr(ModelRunner, "execute", execute_failing_on_the_poison)
    bad = llm.new_request(_prompt(7), GREEDY, request_id="bad", session_id="s1")
    outputs = _run(llm, [good[0], bad, good[1], good[2]])
    assert [o.finish_reason for o in outputs["bad"]] == [FinishReason.ERROR]
    for request in good:
        assert _tokens(outputs[request.request_id]) == expected[request.request_id]
    _kv_at_rest(llm)  # the failed session turn pinned nothing
    assert llm.core.kv_manager.session_num_tokens("s1") is None


def test_a_session_closed_mid_turn_pins_nothing_when_the_turn_ends(model_path) -> None:
    llm = _llm(model_path)
    request = llm.new_request(_prompt(3, 40), GREEDY, request_id="t", session_id="s")
    llm.core.add_request(request)
    llm.core.step()  # running now
    llm.core.scheduler.release_session("s")
    while llm.core.has_unfinished():
        llm.core.step()
    assert llm.core.kv_manager.session_num_tokens("s") is None
    _kv_at_rest(llm)


def test_tenants_never_hit_each_others_cached_prefix(model_path) -> None:
    llm = _llm(model_path)
    secret = _prompt(11, 64)
    first = llm.new_request(secret, GREEDY, request_id="a1", cache_salt="tenant-a")
    _run(llm, [first])
    other = llm.new_request(secret, GREEDY, request_id="b1", cache_salt="tenant-b")
    again = llm.new_request(secret, GREEDY, request_id="a2", cache_salt="tenant-a")
    outputs = _run(llm, [other])
    assert outputs["b1"][-1].num_cached_tokens == 0
    outputs = _run(llm, [again])
    assert outputs["a2"][-1].num_cached_tokens == 48  # 3 full blocks, the last token recomputed
