"""OpenTelemetry spans of each request, built from its timeline when it ends.

Rules:
- On when ``otlp_endpoint`` is set in the config or ``OTEL_EXPORTER_OTLP_ENDPOINT``
  is in the environment; off, the gateway does nothing per request for it (one
  ``None`` check when the record is made) and does not import OpenTelemetry.
- One span per request (kind SERVER), a child span per upstream attempt (kind
  CLIENT), the timeline's moments as span events, attributes from the GenAI
  semantic conventions (``gen_ai.system``, ``gen_ai.request.model``,
  ``gen_ai.response.model``, ``gen_ai.usage.input_tokens``,
  ``gen_ai.usage.output_tokens``) and ours (``trioproxy.outcome``,
  ``trioproxy.cancel_latency_ms``, ``trioproxy.ttft_ms``, ``trioproxy.provider``).
- A client's W3C ``traceparent`` is continued: the request span is its child.
  Span ids are chosen when the request is admitted (:meth:`Tracing.begin`), so
  each upstream attempt can send its own span as ``traceparent`` before the span
  exists; the spans are made when the request ends, with those ids.
- Export is the SDK's OTLP/HTTP exporter behind its batch processor, which runs
  in its own thread: the event loop only hands spans over.
"""

from __future__ import annotations

import secrets
from typing import Any

from ..relay.timeline import TraceIds

__all__ = ["Tracing"]


class _Preset:
    """An id generator that hands out the ids chosen at admission, in order."""

    def __init__(self) -> None:
        self.trace_id = 0
        self.span_ids: list[int] = []

    def generate_trace_id(self) -> int:
        return self.trace_id

    def generate_span_id(self) -> int:
        return self.span_ids.pop(0) if self.span_ids else secrets.randbits(64) or 1

    def is_trace_id_random(self) -> bool:  # W3C trace-context level 2: they are
        return True


class Tracing:
    def __init__(self, endpoint: str, exporter: Any = None) -> None:
        """``exporter``: another SpanExporter than OTLP/HTTP to ``endpoint`` (bench)."""
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        self._ids = _Preset()
        self.provider = TracerProvider(
            resource=Resource.create({"service.name": "trioproxy"}),
            id_generator=self._ids,  # type: ignore[arg-type]
        )
        if exporter is None:
            exporter = OTLPSpanExporter(endpoint=endpoint.rstrip("/") + "/v1/traces")
        self.provider.add_span_processor(BatchSpanProcessor(exporter))
        self._tracer = self.provider.get_tracer("trioproxy")

    def export(self, record: Any, ids: TraceIds, dialect: str, name: str) -> None:
        """Make the request's spans from its record and hand them to the exporter."""
        from opentelemetry import trace

        start_ns = int(record.created * 1e9)
        end_ns = start_ns + int(record.duration_ms * 1e6)
        self._ids.trace_id = ids.trace_id
        self._ids.span_ids = [ids.span_id, *ids.attempt_span_ids]
        context = None
        if ids.parent_span_id is not None:
            parent = trace.SpanContext(
                ids.trace_id, ids.parent_span_id, is_remote=True,
                trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED),
            )  # fmt: skip
            context = trace.set_span_in_context(trace.NonRecordingSpan(parent))
        span = self._tracer.start_span(
            name, context=context, kind=trace.SpanKind.SERVER,
            start_time=start_ns, attributes=_attributes(record, dialect),
        )  # fmt: skip
        moments = list(record.timeline)
        for event, ms in moments:
            span.add_event(event, timestamp=start_ns + int(ms * 1e6))
        inner = trace.set_span_in_context(span)
        for name, begin, finish in _attempts(moments, record.duration_ms):
            child = self._tracer.start_span(
                name, context=inner, kind=trace.SpanKind.CLIENT,
                start_time=start_ns + int(begin * 1e6),
                attributes={"trioproxy.provider": name.removeprefix("attempt ")},
            )  # fmt: skip
            child.end(end_time=start_ns + int(finish * 1e6))
        span.end(end_time=end_ns)

    def force_flush(self) -> bool:
        return bool(self.provider.force_flush())

    def shutdown(self) -> None:
        self.provider.shutdown()


def _attempts(
    moments: list[tuple[str, float]], duration_ms: float
) -> list[tuple[str, float, float]]:
    """(name, start ms, end ms) of each upstream attempt in a timeline."""
    out: list[tuple[str, float, float]] = []
    for i, (event, ms) in enumerate(moments):
        if not event.startswith("attempt "):
            continue
        end = duration_ms
        for later, at in moments[i + 1 :]:
            if later.startswith(("attempt ", "failover ")) or later == "upstream_closed":
                end = at
                break
        out.append((event, ms, end))
    return out


def _attributes(record: Any, dialect: str) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "gen_ai.system": dialect,
        "trioproxy.outcome": str(record.outcome),
        "trioproxy.request_id": record.request_id,
        "http.response.status_code": record.status,
    }
    optional = {
        "gen_ai.request.model": record.model,
        "gen_ai.response.model": record.upstream_model,
        "trioproxy.provider": record.provider,
        "trioproxy.ttft_ms": record.ttft_ms,
        "trioproxy.cancel_latency_ms": record.cancel_latency_ms,
    }
    usage = record.usage or {}
    optional["gen_ai.usage.input_tokens"] = usage.get("input_tokens", usage.get("prompt_tokens"))
    optional["gen_ai.usage.output_tokens"] = usage.get(
        "output_tokens", usage.get("completion_tokens")
    )
    attrs.update({k: v for k, v in optional.items() if v is not None})
    return attrs
