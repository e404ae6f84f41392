"""Constrained decoding on a tiny byte-level model: matches, mixed batches, faults end one row."""

from __future__ import annotations

import re

import pytest
from tiny import TinyConfig, random_hf_tensors, write_gguf

from server.engine.config import EngineConfig
from server.engine.constraints import ConstraintCompiler, ConstraintState
from server.engine.llm import LLM
from server.engine.types import Constraint, FinishReason, RequestOutput, SamplingParams

REGEX = r"[a-c]{2,5}!"


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    config = TinyConfig()
    return write_gguf(tmp_path_factory.mktemp("ct") / "m.gguf", config, random_hf_tensors(config))


@pytest.fixture
def llm(model_path) -> LLM:
    return LLM.load(model_path, EngineConfig(kv_cache_mib=4, num_threads=1))


def _run(llm: LLM, sampling: list[SamplingParams]) -> list[tuple[str, FinishReason | None]]:
    requests = [llm.new_request(list(b"Say: "), s) for s in sampling]
    for request in requests:
        llm.core.add_request(request)
    text: dict[str, str] = {r.request_id: "" for r in requests}
    final: dict[str, RequestOutput] = {}
    while llm.core.has_unfinished():
        for out in llm.core.step():
            text[out.request_id] += out.text_delta
            if out.finished:
                final[out.request_id] = out
    return [(text[r.request_id], final[r.request_id].finish_reason) for r in requests]


def _sampled(seed: int, constraint: Constraint | None, **extra: object) -> SamplingParams:
    return SamplingParams(
        temperature=1.0,
        seed=seed,
        max_tokens=12,
        constraint=constraint,
        **extra,  # type: ignore[arg-type]
    )


def test_sampled_and_greedy_rows_match_their_regex(llm: LLM) -> None:
    constraint = Constraint.regex(REGEX)
    sampling = [_sampled(seed, constraint) for seed in range(20)]
    sampling.append(SamplingParams(max_tokens=12, constraint=constraint))
    for text, finish in _run(llm, sampling):
        assert re.fullmatch(REGEX, text), text
        assert finish is FinishReason.STOP


def test_the_mask_overrides_logit_bias_and_penalties(llm: LLM) -> None:
    bias = {ord("a"): 100.0, ord("x"): 100.0}
    sampling = [_sampled(s, Constraint.choice(["cab", "bca"]), logit_bias=bias) for s in range(8)]
    assert {text for text, _ in _run(llm, sampling)} <= {"cab", "bca"}


def test_a_constraint_cut_by_max_tokens_ends_with_length(llm: LLM) -> None:
    sampling = SamplingParams(max_tokens=3, constraint=Constraint.regex("[a-z]{10}"))
    [(text, finish)] = _run(llm, [sampling])
    assert finish is FinishReason.LENGTH and re.fullmatch("[a-z]{3}", text)


def test_free_rows_batched_with_constrained_rows_get_their_tokens_alone(llm: LLM) -> None:
    free = [_sampled(1, None, ignore_eos=True), SamplingParams(max_tokens=12, ignore_eos=True)]
    alone = [_run(llm, [s])[0] for s in free]
    mixed = _run(llm, [free[0], _sampled(2, Constraint.regex(REGEX)), free[1]])
    assert [mixed[0], mixed[2]] == alone
    assert re.fullmatch(REGEX, mixed[1][0])


def test_a_constraint_that_refuses_its_token_fails_that_request_alone(
    llm: LLM, monkeypatch
) -> None:
    accept = ConstraintState.accept
    calls = {"n": 0}

    def accept_then_refuse(self: ConstraintState, token_id: int) -> bool:
        calls["n"] += 1
        return accept(self, token_id) if calls["n"] < 2 else False

    monkeypatch.setattr(ConstraintState, "accept", accept_then_refuse)
    results = _run(llm, [_sampled(1, None, ignore_eos=True), _sampled(2, Constraint.regex(REGEX))])
    assert results[0][1] is FinishReason.LENGTH and len(results[0][0]) > 0
    assert results[1][1] is FinishReason.ERROR


def test_a_mask_that_fails_fails_its_rows_alone(llm: LLM, monkeypatch) -> None:
    def broken(self: ConstraintCompiler, matchers: object) -> object:
        raise RuntimeError("mask thread broke")

    monkeypatch.setattr(ConstraintCompiler, "_fill", broken)
    results = _run(llm, [_sampled(1, Constraint.regex(REGEX)), _sampled(2, None, ignore_eos=True)])
    assert results[0][1] is FinishReason.ERROR
    assert results[1][1] is FinishReason.LENGTH
    assert not llm.core.has_unfinished()
