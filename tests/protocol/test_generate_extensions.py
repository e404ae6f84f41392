"""generate.constraint / .logprobs / .prefill_only and the score frames: decoding and errors."""

from __future__ import annotations

import json

import pytest

from protocol import (
    Constraint,
    ConstraintKind,
    Encoding,
    ErrorCode,
    Generate,
    ProtocolError,
    Score,
    decode_client_frame,
    encode_frame,
)


def _generate(**fields: object) -> str:
    return json.dumps({"type": "generate", "id": "g1", "prompt": "hi", **fields})


def _error(text: str) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decode_client_frame(text)
    return info.value


def test_a_json_schema_keeps_its_key_order() -> None:
    schema = {"type": "object", "properties": {"zeta": {"type": "integer"}, "alpha": {}}}
    frame = decode_client_frame(_generate(constraint={"json_schema": schema}))
    assert isinstance(frame, Generate) and frame.constraint is not None
    assert frame.constraint.kind is ConstraintKind.JSON_SCHEMA
    assert list(json.loads(frame.constraint.source)["properties"]) == ["zeta", "alpha"]
    assert frame.constraint == Constraint.json_schema(schema)


@pytest.mark.parametrize(
    ("constraint", "field"),
    [
        ({}, "constraint"),
        ({"regex": "a", "grammar": "start: x"}, "constraint"),
        ({"regex": ""}, "constraint.regex"),
        ({"regex": 5}, "constraint.regex"),
        ({"json_schema": "not an object"}, "constraint.json_schema"),
        ({"choice": []}, "constraint.choice"),
        ({"choice": ["a", ""]}, "constraint.choice[1]"),
        ("regex", "constraint"),
    ],
)
def test_bad_constraints_name_their_field(constraint: object, field: str) -> None:
    error = _error(_generate(constraint=constraint))
    assert error.code is ErrorCode.INVALID_FIELD
    assert error.field == field
    assert error.request_id == "g1"


@pytest.mark.parametrize("logprobs", [-1, 21, 1.5, True])
def test_logprobs_must_be_an_integer_from_0_to_20(logprobs: object) -> None:
    assert _error(_generate(logprobs=logprobs)).field == "logprobs"


def test_prefill_only_and_logprobs_round_trip() -> None:
    frame = decode_client_frame(_generate(prefill_only=True, logprobs=0))
    assert isinstance(frame, Generate) and frame.prefill_only and frame.logprobs == 0
    again = decode_client_frame(encode_frame(frame, Encoding.MSGPACK))
    assert again == frame


def test_score_needs_candidates_and_one_of_messages_and_prompt() -> None:
    ok = decode_client_frame(
        json.dumps({"type": "score", "id": "s", "prompt": "x", "candidates": ["a"]})
    )
    assert isinstance(ok, Score) and ok.candidates == ("a",)
    no_candidates = {"type": "score", "id": "s", "prompt": "x", "candidates": []}
    assert _error(json.dumps(no_candidates)).field == "candidates"
    too_many = {"type": "score", "id": "s", "prompt": "x", "candidates": ["a"] * 65}
    assert _error(json.dumps(too_many)).code is ErrorCode.LIMIT_EXCEEDED
    neither = {"type": "score", "id": "s", "candidates": ["a"]}
    assert _error(json.dumps(neither)).field == "messages"
