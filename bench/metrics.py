"""Serving metrics of vLLM's `bench serve` from per-request timelines; pure Python, no I/O.

Conventions (the same as vLLM's benchmark so figures compare):
- A stream delivers *deltas*; one delta may carry several tokens (a server merging output
  for a slow client). ITL is measured between deltas, because that is the gap a reader sees;
  TPOT is measured per token: (end - first delta) / (num_output_tokens - 1). So merging
  deltas raises ITL but leaves TPOT alone. `RequestTimeline.delta_num_tokens` optionally
  records the tokens of each delta and is checked against `num_output_tokens`.
- Errored requests (`error_code` set) count only in `num_errors` / `errors_by_code`; they
  are left out of every latency figure, of throughput and of goodput.
- Empty inputs never raise: a `Summary` of no values has count 0 and None figures; rates
  over no requests are 0.0; `goodput_fraction` is None when there were no requests at all.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

MS_PER_S = 1000.0


@dataclass(frozen=True, slots=True)
class RequestTimeline:
    """What the load generator saw of one request; times in seconds on one monotonic clock."""

    start: float
    token_times: tuple[float, ...]  # arrival time of each streamed delta, ascending
    end: float  # when the stream closed (final frame received)
    num_prompt_tokens: int
    num_output_tokens: int
    error_code: str | None = None
    # Tokens carried by each delta, parallel to token_times; empty when unknown.
    delta_num_tokens: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.end < self.start:
            raise ValueError(f"end {self.end} precedes start {self.start}")
        if any(b < a for a, b in zip(self.token_times, self.token_times[1:], strict=False)):
            raise ValueError("token_times must be ascending")
        if self.num_output_tokens < 0 or self.num_prompt_tokens < 0:
            raise ValueError("token counts must be >= 0")
        if self.delta_num_tokens:
            if len(self.delta_num_tokens) != len(self.token_times):
                raise ValueError("delta_num_tokens must be parallel to token_times")
            if min(self.delta_num_tokens) < 1:
                raise ValueError("every delta carries at least one token")
            if self.error_code is None and sum(self.delta_num_tokens) != self.num_output_tokens:
                raise ValueError("delta_num_tokens must sum to num_output_tokens")

    @property
    def ok(self) -> bool:
        return self.error_code is None

    @property
    def ttft_s(self) -> float | None:
        return self.token_times[0] - self.start if self.token_times else None

    @property
    def tpot_s(self) -> float | None:
        """Mean time per output token after the first; None below two tokens."""
        if not self.token_times or self.num_output_tokens < 2:
            return None
        return (self.end - self.token_times[0]) / (self.num_output_tokens - 1)

    @property
    def itls_s(self) -> tuple[float, ...]:
        return tuple(b - a for a, b in zip(self.token_times, self.token_times[1:], strict=False))

    @property
    def e2e_s(self) -> float:
        return self.end - self.start

    @property
    def stream_tok_s(self) -> float | None:
        """Decode rate this stream got after its first delta; None below two tokens."""
        if not self.token_times or self.num_output_tokens < 2:
            return None
        elapsed = self.end - self.token_times[0]
        return math.inf if elapsed <= 0 else (self.num_output_tokens - 1) / elapsed


@dataclass(frozen=True, slots=True)
class Summary:
    """Distribution of one latency; figures are None when count is 0."""

    mean: float | None
    p50: float | None
    p90: float | None
    p99: float | None
    max: float | None
    count: int


@dataclass(frozen=True, slots=True)
class RunMetrics:
    """One load run, the figures `vllm bench serve` prints; latency summaries in milliseconds."""

    ttft: Summary
    tpot: Summary
    itl: Summary
    e2e: Summary
    output_tok_s: float  # output tokens of ok requests / duration
    requests_per_s: float  # ok requests / duration
    goodput_rps: float  # requests meeting both SLOs / duration
    goodput_fraction: float | None  # requests meeting both SLOs / all requests (errors too)
    num_ok: int
    num_errors: int
    errors_by_code: dict[str, int]
    duration_s: float
    slo_ttft_s: float
    slo_min_tok_s: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation, as numpy's default method."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"q must lie in [0, 100], got {q}")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    lo = math.floor(rank)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (rank - lo)


def summarize(values: Iterable[float], *, scale: float = 1.0) -> Summary:
    """Mean, p50, p90, p99 and max of values, each multiplied by scale (e.g. s -> ms)."""
    scaled = [v * scale for v in values]
    if not scaled:
        return Summary(mean=None, p50=None, p90=None, p99=None, max=None, count=0)
    return Summary(
        mean=math.fsum(scaled) / len(scaled),
        p50=percentile(scaled, 50),
        p90=percentile(scaled, 90),
        p99=percentile(scaled, 99),
        max=max(scaled),
        count=len(scaled),
    )


def meets_slo(timeline: RequestTimeline, *, slo_ttft_s: float, slo_min_tok_s: float) -> bool:
    """Good request: ok, first token within slo_ttft_s, stream at least slo_min_tok_s.

    A one-token answer has no stream rate to judge, so only its TTFT counts.
    """
    ttft = timeline.ttft_s
    if not timeline.ok or ttft is None or ttft > slo_ttft_s:
        return False
    rate = timeline.stream_tok_s
    return rate is None or rate >= slo_min_tok_s


def compute_metrics(
    timelines: Sequence[RequestTimeline],
    *,
    duration_s: float,
    slo_ttft_s: float = 1.0,
    slo_min_tok_s: float = 10.0,
) -> RunMetrics:
    """Aggregate a run's timelines; duration_s is the wall time of the whole run."""
    if duration_s <= 0:
        raise ValueError(f"duration_s must be > 0, got {duration_s}")
    ok = [t for t in timelines if t.ok]
    errors = Counter(t.error_code for t in timelines if t.error_code is not None)
    num_good = sum(meets_slo(t, slo_ttft_s=slo_ttft_s, slo_min_tok_s=slo_min_tok_s) for t in ok)
    ttfts = [v for v in (t.ttft_s for t in ok) if v is not None]
    tpots = [v for v in (t.tpot_s for t in ok) if v is not None]
    return RunMetrics(
        ttft=summarize(ttfts, scale=MS_PER_S),
        tpot=summarize(tpots, scale=MS_PER_S),
        itl=summarize((gap for t in ok for gap in t.itls_s), scale=MS_PER_S),
        e2e=summarize((t.e2e_s for t in ok), scale=MS_PER_S),
        output_tok_s=sum(t.num_output_tokens for t in ok) / duration_s,
        requests_per_s=len(ok) / duration_s,
        goodput_rps=num_good / duration_s,
        goodput_fraction=num_good / len(timelines) if timelines else None,
        num_ok=len(ok),
        num_errors=sum(errors.values()),
        errors_by_code=dict(sorted(errors.items())),
        duration_s=duration_s,
        slo_ttft_s=slo_ttft_s,
        slo_min_tok_s=slo_min_tok_s,
    )
