"""Chaos: the plan, each invariant's checker, and a bounded campaign."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.conftest import within
from trioproxy.testing.chaos.campaign import run_campaign
from trioproxy.testing.chaos.plan import BEHAVIOURS, CLIENTS, FAULTS, Limits, RunResult, plan
from trioproxy.testing.chaos.report import (
    RSS_SLACK,
    Observed,
    build_report,
    check_invariants,
    format_report,
)

pytestmark = pytest.mark.slow  # not in `make quick`

LIMITS = Limits(ttft_timeout=1.0, idle_timeout=1.0, client_stall_timeout=0.5)


def test_plan_is_replayable_from_its_seed_and_covers_every_pair() -> None:
    assert plan(500, 42, LIMITS) == plan(500, 42, LIMITS)
    assert plan(50, 42, LIMITS) != plan(50, 43, LIMITS)
    runs = plan(2000, 1, LIMITS)
    pairs = {(r.fault, r.behaviour) for r in runs}
    assert {(f, b) for f in FAULTS for b in BEHAVIOURS if (f, b) != ("none", "never_read")} <= pairs
    assert ("flood", "never_read") in pairs  # never_read on a healthy stream: a slow client
    for run in runs:
        assert run.expected and run.model.endswith(f"-x{run.index}")


def _healthy(runs: list[Any]) -> Observed:
    state = {
        "ready": True,
        "active_requests": 0,
        "limiter": {"borrowed_tokens": 0},
        "providers": [{"name": "mock", "in_flight": 0}],
        "detached": {"pending": 0, "failed": 0},
        "tasks": 11,
        "task_names": {"_run_handler": 1},
        "rss_bytes": 40 << 20,
        "config": {"max_streams": 64},
    }
    return Observed(
        baseline=state,
        final=copy.deepcopy(state),
        records=[{"request_id": r.request_id, "outcome": min(r.expected)} for r in runs],
        mock_stats={"streams_active": 0, "open_connections": 2},
        peer_closes=[],
    )


def _violations() -> dict[str, Any]:
    def final(**changes: Any) -> Any:
        def apply(obs: Observed) -> None:
            for key, value in changes.items():
                obs.final[key] = value

        return apply

    return {
        "streams_released": final(limiter={"borrowed_tokens": 1}),
        "upstream_streams_closed": lambda obs: obs.mock_stats.update(streams_active=1),
        "one_outcome_per_request": lambda obs: obs.records.append(dict(obs.records[0])),
        "outcomes_match": lambda obs: obs.records[0].update(outcome="done_not_expected"),
        "no_orphan_tasks": final(tasks=12, task_names={"_run_handler": 2}),
        "detached_drained": final(detached={"pending": 1, "failed": 0}),
        "rss_bounded": final(rss_bytes=(40 << 20) + RSS_SLACK + 1),
    }


def test_healthy_observation_passes_every_invariant() -> None:
    runs = plan(40, 3, LIMITS)
    assert all(inv.ok for inv in check_invariants(runs, _healthy(runs)))


def test_a_provider_stream_left_in_flight_is_caught() -> None:
    runs = plan(40, 3, LIMITS)
    observed = _healthy(runs)
    observed.final["providers"] = [{"name": "mock", "in_flight": 1}]
    (released,) = [i for i in check_invariants(runs, observed) if i.name == "streams_released"]
    assert not released.ok and "provider in_flight=1" in released.detail


def test_a_plan_has_clients_of_every_kind_with_every_behaviour() -> None:
    runs = plan(2000, 5, LIMITS)
    assert {(r.client, r.behaviour) for r in runs} == {(c, b) for c in CLIENTS for b in BEHAVIOURS}


def test_a_client_left_waiting_for_its_answer_to_end_is_caught() -> None:
    """An HTTP/1.0 answer ends when the gateway closes the connection: a client
    still reading at the hang bound is a hung client."""
    runs = plan(40, 3, LIMITS)
    results = [RunResult(run) for run in runs]
    assert all(inv.ok for inv in check_invariants(runs, _healthy(runs), results))
    results[0].client_error = "TooSlowError: "
    failed = [i for i in check_invariants(runs, _healthy(runs), results) if not i.ok]
    assert [i.name for i in failed] == ["no_client_hung"]
    assert runs[0].request_id in failed[0].detail


@pytest.mark.parametrize("name", sorted(_violations()))
def test_each_invariant_catches_its_violation(name: str) -> None:
    runs = plan(40, 3, LIMITS)
    observed = _healthy(runs)
    _violations()[name](observed)
    failed = [inv.name for inv in check_invariants(runs, observed) if not inv.ok]
    assert failed == [name]


def _hang_ups(closes_after_ms: list[float], requested_after_ms: float = 0.0) -> Any:
    """Runs whose clients hung up at t = 100 s, each upstream closed that many ms
    later (its request read ``requested_after_ms`` after the hang-up)."""
    runs = [r for r in plan(400, 3, LIMITS) if r.behaviour == "disconnect_before_headers"]
    runs = runs[: len(closes_after_ms)]
    observed = _healthy(runs)
    observed.records[:] = [
        {"request_id": r.request_id, "outcome": "client_disconnect"} for r in runs
    ]
    results = [RunResult(r, closed_mono=100.0) for r in runs]
    observed.peer_closes[:] = [
        {
            "model": r.model,
            "mono": 100.0 + ms / 1000,
            "requested": 100.0 + requested_after_ms / 1000,
        }
        for r, ms in zip(runs, closes_after_ms, strict=True)
    ]
    return runs, observed, results


def test_an_upstream_closed_only_at_the_idle_timeout_fails_the_latency_check() -> None:
    """49 upstreams closed 2 ms after their client left, one at a 1 s idle timeout:
    the p99 is 1000 ms, over the 100 ms bound."""
    runs, observed, results = _hang_ups([2.0] * 49 + [1000.0])
    (p99,) = [
        i for i in check_invariants(runs, observed, results) if i.name == "cancel_latency_p99"
    ]
    assert not p99.ok and "p99 1000.0 ms over 50 hang-ups" in p99.detail
    runs, observed, results = _hang_ups([2.0] * 50)
    assert all(i.ok for i in check_invariants(runs, observed, results))


def test_an_upstream_request_begun_after_its_client_left_is_timed_from_its_start() -> None:
    """A client gone before the gateway read its request: the upstream request
    began 150 ms after the hang-up and was closed 2 ms later. That counts as
    2 ms, and is reported apart with its 152 ms from the client's close."""
    runs, observed, results = _hang_ups([152.0] * 10, requested_after_ms=150.0)
    assert all(i.ok for i in check_invariants(runs, observed, results))
    report = build_report(3, runs, results, observed, 1.0, 16)
    latency = report["cancel_latency_ms"]
    assert latency["p99"] == pytest.approx(2.0, abs=0.01) and latency["after_hang_up"] == 10
    assert latency["after_hang_up_from_close"]["p99"] == pytest.approx(152.0, abs=0.01)
    assert "10 upstream requests began after their client had left" in format_report(report)


