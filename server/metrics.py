"""Prometheus metrics of one server, in a registry of its own (never the global one). No I/O."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .engine.core import EngineStats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class _EngineCollector(Collector):
    """Engine figures read at scrape time from the engine thread's latest snapshot."""

    def __init__(self, stats: Callable[[], EngineStats | None]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        stats = self._stats()
        if stats is None:  # the model is still loading
            return
        s = stats.scheduler
        yield GaugeMetricFamily(
            "banterbox_queue_depth", "Requests waiting for admission", value=s.num_waiting
        )
        yield GaugeMetricFamily(
            "banterbox_running_sequences", "Sequences running in the engine", value=s.num_running
        )
        yield GaugeMetricFamily(
            "banterbox_kv_usage_ratio",
            "Referenced KV blocks / usable blocks",
            value=s.kv.usage_fraction,
        )
        yield GaugeMetricFamily(
            "banterbox_kv_blocks_pinned_by_sessions",
            "KV blocks held only by session pins",
            value=s.kv.num_pinned_by_sessions,
        )
        yield CounterMetricFamily(
            "banterbox_prefix_hit_tokens",
            "Prompt tokens served from the KV cache",
            value=s.num_prefix_hit_tokens_total,
        )
        yield CounterMetricFamily(
            "banterbox_preemptions",
            "Sequences preempted (recomputed later)",
            value=s.num_preemptions_total,
        )


class ServerMetrics:
    """The server's instruments; `render()` is the /metrics body."""

    def __init__(self, engine_stats: Callable[[], EngineStats | None]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.ttft = Histogram(
            "banterbox_ttft_seconds",
            "Receipt of a generate frame to its first token",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.inter_token = Histogram(
            "banterbox_inter_token_latency_seconds",
            "Time between streamed tokens",
            buckets=_ITL_BUCKETS,
            registry=r,
        )
        self.requests = Counter(
            "banterbox_requests", "Finished generate turns", ["finish_reason"], registry=r
        )
        self.errors = Counter(
            "banterbox_errors", "Error frames sent, by code", ["code"], registry=r
        )
        self.connections = Gauge("banterbox_connections", "Open WebSocket connections", registry=r)
        self.sessions = Gauge("banterbox_active_sessions", "Open sessions", registry=r)
        r.register(_EngineCollector(engine_stats))

    def render(self) -> bytes:
        return generate_latest(self.registry)
