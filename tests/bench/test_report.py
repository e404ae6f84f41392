"""Report files from synthetic metrics: JSON keys, Markdown rows, PNG plots."""

from __future__ import annotations

import json
from pathlib import Path

from bench.metrics import RequestTimeline
from bench.report import LevelResult, level_result, markdown_table, write_report


def synthetic(concurrency: int) -> LevelResult:
    timelines = [
        RequestTimeline(0.0, (0.2, 0.3, 0.4), 0.4, 100, 3, delta_num_tokens=(1, 1, 1)),
        RequestTimeline(0.0, (0.5, 0.7), 0.7, 120, 2),
        RequestTimeline(0.0, (), 0.1, 0, 0, error_code="overloaded"),
    ]
    return level_result(
        timelines,
        [60, 80, 0],
        duration_s=2.0,
        concurrency=concurrency,
        rate=None,
        num_players=concurrency,
        slo_ttft_s=1.0,
        slo_min_tok_s=1.0,
    )


def test_level_result_sums_prompt_and_cached_tokens_of_ok_turns() -> None:
    level = synthetic(2)
    assert (level.num_prompt_tokens, level.num_cached_tokens) == (220, 140)
    assert level.cache_hit_fraction == 140 / 220
    assert level.to_dict()["num_turns"] == 3


def test_markdown_table_has_one_row_per_system_and_level() -> None:
    table = markdown_table(
        {"banterbox": [synthetic(1), synthetic(4)], "llama-server": [synthetic(1)]}
    )
    rows = table.splitlines()
    assert rows[0].startswith("| system | load |")
    assert len(rows) == 2 + 3
    assert rows[2].startswith("| banterbox | c=1 | 1 | 3 | 350 | 497 |")
    assert rows[4].startswith("| llama-server | c=1 |")
    assert all(row.count("|") == rows[0].count("|") for row in rows)


def test_write_report_writes_json_markdown_and_pngs(tmp_path: Path) -> None:
    series = {
        "banterbox": [synthetic(1), synthetic(4)],
        "llama-server": [synthetic(1), synthetic(4)],
    }
    files = write_report(
        tmp_path / "out" / "compare-x.json",
        scenario="compare",
        config={"sweep": [1, 4]},
        series=series,
        summary={"capacity_ratio": 1.0},
        notes=["### extra"],
    )
    document = json.loads(files.json_path.read_text())
    assert document["capacity_ratio"] == 1.0
    assert {"config", "machine", "versions", "results", "created_at"} <= set(document)
    assert document["machine"]["cpu_count"] >= 1
    assert set(document["versions"]) == {"python", "torch", "banterbox"}
    metrics = document["results"]["banterbox"][1]["metrics"]
    assert {"ttft", "itl", "tpot", "e2e", "goodput_fraction", "output_tok_s"} <= set(metrics)
    assert metrics["ttft"]["p99"] is not None and metrics["errors_by_code"] == {"overloaded": 1}
    assert files.markdown_path.read_text() == files.markdown
    assert "| llama-server | c=4 |" in files.markdown and "### extra" in files.markdown
    assert [p.name for p in files.png_paths] == [
        "compare-x-latency.png",
        "compare-x-throughput.png",
    ]
    for png in files.png_paths:
        assert png.read_bytes().startswith(b"\x89PNG")


def test_open_loop_levels_show_their_rate(tmp_path: Path) -> None:
    timelines = [RequestTimeline(0.0, (0.1,), 0.1, 0, 0)]
    level = level_result(
        timelines,
        [0],
        duration_s=1.0,
        concurrency=None,
        rate=5.0,
        num_players=1,
        slo_ttft_s=0.5,
        slo_min_tok_s=0.0,
    )
    files = write_report(tmp_path / "chat.json", scenario="chat", config={}, series={"b": [level]})
    assert "| b | 5.0/s |" in files.markdown
    assert len(files.png_paths) == 2
