"""Tests for bench.metrics on synthetic timelines (no server, no clock)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench.metrics import (
    RequestTimeline,
    Summary,
    compute_metrics,
    meets_slo,
    percentile,
    summarize,
)


def stream(
    start: float,
    times: list[float],
    end: float,
    *,
    num_output_tokens: int | None = None,
    delta_num_tokens: tuple[int, ...] = (),
) -> RequestTimeline:
    """A successful request; one token per delta unless num_output_tokens says otherwise."""
    return RequestTimeline(
        start=start,
        token_times=tuple(times),
        end=end,
        num_prompt_tokens=10,
        num_output_tokens=len(times) if num_output_tokens is None else num_output_tokens,
        delta_num_tokens=delta_num_tokens,
    )


def test_percentile_hand_computed() -> None:
    values = [4.0, 1.0, 3.0, 2.0]  # sorted 1, 2, 3, 4
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 4.0
    assert percentile(values, 50) == pytest.approx(2.5)  # rank 1.5
    assert percentile(values, 90) == pytest.approx(3.7)  # rank 2.7
    assert percentile([7.0], 99) == 7.0


@pytest.mark.parametrize(
    "values",
    [[1.0, 2.0], [0.5, 9.0, 3.25, 3.25, 100.0], [float(i * i % 17) for i in range(41)]],
)
@pytest.mark.parametrize("q", [0, 1, 33.3, 50, 90, 99, 100])
def test_percentile_matches_numpy_linear(values: list[float], q: float) -> None:
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_percentile_rejects_empty_and_out_of_range() -> None:
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_summarize_scales_and_handles_empty() -> None:
    summary = summarize([0.1, 0.2, 0.3], scale=1000.0)
    assert summary.count == 3
    assert summary.mean == pytest.approx(200.0)
    assert summary.p50 == pytest.approx(200.0)
    assert summary.max == pytest.approx(300.0)
    assert summarize([]) == Summary(mean=None, p50=None, p90=None, p99=None, max=None, count=0)


def test_per_request_figures() -> None:
    timeline = stream(1.0, [1.5, 1.6, 1.8, 2.1], 2.1)
    assert timeline.ttft_s == pytest.approx(0.5)
    assert timeline.tpot_s == pytest.approx(0.6 / 3)
    assert timeline.itls_s == pytest.approx((0.1, 0.2, 0.3))
    assert timeline.e2e_s == pytest.approx(1.1)


def test_tpot_counts_tokens_while_itl_counts_deltas() -> None:
    # Three deltas of four tokens each, 0.4 s apart: a reader waits 0.4 s between deltas
    # but the server produced a token every 0.8 / 11 s after the first delta.
    merged = stream(0.0, [0.2, 0.6, 1.0], 1.0, num_output_tokens=12, delta_num_tokens=(4, 4, 4))
    assert merged.itls_s == pytest.approx((0.4, 0.4))
    assert merged.tpot_s == pytest.approx(0.8 / 11)

    metrics = compute_metrics([merged], duration_s=1.0)
    assert metrics.itl.mean == pytest.approx(400.0)
    assert metrics.tpot.mean == pytest.approx(800.0 / 11)
    assert metrics.itl.count == 2
    assert metrics.output_tok_s == pytest.approx(12.0)


def test_delta_counts_must_match_output_tokens() -> None:
    with pytest.raises(ValueError):
        stream(0.0, [0.1, 0.2], 0.2, num_output_tokens=5, delta_num_tokens=(2, 2))
    with pytest.raises(ValueError):
        stream(0.0, [0.1, 0.2], 0.2, num_output_tokens=2, delta_num_tokens=(2,))
    with pytest.raises(ValueError):
        stream(0.0, [0.2, 0.1], 0.2)


def test_single_token_request_has_no_tpot() -> None:
    single = stream(0.0, [0.3], 0.3)
    assert single.tpot_s is None
    assert single.itls_s == ()
    metrics = compute_metrics([single], duration_s=2.0)
    assert metrics.tpot.count == 0
    assert metrics.tpot.mean is None
    assert metrics.ttft.mean == pytest.approx(300.0)
    assert metrics.itl.count == 0
    # No stream rate to judge, so TTFT alone decides goodput.
    assert metrics.goodput_rps == pytest.approx(0.5)


def test_goodput_needs_both_slos() -> None:
    good = stream(0.0, [0.5, 0.55, 0.6], 0.6)  # TTFT 0.5 s, 2 tokens in 0.1 s = 20 tok/s
    slow_first = stream(0.0, [1.5, 1.55, 1.6], 1.6)  # TTFT 1.5 s
    slow_stream = stream(0.0, [0.5, 0.8, 1.1], 1.1)  # 2 tokens in 0.6 s = 3.3 tok/s
    both_bad = stream(0.0, [2.0, 3.0, 4.0], 4.0)
    timelines = [good, slow_first, slow_stream, both_bad]

    assert [meets_slo(t, slo_ttft_s=1.0, slo_min_tok_s=10.0) for t in timelines] == [
        True,
        False,
        False,
        False,
    ]
    metrics = compute_metrics(timelines, duration_s=2.0, slo_ttft_s=1.0, slo_min_tok_s=10.0)
    assert metrics.goodput_rps == pytest.approx(0.5)
    assert metrics.goodput_fraction == pytest.approx(0.25)
    assert metrics.requests_per_s == pytest.approx(2.0)

    lenient = compute_metrics(timelines, duration_s=2.0, slo_ttft_s=2.0, slo_min_tok_s=1.0)
    assert lenient.goodput_fraction == pytest.approx(1.0)


def test_errors_counted_by_code_but_kept_out_of_latencies() -> None:
    ok = stream(0.0, [0.1, 0.2], 0.2)
    overloaded = RequestTimeline(
        start=0.0, token_times=(), end=0.01, num_prompt_tokens=10, num_output_tokens=0,
        error_code="overloaded",
    )  # fmt: skip
    cut = RequestTimeline(
        start=0.0, token_times=(5.0, 9.0), end=9.0, num_prompt_tokens=10,
        num_output_tokens=2, error_code="internal",
    )  # fmt: skip
    metrics = compute_metrics([ok, overloaded, cut, overloaded], duration_s=1.0)

    assert metrics.num_ok == 1
    assert metrics.num_errors == 3
    assert metrics.errors_by_code == {"internal": 1, "overloaded": 2}
    assert metrics.ttft.count == 1
    assert metrics.ttft.max == pytest.approx(100.0)
    assert metrics.itl.max == pytest.approx(100.0)
    assert metrics.e2e.max == pytest.approx(200.0)
    assert metrics.output_tok_s == pytest.approx(2.0)
    assert metrics.goodput_fraction == pytest.approx(0.25)


def test_request_without_tokens_has_e2e_only_and_is_not_good() -> None:
    empty_answer = stream(0.0, [], 0.4)
    metrics = compute_metrics([empty_answer], duration_s=1.0)
    assert metrics.ttft.count == 0
    assert metrics.e2e.mean == pytest.approx(400.0)
    assert metrics.goodput_rps == 0.0


def test_empty_run_does_not_crash() -> None:
    metrics = compute_metrics([], duration_s=3.0)
    assert metrics.num_ok == 0
    assert metrics.num_errors == 0
    assert metrics.errors_by_code == {}
    assert metrics.ttft.count == 0
    assert metrics.ttft.p99 is None
    assert metrics.output_tok_s == 0.0
    assert metrics.requests_per_s == 0.0
    assert metrics.goodput_rps == 0.0
    assert metrics.goodput_fraction is None


def test_duration_must_be_positive() -> None:
    with pytest.raises(ValueError):
        compute_metrics([], duration_s=0.0)


def test_to_dict_is_json_ready() -> None:
    metrics = compute_metrics([stream(0.0, [0.1, 0.2, 0.3], 0.3)], duration_s=1.0)
    data = json.loads(json.dumps(metrics.to_dict()))
    assert data["ttft"]["mean"] == pytest.approx(100.0)
    assert data["tpot"]["count"] == 1
    assert data["errors_by_code"] == {}
    assert data["num_ok"] == 1
