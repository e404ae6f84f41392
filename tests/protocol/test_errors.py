"""Error codes, their policies, and the Limits settings."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

import protocol
from protocol import DEFAULT_LIMITS, ERROR_POLICIES, ErrorCode, Limits, ProtocolError


def test_every_code_has_a_policy() -> None:
    assert set(ERROR_POLICIES) == set(ErrorCode)


@pytest.mark.parametrize(
    ("code", "retryable", "closes"),
    [
        (ErrorCode.INVALID_FIELD, False, False),
        (ErrorCode.UNSUPPORTED_VERSION, False, True),
        (ErrorCode.UNAUTHORIZED, False, True),
        (ErrorCode.OVERLOADED, True, False),
        (ErrorCode.SHUTTING_DOWN, True, True),
    ],
)
def test_protocol_error_exposes_its_policy(code: ErrorCode, retryable: bool, closes: bool) -> None:
    error = ProtocolError(code, "why")
    assert (error.retryable, error.closes_connection) == (retryable, closes)


def test_with_request_id_keeps_everything_else() -> None:
    error = ProtocolError(ErrorCode.INVALID_FIELD, "top_p: bad", field="top_p")
    with_id = error.with_request_id("r9")
    assert (with_id.code, with_id.message, with_id.field, with_id.request_id) == (
        ErrorCode.INVALID_FIELD,
        "top_p: bad",
        "top_p",
        "r9",
    )
    assert str(with_id) == "invalid_field: top_p: bad"


def test_codes_are_their_wire_strings() -> None:
    assert ErrorCode("too_many_requests") is ErrorCode.TOO_MANY_REQUESTS
    assert all(code == code.value for code in ErrorCode)


def test_limits_defaults_and_wire_map() -> None:
    assert DEFAULT_LIMITS.max_frame_bytes == 1 << 20
    assert DEFAULT_LIMITS.max_request_id_chars == 64
    wire = DEFAULT_LIMITS.to_wire()
    assert wire == {
        field.name: getattr(DEFAULT_LIMITS, field.name) for field in dataclasses.fields(Limits)
    }


@pytest.mark.parametrize("value", [0, -1, True, 1.5])
def test_limits_must_be_positive_ints(value: object) -> None:
    with pytest.raises(ValueError, match="max_depth"):
        Limits(max_depth=value)  # type: ignore[arg-type]


def test_spec_documents_every_error_code() -> None:
    spec = (Path(protocol.__file__).parent / "SPEC.md").read_text("utf-8")
    table = spec.partition("## 7. Error codes")[2].partition("## 8.")[0]
    for code, policy in ERROR_POLICIES.items():
        row = f"| `{code.value}` |"
        assert row in table, code
        cells = [c.strip() for c in table.partition(row)[2].partition("\n")[0].split("|")]
        assert cells[1:3] == [
            "yes" if policy.retryable else "no",
            "yes" if policy.closes_connection else "no",
        ], code
