"""``python -m bench.guards``: what each Hypercorn guard buys, one ``bench.ab`` run each.

    .venv/bin/python -m bench.guards [--guard NAME]... [--rounds 10] [--out bench/results]

For every guard (``trioproxy.server.hypercorn.GUARDS``, or those named), a copy of this
tree with that one guard left out of ``GUARDS`` is the base of a :mod:`bench.ab` run
against this tree, in the shape where the guard matters (``SHAPES``):

- ``requests``: one-token streams, C=50: proxy CPU per request;
- ``paced``: 200 streams of 50 tokens 20 ms apart: proxy CPU per token as LLM streams
  come (the scenario of the same name);
- ``throughput``: 100-token streams at full speed, C=20: proxy CPU per token when
  tokens come faster than one a wake-up;
- ``burst``: the ``paced`` scenario's 200 streams on 200 new connections at once
  (no warm-up): TTFT p50 and p99 of a burst.

The control (``--aa``, on by default) runs each shape once more with an unchanged copy:
the difference two identical gateways show is the noise a guard's worth is read against.
Writes ``<out>/guards.json`` and ``<out>/guards.md``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import orjson

from trioproxy.server.hypercorn import GUARDS

from .ab import compare

ROOT = Path(__file__).parent.parent
# (bench.ab scenario, requests a run, warm-up a run)
RUNS = {"requests": ("requests", 3000, 200), "throughput": ("throughput", 1000, 100),
        "paced": ("paced", 1000, 200), "burst": ("paced", 200, 0)}  # fmt: skip
# The shape each guard is priced in: where its fault, or its cost, shows.
SHAPES: dict[str, tuple[str, ...]] = {
    "end_idle_wait_on_eof": ("requests",),
    "contain_connection_errors": ("requests",),
    "cap_connections": ("burst",),
    "keep_alive_without_a_task_per_request": ("requests",),
    "accept_what_is_queued": ("burst",),
    "frame_plain_responses_here": ("paced", "throughput"),
    "write_chunks_from_the_reader": ("paced", "throughput"),
    "bound_request_heads": ("requests",),
    "write_without_waiting": ("paced", "throughput"),
}


def tree_without(guard: str | None, into: Path) -> Path:
    """A copy of this tree's package in ``into``, ``guard`` left out of ``GUARDS``."""
    shutil.copytree(ROOT / "trioproxy", into / "trioproxy",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    if guard is not None:
        path = into / "trioproxy" / "server" / "hypercorn.py"
        line = f'    "{guard}": _{guard},\n'
        text = path.read_text()
        if text.count(line) != 1:
            raise SystemExit(f"{guard}: its line in GUARDS is not {line!r}")
        path.write_text(text.replace(line, ""))
    return into


def figures(ab: dict[str, Any]) -> dict[str, dict[str, float]]:
    """The medians a ledger row quotes, without (base) and with (this) the guard."""
    return {
        "cpu_us_per_token": {k: v * 1000 for k, v in ab["cpu_s_per_1k_tokens"].items()},
        "cpu_ms_per_request": ab["cpu_ms_per_request"],
        "ttft_p50_ms": ab["ttft_p50_ms"],
        "ttft_p99_ms": ab["ttft_p99_ms"],
        "tokens_per_s": ab["tokens_per_s"],
        "paired": {"this_over_base": ab["this_over_base_paired_median"]},
    }


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "# What each Hypercorn guard buys",
        "",
        f"`python -m bench.guards --rounds {results['rounds']}`; {results['machine']}.",
        "Each row: one `bench.ab` run, the gateway without the guard (base) against the gateway"
        " with it, medians over the rounds; `A/A` rows: two identical gateways (the noise).",
        "",
        "| guard | shape | CPU µs/token without → with | CPU ms/request without → with "
        "| TTFT p50 ms | TTFT p99 ms | tokens/s with ÷ without (paired) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in results["rows"].items():
        f = row["figures"]

        def pair(key: str, digits: int, f: dict[str, dict[str, float]] = f) -> str:
            return f"{f[key]['base']:.{digits}f} → {f[key]['this']:.{digits}f}"

        lines.append(
            f"| {name} | {row['shape']} | {pair('cpu_us_per_token', 1)} "
            f"| {pair('cpu_ms_per_request', 3)} | {pair('ttft_p50_ms', 2)} "
            f"| {pair('ttft_p99_ms', 1)} | {f['paired']['this_over_base']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--guard", action="append", choices=list(GUARDS), help="default: all")
    parser.add_argument("--shape", action="append", choices=list(RUNS),
                        help="only these shapes (default: each guard's own)")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--no-aa", action="store_true", help="skip the A/A control runs")
    parser.add_argument("--out", default="bench/out", type=Path)
    args = parser.parse_args(argv)
    from .procs import CORES, PINNED

    names = args.guard or list(GUARDS)
    wanted = set(args.shape or RUNS)
    pairs = [(n, shape) for n in names for shape in SHAPES[n] if shape in wanted]
    plan: list[tuple[str, str | None, str]] = [
        (n if len(SHAPES[n]) == 1 else f"{n} ({shape})", n, shape) for n, shape in pairs
    ]
    if not args.no_aa:
        plan += [(f"A/A {shape}", None, shape) for shape in dict.fromkeys(s for _, s in pairs)]
    machine = f"{CORES} cores" + (", proxies pinned to core 0" if PINNED else "")
    results: dict[str, Any] = {"rounds": args.rounds, "machine": machine, "rows": {}}
    for label, guard, shape in plan:
        scenario, requests, warmup = RUNS[shape]
        print(f"{label}: {shape}", file=sys.stderr)
        with tempfile.TemporaryDirectory(prefix="trioproxy-guard-") as tmp:
            base = tree_without(guard, Path(tmp))
            ab = compare(base, scenario, args.rounds, requests, warmup)
        results["rows"][label] = {"shape": shape, "figures": figures(ab), "ab": ab}
        args.out.mkdir(parents=True, exist_ok=True)  # written as it goes: a long run
        (args.out / "guards.json").write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
        (args.out / "guards.md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
