"""The life of one request as a list of moments on the trio clock.

Rules:
- A moment is ``(event, time)``: appending costs a tuple and a clock read, so
  it is always on (about fifteen a request). Nothing per chunk is recorded:
  only the first event of a stream and the moments around the upstream.
- Events, in the order a request meets them: ``received``, ``body_read``,
  ``admitted``; per upstream attempt ``attempt <provider>``, ``connect_start`` /
  ``connected`` (or ``reused``), ``request_written``, ``response_head``,
  ``first_event``, ``failover <reason>``; then ``committed``, ``client_hangup``,
  ``upstream_closed``, ``slots_released``, ``outcome <outcome>``; and, added by
  ``/debug/trace`` once it is known, ``receipt_stored``.
- The transport reports its moments through the request's public httpx
  ``extensions`` (:data:`TRACE_EXTENSION`): it never sees the exchange.

``/debug/trace/{request_id}`` serves a timeline, ``trioproxy trace`` prints it.
With OpenTelemetry on, :class:`TraceIds` are the ids of the request's spans,
chosen at admission (:mod:`trioproxy.observe.tracing` makes the spans).
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field

from ..upstream.body import TRACE_EXTENSION

__all__ = ["TRACE_EXTENSION", "Timeline", "TraceIds", "traceparent_of"]


class Timeline:
    __slots__ = ("moments",)

    def __init__(self, started: float) -> None:
        self.moments: list[tuple[str, float]] = [("received", started)]

    def rows(self) -> list[tuple[str, float]]:
        """``(event, ms since received)`` for each moment, in order."""
        start = self.moments[0][1]
        return [(name, round((at - start) * 1000, 3)) for name, at in self.moments]


_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


@dataclass(slots=True)
class TraceIds:
    """The ids of one request's spans, chosen at admission."""

    trace_id: int
    parent_span_id: int | None  # the client's span, when it sent a traceparent
    span_id: int = field(default_factory=lambda: secrets.randbits(64) or 1)
    attempt_span_ids: list[int] = field(default_factory=list)

    def next_attempt(self) -> str:
        """A span id for the next upstream attempt, as the traceparent to send."""
        span_id = secrets.randbits(64) or 1
        self.attempt_span_ids.append(span_id)
        return f"00-{self.trace_id:032x}-{span_id:016x}-01"


def traceparent_of(headers: list[tuple[bytes, bytes]]) -> TraceIds:
    """Ids continuing the client's ``traceparent`` (a new trace if it sent none)."""
    for name, value in headers:
        if name == b"traceparent":
            found = _TRACEPARENT.fullmatch(value.decode("ascii", "replace").strip().lower())
            if found and int(found.group(1), 16) and int(found.group(2), 16):
                return TraceIds(int(found.group(1), 16), int(found.group(2), 16))
    return TraceIds(secrets.randbits(128) or 1, None)
