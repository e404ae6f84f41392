"""Constrained decoding on the default model: every sampled output matches its constraint, and
free rows batched with constrained ones get the tokens they get alone."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from server.engine.config import EngineConfig
from server.engine.errors import InvalidRequestError
from server.engine.llm import LLM
from server.engine.types import Constraint, FinishReason, RequestOutput, SamplingParams

pytestmark = pytest.mark.slow

NUM_SAMPLES = 100
SCHEMA = {
    "type": "object",
    "properties": {
        "mood": {"enum": ["happy", "sad", "angry"]},
        "level": {"type": "integer"},
    },
    "required": ["mood", "level"],
    "additionalProperties": False,
}
REGEX = r"(yes|no), [a-z]{1,6}"
CHOICES = ("attack", "flee", "parley")


@pytest.fixture(scope="module")
def llm(default_model: Path) -> LLM:
    return LLM.load(default_model, EngineConfig(num_threads=2))


def _run(llm: LLM, sampling: list[SamplingParams], prompt: list[int]) -> list[RequestOutput]:
    """Final outputs, text joined, in the order of `sampling`; all rows in one batch."""
    requests = [llm.new_request(prompt, s) for s in sampling]
    for request in requests:
        llm.core.add_request(request)
    texts: dict[str, list[str]] = {r.request_id: [] for r in requests}
    tokens: dict[str, list[int]] = {r.request_id: [] for r in requests}
    final: dict[str, RequestOutput] = {}
    while llm.core.has_unfinished():
        for out in llm.core.step():
            texts[out.request_id].append(out.text_delta)
            tokens[out.request_id].extend(out.new_token_ids)
            if out.finished:
                final[out.request_id] = out
    return [
        RequestOutput(
            request_id=r.request_id,
            new_token_ids=tuple(tokens[r.request_id]),
            text_delta="".join(texts[r.request_id]),
            finish_reason=final[r.request_id].finish_reason,
        )
        for r in requests
    ]


def _prompt(llm: LLM, question: str) -> list[int]:
    return llm.encode_chat([{"role": "user", "content": question}])


def _sampled(constraint: Constraint, max_tokens: int) -> list[SamplingParams]:
    return [
        SamplingParams(temperature=1.0, seed=seed, max_tokens=max_tokens, constraint=constraint)
        for seed in range(NUM_SAMPLES)
    ]


def test_regex_constrained_samples_all_match(llm: LLM) -> None:
    outputs = _run(llm, _sampled(Constraint.regex(REGEX), 12), _prompt(llm, "Are you ready?"))
    for out in outputs:
        assert re.fullmatch(REGEX, out.text_delta), out.text_delta
        assert out.finish_reason is FinishReason.STOP


def test_json_schema_constrained_samples_all_match(llm: LLM) -> None:
    prompt = _prompt(llm, "How do you feel? Answer in JSON.")
    outputs = _run(llm, _sampled(Constraint.json_schema(SCHEMA), 24), prompt)
    num_complete = 0
    for out in outputs:
        if out.finish_reason is FinishReason.LENGTH:
            continue  # cut by max_tokens: a prefix of a valid value, and said so
        value = json.loads(out.text_delta)
        assert set(value) == {"mood", "level"}
        assert value["mood"] in ("happy", "sad", "angry")
        assert isinstance(value["level"], int)
        num_complete += 1
    assert num_complete >= 0.9 * NUM_SAMPLES


def test_choice_constrained_samples_all_match(llm: LLM) -> None:
    prompt = _prompt(llm, "The troll blocks the bridge. What do you do?")
    outputs = _run(llm, _sampled(Constraint.choice(CHOICES), 8), prompt)
    assert {out.text_delta for out in outputs} <= set(CHOICES)
    assert all(out.finish_reason is FinishReason.STOP for out in outputs)


def test_greedy_constrained_rows_match_too(llm: LLM) -> None:
    out = _run(
        llm,
        [SamplingParams(max_tokens=12, constraint=Constraint.regex(REGEX))],
        _prompt(llm, "Are you ready?"),
    )[0]
    assert re.fullmatch(REGEX, out.text_delta)


def test_free_rows_in_a_mixed_batch_get_the_tokens_they_get_alone(llm: LLM) -> None:
    prompt = _prompt(llm, "Tell me about the old mill.")
    free = [
        SamplingParams(max_tokens=16),
        SamplingParams(temperature=1.0, seed=7, max_tokens=16),
        SamplingParams(temperature=0.8, top_p=0.9, seed=8, max_tokens=16),
    ]
    constrained = [
        SamplingParams(max_tokens=16, constraint=Constraint.json_schema(SCHEMA)),
        SamplingParams(temperature=1.0, seed=9, max_tokens=16, constraint=Constraint.regex(REGEX)),
        SamplingParams(
            temperature=1.0, seed=10, max_tokens=16, constraint=Constraint.choice(CHOICES)
        ),
    ]
    alone = [_run(llm, [s], prompt)[0].new_token_ids for s in free]
    mixed = _run(llm, [free[0], *constrained[:2], free[1], constrained[2], free[2]], prompt)
    assert [mixed[0].new_token_ids, mixed[3].new_token_ids, mixed[5].new_token_ids] == alone
    assert re.fullmatch(REGEX, mixed[2].text_delta)
    assert mixed[4].text_delta in CHOICES


@pytest.mark.parametrize(
    ("constraint", "field"),
    [
        (Constraint.regex("(unclosed"), "constraint.regex"),
        (Constraint.json_schema({"type": "no-such-type"}), "constraint.json_schema"),
        (Constraint.json_schema("{not json"), "constraint.json_schema"),
        (Constraint.grammar("start: undefined_rule"), "constraint.grammar"),
    ],
)
def test_a_constraint_that_does_not_compile_is_refused_alone(
    llm: LLM, constraint: Constraint, field: str
) -> None:
    bad = llm.new_request([1, 2, 3], SamplingParams(constraint=constraint))
    with pytest.raises(InvalidRequestError) as info:
        llm.core.add_request(bad)
    assert info.value.field == field
    assert not llm.core.has_unfinished()
    good = _run(
        llm,
        [SamplingParams(max_tokens=4, constraint=Constraint.choice(CHOICES))],
        _prompt(llm, "Pick one."),
    )[0]
    assert good.text_delta in CHOICES


def test_a_gbnf_grammar_constrains_too(llm: LLM) -> None:
    grammar = 'root ::= "The answer is " [0-9] [0-9]? "."'
    out = _run(
        llm,
        [
            SamplingParams(
                temperature=1.0, seed=1, max_tokens=12, constraint=Constraint.grammar(grammar)
            )
        ],
        _prompt(llm, "What is six times seven?"),
    )[0]
    assert re.fullmatch(r"The answer is [0-9][0-9]?\.", out.text_delta)
    assert out.finish_reason is FinishReason.STOP
