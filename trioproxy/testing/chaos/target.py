"""``trioproxy chaos --target URL --mock URL``: the campaign against any gateway.

The target is any OpenAI- or Anthropic-compatible gateway whose upstream is a
``trioproxy mock-upstream`` at ``--mock``. Nothing is read from inside the
target: everything is judged from the client's view and the mock's view (the
mock logs, on CLOCK_MONOTONIC, when a peer closed mid-stream, and counts the
streams it is producing). The report is comparable across gateways.

Invariants:

1. ``upstream_closed_after_hangup``: every run whose client leaves while the
   upstream is still producing sees the upstream connection closed at the mock
   within ``CANCEL_BOUND`` seconds of the client's close, and
   ``cancel_latency_p99``: the p99 of those times is within ``--cancel-p99-ms``
   (default 100 ms), timed as :mod:`.latency` says.
2. ``no_client_hangs``: no client waits past the target's timeouts plus a bound.
3. ``no_upstream_stream_left_open``: when the campaign has settled, the mock
   produces no stream.
4. ``rss_bounded`` (with ``--target-pid``): the target's RSS grew by at most
   64 MiB over the campaign.

What each fault ended as, seen by the client, is tabulated (fault x behaviour ->
``complete``, ``error event``, ``cut`` (closed before a final event), ``http
NNN``, ``left`` (the client's own hang-up), ``hung``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import trio

from ..rawclient import request
from .latency import P99_BOUND_MS, HangUps, format_line
from .plan import Limits, RunResult, execute_all, must_cancel_upstream, plan, poll_peer_closed
from .report import Invariant

__all__ = ["TargetError", "format_target_report", "rss_of", "run_target_campaign"]

RSS_SLACK = 64 << 20
CANCEL_BOUND = 2.0  # s from the client's close (or the request's start) to the upstream's close


class TargetError(Exception):
    """The campaign cannot run (the mock is not a trioproxy mock-upstream, ...)."""


def rss_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


async def _get(url: str, path: str) -> Any:
    try:
        response = await request(url, "GET", path)
    except OSError as exc:
        raise TargetError(f"cannot reach {url}: {exc}") from None
    if response.status != 200:
        raise TargetError(f"{url}{path} answered {response.status}: is it a trioproxy mock?")
    return response.json()


def _seen(result: RunResult) -> str:
    if result.client_error and result.client_error.startswith("TooSlowError"):
        return "hung"
    if result.run.behaviour in ("disconnect_before_headers", "never_read"):
        return "left"
    if result.run.behaviour == "disconnect_after" and not result.final and result.status == 200:
        return "left" if result.events >= result.run.k else "cut"
    if result.status and result.status != 200:
        return f"http {result.status}"
    if result.final:
        return "complete"
    return "error event" if result.error_event else "cut"


async def run_target_campaign(
    target: str,
    mock: str,
    runs: int,
    concurrency: int,
    seed: int,
    limits: Limits,
    anthropic: bool = False,
    target_pid: int | None = None,
    progress: Callable[[int, int, int], None] | None = None,
    cancel_p99_ms: float = P99_BOUND_MS,
) -> dict[str, Any]:
    target, mock = target.rstrip("/"), mock.rstrip("/")
    await _get(mock, "/mock/stats")
    rss_before = rss_of(target_pid) if target_pid else None

    planned = plan(runs, seed, limits, routes=("messages",) if anthropic else ("chat",))
    started = time.monotonic()
    counted: list[RunResult] = []

    def done(result: RunResult) -> None:
        counted.append(result)
        if progress is not None:
            progress(len(counted), len(planned), int(_seen(result) == "hung"))

    peer_closed = poll_peer_closed(_get, mock)
    results = await execute_all(planned, target, limits, peer_closed, concurrency, done)
    duration = time.monotonic() - started
    # Let the target finish what it still does (a bounded wait), then look.
    with trio.move_on_after(limits.idle_timeout + CANCEL_BOUND + 1):
        while (await _get(mock, "/mock/stats"))["streams_active"]:  # noqa: ASYNC110 (another process)
            await trio.sleep(0.1)
    stats = await _get(mock, "/mock/stats")
    closes = {c["model"].rsplit("-x", 1)[-1]: c for c in await _get(mock, "/mock/peer-closes")}
    started_tags = {m.rsplit("-x", 1)[-1] for m in await _get(mock, "/mock/streams")}
    return _report(
        seed, results, closes, started_tags, stats, duration, concurrency, rss_before,
        target_pid, target, cancel_p99_ms,
    )  # fmt: skip


def _report(
    seed: int,
    results: list[RunResult],
    closes: dict[str, dict[str, Any]],
    started_tags: set[str],
    stats: dict[str, Any],
    duration: float,
    concurrency: int,
    rss_before: int | None,
    target_pid: int | None,
    target: str,
    cancel_p99_ms: float,
) -> dict[str, Any]:
    table: dict[str, dict[str, dict[str, int]]] = {}
    for res in results:
        cell = table.setdefault(res.run.fault, {}).setdefault(res.run.behaviour, {})
        seen = _seen(res)
        cell[seen] = cell.get(seen, 0) + 1
    times, late, candidates = HangUps(), [], 0
    for res in results:
        if not must_cancel_upstream(res.run) or res.closed_mono is None:
            continue
        if str(res.run.index) not in started_tags:
            continue  # the target never started it upstream: nothing to cancel
        candidates += 1
        close = closes.get(str(res.run.index))
        if close is None or times.add(res.closed_mono, close) > CANCEL_BOUND * 1000:
            late.append(res.run.request_id)
    hung = [r.run.request_id for r in results if _seen(r) == "hung"]
    invariants = [
        Invariant(
            "upstream_closed_after_hangup",
            not late,
            f"{candidates} hang-ups while the upstream was producing; upstream closed within "
            f"{CANCEL_BOUND} s: {candidates - len(late)}, later or never: {len(late)} {late[:5]}",
        ),
        Invariant("cancel_latency_p99", *times.p99_holds(cancel_p99_ms)),
        Invariant("no_client_hangs", not hung, f"hung: {len(hung)} {hung[:5]}"),
        Invariant(
            "no_upstream_stream_left_open",
            stats["streams_active"] == 0,
            f"mock streams_active={stats['streams_active']} at the end",
        ),
    ]
    rss_after = rss_of(target_pid) if target_pid else None
    if rss_before is not None and rss_after is not None:
        invariants.append(
            Invariant(
                "rss_bounded",
                rss_after <= rss_before + RSS_SLACK,
                f"rss before={rss_before >> 20} MiB after={rss_after >> 20} MiB "
                f"(bound +{RSS_SLACK >> 20} MiB)",
            )
        )
    return {
        "target": target,
        "seed": seed,
        "runs": len(results),
        "concurrency": concurrency,
        "duration_s": round(duration, 2),
        "table": table,
        "cancel_latency_ms": times.report(),
        "invariants": [asdict(i) for i in invariants],
        "passed": all(i.ok for i in invariants),
    }


def format_target_report(report: dict[str, Any]) -> str:
    """The report as Markdown (the JSON has the same fields)."""
    lines = [
        f"# trioproxy chaos --target {report['target']}",
        "",
        f"{report['runs']} runs, concurrency {report['concurrency']}, seed {report['seed']}, "
        f"{report['duration_s']} s",
        "",
        "| fault | client behaviour | what the client saw |",
        "|---|---|---|",
    ]
    for fault, row in sorted(report["table"].items()):
        for behaviour, cell in sorted(row.items()):
            seen = ", ".join(f"{k} {v}" for k, v in sorted(cell.items()))
            lines.append(f"| {fault} | {behaviour} | {seen} |")
    lat = report["cancel_latency_ms"]
    lines += [
        "",
        format_line(lat),
        "",
        "| invariant | | detail |",
        "|---|---|---|",
    ]
    for inv in report["invariants"]:
        lines.append(f"| {inv['name']} | {'PASS' if inv['ok'] else 'FAIL'} | {inv['detail']} |")
    lines += ["", "ALL INVARIANTS HOLD" if report["passed"] else "INVARIANTS FAILED"]
    return "\n".join(lines)
