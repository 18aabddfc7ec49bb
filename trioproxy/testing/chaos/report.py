"""Invariants and the report of a chaos campaign (pure functions over collected data).

The invariants, each checked after the campaign has settled:

1. ``streams_released``: no active request, the stream limiter's borrowed
   tokens back to 0, and no provider counts a stream in flight.
2. ``upstream_streams_closed``: the mock upstream has no stream in progress;
   connections still open are idle keep-alive ones (at most ``max_streams``).
3. ``one_outcome_per_request``: every run has exactly one outcome record, and
   ``outcomes_match``: that outcome is one the run's fault  x  behaviour allows.
4. ``no_orphan_tasks``: the gateway's trio task count is back to its baseline
   (Hypercorn's transient per-connection keep-alive timers aside).
5. ``detached_drained``: no detached work pending, none failed, the service
   nursery alive (the gateway still ready).
6. ``rss_bounded``: gateway RSS after the campaign ≤ baseline + ``RSS_SLACK``.
7. ``no_client_hung``: no client waited past the gateway's timeouts (plus
   ``hang_bound``) for its answer to end: an HTTP/1.0 or ``Connection: close``
   answer ends only when the gateway closes the connection.
8. With drain providers (``--drain S``): ``drains_bounded``: every drained
   exchange was recorded, its upstream closed within ``S`` s (+ ``DRAIN_SLACK``)
   of the hang-up; none still running. Their hang-up → close times are the
   drain's, not counted among the cancel latencies.
9. ``cancel_latency_p99``: the p99 of client hang-up → upstream closed at the
   mock is within ``cancel_p99_ms`` (default 100 ms), timed as
   :mod:`.latency` says.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .latency import P99_BOUND_MS, HangUps, format_line, quantiles
from .plan import FAULT_OUTCOME, RACE_S, Run, RunResult

__all__ = [
    "RSS_SLACK",
    "Invariant",
    "Observed",
    "build_report",
    "check_invariants",
    "format_report",
]

RSS_SLACK = 64 << 20  # bytes of RSS growth allowed over the baseline
DRAIN_SLACK = 1.0  # s past drain_max_seconds for a drain's upstream to be closed


@dataclass(frozen=True, slots=True)
class Invariant:
    name: str
    ok: bool
    detail: str


@dataclass(frozen=True, slots=True)
class Observed:
    """What the campaign collected from the gateway and the mock."""

    baseline: dict[str, Any]  # /debug/state before the runs
    final: dict[str, Any]  # /debug/state after settling
    records: list[dict[str, Any]]  # /debug/records
    mock_stats: dict[str, Any]  # /mock/stats
    peer_closes: list[dict[str, Any]]  # /mock/peer-closes
    faults: list[tuple[str, float]] = field(default_factory=list)  # /mock/faults


def check_invariants(
    runs: Sequence[Run],
    observed: Observed,
    results: Sequence[RunResult] = (),
    drain: float = 0.0,
    cancel_p99_ms: float = P99_BOUND_MS,
) -> list[Invariant]:
    final, base = observed.final, observed.baseline
    by_id: dict[str, list[str]] = collections.defaultdict(list)
    for record in observed.records:
        by_id[record["request_id"]].append(record["outcome"])
    missing = [r.request_id for r in runs if len(by_id[r.request_id]) == 0]
    doubled = [r.request_id for r in runs if len(by_id[r.request_id]) > 1]
    raced = _raced(observed, results)
    wrong = [
        f"{r.request_id} {r.fault} x {r.behaviour}: {by_id[r.request_id][0]} not in {sorted(r.expected)}"
        for r in runs
        if len(by_id[r.request_id]) == 1
        and by_id[r.request_id][0] not in r.expected
        and not (r.index in raced and by_id[r.request_id][0] == FAULT_OUTCOME[r.fault])
    ]
    hung = [
        f"{r.run.request_id} ({r.run.client}, {r.run.fault} x {r.run.behaviour})"
        for r in results
        if r.client_error is not None and r.client_error.startswith("TooSlowError")
    ]
    limiter, detached, mock = final["limiter"], final["detached"] or {}, observed.mock_stats
    provider_streams = sum(p["in_flight"] for p in final.get("providers", []))
    invariants = [_drains_bounded(observed.records, drain)] if drain else []
    if any(r.translated for r in runs):
        invariants.append(_translated(runs, observed.records))
    return [
        *invariants,
        Invariant(
            "streams_released",
            final["active_requests"] == 0
            and limiter["borrowed_tokens"] == 0
            and provider_streams == 0,
            f"active={final['active_requests']} borrowed={limiter['borrowed_tokens']} "
            f"provider in_flight={provider_streams}",
        ),
        Invariant(
            "upstream_streams_closed",
            mock["streams_active"] == 0
            and mock["open_connections"] <= final["config"]["max_streams"],
            f"mock streams_active={mock['streams_active']} "
            f"open (idle keep-alive) connections={mock['open_connections']}",
        ),
        Invariant(
            "one_outcome_per_request",
            not missing and not doubled,
            f"missing={missing[:5]} doubled={doubled[:5]}",
        ),
        Invariant("outcomes_match", not wrong, "; ".join(wrong[:10]) or f"{len(runs)} runs"),
        Invariant(
            "no_orphan_tasks",
            _stable_tasks(final) == _stable_tasks(base),
            f"tasks baseline={base['tasks']} after={final['tasks']}"
            + _task_diff(base.get("task_names", {}), final.get("task_names", {}))
            + " (not counted: Hypercorn's keep-alive timers of idle connections, such as the one"
            " that asked for this state, the built-in mock upstream's tasks and the Redis client's connection tasks)",
        ),
        Invariant(
            "detached_drained",
            detached.get("pending") == 0 and detached.get("failed") == 0 and final["ready"],
            f"detached={detached} ready={final['ready']}",
        ),
        Invariant(
            "rss_bounded",
            final["rss_bytes"] <= base["rss_bytes"] + RSS_SLACK,
            f"rss baseline={base['rss_bytes'] >> 20} MiB after={final['rss_bytes'] >> 20} MiB "
            f"(bound +{RSS_SLACK >> 20} MiB)",
        ),
        Invariant("no_client_hung", not hung, "; ".join(hung[:10]) or f"{len(results)} clients"),
        Invariant("cancel_latency_p99", *hang_ups(results, observed)[0].p99_holds(cancel_p99_ms)),
    ]


def _raced(observed: Observed, results: Sequence[RunResult]) -> set[int]:
    """Runs whose client hung up when the mock had already begun the fault (or
    within ``RACE_S`` before it): on a busy machine a client can be slow to
    leave, and then the fault's outcome is as right as the hang-up's."""
    began = {model.rsplit("-x", 1)[-1]: at for model, at in observed.faults}
    return {
        r.run.index
        for r in results
        if r.run.behaviour == "disconnect_after"
        and r.closed_mono is not None
        and (at := began.get(str(r.run.index))) is not None
        and r.closed_mono > at - RACE_S
    }


def _translated(runs: Sequence[Run], records: Sequence[dict[str, Any]]) -> Invariant:
    """--translate: every stream the gateway read was translated (none passed as it came)."""
    ids = {r.request_id for r in runs}
    read = [r for r in records if r["request_id"] in ids and r["events"]]
    passed = [r["request_id"] for r in read if not r.get("translated")]
    pairs = dict(collections.Counter(r.get("translated") for r in read))
    return Invariant(
        "streams_translated", not passed, "; ".join(passed[:10]) or f"{len(read)} streams {pairs}"
    )


def _drains_bounded(records: Sequence[dict[str, Any]], drain: float) -> Invariant:
    drained = [r for r in records if r.get("drained")]
    bound = (drain + DRAIN_SLACK) * 1000
    late = [
        f"{r['request_id']} {r['drained']} {r['cancel_latency_ms']} ms"
        for r in drained
        if r["drained"] == "running" or (r["cancel_latency_ms"] or 0) > bound
    ]
    ways = dict(collections.Counter(r["drained"] for r in drained))
    return Invariant(
        "drains_bounded",
        not late,
        "; ".join(late[:10]) or f"{len(drained)} drained {ways}, each closed within {bound:.0f} ms",
    )


def _stable_tasks(state: dict[str, Any]) -> int:
    # Hypercorn's per-connection keep-alive timer ends a moment after the
    # request that reads the state arrived: not a task this count is about.
    names: dict[str, int] = state.get("task_names") or {}
    return int(state["tasks"]) - names.get("_idle_timeout", 0)


def _task_diff(before: dict[str, int], after: dict[str, int]) -> str:
    diff = {
        name: after.get(name, 0) - before.get(name, 0)
        for name in set(before) | set(after)
        if after.get(name, 0) != before.get(name, 0)
    }
    return f" changed: {diff}" if diff else ""


def hang_ups(
    results: Sequence[RunResult], observed: Observed
) -> tuple[HangUps, list[tuple[float, RunResult]]]:
    """Client hang-up → upstream connection closed (seen at the mock), for runs
    whose recorded outcome is ``client_disconnect`` (drains aside), with each
    run's time in ms."""
    outcome = {r["request_id"]: r["outcome"] for r in observed.records if not r.get("drained")}
    closes = {c["model"].rsplit("-x", 1)[-1]: c for c in observed.peer_closes}
    times, timed = HangUps(), []
    for res in results:
        close = closes.get(str(res.run.index))
        if outcome.get(res.run.request_id) == "client_disconnect" and close and res.closed_mono:
            timed.append((times.add(res.closed_mono, close), res))
    return times, timed


