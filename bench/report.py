"""Load-run results to disk: one JSON, a Markdown table, PNG plots; measures and sends nothing."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from .metrics import RequestTimeline, RunMetrics, compute_metrics


@dataclass(frozen=True, slots=True)
class LevelResult:
    """One load level of one system: its metrics and the prefix-cache hits the server reported."""

    concurrency: int | None  # closed loop
    rate: float | None  # open loop, new players (or messages) per second
    num_players: int
    metrics: RunMetrics
    num_prompt_tokens: int  # over ok turns
    num_cached_tokens: int  # prompt tokens the server served from its cache, over ok turns

    @property
    def load(self) -> float:
        """The x of every plot: the concurrency, else the rate."""
        return float(self.concurrency if self.concurrency is not None else self.rate or 0.0)

    @property
    def cache_hit_fraction(self) -> float | None:
        return self.num_cached_tokens / self.num_prompt_tokens if self.num_prompt_tokens else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "concurrency": self.concurrency,
            "rate": self.rate,
            "num_players": self.num_players,
            "num_turns": self.metrics.num_ok + self.metrics.num_errors,
            "num_prompt_tokens": self.num_prompt_tokens,
            "num_cached_tokens": self.num_cached_tokens,
            "cache_hit_fraction": self.cache_hit_fraction,
            "metrics": self.metrics.to_dict(),
        }


def level_result(
    timelines: Sequence[RequestTimeline],
    cached_tokens: Sequence[int],
    *,
    duration_s: float,
    concurrency: int | None,
    rate: float | None,
    num_players: int,
    slo_ttft_s: float,
    slo_min_tok_s: float,
) -> LevelResult:
    """Metrics of one level; cached_tokens is parallel to timelines."""
    ok = [(t, c) for t, c in zip(timelines, cached_tokens, strict=True) if t.ok]
    return LevelResult(
        concurrency=concurrency,
        rate=rate,
        num_players=num_players,
        metrics=compute_metrics(
            timelines, duration_s=duration_s, slo_ttft_s=slo_ttft_s, slo_min_tok_s=slo_min_tok_s
        ),
        num_prompt_tokens=sum(t.num_prompt_tokens for t, _ in ok),
        num_cached_tokens=sum(c for _, c in ok),
    )


def machine_info() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
    }


def versions() -> dict[str, str | None]:
    """Installed versions, read from package metadata so torch is never imported here."""

    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    return {
        "python": sys.version.split()[0],
        "torch": version("torch"),
        "banterbox": version("banterbox"),
    }


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


TABLE_HEADER = (
    "| system | load | players | turns | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | ITL p99 ms "
    "| TPOT p50 ms | out tok/s | req/s | goodput | cache hit | errors |"
)


def markdown_table(series: Mapping[str, Sequence[LevelResult]]) -> str:
    """One row per system and level; load is c=N (closed loop) or N/s (open loop)."""
    rows = [TABLE_HEADER, "|" + "---|" * TABLE_HEADER.count(" | ") + "---|"]
    for system, levels in series.items():
        for level in levels:
            m = level.metrics
            load = f"c={level.concurrency}" if level.concurrency is not None else f"{level.rate}/s"
            cells = [
                system, load, str(level.num_players), str(m.num_ok + m.num_errors),
                _ms(m.ttft.p50), _ms(m.ttft.p99), _ms(m.itl.p50), _ms(m.itl.p99), _ms(m.tpot.p50),
                f"{m.output_tok_s:.1f}", f"{m.requests_per_s:.2f}", _pct(m.goodput_fraction),
                _pct(level.cache_hit_fraction), str(m.num_errors),
            ]  # fmt: skip
            rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def plot_sweep(series: Mapping[str, Sequence[LevelResult]], stem: Path) -> list[Path]:
    """TTFT p50/p99 and output tok/s against load, every system on the same axes."""
    from matplotlib.figure import Figure  # no pyplot: no global figure state, always Agg

    latency, throughput = Figure(figsize=(7, 4.5)), Figure(figsize=(7, 4.5))
    ax_l, ax_t = latency.add_subplot(), throughput.add_subplot()
    all_loads: set[float] = set()
    for index, (system, levels) in enumerate(series.items()):
        color = f"C{index}"  # one color per system; p50 solid, p99 dashed
        loads = [level.load for level in levels]
        all_loads.update(loads)
        for pct, style in (("p50", "-o"), ("p99", "--s")):
            values = [getattr(level.metrics.ttft, pct) for level in levels]
            ax_l.plot(
                loads,
                [v if v is not None else float("nan") for v in values],
                style,
                color=color,
                label=f"{system} TTFT {pct}",
            )
        tok_s = [lv.metrics.output_tok_s for lv in levels]
        ax_t.plot(loads, tok_s, "-o", color=color, label=system)
    closed = all(lv.concurrency is not None for levels in series.values() for lv in levels)
    xlabel = "concurrent players" if closed else "arrival rate (1/s)"
    for ax, ylabel, title in (
        (ax_l, "TTFT (ms)", "Time to first token"),
        (ax_t, "output tokens/s", "Aggregate throughput"),
    ):
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.set_xticks(sorted(all_loads))
        ax.grid(True, alpha=0.3)
        ax.legend()
    paths = [
        stem.with_name(f"{stem.name}-latency.png"),
        stem.with_name(f"{stem.name}-throughput.png"),
    ]
    for figure, path in zip((latency, throughput), paths, strict=True):
        figure.tight_layout()
        figure.savefig(path, dpi=110)
    return paths


@dataclass(frozen=True, slots=True)
class ReportFiles:
    json_path: Path
    markdown_path: Path
    png_paths: tuple[Path, ...]
    markdown: str


def write_report(
    json_path: Path,
    *,
    scenario: str,
    config: Mapping[str, Any],
    series: Mapping[str, Sequence[LevelResult]],
    summary: Mapping[str, Any] | None = None,
    notes: Sequence[str] = (),
) -> ReportFiles:
    """JSON (summary keys at the top level), Markdown next to it and the PNG plots."""
    json_path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "scenario": scenario,
        **(summary or {}),
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "config": dict(config),
        "machine": machine_info(),
        "versions": versions(),
        "results": {system: [lv.to_dict() for lv in levels] for system, levels in series.items()},
    }
    json_path.write_text(json.dumps(document, indent=2, default=str) + "\n", encoding="utf-8")
    markdown = "\n\n".join([f"## {scenario}", markdown_table(series), *notes]) + "\n"
    markdown_path = json_path.with_suffix(".md")
    markdown_path.write_text(markdown, encoding="utf-8")
    pngs = tuple(plot_sweep(series, json_path.with_suffix(""))) if series else ()
    return ReportFiles(json_path, markdown_path, pngs, markdown)


def write_json(path: Path, document: Mapping[str, Any]) -> None:
    """A bench result as indented JSON, its folder made when missing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")


def default_json_path(scenario: str) -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(__file__).with_name("results") / f"{scenario}-{stamp}.json"
