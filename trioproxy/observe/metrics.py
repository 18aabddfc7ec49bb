"""Prometheus metrics: observed once per request, gauges read at scrape time.

Per-chunk work stays out of it: a stream's inter-token gaps are aggregated in
the relay (its largest gap) and observed once when the request ends, like TTFT,
duration and cancellation latency. The gateway-added latency of every event
(upstream bytes arrived -> handed to the client) is counted into fixed buckets
by the relay and merged here once per stream. Provider health (state, in
flight, ejections) is read from the router at scrape time. Gauges (active requests, limiter, detached
work, pending receipts) are read from the ``statistics()`` records when
``/metrics`` is scraped. The ``model`` label is bounded: only a request that
passed authorization and routing (a provider was tried) labels its model, and
after ``MAX_MODEL_LABELS`` distinct names further ones are counted as ``other``
(clients choose model names; labels must not grow without bound); so is the
``upstream_model`` label (the model that answered, as its upstream names it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from ..relay.exchange import ADDED_BUCKETS, GAP_BUCKETS, StreamMetrics
from ..relay.record import CompletionRecord
from ..routing.providers import ProviderStatistics

__all__ = ["CONTENT_TYPE", "MAX_MODEL_LABELS", "Gauges", "Metrics"]

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
MAX_MODEL_LABELS = 200
_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_DURATION = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)


@dataclass(frozen=True, slots=True)
class Gauges:
    """The gateway's state at scrape time (read from its ``statistics()`` records)."""

    active_requests: int
    limiter_in_use: int
    limiter_waiting: int
    detached_pending: int
    receipts_pending: int
    redis_up: int = -1  # 1 up, 0 down, -1 no redis_url
    redis_outages: int = 0
    redis_failed_calls: int = 0
    limit_fallbacks: int = 0  # admissions decided by this process: Redis was down
    limit_early: int = 0  # admitted at once, counted while the upstream request was on its way
    limit_early_overruns: int = 0  # ... counted over a limit another host had filled


class _StateCollector(Collector):
    def __init__(
        self,
        gauges: Callable[[], Gauges],
        providers: Callable[[], Sequence[ProviderStatistics]],
    ) -> None:
        self._gauges = gauges
        self._providers = providers

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        g = self._gauges()
        yield GaugeMetricFamily(
            "trioproxy_active_requests", "Requests in flight", g.active_requests
        )
        yield GaugeMetricFamily("trioproxy_limiter_in_use", "Stream slots held", g.limiter_in_use)
        yield GaugeMetricFamily(
            "trioproxy_limiter_waiting", "Requests waiting for a slot", g.limiter_waiting
        )
        yield GaugeMetricFamily(
            "trioproxy_detached_pending", "Detached jobs pending", g.detached_pending
        )
        yield GaugeMetricFamily(
            "trioproxy_receipts_pending", "Receipts not stored yet", g.receipts_pending
        )
        if g.redis_up >= 0:
            yield GaugeMetricFamily("trioproxy_redis_up", "1 while Redis answers", g.redis_up)
            yield CounterMetricFamily(
                "trioproxy_redis_outages", "Times Redis stopped answering", g.redis_outages
            )
            yield CounterMetricFamily(
                "trioproxy_redis_failed_calls", "Redis calls failed or skipped while down",
                g.redis_failed_calls,
            )  # fmt: skip
            yield CounterMetricFamily(
                "trioproxy_limit_fallbacks",
                "Admissions decided by this process's counters because Redis was unavailable",
                g.limit_fallbacks,
            )  # fmt: skip
            yield CounterMetricFamily(
                "trioproxy_limit_early_admissions",
                "Admissions of keys far from their limits, counted in Redis while the "
                "upstream request was on its way",
                g.limit_early,
            )  # fmt: skip
            yield CounterMetricFamily(
                "trioproxy_limit_early_overruns",
                "Early admissions Redis counted over a limit other hosts had filled",
                g.limit_early_overruns,
            )  # fmt: skip
        try:
            providers = self._providers()
        except RuntimeError:  # registration (auto_describe) runs outside trio
            providers = []
        healthy = GaugeMetricFamily(
            "trioproxy_provider_healthy",
            "1 unless one of its models is ejected",
            labels=["provider"],
        )
        in_flight = GaugeMetricFamily(
            "trioproxy_provider_in_flight", "Streams in flight", labels=["provider"]
        )
        ejections = CounterMetricFamily(
            "trioproxy_provider_ejections", "Ejections after consecutive failures",
            labels=["provider"],
        )  # fmt: skip
        for p in providers:
            healthy.add_metric([p.name], 0 if p.state == "ejected" else 1)
            in_flight.add_metric([p.name], p.in_flight)
            ejections.add_metric([p.name], p.ejections)
        yield from (healthy, in_flight, ejections)


