"""What ``/metrics`` costs: the same gateway with metrics on and off, interleaved.

    .venv/bin/python -m bench.metrics_cost [--rounds 8] [--requests 1000] [--scrape-s 1]

Two trioproxy processes (``metrics = true`` / ``false``), both pinned to the
proxy core, one mock upstream and the load client on the other core(s). Rounds
alternate on, off, on, off... so drift of the machine hits both alike; the
"on" gateway is scraped every ``--scrape-s`` seconds during its runs (a busy
Prometheus scrapes every 15 s). Each run is the ``throughput`` shape (100
tokens, no delay, C=20). Reported: the median tokens/s of each, the median
proxy CPU seconds per 1k tokens (the proxy core is saturated, so throughput is
the inverse of CPU per token), and the median of the on/off ratio within each
round (adjacent runs: the least exposed to the machine's drift). Writes
``<out>/metrics_cost.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import orjson

from .procs import Proc, start_mock, start_trioproxy
from .scenarios import SCENARIOS, measure


def _scraper(url: str, every: float, stop: threading.Event, count: list[int]) -> None:
    with httpx.Client(timeout=10) as client:
        while not stop.wait(every):
            client.get(url + "/metrics").raise_for_status()
            count[0] += 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--scrape-s", type=float, default=1.0)
    parser.add_argument("--out", default="bench/out", type=Path)
    parser.add_argument("--aa", action="store_true",
                        help="control run: both gateways with metrics on and scraped (A/A): "
                             "shows the difference between two identical processes")  # fmt: skip
    args = parser.parse_args(argv)
    sc = dataclasses.replace(SCENARIOS["throughput"], requests=args.requests)
    procs: list[Proc] = []
    runs: dict[str, list[dict[str, Any]]] = {"on": [], "off": []}
    scrapes = [0]
    try:
        mock = start_mock()
        procs.append(mock)
        gateways = {
            "on": start_trioproxy(mock.url, True),
            "off": start_trioproxy(mock.url, args.aa),
        }
        procs += gateways.values()
        for i in range(args.rounds):
            for label in ("on", "off") if i % 2 == 0 else ("off", "on"):
                proc = gateways[label]
                print(f"round {i + 1}/{args.rounds}: metrics {label}", file=sys.stderr)
                stop = threading.Event()
                scraper = threading.Thread(
                    target=_scraper, args=(proc.url, args.scrape_s, stop, scrapes), daemon=True
                )
                scraped = label == "on" or args.aa
                if scraped:
                    scraper.start()
                result = measure(proc, proc.url, sc, sc.requests, sc.concurrency, sc.warmup)
                stop.set()
                if scraped:
                    scraper.join()
                result.pop("ttft_all_ms", None)
                runs[label].append(result)
    finally:
        for proc in reversed(procs):
            proc.stop()
    summary = _summary(runs, scrapes[0], args)
    args.out.mkdir(parents=True, exist_ok=True)
    name = "metrics_cost_aa" if args.aa else "metrics_cost"
    (args.out / f"{name}.json").write_bytes(
        orjson.dumps({"summary": summary, "runs": runs}, option=orjson.OPT_INDENT_2)
    )
    text = _markdown(summary)
    if args.aa:
        text = "A/A CONTROL: both gateways have metrics on; 'off' is the second process\n" + text
    (args.out / f"{name}.md").write_text(text)
    print(text)
    return 0


def _summary(runs: dict[str, list[dict[str, Any]]], scrapes: int, args: Any) -> dict[str, Any]:
    def med(label: str, key: str) -> float:
        return float(statistics.median(r[key] for r in runs[label]))

    on_tps, off_tps = med("on", "tokens_per_s"), med("off", "tokens_per_s")
    on_cpu, off_cpu = (
        med("on", "proxy_cpu_s_per_1k_tokens"),
        med("off", "proxy_cpu_s_per_1k_tokens"),
    )
    paired = [
        a["tokens_per_s"] / b["tokens_per_s"] for a, b in zip(runs["on"], runs["off"], strict=True)
    ]
    return {
        "paired_throughput_ratio_median": round(statistics.median(paired), 4),
        "paired_throughput_ratios": [round(r, 3) for r in paired],
        "rounds": args.rounds,
        "requests_per_run": args.requests,
        "scrape_every_s": args.scrape_s,
        "scrapes": scrapes,
        "tokens_per_s": {"on": on_tps, "off": off_tps},
        "tokens_per_s_all": {k: [round(r["tokens_per_s"]) for r in v] for k, v in runs.items()},
        "throughput_cost_pct": round((1 - on_tps / off_tps) * 100, 2),
        "cpu_s_per_1k_tokens": {"on": on_cpu, "off": off_cpu},
        "cpu_cost_pct": round((on_cpu / off_cpu - 1) * 100, 2),
    }


def _markdown(s: dict[str, Any]) -> str:
    return (
        f"metrics on vs off: {s['rounds']} interleaved rounds of {s['requests_per_run']} "
        f"throughput-shape requests each, /metrics scraped every {s['scrape_every_s']} s "
        f"while on ({s['scrapes']} scrapes)\n\n"
        "| | metrics on | metrics off | cost |\n|---|---|---|---|\n"
        f"| tokens/s (median) | {s['tokens_per_s']['on']:,.0f} | {s['tokens_per_s']['off']:,.0f} "
        f"| {s['throughput_cost_pct']:+.1f}% |\n"
        f"| proxy CPU s / 1k tokens (median) | {s['cpu_s_per_1k_tokens']['on']:.4f} "
        f"| {s['cpu_s_per_1k_tokens']['off']:.4f} | {s['cpu_cost_pct']:+.1f}% |\n\n"
        f"| on / off tokens/s within each round (median) | | | "
        f"{(s['paired_throughput_ratio_median'] - 1) * 100:+.1f}% |\n\n"
        f"every run's tokens/s: on {s['tokens_per_s_all']['on']}, off {s['tokens_per_s_all']['off']}\n"
    )


if __name__ == "__main__":
    sys.exit(main())
