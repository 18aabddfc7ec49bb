"""The life of one request as a list of moments on the trio clock.

Rules:
- A moment is ``(event, time)``: appending costs a tuple and a clock read, so
  it is always on (about fifteen a request). Nothing per chunk is recorded:
  only the first event of a stream and the moments around the upstream.
- Events, in the order a request meets them: ``received``, ``body_read``,
  ``admitted``; per upstream attempt ``attempt <provider>``, ``connect_start`` /
  ``connected`` (or ``reused``), ``request_written``, ``response_head``,
  ``first_event``, ``failover <reason>``; then ``committed``, ``client_hangup``,
  ``upstream_closed``, ``slots_released``, ``outcome <outcome>``.
- The transport reports its moments through the request's public httpx
  ``extensions`` (:data:`TRACE_EXTENSION`): it never sees the exchange.

``/debug/trace/{request_id}`` serves a timeline, ``trioproxy trace`` prints it.
"""

from __future__ import annotations

from ..upstream.body import TRACE_EXTENSION

__all__ = ["TRACE_EXTENSION", "Timeline"]


class Timeline:
    __slots__ = ("moments",)

    def __init__(self, started: float) -> None:
        self.moments: list[tuple[str, float]] = [("received", started)]

    def rows(self) -> list[tuple[str, float]]:
        """``(event, ms since received)`` for each moment, in order."""
        start = self.moments[0][1]
        return [(name, round((at - start) * 1000, 3)) for name, at in self.moments]