class _MergedHistogram(Collector):
    """A histogram fed with per-stream bucket counts (one merge per request)
    instead of one ``observe`` per event."""

    def __init__(self, name: str, documentation: str, bounds: tuple[float, ...]) -> None:
        self.name, self.documentation, self.bounds = name, documentation, bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def merge(self, counts: list[int], total: float) -> None:
        for i, n in enumerate(counts):
            self.counts[i] += n
        self.total += total

    def collect(self) -> Iterator[HistogramMetricFamily]:
        cumulative, buckets = 0, []
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            cumulative += n
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        yield HistogramMetricFamily(
            self.name, self.documentation, buckets=buckets, sum_value=self.total
        )


class Metrics:
    """The process's metrics. ``gauges`` and ``providers`` are read at scrape time."""

    def __init__(
        self,
        gauges: Callable[[], Gauges],
        providers: Callable[[], Sequence[ProviderStatistics]],
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "trioproxy_requests",
            "Requests by route, model asked for, model that answered, provider and outcome",
            ["route", "model", "upstream_model", "provider", "outcome"], registry=r,
        )  # fmt: skip
        self.ttft = Histogram(
            "trioproxy_ttft_seconds", "Request start to first upstream event", ["route"],
            buckets=_LATENCY, registry=r,
        )  # fmt: skip
        self.max_gap = Histogram(
            "trioproxy_stream_max_gap_seconds", "Largest gap between upstream events, per stream",
            ["route"], buckets=_LATENCY, registry=r,
        )  # fmt: skip
        self.duration = Histogram(
            "trioproxy_request_duration_seconds", "Whole request", ["route"],
            buckets=_DURATION, registry=r,
        )  # fmt: skip
        self.cancellations = Counter(
            "trioproxy_upstream_cancellations", "Upstream requests cancelled by a client hang-up",
            registry=r,
        )  # fmt: skip
        self.cancel_latency = Histogram(
            "trioproxy_cancel_latency_seconds", "Client hang-up to upstream connection closed",
            buckets=_LATENCY, registry=r,
        )  # fmt: skip
        self.tokens = Counter(
            "trioproxy_tokens", "Tokens by API key name, kind (prompt|completion) and source "
            "(upstream|estimated)", ["key", "kind", "source"], registry=r,
        )  # fmt: skip
        self.failovers = Counter(
            "trioproxy_failovers", "Attempts that failed before the first byte and moved on",
            ["provider", "reason"], registry=r,
        )  # fmt: skip
        self.added = _MergedHistogram(
            "trioproxy_event_added_latency_seconds",
            "Per upstream read (one or more events): arrived -> handed to the client",
            ADDED_BUCKETS,
        )  # fmt: skip
        self.gaps = _MergedHistogram(
            "trioproxy_inter_token_gap_seconds", "Gap between two upstream events", GAP_BUCKETS
        )
        r.register(self.added)
        r.register(self.gaps)
        r.register(_StateCollector(gauges, providers))
        self._models: set[str] = set()
        self._upstream_models: set[str] = set()  # named by upstreams: bounded apart

    @staticmethod
    def _bounded(value: str | None, seen: set[str]) -> str:
        """``value`` as a label while fewer than ``MAX_MODEL_LABELS`` were seen,
        else ``other`` (each is at most 256 characters: a client's model name
        longer is a 400, an upstream's is cut when read)."""
        if value is None:
            return ""
        if value in seen:
            return value
        if len(seen) < MAX_MODEL_LABELS:
            seen.add(value)
            return value
        return "other"

    def observe(self, record: CompletionRecord, stream: StreamMetrics | None) -> None:
        """Once per request: the record, and the stream's accumulators if any."""
        route = record.route
        if stream is not None:
            self.added.merge(stream.added_counts, stream.added_sum)
            if record.max_gap_ms is not None:
                self.gaps.merge(stream.gap_counts, stream.gap_sum)
        for failed, reason in record.failovers:
            self.failovers.labels(failed, reason).inc()
        provider = record.provider or "none"
        # Only a model that passed authorization and routing names a label: any
        # key could otherwise fill the label slots with names it may not use.
        served = record.provider is not None
        model = self._bounded(record.model, self._models) if served else ""
        upstream = self._bounded(record.upstream_model, self._upstream_models) if served else ""
        self.requests.labels(route, model, upstream, provider, record.outcome).inc()
        self.duration.labels(route).observe(record.duration_ms / 1000)
        if record.ttft_ms is not None:
            self.ttft.labels(route).observe(record.ttft_ms / 1000)
        if record.max_gap_ms is not None:
            self.max_gap.labels(route).observe(record.max_gap_ms / 1000)
        if record.usage_source is not None:
            key = record.key or ""  # key names come from the config: a bounded set
            self.tokens.labels(key, "prompt", record.usage_source).inc(record.prompt_tokens)
            self.tokens.labels(key, "completion", record.usage_source).inc(record.completion_tokens)
        if record.cancel_latency_ms is not None:
            self.cancellations.inc()
            self.cancel_latency.observe(record.cancel_latency_ms / 1000)

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))