def test_a_hang_up_that_came_after_the_fault_began_may_end_as_the_fault() -> None:
    """A client meant to leave well before a drop was slow to (a busy machine):
    the mock had begun the drop when it left, so upstream_error is as right as
    client_disconnect. A client that left well before the fault began may not
    end as the fault."""
    (run,) = [
        r for r in plan(400, 3, LIMITS)
        if r.fault == "drop" and r.behaviour == "disconnect_after" and r.expected == {"client_disconnect"}
    ][:1]  # fmt: skip
    for closed, fault_began, ok in ((10.0, 9.99, True), (10.0, 10.02, True), (10.0, 10.5, False)):
        observed = _healthy([run])
        observed.records[0]["outcome"] = "upstream_error"
        observed.faults.append((run.model, fault_began))
        result = RunResult(run, closed_mono=closed)
        (match,) = [
            i for i in check_invariants([run], observed, [result]) if i.name == "outcomes_match"
        ]
        assert match.ok is ok, (closed, fault_began, match.detail)


# A campaign's p99 bound, with the suite's slack for a busy machine.
P99_MS = within(100.0)


async def test_bounded_campaign_holds_every_invariant() -> None:
    """>= 300 runs against a gateway and a mock started as processes."""
    report = await run_campaign(None, runs=300, concurrency=16, seed=20261123, cancel_p99_ms=P99_MS)
    text = format_report(report)
    assert report["passed"], text
    assert report["cancel_latency_ms"]["n"] > 10


async def test_campaign_with_two_providers_of_each_kind_holds_every_invariant() -> None:
    """Failover, ejection and panic under chaos: hang-ups in the middle of a second
    attempt must release every slot and every provider's stream as well."""
    report = await run_campaign(
        None, runs=200, concurrency=16, seed=20261124, providers=2, cancel_p99_ms=P99_MS
    )
    text = format_report(report)
    assert report["passed"], text
    assert report["failovers"]["attempts_moved_on"] > 0, text


async def test_campaign_with_drain_providers_holds_every_invariant() -> None:
    """``chaos --drain``: hang-ups hand the upstream to drains; every drain ends
    within its bound, nothing is left open or in flight, outcomes unchanged."""
    report = await run_campaign(
        None, runs=200, concurrency=16, seed=20261203, drain=1.0, cancel_p99_ms=P99_MS
    )
    text = format_report(report)
    assert report["passed"], text
    (bounded,) = [i for i in report["invariants"] if i["name"] == "drains_bounded"]
    assert "final" in bounded["detail"], text  # drains that read to the end happened