def build_report(
    seed: int,
    runs: Sequence[Run],
    results: Sequence[RunResult],
    observed: Observed,
    duration: float,
    concurrency: int,
    drain: float = 0.0,
    cancel_p99_ms: float = P99_BOUND_MS,
) -> dict[str, Any]:
    outcome = {r["request_id"]: r["outcome"] for r in observed.records}
    table: dict[str, dict[str, dict[str, int]]] = {}
    for run in runs:
        cell = table.setdefault(run.fault, {}).setdefault(run.behaviour, {})
        got = outcome.get(run.request_id, "missing")
        cell[got] = cell.get(got, 0) + 1
    invariants = check_invariants(runs, observed, results, drain, cancel_p99_ms)
    times, latencies = hang_ups(results, observed)
    return {
        "seed": seed,
        "runs": len(runs),
        "concurrency": concurrency,
        "duration_s": round(duration, 2),
        "table": table,
        "clients": dict(collections.Counter(run.client for run in runs)),
        "cancel_latency_ms": times.report(),
        "slowest_cancellations": [
            f"{ms:.1f} ms {r.run.request_id} {r.run.fault} x {r.run.behaviour}"
            for ms, r in sorted(latencies, key=lambda p: -p[0])[:5]
        ],
        "idle_timeout_fire_error_ms": quantiles(
            r.idle_error_ms for r in results if r.idle_error_ms is not None
        ),
        "failovers": {
            "attempts_moved_on": sum(len(r.get("failovers", ())) for r in observed.records),
            "requests": sum(1 for r in observed.records if r.get("failovers")),
        },
        "client_errors": [
            f"{r.run.request_id}: {r.client_error}" for r in results if r.client_error
        ][:20],
        "invariants": [asdict(i) for i in invariants],
        "passed": all(i.ok for i in invariants),
    }


