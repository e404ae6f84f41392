"""Capacity at the SLO, ratios and the follow-up histories of `bench compare`."""

from __future__ import annotations

from bench.compare import BANTERBOX, LLAMA, build_histories, capacity_at_slo, ratio, summarize
from bench.metrics import RequestTimeline
from bench.report import LevelResult, level_result


def level(concurrency: int, num_good: int, num_bad: int, *, tok: int = 10) -> LevelResult:
    good = [RequestTimeline(0.0, (0.1, 0.2), 0.2 + 0.01 * tok, 5, tok) for _ in range(num_good)]
    slow = [RequestTimeline(0.0, (3.0, 3.1), 3.1 + 0.01 * tok, 5, tok) for _ in range(num_bad)]
    timelines = good + slow
    return level_result(
        timelines,
        [0] * len(timelines),
        duration_s=10.0,
        concurrency=concurrency,
        rate=None,
        num_players=concurrency,
        slo_ttft_s=1.0,
        slo_min_tok_s=10.0,
    )


def test_capacity_is_the_largest_level_at_ninety_percent_goodput() -> None:
    levels = [level(1, 10, 0), level(4, 9, 1), level(8, 8, 2), level(16, 1, 9)]
    assert capacity_at_slo(levels) == 4
    assert capacity_at_slo(levels, min_goodput=0.8) == 8
    assert capacity_at_slo([level(1, 1, 9)]) == 0
    assert capacity_at_slo([]) == 0


def test_ratio_is_null_without_a_peer_figure() -> None:
    assert ratio(8, 4) == 2.0
    assert ratio(8, 0) is None
    assert ratio(None, 3.0) is None


def test_summary_ratios_are_banterbox_over_llama_server() -> None:
    sweeps = {
        BANTERBOX: [level(1, 10, 0, tok=20), level(32, 10, 0, tok=40)],
        LLAMA: [level(1, 10, 0, tok=20), level(32, 5, 5, tok=20)],
    }
    follow_ups = {
        BANTERBOX: {"history": level(4, 4, 0), "follow_up": level(4, 4, 0)},
        LLAMA: {"history": level(4, 4, 0), "follow_up": level(4, 0, 4)},
    }
    summary = summarize(sweeps, follow_ups)
    assert summary["capacity_ratio"] == 32.0
    assert summary["tok_s_ratio_at_32"] == 2.0
    assert summary["tok_s_ratio_level"] == 32
    assert summary["follow_up_ttft_ratio"] == 100.0 / 3000.0
    assert "capacity_ratio" in summary["ratio_definitions"]


def test_histories_are_distinct_alternating_and_reproducible() -> None:
    histories = build_histories(3, num_exchanges=5, seed=1)
    assert len(histories) == 3
    assert all(len(h) == 10 for h in histories)
    assert [m["role"] for m in histories[0][:4]] == ["user", "assistant", "user", "assistant"]
    assert histories[0] != histories[1]
    assert histories == build_histories(3, num_exchanges=5, seed=1)
