"""What the rig itself can show: the machine's cross-core wake-up, and whether direct keeps up.

``python -m bench.rig [--gap-ms G] [--pings N]`` prints one wake measurement as JSON.

Rules:
- A proxy on core 0 makes every first token cross cores four times (client on
  core 1 -> proxy -> mock on core 1, and back); direct access keeps the client
  and the mock on one core and crosses none. :func:`wake` measures what a pair
  of crossings costs now: one-byte round trips between two processes, one on
  each core, sent back to back (``warm``) and with a paced stream's gap between
  them (``idle``: the woken core has been idle that long), and the idle case on
  one core. On this kind of VM an idle vCPU is parked by the hypervisor: the
  idle round trip has measured 75 µs to 1.4 ms within a day, the warm one mostly
  30-75 µs (over 1 ms in the worst spells). A proxy whose work lets a core go
  idle between the hops of a first token pays the idle figure, so the bench
  measures it before every round of repeats and reports it beside the scenario.
- :func:`summary`: the share of the demanded tokens/s that direct access
  delivered. A closed loop of C streams paced at one token every ``itl_ms``
  demands ``C x 1000 / itl_ms`` tokens/s. Under :data:`HELD` the load client and
  the mock (which share the other core) are saturated, and every "x direct" or
  "direct + N ms" figure of that scenario measures the rig as much as the proxy.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from typing import Any

import orjson

from .procs import OTHER_CORES, PINNED, PROXY_CORES

HELD = 0.9  # direct delivering less of the demand than this: the rig is saturated
PINGS = 60
GAP_MS = 20.0


def _round_trips(peer_core: int, my_core: int, gap: float, pings: int) -> list[float]:
    """Round trips (µs) of one byte to a forked echo process on ``peer_core``."""
    mine, theirs = socket.socketpair()
    pid = os.fork()
    if pid == 0:  # the echo side: only os calls until _exit
        try:
            os.sched_setaffinity(0, {peer_core})
            mine.close()
            while data := theirs.recv(64):
                theirs.send(data)
        finally:
            os._exit(0)
    theirs.close()
    os.sched_setaffinity(0, {my_core})
    trips = []
    try:
        for _ in range(pings):
            t = time.perf_counter()
            mine.send(b"x")
            mine.recv(64)
            trips.append((time.perf_counter() - t) * 1e6)
            if gap:
                time.sleep(gap)
    finally:
        mine.close()
        os.waitpid(pid, 0)
    return sorted(trips)


def _p(xs: list[float], q: float) -> float:
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def measure_here(gap_ms: float = GAP_MS, pings: int = PINGS) -> dict[str, Any]:
    """Cross-core (warm, idle) and same-core (idle) round trips, in this
    (single-threaded) process."""
    proxy, other = min(PROXY_CORES), min(OTHER_CORES)
    warm = _round_trips(proxy, other, 0.0, pings)
    cross = _round_trips(proxy, other, gap_ms / 1000, pings)
    same = _round_trips(other, other, gap_ms / 1000, pings)
    return {
        "pinned": PINNED,
        "gap_ms": gap_ms,
        "cross_core_warm_rtt_us": {"p50": _p(warm, 0.5), "p90": _p(warm, 0.9)},
        "cross_core_rtt_us": {"p50": _p(cross, 0.5), "p90": _p(cross, 0.9)},
        "same_core_rtt_us": {"p50": _p(same, 0.5), "p90": _p(same, 0.9)},
    }


def wake(gap_ms: float = GAP_MS, pings: int = PINGS) -> dict[str, Any]:
    """:func:`measure_here` in a fresh process (the bench's own has threads: no fork there)."""
    out = subprocess.run(
        [sys.executable, "-m", "bench.rig", "--gap-ms", str(gap_ms), "--pings", str(pings)],
        capture_output=True,
        check=True,
        timeout=60 + pings * gap_ms / 500,
    )
    result: dict[str, Any] = orjson.loads(out.stdout)
    return result


def summary(
    wakes: list[dict[str, Any]], concurrency: int, itl_ms: float, direct: dict[str, Any] | None
) -> dict[str, Any]:
    """One scenario's rig figures: the wake before each round, and direct's share of the load."""
    demand = concurrency * 1000 / itl_ms if itl_ms > 0 and concurrency > 0 else None
    held = direct["tokens_per_s"] / demand if demand and direct else None
    return {
        "cross_core_warm_rtt_p50_us": [round(w["cross_core_warm_rtt_us"]["p50"]) for w in wakes],
        "cross_core_rtt_p50_us": [round(w["cross_core_rtt_us"]["p50"]) for w in wakes],
        "same_core_rtt_p50_us": [round(w["same_core_rtt_us"]["p50"]) for w in wakes],
        "demand_tokens_per_s": demand,
        "direct_load_held": held,
        "saturated": held is not None and held < HELD,
    }


def describe(name: str, rig: dict[str, Any], direct_tokens_per_s: float | None) -> str:
    """One line for the report."""

    def us(key: str) -> str:
        return ", ".join(f"{v:,}" for v in rig[key])

    line = (
        f"{name}: cross-core round trip p50 {us('cross_core_rtt_p50_us')} µs after"
        f" {GAP_MS:g} ms idle ({us('cross_core_warm_rtt_p50_us')} µs warm, same core"
        f" {us('same_core_rtt_p50_us')} µs), one per round"
    )
    if rig["direct_load_held"] is not None and direct_tokens_per_s is not None:
        line += (
            f"; direct delivered {direct_tokens_per_s:,.0f} of {rig['demand_tokens_per_s']:,.0f}"
            f" demanded tokens/s ({rig['direct_load_held']:.2f})"
        )
        if rig["saturated"]:
            line += ": the load client and mock are saturated, so 'x direct' and"
            line += " 'direct + N ms' measure the rig as much as the proxy"
    return line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rig", description=__doc__)
    parser.add_argument("--gap-ms", type=float, default=GAP_MS)
    parser.add_argument("--pings", type=int, default=PINGS)
    args = parser.parse_args(argv)
    sys.stdout.buffer.write(orjson.dumps(measure_here(args.gap_ms, args.pings)) + b"\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
