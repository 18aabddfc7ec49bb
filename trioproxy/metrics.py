"""Prometheus metrics: observed once per request, gauges read at scrape time.

Per-chunk work stays out of it: a stream's inter-token gaps are aggregated in
the relay (its largest gap) and observed once when the request ends, like TTFT,
duration and cancellation latency. Gauges (active requests, limiter, detached
work, pending receipts) are read from the ``statistics()`` records when
``/metrics`` is scraped. The ``model`` label is bounded: after
``MAX_MODEL_LABELS`` distinct names, further ones are counted as ``other``
(clients choose model names; labels must not grow without bound).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .records import CompletionRecord

if TYPE_CHECKING:
    from .app import Gateway

__all__ = ["CONTENT_TYPE", "MAX_MODEL_LABELS", "Metrics"]

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
MAX_MODEL_LABELS = 200
_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_DURATION = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)


class _StateCollector(Collector):
    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway

    def collect(self) -> Iterator[GaugeMetricFamily]:
        stats = self._gateway.statistics()
        yield GaugeMetricFamily(
            "trioproxy_active_requests", "Requests in flight", stats.active_requests
        )
        yield GaugeMetricFamily(
            "trioproxy_limiter_in_use", "Stream slots held", stats.limiter.borrowed_tokens
        )
        yield GaugeMetricFamily(
            "trioproxy_limiter_waiting", "Requests waiting for a slot", stats.limiter.tasks_waiting
        )
        detached = stats.detached.pending if stats.detached else 0
        yield GaugeMetricFamily("trioproxy_detached_pending", "Detached jobs pending", detached)
        receipts = self._gateway.receipts
        pending = receipts.statistics().pending if receipts else 0
        yield GaugeMetricFamily("trioproxy_receipts_pending", "Receipts not stored yet", pending)


class Metrics:
    def __init__(self, gateway: Gateway) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "trioproxy_requests", "Requests by route, model, provider and outcome",
            ["route", "model", "provider", "outcome"], registry=r,
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
        r.register(_StateCollector(gateway))
        self._models: set[str] = set()

    def _model(self, model: str | None) -> str:
        if model is None:
            return ""
        if model in self._models:
            return model
        if len(self._models) < MAX_MODEL_LABELS:
            self._models.add(model)
            return model
        return "other"

    def observe(self, record: CompletionRecord, provider: str) -> None:
        route = record.route
        self.requests.labels(route, self._model(record.model), provider, record.outcome).inc()
        self.duration.labels(route).observe(record.duration_ms / 1000)
        if record.ttft_ms is not None:
            self.ttft.labels(route).observe(record.ttft_ms / 1000)
        if record.max_gap_ms is not None:
            self.max_gap.labels(route).observe(record.max_gap_ms / 1000)
        if record.cancel_latency_ms is not None:
            self.cancellations.inc()
            self.cancel_latency.observe(record.cancel_latency_ms / 1000)

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))
