"""Streams sustained: the headline figure of paced streaming.

Rules (one point = one concurrency C, all targets in the same run):
- C connections open together and each runs two streams back to back of
  ``FRAMES`` content frames ``ITL_MS`` apart (``mock-t64-i20``): the first
  round is a burst of C requests arriving at once, the second is staggered.
- A point *holds* when every stream gets every frame, no stream waits more
  than ``MAX_WAIT_MS`` for any frame (the first one included: TTFT), and fewer
  than ``MAX_FAILED`` of the streams fail.
- A target's figure is the highest C of the ladder that holds; the ladder
  stops one point after the first that does not. Each point also reports the
  frames per second carried, TTFT p99, gap p99 and the target's CPU time per
  frame (process CPU seconds over the point / frames delivered), which reads
  as "x floor" against the ``trio floor`` target.
"""

from __future__ import annotations

from typing import Any

from .procs import Proc
from .scenarios import Scenario, q, run_load

FRAMES = 64
ITL_MS = 20.0
MAX_WAIT_MS = 200.0
MAX_FAILED = 0.001
LADDER = (50, 100, 200, 300, 400, 500, 600, 800, 1000)
SCENARIO = Scenario("sustained", "chat", FRAMES, ITL_MS, 0, 0, 0)


def point(proc: Proc | None, url: str, concurrency: int) -> dict[str, Any]:
    """One concurrency: 2 x C streams over C connections opened together."""
    cpu0 = proc.cpu_seconds() if proc else 0.0
    raw = run_load(url, SCENARIO, 2 * concurrency, concurrency, 0)
    cpu = (proc.cpu_seconds() - cpu0) if proc else 0.0
    samples = raw["samples"]
    ok = [s for s in samples if s["ok"]]
    frames = sum(s["tokens"] for s in ok)
    waits = [max([s["ttft"], *s["gaps"]]) * 1000 for s in ok]
    failed = len(samples) - len(ok) + sum(1 for s in ok if s["tokens"] != FRAMES)
    worst = max(waits, default=float("inf"))
    holds = failed / max(1, len(samples)) < MAX_FAILED and worst <= MAX_WAIT_MS
    return {
        "concurrency": concurrency,
        "streams": len(samples),
        "failed": failed,
        "holds": holds,
        "worst_wait_ms": worst,
        "ttft_p99_ms": q([s["ttft"] * 1000 for s in ok], 0.99),
        "gap_p99_ms": q([g * 1000 for s in ok for g in s["gaps"]], 0.99),
        "frames_per_s": frames / raw["wall"] if raw["wall"] else 0.0,
        "cpu_us_per_frame": cpu / frames * 1e6 if proc is not None and frames else None,
    }


def sweep(
    proc: Proc | None, url: str, progress: Any, ladder: tuple[int, ...] | None = None
) -> dict[str, Any]:
    """The ladder for one target: its points and the highest C that holds."""
    points = []
    best = 0
    for c in ladder or LADDER:
        progress(f"sustained: C={c}")
        p = point(proc, url, c)
        points.append(p)
        if not p["holds"]:
            break
        best = c
    return {"sustained": best, "points": points}


def table(results: dict[str, dict[str, Any]]) -> str:
    """Markdown: per target the figure, then every point measured."""
    floor = _floor_cpu(results)
    lines = [
        f"Streams sustained ({FRAMES} frames at {ITL_MS:g} ms; every frame, no wait over "
        f"{MAX_WAIT_MS:g} ms, first included; < {MAX_FAILED:.1%} failed)",
        "",
        "| target | streams sustained | frames/s there | CPU µs/frame there | x floor |",
        "|---|---|---|---|---|",
    ]
    for target, r in results.items():
        held = [p for p in r["points"] if p["holds"]]
        at = held[-1] if held else None
        cpu = at["cpu_us_per_frame"] if at else None
        ratio = (
            f"{cpu / floor[at['concurrency']]:.1f}"
            if cpu and at and floor.get(at["concurrency"])
            else ""
        )
        lines.append(
            f"| {target} | {r['sustained']} | {at['frames_per_s']:,.0f} | "
            f"{'' if cpu is None else f'{cpu:.0f}'} | {ratio} |"
            if at
            else f"| {target} | 0 (fails at {r['points'][0]['concurrency']}) |  |  |  |"
        )
    lines += [
        "",
        "| target | C | holds | worst wait ms | TTFT p99 ms | gap p99 ms | frames/s | CPU µs/frame |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for target, r in results.items():
        for p in r["points"]:
            cpu = "" if p["cpu_us_per_frame"] is None else f"{p['cpu_us_per_frame']:.0f}"
            lines.append(
                f"| {target} | {p['concurrency']} | {'yes' if p['holds'] else 'NO'} | "
                f"{p['worst_wait_ms']:.1f} | {p['ttft_p99_ms']:.1f} | {p['gap_p99_ms']:.1f} | "
                f"{p['frames_per_s']:,.0f} | {cpu} |"
            )
    return "\n".join(lines)


def _floor_cpu(results: dict[str, dict[str, Any]]) -> dict[int, float]:
    floor = results.get("trio floor", {}).get("points", [])
    return {p["concurrency"]: p["cpu_us_per_frame"] for p in floor if p["cpu_us_per_frame"]}


def plot(results: dict[str, dict[str, Any]], path: str) -> bool:
    """streams vs gap p99 and vs CPU per frame; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (gap, cpu) = plt.subplots(1, 2, figsize=(11, 4))
    for n, (target, r) in enumerate(results.items()):
        xs = [p["concurrency"] for p in r["points"]]
        style = {"marker": "o", "label": target, "color": f"C{n}"}  # one colour per target
        gap.plot(xs, [p["gap_p99_ms"] for p in r["points"]], **style)
        if any(p["cpu_us_per_frame"] for p in r["points"]):
            cpu.plot(xs, [p["cpu_us_per_frame"] or 0 for p in r["points"]], **style)
    gap.axhline(MAX_WAIT_MS, color="grey", linestyle=":", label=f"{MAX_WAIT_MS:g} ms")
    gap.set(xlabel="concurrent streams", ylabel="inter-frame gap p99, ms", yscale="log")
    cpu.set(xlabel="concurrent streams", ylabel="proxy CPU µs per frame")
    gap.legend()
    cpu.legend()
    fig.suptitle(f"Paced streams ({FRAMES} frames at {ITL_MS:g} ms), proxy on one core")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True
