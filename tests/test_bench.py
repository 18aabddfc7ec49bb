"""Smoke run of the benchmark harness (tiny N; no timing assertions here)."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import orjson
import pytest
import trio

pytestmark = pytest.mark.slow  # not in `make quick`


def _run(*args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, timeout=120, check=True
    )
    return out.stdout


def test_bench_harness_runs_end_to_end(tmp_path: pathlib.Path) -> None:
    stdout = _run("bench", "--scenario", "throughput", "--scenario", "idle",
           "--requests", "20", "--warmup", "2", "--concurrency", "5", "--no-nginx",
           "--out", str(tmp_path))  # fmt: skip
    assert "load client ceiling" in stdout
    assert "target: full speed ≥ 0.8x nginx: not measured (not checked)" in stdout  # no nginx
    results = orjson.loads((tmp_path / "latest.json").read_bytes())
    throughput = results["scenarios"]["throughput"]
    assert set(throughput) == {"direct", "trio floor", "hypercorn floor", "trioproxy"}
    assert all(r["failures"] == 0 and r["tokens"] == 20 * 100 for r in throughput.values())
    page = (tmp_path / "throughput.md").read_text()
    assert "proxy CPU µs/token" in page and "python -m bench --scenario throughput" in page
    rig = results["rig"]["throughput"]  # measured before the (one) round of repeats
    assert len(rig["cross_core_rtt_p50_us"]) == 1 and rig["cross_core_rtt_p50_us"][0] > 0
    assert rig["direct_load_held"] is None  # unpaced: no demand to hold
    assert "throughput: cross-core round trip p50" in page
    idle = results["scenarios"]["idle"]["trioproxy"]
    assert idle["streams_open"] == 5 and idle["proxy_rss_mb"] > 0
    assert (tmp_path / "idle.md").exists() and (tmp_path / "headline.md").exists()


def test_a_saturated_rig_is_said_beside_its_scenario() -> None:
    from bench import rig

    wakes = [{"cross_core_rtt_us": {"p50": 1250.4}, "same_core_rtt_us": {"p50": 78.0},
              "cross_core_warm_rtt_us": {"p50": 48.2}}]  # fmt: skip
    # 200 streams at one token per 20 ms demand 10,000 tokens/s; direct delivered half.
    saturated = rig.summary(wakes, 200, 20, {"tokens_per_s": 4998.0})
    assert saturated["demand_tokens_per_s"] == 10_000 and saturated["saturated"]
    line = rig.describe("paced", saturated, 4998.0)
    assert "direct delivered 4,998 of 10,000 demanded tokens/s (0.50)" in line
    assert "saturated" in line and "1,250 µs after 20 ms idle (48 µs warm, same core 78 µs)" in line
    held = rig.summary(wakes, 1, 20, {"tokens_per_s": 47.0})  # one stream: 47 of 50
    assert not held["saturated"] and "saturated" not in rig.describe("overhead", held, 47.0)


def test_latency_script_runs() -> None:
    assert "client close -> upstream closed at the mock" in _run("bench.latency")


def test_microbenchmarks_run() -> None:
    out = _run("bench.micro")
    assert "relay_loop_us_per_chunk" in out and "metrics_observe_us_per_request" in out


def test_metrics_cost_runs_both_gateways(tmp_path: pathlib.Path) -> None:
    _run("bench.metrics_cost", "--rounds", "2", "--requests", "20", "--scrape-s", "0.05",
         "--out", str(tmp_path))  # fmt: skip
    summary = orjson.loads((tmp_path / "metrics_cost.json").read_bytes())["summary"]
    assert len(summary["tokens_per_s_all"]["on"]) == len(summary["tokens_per_s_all"]["off"]) == 2
    assert summary["scrapes"] > 0  # the "on" gateway was scraped while it served


def test_sustained_ladder_reports_each_target(tmp_path: pathlib.Path) -> None:
    _run("bench", "--scenario", "sustained", "--ladder", "2,4", "--no-nginx", "--naive",
         "--no-hypercorn-floor", "--out", str(tmp_path))  # fmt: skip
    sustained = orjson.loads((tmp_path / "latest.json").read_bytes())["sustained"]
    assert set(sustained) == {"direct", "trio floor", "trioproxy", "naive relay"}
    for name, target in sustained.items():
        if (
            name != "naive relay"
        ):  # 4 paced streams hold on any machine (not through the naive relay)
            assert target["sustained"] == 4
            assert [p["streams"] for p in target["points"]] == [4, 8]
        assert all(p["failed"] == 0 for p in target["points"])  # every frame, every stream
    assert sustained["trioproxy"]["points"][0]["cpu_us_per_frame"] > 0
    assert "streams sustained" in (tmp_path / "sustained.md").read_text()


def _run_of(**figures: dict[str, float]) -> dict[str, object]:
    """A run's results with the headline's lines for each target named."""
    scenarios: dict[str, dict[str, object]] = {"overhead": {}, "paced": {}, "throughput": {}}
    sustained = {}
    for target, f in figures.items():
        scenarios["overhead"][target] = {"ttft_ms": {"p50": 1.0 + f["added"]}}
        scenarios["paced"][target] = {"ttft_ms": {"p99": 150.0},
                                      "proxy_cpu_s_per_1k_tokens": f["cpu_us"] / 1000}  # fmt: skip
        scenarios["throughput"][target] = {"tokens_per_s": f["full"]}
        sustained[target] = {"sustained": f["sustained"]}
    scenarios["overhead"]["direct"] = {"ttft_ms": {"p50": 1.0}}
    return {"scenarios": scenarios, "sustained": sustained}


def test_the_headline_checks_each_target_against_its_reference_in_the_same_run() -> None:
    from bench import headline

    refs = {"nginx": {"added": 0.1, "cpu_us": 30, "full": 20_000, "sustained": 100},
            "trio floor": {"added": 0.1, "cpu_us": 80, "full": 18_000, "sustained": 100},
            "hypercorn floor": {"added": 1.0, "cpu_us": 170, "full": 9_000, "sustained": 100}}  # fmt: skip
    within = {"added": 1.19, "cpu_us": 160, "full": 16_000, "sustained": 100}
    assert [met for _, _, met in headline.targets(_run_of(trioproxy=within, **refs))][:4] == [
        True
    ] * 4
    # Each bound broken by a little: 1.21x the floor's TTFT, fewer streams than the floor's
    # / 1.2, 2.01x the trio floor's CPU, 0.79x nginx.
    past = {"added": 1.21, "cpu_us": 161, "full": 15_800, "sustained": 50}
    verdicts = headline.targets(_run_of(trioproxy=past, **refs))
    assert [met for _, _, met in verdicts][:4] == [False] * 4
    assert verdicts[0][1] == "1.21x" and verdicts[3][1] == "0.79x"
    alone = headline.targets(_run_of(trioproxy=within))  # no references: nothing checked
    assert [met for _, _, met in alone] == [None] * 6  # translation not measured either
    table = headline.table(_run_of(trioproxy=within, **refs))
    assert (
        table.splitlines()[0]
        == "| same run | direct | nginx | trio floor | hypercorn floor | trioproxy |"
    )
    assert (
        "| one paced stream, TTFT added p50 | - | +0.1 ms | +0.1 ms | +1.0 ms | +1.2 ms |" in table
    )
    assert "| full speed, tokens/s | - | 20.0k | 18.0k | 9.0k | 16.0k |" in table


def test_a_guards_base_tree_lacks_that_guard_and_only_it(tmp_path: pathlib.Path) -> None:
    from bench.guards import SHAPES, tree_without
    from trioproxy.server.hypercorn import GUARDS

    assert set(SHAPES) == set(GUARDS) and all(SHAPES.values())  # every guard priced
    tree_without("accept_what_is_queued", tmp_path)
    code = "from trioproxy.server.hypercorn import GUARDS; print(','.join(GUARDS))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(tmp_path)}, cwd=tmp_path)  # fmt: skip
    assert out.stdout.strip().split(",") == [g for g in GUARDS if g != "accept_what_is_queued"]


def test_translation_targets_come_from_the_translated_scenario_of_the_same_run() -> None:
    from bench import headline, report

    def shape(cpu_added: float, ttft_added: float) -> dict[str, object]:
        pair = {"base": 0.1, "this": 0.1 + cpu_added / 1000}
        return {"rounds": 6, "requests_per_run": 100, "cpu_us_per_token_added": cpu_added,
                "ttft_p50_ms_added": ttft_added, "tokens_per_s": {"base": 5e3, "this": 5e3},
                "cpu_s_per_1k_tokens": pair, "ttft_p50_ms": {"base": 1.0, "this": 1.0 + ttft_added},
                "ttft_p99_ms": {"base": 2.0, "this": 2.0}, "gap_p99_ms": {"base": 1.0, "this": 1.0}}  # fmt: skip

    run = {"scenarios": {}, "translated": {"paced": shape(9.9, 5.0), "overhead": shape(0.5, 0.29)}}
    assert [met for _, _, met in headline.targets(run)][4:] == [True, True]
    run["translated"] = {"paced": shape(10.1, 0.0), "overhead": shape(0.0, 0.31)}
    assert [met for _, _, met in headline.targets(run)][4:] == [False, False]
    page = report.translated_page(run["translated"], "machine\n")
    assert "## paced" in page and "## overhead" in page and "+10.1 µs" in page


def test_ab_compares_passing_through_with_translating(tmp_path: pathlib.Path) -> None:
    _run("bench.ab", "--translated", "--scenario", "overhead", "--rounds", "2",
         "--requests", "10", "--warmup", "2", "--out", str(tmp_path))  # fmt: skip
    summary = orjson.loads((tmp_path / "ab.json").read_bytes())
    assert summary["compared"] == "passing through (base) and translating (this)"
    assert all(t > 0 for t in summary["tokens_per_s"].values())
    assert isinstance(summary["ttft_p50_ms_added"], float)
    # The translating gateway's chat answers come from the mock as an Anthropic server.
    from bench.procs import start_mock, start_trioproxy
    from trioproxy.testing.rawclient import request

    mock = start_mock()
    gateway = start_trioproxy(mock.url, translated=True)
    try:
        body = {"model": "mock-t2", "messages": [{"role": "user", "content": "hi"}]}
        answer = trio.run(request, gateway.url, "POST", "/v1/chat/completions", body).json()
        assert answer["id"].startswith("msg_mock") and answer["object"] == "chat.completion"
    finally:
        gateway.stop()
        mock.stop()