def format_report(report: dict[str, Any]) -> str:
    lines = [
        f"trioproxy chaos: {report['runs']} runs, concurrency {report['concurrency']}, "
        f"seed {report['seed']}, {report['duration_s']} s",
        "",
        f"{'fault':<15} {'behaviour':<26} outcomes",
    ]
    for fault, row in sorted(report["table"].items()):
        for behaviour, cell in sorted(row.items()):
            counts = ", ".join(f"{k} {v}" for k, v in sorted(cell.items()))
            lines.append(f"{fault:<15} {behaviour:<26} {counts}")
    lat, idle = report["cancel_latency_ms"], report["idle_timeout_fire_error_ms"]
    clients = report.get("clients", {})
    lines += [
        "",
        "clients: " + ", ".join(f"{k} {v}" for k, v in sorted(clients.items())),
        format_line(lat),
        *("  slowest: " + s for s in report["slowest_cancellations"]),
        "idle-timeout firing error, ms: " + ", ".join(f"{k} {v}" for k, v in idle.items()),
        "  (error event arrival - last data arrival - idle_timeout, at clients that read at once;"
        " it can dip below 0 by the relay's own latency of the last event, well under 1 ms)",
        f"failovers before the first byte: {report['failovers']['attempts_moved_on']} "
        f"in {report['failovers']['requests']} requests",
        "",
        "invariants:",
    ]
    for inv in report["invariants"]:
        lines.append(f"  [{'PASS' if inv['ok'] else 'FAIL'}] {inv['name']}: {inv['detail']}")
    if report["client_errors"]:
        lines += [
            "",
            "client-side errors (first 20):",
            *("  " + e for e in report["client_errors"]),
        ]
    lines.append("")
    lines.append("ALL INVARIANTS HOLD" if report["passed"] else "INVARIANTS FAILED")
    return "\n".join(lines)
