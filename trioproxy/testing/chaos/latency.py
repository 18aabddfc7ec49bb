"""Hang-up → upstream closed: how both campaigns time it, and the bound they hold it to.

Rules:

- Times come from two processes on one clock (CLOCK_MONOTONIC): the client
  notes when it closed its connection, the mock upstream when it had read the
  request and when its peer (the gateway) closed.
- A run is timed from the later of the client's close and the request's arrival
  at the upstream. A client can hang up before the gateway has even read its
  request (it waits in the accept queue of a busy gateway); the upstream request
  then starts after the hang-up, and what the gateway owes from there is to close
  it at once. Such runs are counted (``after_hang_up``) and their time from the
  client's close is kept apart (``from_close``).
- ``cancel_latency_p99`` fails when the p99 exceeds the bound: default
  :data:`P99_BOUND_MS` (``trioproxy chaos --cancel-p99-ms``). A gateway that
  closes an abandoned upstream only at its idle or read timeout fails it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["P99_BOUND_MS", "HangUps", "format_line", "quantiles"]

P99_BOUND_MS = 100.0


def quantiles(values: Iterable[float]) -> dict[str, float | int]:
    """n, p50, p99 and max of ``values`` (nearest rank), rounded to µs in ms."""
    xs = sorted(values)
    if not xs:
        return {"n": 0}

    def q(p: float) -> float:
        return round(xs[min(len(xs) - 1, int(p * len(xs)))], 3)

    return {"n": len(xs), "p50": q(0.5), "p99": q(0.99), "max": round(xs[-1], 3)}


@dataclass(slots=True)
class HangUps:
    """The hang-up → upstream closed times of a campaign, in ms."""

    ms: list[float] = field(default_factory=list)
    from_close: list[float] = field(default_factory=list)  # of runs begun upstream after it

    def add(self, closed_mono: float, close: dict[str, Any]) -> float:
        """Time one run from its client's close and the mock's record of the
        upstream connection (``mono``: closed, ``requested``: request read)."""
        requested = float(close.get("requested") or 0.0)
        closed = float(close["mono"])
        ms = (closed - max(closed_mono, requested)) * 1000
        self.ms.append(ms)
        if requested > closed_mono:
            self.from_close.append((closed - closed_mono) * 1000)
        return ms

    def report(self) -> dict[str, Any]:
        return {
            **quantiles(self.ms),
            "after_hang_up": len(self.from_close),
            "after_hang_up_from_close": quantiles(self.from_close),
        }

    def p99_holds(self, bound_ms: float) -> tuple[bool, str]:
        """The ``cancel_latency_p99`` invariant: (ok, detail)."""
        q = quantiles(self.ms)
        if not self.ms:
            return True, "no hang-up timed"
        ok = q["p99"] <= bound_ms
        return ok, (
            f"p99 {q['p99']} ms over {q['n']} hang-ups (bound {bound_ms:g} ms); "
            f"{len(self.from_close)} upstream requests began after their client had left"
        )


def format_line(report: dict[str, Any]) -> str:
    """One line for a text report."""
    main = ", ".join(f"{k} {report[k]}" for k in ("n", "p50", "p99", "max") if k in report)
    line = "client hang-up -> upstream connection closed, ms: " + main
    if report.get("after_hang_up"):
        late = report["after_hang_up_from_close"]
        line += (
            f" ({report['after_hang_up']} upstream requests began after their client had"
            f" left: timed from their start; from the client's close p99 {late['p99']},"
            f" max {late['max']})"
        )
    return line
