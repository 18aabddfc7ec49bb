"""The headline table of a run and its targets, from the run's results.

Rules:
- A line is quoted only from scenarios of the same run; a target or scenario the run
  did not measure is a dash, never a figure from another run.
- The targets are relative to references measured in the same run:

  - per request: one paced stream's TTFT added (``overhead``, p50) within
    ``PER_REQUEST`` times the Hypercorn floor's, and streams sustained at least the Hypercorn
    floor's ÷ ``PER_REQUEST``;
  - per token: proxy CPU per token on ``paced`` within ``PER_TOKEN`` times the trio floor's;
  - full speed: ``throughput`` tokens/s at least ``FULL_SPEED`` times nginx's;
  - translation (``translated``: passing through and translating, rounds interleaved):
    at most ``TRANSLATION_CPU_US`` of proxy CPU per token added (``paced``) and
    ``TRANSLATION_TTFT_MS`` of TTFT p50 added to one paced stream (``overhead``: under
    ``paced`` the rig's cores are saturated, and TTFT there is queueing behind every
    token's CPU, reported beside it).

  A target whose reference was not measured is reported as not checked.
"""

from __future__ import annotations

from typing import Any

PER_REQUEST = 1.2
PER_TOKEN = 2.0
FULL_SPEED = 0.8
TRANSLATION_CPU_US = 10.0
TRANSLATION_TTFT_MS = 0.3
# Reading order of the columns; targets a run has that are not listed come last.
ORDER = ("direct", "nginx", "trio floor", "hypercorn floor", "trioproxy", "trioproxy x2",
         "naive relay", "litellm")  # fmt: skip


def _get(results: dict[str, Any], scenario: str, target: str) -> dict[str, Any] | None:
    found: dict[str, Any] | None = results.get("scenarios", {}).get(scenario, {}).get(target)
    return found


def added_ms(results: dict[str, Any], target: str) -> float | None:
    """One paced stream: TTFT p50 over direct's, same run."""
    r, direct = _get(results, "overhead", target), _get(results, "overhead", "direct")
    if r is None or direct is None or target == "direct":
        return None
    return float(r["ttft_ms"]["p50"] - direct["ttft_ms"]["p50"])


def _sustained(results: dict[str, Any], target: str) -> int | None:
    found = results.get("sustained", {}).get(target)
    return None if found is None else int(found["sustained"])


def _cpu_us(results: dict[str, Any], scenario: str, target: str) -> float | None:
    r = _get(results, scenario, target)
    per_1k = r.get("proxy_cpu_s_per_1k_tokens") if r else None
    return None if per_1k is None else float(per_1k) * 1000


def columns(results: dict[str, Any]) -> list[str]:
    seen = {t for s in results.get("scenarios", {}).values() for t in s}
    seen |= set(results.get("sustained", {}))
    return [t for t in ORDER if t in seen] + sorted(seen - set(ORDER))


DASH = "-"  # a line the run did not measure for that target


def _cells(results: dict[str, Any], target: str) -> list[str]:
    """One target's column of the headline table."""
    full, paced = _get(results, "throughput", target), _get(results, "paced", target)
    added, cpu = added_ms(results, target), _cpu_us(results, "paced", target)
    sustained = _sustained(results, target)
    return [
        DASH if full is None else f"{full['tokens_per_s'] / 1000:.1f}k",
        DASH if added is None else f"{added:+.1f} ms",
        DASH if paced is None else f"{paced['ttft_ms']['p99']:,.0f} ms",
        DASH if cpu is None else f"{cpu:.0f} µs",
        DASH if sustained is None else str(sustained),
    ]


LINES = ("full speed, tokens/s", "one paced stream, TTFT added p50", "200 paced streams, TTFT p99",
         "paced, proxy CPU per token", "streams sustained")  # fmt: skip


def table(
    results: dict[str, Any], only: tuple[str, ...] = (), lines: tuple[str, ...] = LINES
) -> str:
    """The headline table: full speed, one paced stream, 200 paced streams, CPU per token,
    streams sustained; ``only`` those targets, ``lines`` those lines."""
    cols = [t for t in columns(results) if not only or t in only]
    cells = [_cells(results, t) for t in cols]
    out = ["| same run | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for i, label in enumerate(LINES):
        if label in lines:
            out.append(f"| {label} | " + " | ".join(c[i] for c in cells) + " |")
    return "\n".join(out)


def targets(
    results: dict[str, Any], target: str = "trioproxy"
) -> list[tuple[str, str, bool | None]]:
    """Each documented target: (what, measured against its bound, met or None if unchecked)."""

    def ratio(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None or b == 0 else a / b

    out: list[tuple[str, str, bool | None]] = []
    added = ratio(added_ms(results, target), added_ms(results, "hypercorn floor"))
    out.append((f"one paced stream, TTFT added ≤ {PER_REQUEST}x the Hypercorn floor's",
                "not measured" if added is None else f"{added:.2f}x",
                None if added is None else added <= PER_REQUEST))  # fmt: skip
    ours, floor = _sustained(results, target), _sustained(results, "hypercorn floor")
    held = None if ours is None or floor is None else ours * PER_REQUEST >= floor
    out.append((f"streams sustained ≥ the Hypercorn floor's ÷ {PER_REQUEST}",
                "not measured" if held is None else f"{ours} against {floor}", held))  # fmt: skip
    cpu = ratio(_cpu_us(results, "paced", target), _cpu_us(results, "paced", "trio floor"))
    out.append((f"paced CPU per token ≤ {PER_TOKEN}x the trio floor's",
                "not measured" if cpu is None else f"{cpu:.2f}x",
                None if cpu is None else cpu <= PER_TOKEN))  # fmt: skip
    ours_full, nginx = _get(results, "throughput", target), _get(results, "throughput", "nginx")
    full = ratio(
        None if ours_full is None else float(ours_full["tokens_per_s"]),
        None if nginx is None else float(nginx["tokens_per_s"]),
    )
    out.append((f"full speed ≥ {FULL_SPEED}x nginx",
                "not measured" if full is None else f"{full:.2f}x",
                None if full is None else full >= FULL_SPEED))  # fmt: skip
    translated = results.get("translated") or {}
    cpu_added = (translated.get("paced") or {}).get("cpu_us_per_token_added")
    ttft_added = (translated.get("overhead") or {}).get("ttft_p50_ms_added")
    out.append((f"translation adds ≤ {TRANSLATION_CPU_US:g} µs of CPU per token (paced)",
                "not measured" if cpu_added is None else f"{cpu_added:+.1f} µs",
                None if cpu_added is None else cpu_added <= TRANSLATION_CPU_US))  # fmt: skip
    out.append((f"translation adds ≤ {TRANSLATION_TTFT_MS:g} ms to TTFT p50 (one paced stream)",
                "not measured" if ttft_added is None else f"{ttft_added:+.2f} ms",
                None if ttft_added is None else ttft_added <= TRANSLATION_TTFT_MS))  # fmt: skip
    return out


def target_lines(results: dict[str, Any]) -> list[str]:
    verdict = {True: "met", False: "NOT MET", None: "not checked"}
    return [f"{what}: {measured} ({verdict[met]})" for what, measured, met in targets(results)]