def test_a_drain_past_its_bound_is_caught() -> None:
    runs = plan(40, 3, LIMITS)
    observed = _healthy(runs)
    record = observed.records[0]
    record.update(drained="time", cancel_latency_ms=900.0)
    assert all(inv.ok for inv in check_invariants(runs, observed, drain=1.0))
    record.update(cancel_latency_ms=2500.0)
    failed = [i.name for i in check_invariants(runs, observed, drain=1.0) if not i.ok]
    assert failed == ["drains_bounded"]


async def test_campaign_across_dialects_holds_every_invariant() -> None:
    """``chaos --translate``: chat to an Anthropic provider, messages to an
    OpenAI-compatible one; every invariant of the pass-through relay holds."""
    report = await run_campaign(
        None, runs=200, concurrency=16, seed=20261204, translate=True, cancel_p99_ms=P99_MS
    )
    text = format_report(report)
    assert report["passed"], text
    (translated,) = [i for i in report["invariants"] if i["name"] == "streams_translated"]
    assert (
        "anthropic->openai" in translated["detail"] and "openai->anthropic" in translated["detail"]
    )


def test_a_stream_that_was_not_translated_is_caught() -> None:
    runs = plan(40, 3, LIMITS, translate=True)
    assert all("-x1-x" in r.model if r.route == "chat" else "-x2-x" in r.model for r in runs)
    observed = _healthy(runs)
    for record in observed.records:
        record.update(events=3, translated="anthropic->openai")
    assert all(inv.ok for inv in check_invariants(runs, observed))
    observed.records[0]["translated"] = None  # one stream passed as it came
    failed = [i.name for i in check_invariants(runs, observed) if not i.ok]
    assert failed == ["streams_translated"]


async def test_campaign_with_redis_killed_at_random_holds_every_invariant() -> None:
    """``chaos --redis``: the gateway's receipts and usage live in a Redis that is
    killed and restarted under the runs; no run fails for it, no receipt is lost."""
    report = await run_campaign(
        None, runs=200, concurrency=16, seed=20261201, redis=True, cancel_p99_ms=P99_MS
    )
    text = format_report(report)
    assert report["passed"], text
    names = [i["name"] for i in report["invariants"]]
    assert "receipts_survive_redis_outages" in names, text
    assert "Redis kills)" in text and "(0 Redis kills)" not in text, text


def _serve_builtin(tmp: Any, *config_lines: str) -> tuple[Any, str]:
    """``trioproxy serve`` as `make run` starts it (the built-in mock in the same
    process), with short timeouts so that stalls end quickly."""
    import os
    import socket
    import subprocess
    import sys

    (tmp / "gw.toml").write_text("\n".join(config_lines) + "\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "trioproxy", "serve", "--config", "gw.toml",
         "--bind", f"127.0.0.1:{port}"],
        cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "XDG_STATE_HOME": str(tmp)},
    )  # fmt: skip
    return proc, f"http://127.0.0.1:{port}"


async def _chaos_cli(tmp: Any, *args: str) -> Any:
    import os
    import sys

    import trio

    return await trio.run_process(
        [sys.executable, "-m", "trioproxy", "chaos", *args],
        capture_stdout=True, capture_stderr=True, check=False, cwd=tmp,
        env={**os.environ, "XDG_STATE_HOME": str(tmp)},
    )  # fmt: skip


async def test_chaos_against_the_gateway_make_run_starts_holds_every_invariant(
    tmp_path: Any,
) -> None:
    """Before, the in-process mock's connection tasks were counted as the
    gateway's: `[FAIL] no_orphan_tasks ... {'_run_handler': -16}` for nothing."""
    from tests.conftest import wait_ready

    proc, url = _serve_builtin(
        tmp_path, "debug_endpoints = true", "idle_timeout = 0.5", "ttft_timeout = 1.5",
        "client_stall_timeout = 1.0",
    )  # fmt: skip
    try:
        await wait_ready(url)
        done = await _chaos_cli(tmp_path, "--gateway", url, "--runs", "80", "--seed", "7")
        out = done.stdout.decode()
        assert done.returncode == 0, out + done.stderr.decode()
        assert "[PASS] no_orphan_tasks" in out and "ALL INVARIANTS HOLD" in out
        assert "80/80 runs, 0 client errors so far" in done.stderr.decode()  # progress lines
    finally:
        proc.terminate()
        proc.wait(30)


async def test_chaos_without_debug_endpoints_is_one_line(tmp_path: Any) -> None:
    from tests.conftest import wait_ready

    proc, url = _serve_builtin(tmp_path)
    try:
        await wait_ready(url)
        done = await _chaos_cli(tmp_path, "--gateway", url, "--runs", "5")
        assert done.returncode == 2
        last = done.stderr.decode().strip().splitlines()[-1]
        assert last == (
            f"trioproxy chaos: {url} has no debug endpoints: start it with "
            "debug_endpoints = true in its config"
        )
        assert "Traceback" not in done.stderr.decode()
    finally:
        proc.terminate()
        proc.wait(30)
