"""Chaos: the plan, each invariant's checker, and a bounded campaign."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from trioproxy.testing.chaos.campaign import run_campaign
from trioproxy.testing.chaos.plan import BEHAVIOURS, CLIENTS, FAULTS, Limits, RunResult, plan
from trioproxy.testing.chaos.report import RSS_SLACK, Observed, check_invariants, format_report

pytestmark = pytest.mark.slow  # not in `make quick`

LIMITS = Limits(ttft_timeout=1.0, idle_timeout=0.3, client_stall_timeout=0.5)


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


async def test_bounded_campaign_holds_every_invariant() -> None:
    """>= 300 runs against a gateway and a mock started as processes."""
    report = await run_campaign(None, runs=300, concurrency=16, seed=20261123)
    text = format_report(report)
    assert report["passed"], text
    assert report["cancel_latency_ms"]["n"] > 10
    assert report["duration_s"] < 60, text


async def test_campaign_with_two_providers_of_each_kind_holds_every_invariant() -> None:
    """Failover, ejection and panic under chaos: hang-ups in the middle of a second
    attempt must release every slot and every provider's stream as well."""
    report = await run_campaign(None, runs=200, concurrency=16, seed=20261124, providers=2)
    text = format_report(report)
    assert report["passed"], text
    assert report["failovers"]["attempts_moved_on"] > 0, text


async def test_campaign_with_drain_providers_holds_every_invariant() -> None:
    """``chaos --drain``: hang-ups hand the upstream to drains; every drain ends
    within its bound, nothing is left open or in flight, outcomes unchanged."""
    report = await run_campaign(None, runs=200, concurrency=16, seed=20261203, drain=1.0)
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


async def test_campaign_with_redis_killed_at_random_holds_every_invariant() -> None:
    """``chaos --redis``: the gateway's receipts and usage live in a Redis that is
    killed and restarted under the runs; no run fails for it, no receipt is lost."""
    report = await run_campaign(None, runs=200, concurrency=16, seed=20261201, redis=True)
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
