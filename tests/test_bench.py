"""Smoke run of the benchmark harness (tiny N; no timing assertions here)."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import orjson
import pytest

pytestmark = pytest.mark.slow  # not in `make quick`


def _run(*args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, timeout=120, check=True
    )
    return out.stdout


def test_bench_harness_runs_end_to_end(tmp_path: pathlib.Path) -> None:
    stdout = _run("bench", "--scenario", "throughput", "--scenario", "idle",
           "--requests", "20", "--warmup", "2", "--concurrency", "5", "--no-nginx",
           "--hypercorn-floor", "--out", str(tmp_path))  # fmt: skip
    assert "load client ceiling" in stdout
    results = orjson.loads((tmp_path / "results.json").read_bytes())
    throughput = results["scenarios"]["throughput"]
    assert set(throughput) == {"direct", "trio floor", "hypercorn floor", "trioproxy"}
    assert all(r["failures"] == 0 and r["tokens"] == 20 * 100 for r in throughput.values())
    assert "proxy CPU µs/token" in (tmp_path / "results.md").read_text()
    rig = results["rig"]["throughput"]  # measured before the (one) round of repeats
    assert len(rig["cross_core_rtt_p50_us"]) == 1 and rig["cross_core_rtt_p50_us"][0] > 0
    assert rig["direct_load_held"] is None  # unpaced: no demand to hold
    assert "throughput: cross-core round trip p50" in (tmp_path / "results.md").read_text()
    idle = results["scenarios"]["idle"]["trioproxy"]
    assert idle["streams_open"] == 5 and idle["proxy_rss_mb"] > 0
    assert (tmp_path / "results.md").exists()


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
         "--out", str(tmp_path))  # fmt: skip
    sustained = orjson.loads((tmp_path / "results.json").read_bytes())["sustained"]
    assert set(sustained) == {"direct", "trio floor", "trioproxy", "naive relay"}
    for name, target in sustained.items():
        if (
            name != "naive relay"
        ):  # 4 paced streams hold on any machine (not through the naive relay)
            assert target["sustained"] == 4
            assert [p["streams"] for p in target["points"]] == [4, 8]
        assert all(p["failed"] == 0 for p in target["points"])  # every frame, every stream
    assert sustained["trioproxy"]["points"][0]["cpu_us_per_frame"] > 0
    assert "Streams sustained" in (tmp_path / "results.md").read_text()
