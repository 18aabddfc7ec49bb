"""Two trioproxy trees side by side: this checkout against another, interleaved.

    .venv/bin/python -m bench.ab --base /path/to/other/checkout [--rounds 10] [--requests 1000]
    .venv/bin/python -m bench.ab --translated --scenario paced

``--translated``: this checkout twice instead, passing through (the mock as an
OpenAI server: ``base``) and translating (the mock as an Anthropic server, the
client speaking OpenAI chat: ``this``); the summary adds the CPU per token and
the TTFT p50 that translation adds.

Both gateways run at once, pinned to the proxy core, on one mock upstream; the
rounds alternate base, this, this, base, ... so the machine's drift hits both
alike. Each run is the ``throughput`` scenario's shape (``--scenario paced``,
``overhead`` or ``requests`` for those). Reported: median tokens/s, proxy CPU per
1k tokens and per request, TTFT p50 and p99 and gap p99 of each, and the median
within-round ratio of tokens/s. Used to check what a change costs (or buys)
against the machine's noise: run it against an unchanged copy for the A/A line.
Writes ``<out>/ab.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
from pathlib import Path
from typing import Any

import orjson

from .procs import Proc, start_mock, start_trioproxy
from .scenarios import SCENARIOS, measure


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, help="the other checkout's root")
    parser.add_argument("--translated", action="store_true",
                        help="this checkout passing through against it translating")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument(
        "--warmup", type=int, help="unmeasured requests first (default: the scenario's)"
    )
    parser.add_argument("--scenario", choices=["throughput", "paced", "overhead", "requests"],
                        default="throughput", help="the shape of each run")  # fmt: skip
    parser.add_argument("--out", default="bench/out", type=Path)
    args = parser.parse_args(argv)
    if (args.base is None) == (not args.translated):
        parser.error("one of --base and --translated")
    summary = compare(
        args.base, args.scenario, args.rounds, args.requests, args.warmup, args.translated
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ab.json").write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
    print(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode())
    return 0


def compare(
    base: Path | None,
    scenario: str,
    rounds: int,
    requests: int,
    warmup: int | None = None,
    translated: bool = False,
    mock_url: str | None = None,
) -> dict[str, Any]:
    """``rounds`` interleaved runs of the ``base`` tree and this one (or this one
    passing through and translating); their summary. ``mock_url``: a running mock."""
    sc = dataclasses.replace(SCENARIOS[scenario], requests=requests)
    if warmup is not None:
        sc = dataclasses.replace(sc, warmup=warmup)
    procs: list[Proc] = []
    runs: dict[str, list[dict[str, Any]]] = {"base": [], "this": []}
    try:
        mock = Proc("mock", mock_url) if mock_url else start_mock()
        if not mock_url:
            procs.append(mock)
        this = Path(__file__).parent.parent.resolve()
        gateways = {
            "base": start_trioproxy(mock.url, tree=this if base is None else base.resolve()),
            "this": start_trioproxy(mock.url, tree=this, translated=translated),
        }
        procs += gateways.values()
        for i in range(rounds):
            for label in ("base", "this") if i % 2 == 0 else ("this", "base"):
                proc = gateways[label]
                result = measure(proc, proc.url, sc, sc.requests, sc.concurrency, sc.warmup)
                result.pop("ttft_all_ms", None)
                runs[label].append(result)
                print(
                    f"round {i + 1}/{rounds} {label}: {result['tokens_per_s']:,.0f} tokens/s",
                    file=sys.stderr,
                )
    finally:
        for proc in reversed(procs):
            proc.stop()

    def value(run: dict[str, Any], key: str) -> float:
        """``key`` of one run's result; ``"ttft_ms.p99"`` reaches into a percentile."""
        name, _, percentile = key.partition(".")
        return float(run[name][percentile] if percentile else run[name])

    def med(label: str, key: str) -> float:
        return float(statistics.median(value(r, key) for r in runs[label]))

    def each(key: str, digits: int) -> dict[str, list[float]]:
        return {k: [round(value(r, key), digits) for r in v] for k, v in runs.items()}

    paired = [
        a["tokens_per_s"] / b["tokens_per_s"]
        for a, b in zip(runs["this"], runs["base"], strict=True)
    ]
    return {
        "scenario": scenario,
        "compared": "passing through (base) and translating (this)" if translated else "trees",
        # s per 1k tokens -> µs per token: x 1000
        "cpu_us_per_token_added": round(
            (med("this", "proxy_cpu_s_per_1k_tokens") - med("base", "proxy_cpu_s_per_1k_tokens"))
            * 1000,
            2,
        ),
        "ttft_p50_ms_added": round(med("this", "ttft_ms.p50") - med("base", "ttft_ms.p50"), 3),
        "rounds": rounds,
        "requests_per_run": requests,
        "warmup_per_run": sc.warmup,
        "tokens_per_s": {k: med(k, "tokens_per_s") for k in runs},
        "cpu_s_per_1k_tokens": {k: med(k, "proxy_cpu_s_per_1k_tokens") for k in runs},
        "cpu_ms_per_request": {k: med(k, "proxy_cpu_ms_per_request") for k in runs},
        "ttft_p50_ms": {k: med(k, "ttft_ms.p50") for k in runs},
        "ttft_p99_ms": {k: med(k, "ttft_ms.p99") for k in runs},
        "gap_p99_ms": {k: med(k, "gap_ms.p99") for k in runs},
        "ttft_p99_ms_all": each("ttft_ms.p99", 1),
        "gap_p99_ms_all": each("gap_ms.p99", 1),
        "cpu_s_per_1k_tokens_all": each("proxy_cpu_s_per_1k_tokens", 4),
        "cpu_ms_per_request_all": each("proxy_cpu_ms_per_request", 3),
        "this_over_base_paired_median": round(statistics.median(paired), 4),
        "this_over_base_paired": [round(r, 3) for r in paired],
        "tokens_per_s_all": each("tokens_per_s", 0),
    }


if __name__ == "__main__":
    raise SystemExit(main())
