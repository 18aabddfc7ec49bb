"""``python -m bench``: trioproxy side by side with direct access and nginx.

Flags mean what they mean in LiteLLM's streaming benchmark: a closed loop of
exactly ``--concurrency`` requests in flight, ``--warmup`` unmeasured requests
before each repeat, and with ``--repeats`` the repeat with the median TTFT p50
is reported. Repeats take turns across the targets (round 1 of every target,
then round 2, ...), so a slow spell of the machine does not land on one target.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import sys
from pathlib import Path
from typing import Any

from . import ab, headline, report, rig, sustained
from .idle import run_idle
from .procs import (
    CORES,
    PINNED,
    Proc,
    start_floor,
    start_hyper_floor,
    start_litellm,
    start_mock,
    start_naive,
    start_nginx,
    start_trioproxy,
)
from .scenarios import SCENARIOS, SWEEP, Scenario, measure, median_repeat


def _progress(text: str) -> None:
    print(f"\r\033[K{text}", end="", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--scenario", action="append", choices=[*SCENARIOS, "sweep", "sustained", "translated"],
                        help="repeatable; default: all")  # fmt: skip
    parser.add_argument("--target", action="append", default=[], metavar="NAME=URL",
                        help="measure this proxy (its upstream must be a trioproxy mock-upstream); "
                        "default: start trioproxy (and nginx if installed)")  # fmt: skip
    parser.add_argument("--requests", type=int, help="override the scenario's request count")
    parser.add_argument("--concurrency", type=int, help="override the scenario's concurrency")
    parser.add_argument("--warmup", type=int, help="override the scenario's warm-up count")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--tokens", type=int, help="override tokens per response")
    parser.add_argument("--itl-ms", type=float, help="override the inter-token latency")
    parser.add_argument("--mock", metavar="URL", help="the mock upstream the --targets use")
    parser.add_argument("--no-nginx", action="store_true")
    parser.add_argument("--naive", action="store_true",
                        help="also the 40-line Hypercorn + httpx relay (slow when paced)")  # fmt: skip
    parser.add_argument("--hypercorn-floor", action=argparse.BooleanOptionalAction, default=True,
                        help="Hypercorn as released with the least relay app: the reference of the "
                        "per-request targets (default: on)")  # fmt: skip
    parser.add_argument("--workers", type=int, default=1,
                        help="also trioproxy with this many worker processes, on every core "
                             "(shared with the mock and the client)")  # fmt: skip
    parser.add_argument("--litellm", metavar="PATH",
                        help="also LiteLLM's proxy: its `litellm` command (installed in a venv of its own)")  # fmt: skip
    parser.add_argument("--ladder", help="sustained: the concurrencies to try, e.g. 50,100,200")
    parser.add_argument("--out", default="bench/out", type=Path)
    args = parser.parse_args(argv)
    names = args.scenario or [*SCENARIOS, "sweep", "sustained", "translated"]

    procs: list[Proc] = []
    try:
        mock = Proc("mock", args.mock) if args.mock else start_mock()
        if not args.mock:
            procs.append(mock)
        targets: dict[str, tuple[Proc | None, str]] = {"direct": (None, mock.url)}
        if args.target:
            for spec in args.target:
                name, _, url = spec.partition("=")
                targets[name] = (None, url.rstrip("/"))
        else:
            floor = start_floor(mock.url)
            procs.append(floor)
            targets["trio floor"] = (floor, floor.url)
            if args.hypercorn_floor:
                hyper = start_hyper_floor(mock.url)
                procs.append(hyper)
                targets[hyper.name] = (hyper, hyper.url)
            gateway = start_trioproxy(mock.url)
            procs.append(gateway)
            targets["trioproxy"] = (gateway, gateway.url)
            if args.workers > 1:
                multi = start_trioproxy(mock.url, workers=args.workers)
                procs.append(multi)
                targets[multi.name] = (multi, multi.url)
            if args.naive:
                naive = start_naive(mock.url)
                procs.append(naive)
                targets["naive relay"] = (naive, naive.url)
            if args.litellm:
                litellm = start_litellm(mock.url, args.litellm)
                procs.append(litellm)
                targets["litellm"] = (litellm, litellm.url)
            nginx = None if args.no_nginx else start_nginx(mock.url)
            if nginx is not None:
                procs.append(nginx)
                targets["nginx"] = (nginx, nginx.url)
        machine = f"{platform.node()}: {CORES} cores, Python {platform.python_version()}; " + (
            "proxy pinned to core 0, mock upstream and load client on the other core(s)"
            if PINNED
            else "one core: nothing pinned"
        )
        print(machine, file=sys.stderr)
        command = " ".join(["python -m bench", *(argv if argv is not None else sys.argv[1:])])
        results: dict[str, Any] = {
            "machine": machine, "command": command, "scenarios": {}, "sweep": {}, "sustained": {},
            "rig": {},
        }  # fmt: skip

        def serves(target: str, api: str) -> bool:
            proc = targets[target][0]
            return proc is None or api in proc.apis

        def shaped(sc: Scenario) -> Scenario:
            changes: dict[str, Any] = {}
            for flag, field in (("requests", "requests"), ("concurrency", "concurrency"),
                                ("warmup", "warmup"), ("tokens", "tokens"), ("itl_ms", "itl_ms")):  # fmt: skip
                if getattr(args, flag) is not None:
                    changes[field] = getattr(args, flag)
            return dataclasses.replace(sc, **changes)

        for n, name in enumerate(names):
            if n:  # what the run has measured so far, kept if a later scenario fails
                report.write(results, args.out)
            if name == "sustained":
                for target, (proc, url) in targets.items():
                    results["sustained"][target] = sustained.sweep(
                        proc,
                        url,
                        lambda text, t=target: _progress(f"{t} {text}"),
                        tuple(int(c) for c in args.ladder.split(",")) if args.ladder else None,
                    )
                continue
            if name == "translated":  # passing through and translating, rounds interleaved
                results["translated"] = {}
                for shape in ("paced", "overhead"):  # CPU per token; one stream's TTFT
                    sc = shaped(SCENARIOS[shape])
                    _progress(f"translated: {shape}, passing through and translating")
                    results["translated"][shape] = ab.compare(
                        None, shape, max(6, 2 * args.repeats), sc.requests, sc.warmup,
                        translated=True, mock_url=mock.url,
                    )  # fmt: skip
                continue
            if name == "sweep":
                base = shaped(SCENARIOS["throughput"])
                for target, (proc, url) in targets.items():
                    points = {}
                    for c in SWEEP:
                        _progress(f"sweep: {target} C={c}")
                        n = max(args.requests or 200, 4 * c)
                        r = measure(proc, url, base, n, c, min(c, 100))
                        r.pop("ttft_all_ms")
                        points[str(c)] = r
                    results["sweep"][target] = points
                continue
            sc = shaped(SCENARIOS[name])
            results["scenarios"][name] = {}
            if sc.stall:
                for target, (proc, url) in targets.items():
                    if not serves(target, sc.api):
                        continue
                    _progress(f"{name}: {target}")
                    results["scenarios"][name][target] = run_idle(
                        proc, url, sc.model(), sc.concurrency
                    )
                continue
            # Repeats take turns: a slow spell of the machine lands on every target.
            runs: dict[str, list[dict[str, Any]]] = {t: [] for t in targets if serves(t, sc.api)}
            wakes = []
            for i in range(args.repeats):
                _progress(f"{name}: the rig's cross-core wake, round {i + 1}")
                wakes.append(rig.wake())
                for target in runs:
                    proc, url = targets[target]
                    _progress(f"{name}: {target} repeat {i + 1}/{args.repeats}")
                    mock_cpu = mock.cpu_seconds()
                    run = measure(proc, url, sc, sc.requests, sc.concurrency, sc.warmup)
                    run["mock_cpu_s"] = mock.cpu_seconds() - mock_cpu  # 0 for a --mock URL
                    runs[target].append(run)
            for target, target_runs in runs.items():
                results["scenarios"][name][target] = median_repeat(target_runs)
            results["rig"][name] = rig.summary(
                wakes, sc.concurrency, sc.itl_ms, results["scenarios"][name].get("direct")
            )
        direct = results["scenarios"].get("throughput", {}).get("direct")
        results["client_ceiling"] = (
            f"{direct['tokens_per_s']:,.0f} tokens/s"
            if direct
            else "not measured (no throughput run)"
        )
        _progress("")
        print(report.table(results))
        for line in report.rig_lines(results):
            print(line)
        print(
            f"load client ceiling (client -> mock, throughput shape): {results['client_ceiling']}"
        )
        print(headline.table(results))
        for line in headline.target_lines(results):
            print(f"target: {line}")
        files = report.write(results, args.out)
        print(f"wrote {', '.join(files)} to {args.out}/")
    finally:
        for proc in reversed(procs):
            proc.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
