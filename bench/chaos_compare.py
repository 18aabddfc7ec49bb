"""The cancellation lab against several gateways, side by side.

    .venv/bin/python -m bench.chaos_compare [--runs 200] [--seed 20261124] [--out bench/out]

Each target gets its own ``trioproxy mock-upstream`` and the same seeded
campaign (``trioproxy chaos --target``, judged from outside): trioproxy, the
40-line naive Hypercorn + httpx relay (``trioproxy.testing.naive_relay``),
nginx when it is installed (``apt-get install nginx-light``). LiteLLM is not
started by this script (its proxy needs a config of its own): point one at a
mock and run ``trioproxy chaos --target`` against it. Writes ``<out>/chaos_compare.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import orjson
import trio

from trioproxy.testing.chaos.plan import Limits
from trioproxy.testing.chaos.target import run_target_campaign
from trioproxy.testing.naive_relay import READ_TIMEOUT

from .procs import CORES, Proc, free_port, start_mock, start_naive, start_nginx, wait_port

# The timeouts each target really has (what a fair campaign must wait for).
TRIOPROXY = Limits(ttft_timeout=2.0, idle_timeout=1.0, client_stall_timeout=2.0, hang_bound=5.0)
NAIVE = Limits(READ_TIMEOUT, READ_TIMEOUT, READ_TIMEOUT, hang_bound=5.0)
NGINX = Limits(ttft_timeout=5.0, idle_timeout=5.0, client_stall_timeout=5.0, hang_bound=5.0)


def _trioproxy(mock_url: str) -> Proc:
    workdir = Path(tempfile.mkdtemp(prefix="trioproxy-lab-"))
    (workdir / "gw.toml").write_text(
        f'openai_upstreams = ["{mock_url}/v1"]\nanthropic_upstreams = ["{mock_url}"]\n'
        "access_log = false\nidle_timeout = 1.0\nttft_timeout = 2.0\n"
        f'client_stall_timeout = 2.0\ndata_dir = "{workdir}"\n'
    )
    port = free_port()
    popen = subprocess.Popen(
        [sys.executable, "-m", "trioproxy", "serve", "--config", str(workdir / "gw.toml"),
         "--bind", f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    wait_port(port)
    return Proc("trioproxy", f"http://127.0.0.1:{port}", popen, workdir)


def _naive(mock_url: str) -> Proc:
    return start_naive(mock_url, cores=set(range(CORES)))  # unpinned, as the others here


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--seed", type=int, default=20261124)
    parser.add_argument("--out", default="bench/out", type=Path)
    args = parser.parse_args(argv)
    starters: list[tuple[str, Any, Limits]] = [
        ("trioproxy", _trioproxy, TRIOPROXY),
        ("naive relay", _naive, NAIVE),
        ("nginx", start_nginx, NGINX),
    ]
    if importlib.util.find_spec("litellm") is not None:
        print("litellm: this script does not start a LiteLLM proxy; run its proxy against a "
              "mock yourself and use trioproxy chaos --target", file=sys.stderr)  # fmt: skip
    reports: dict[str, Any] = {}
    for name, start, limits in starters:
        mock = start_mock()
        target = start(mock.url)
        try:
            if target is None:
                print(f"{name}: not installed, skipped", file=sys.stderr)
                continue
            print(f"{name}: {args.runs} runs ...", file=sys.stderr)
            pid = target.popen.pid if target.popen is not None else None
            run = functools.partial(
                run_target_campaign, target.url, mock.url, args.runs, 16, args.seed, limits,
                target_pid=pid,
            )  # fmt: skip
            reports[name] = trio.run(run)
        finally:
            if target is not None:
                target.stop()
            mock.stop()
    text = _markdown(reports, args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "chaos_compare.json").write_bytes(orjson.dumps(reports, option=orjson.OPT_INDENT_2))
    (args.out / "chaos_compare.md").write_text(text)
    print(text)
    return 0


def _markdown(reports: dict[str, Any], args: Any) -> str:
    names = ["upstream_closed_after_hangup", "no_client_hangs", "no_upstream_stream_left_open"]
    lines = [
        f"`python -m bench.chaos_compare --runs {args.runs} --seed {args.seed}`",
        "",
        "| target | " + " | ".join(names) + " | rss | hang-up → upstream closed p50 / p99 |",
        "|---|" + "---|" * (len(names) + 2),
    ]
    for target, report in reports.items():
        inv = {i["name"]: i for i in report["invariants"]}
        cells = [("PASS" if inv[n]["ok"] else "FAIL") for n in names]
        rss = inv.get("rss_bounded")
        lat = report["cancel_latency_ms"]
        latency = f"{lat.get('p50', '-')} / {lat.get('p99', '-')} ms (n {lat['n']})"
        rss_cell = ("PASS" if rss["ok"] else "FAIL") if rss else "-"
        lines.append(f"| {target} | " + " | ".join(cells) + f" | {rss_cell} | {latency} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
