"""The scenarios (names fixed) and what one measured run of one target yields."""

from __future__ import annotations

import resource
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import orjson

from .procs import OTHER_CORES, Proc


@dataclass(frozen=True)
class Scenario:
    name: str
    api: str  # chat | messages
    tokens: int
    itl_ms: float
    concurrency: int
    requests: int
    warmup: int
    stall: bool = False  # idle: streams stalled after their first tokens

    def model(self) -> str:
        if self.stall:
            return "mock-t1000-stall2"
        return f"mock-t{self.tokens}-i{self.itl_ms:g}"


SCENARIOS: dict[str, Scenario] = {
    "throughput": Scenario("throughput", "chat", 100, 0, 20, 2000, 100),
    "anthropic": Scenario("anthropic", "messages", 64, 0, 20, 2000, 100),
    "overhead": Scenario("overhead", "chat", 20, 20, 1, 100, 5),
    "paced": Scenario("paced", "chat", 50, 20, 200, 1000, 200),
    # The per-request cost (a burst of N waits about N x it): one-token streams.
    "requests": Scenario("requests", "chat", 1, 0, 50, 3000, 200),
    "idle": Scenario("idle", "chat", 1000, 0, 1000, 1000, 0, stall=True),
}
SWEEP = (1, 10, 50, 100, 200, 500)


def q(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    xs = sorted(values)
    return xs[min(len(xs) - 1, int(p * len(xs)))]


def summarise(raw: dict[str, Any]) -> dict[str, Any]:
    samples = raw["samples"]
    ok = [s for s in samples if s["ok"]]
    ttft = [s["ttft"] * 1000 for s in ok]
    total = [s["total"] * 1000 for s in ok]
    gaps = [g * 1000 for s in ok for g in s["gaps"]]
    tokens = sum(s["tokens"] for s in ok)
    same = sum(s["same_read"] for s in ok)
    wall = raw["wall"]
    return {
        "requests": len(samples),
        "failures": len(samples) - len(ok),
        "tokens": tokens,
        "tokens_per_s": tokens / wall if wall else 0.0,
        "requests_per_s": len(ok) / wall if wall else 0.0,
        "ttft_ms": {p: q(ttft, v) for p, v in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))},
        "total_ms": {"p50": q(total, 0.5), "p99": q(total, 0.99)},
        "gap_ms": {"p50": q(gaps, 0.5), "p99": q(gaps, 0.99)},
        "same_read_share": same / tokens if tokens else 0.0,
        "ttft_all_ms": ttft,
    }


def run_load(
    url: str, sc: Scenario, requests: int, concurrency: int, warmup: int
) -> dict[str, Any]:
    """The load client in its own process (pinned away from the proxy)."""
    cmd = [sys.executable, "-m", "bench.loadgen", "--url", url, "--api", sc.api,
           "--model", sc.model(), "--requests", str(requests), "--concurrency",
           str(concurrency), "--warmup", str(warmup)]  # fmt: skip
    import os

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(
        cmd,
        capture_output=True,
        check=True,
        preexec_fn=lambda: os.sched_setaffinity(0, OTHER_CORES),
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    result: dict[str, Any] = orjson.loads(out.stdout)
    result["client_cpu_s"] = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return result


def measure(
    proc: Proc | None, url: str, sc: Scenario, requests: int, concurrency: int, warmup: int
) -> dict[str, Any]:
    """One measured run: load plus the proxy's CPU time and peak RSS."""
    peak = [proc.rss_bytes() if proc else 0]
    stop = threading.Event()

    def sample_rss() -> None:
        while not stop.wait(0.1):
            if proc:
                peak[0] = max(peak[0], proc.rss_bytes())

    sampler = threading.Thread(target=sample_rss, daemon=True)
    sampler.start()
    cpu0 = proc.cpu_seconds() if proc else 0.0
    started = time.monotonic()
    raw = run_load(url, sc, requests, concurrency, warmup)
    elapsed = time.monotonic() - started
    cpu = (proc.cpu_seconds() - cpu0) if proc else 0.0
    stop.set()
    sampler.join()
    result = summarise(raw)
    result["elapsed_s"] = elapsed
    result["client_cpu_s"] = raw["client_cpu_s"]  # the load client's own share of the machine
    if proc is not None:
        result["proxy_peak_rss_mb"] = peak[0] / 2**20
        result["proxy_cpu_s"] = cpu  # warm-up included, as client_cpu_s and elapsed_s
        # The load includes warm-up requests: scale CPU by measured/total requests.
        share = requests / (requests + warmup) if requests + warmup else 1.0
        result["proxy_cpu_s_per_1k_tokens"] = (
            cpu * share / result["tokens"] * 1000 if result["tokens"] else 0.0
        )
        done = result["requests"] - result["failures"]
        result["proxy_cpu_ms_per_request"] = cpu * share / done * 1000 if done else 0.0
    return result


def median_repeat(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """With repeats, the repeat whose TTFT p50 is the median (LiteLLM's rule)."""
    order = sorted(runs, key=lambda r: r["ttft_ms"]["p50"])
    chosen = dict(order[(len(order) - 1) // 2])
    chosen["repeats"] = len(runs)
    chosen["tokens_per_s_all_repeats"] = [round(r["tokens_per_s"]) for r in runs]
    chosen["tokens_per_s_median"] = statistics.median(r["tokens_per_s"] for r in runs)
    return chosen
