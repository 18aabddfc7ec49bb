"""Benchmark output: terminal table, ``latest.json``, a page per scenario, PNG plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from . import headline, rig, sustained


def _f(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def rows(results: dict[str, Any]) -> list[list[str]]:
    out = []
    for scenario, targets in results["scenarios"].items():
        direct = targets.get("direct", {})
        floor = targets.get("trio floor", {}).get("proxy_cpu_s_per_1k_tokens")
        for target, r in targets.items():
            if scenario == "idle":
                out.append([scenario, target, f"{r.get('streams_open')} open", "", "", "", "",
                            _f(r.get("proxy_rss_mb")), _f(r.get("per_stream_kb")) + " KB/stream",
                            _f(r.get("failures"))])  # fmt: skip
                continue
            ratio = (
                r["tokens_per_s"] / direct["tokens_per_s"] if direct.get("tokens_per_s") else None
            )
            added = r["ttft_ms"]["p50"] - direct["ttft_ms"]["p50"] if direct else None
            out.append(
                [
                    scenario,
                    target,
                    f"{_f(r['tokens_per_s'], 0)} ({_f(ratio, 2)}x)",
                    f"{_f(r['ttft_ms']['p50'], 2)} / {_f(r['ttft_ms']['p99'], 2)}",
                    f"{_f(added, 2)}" if target != "direct" else "",
                    f"{_f(r['gap_ms']['p50'], 2)} / {_f(r['gap_ms']['p99'], 2)}",
                    f"{r['same_read_share']:.0%}",
                    _f(r.get("proxy_peak_rss_mb")),
                    _cpu(r.get("proxy_cpu_s_per_1k_tokens"), floor),
                    _f(r["failures"]),
                ]
            )
    return out


def _cpu(per_1k: float | None, floor: float | None) -> str:
    """Proxy CPU µs per token, and how many times the trio floor's."""
    if per_1k is None:
        return "-"
    ratio = f" ({per_1k / floor:.1f}x floor)" if floor else ""
    return f"{per_1k * 1000:.0f}{ratio}"


HEADER = ["scenario", "target", "tokens/s (x direct)", "TTFT p50/p99 ms", "TTFT added p50",
          "gap p50/p99 ms", "same-read", "proxy RSS MB", "proxy CPU µs/token", "failures"]  # fmt: skip


def rig_lines(results: dict[str, Any]) -> list[str]:
    """Per scenario: the machine's cross-core wake and direct's share of the demand."""
    out = []
    for name, figures in results.get("rig", {}).items():
        direct = results["scenarios"].get(name, {}).get("direct")
        out.append(rig.describe(name, figures, direct["tokens_per_s"] if direct else None))
    return out


def table(results: dict[str, Any]) -> str:
    body = rows(results)
    if not body:  # no scenario rows (e.g. the sustained ladder alone)
        return sustained.table(results["sustained"]) if results.get("sustained") else ""
    widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(HEADER)]
    line = "  ".join(h.ljust(w) for h, w in zip(HEADER, widths, strict=True))
    out = [line, "-" * len(line)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in body]
    return "\n".join(out)


def _rows_md(results: dict[str, Any], scenario: str) -> list[str]:
    mine = {"scenarios": {scenario: results["scenarios"][scenario]}}
    lines = ["| " + " | ".join(HEADER[1:]) + " |", "|" + "---|" * (len(HEADER) - 1)]
    return lines + ["| " + " | ".join(r[1:]) + " |" for r in rows(mine)]


def translated_page(shapes: dict[str, dict[str, Any]], head: str) -> str:
    """The ``translated`` scenario: shapes passing through and translating."""
    rows = [
        ("tokens/s", "tokens_per_s", "{:,.0f}"),
        ("proxy CPU per token, µs", "cpu_s_per_1k_tokens", "{:.0f}", 1000),
        ("TTFT p50, ms", "ttft_p50_ms", "{:.1f}"),
        ("TTFT p99, ms", "ttft_p99_ms", "{:.1f}"),
        ("gap p99, ms", "gap_p99_ms", "{:.1f}"),
    ]
    lines = [
        "# translated (an OpenAI chat client; the upstream OpenAI, or Anthropic translated)\n",
        head,
    ]
    for shape, ab in shapes.items():
        lines += [
            f"## {shape}\n",
            f"{ab['rounds']} rounds of {ab['requests_per_run']} requests, interleaved; medians.\n",
            "| same run | passing through | translated |", "|---|---|---|",
        ]  # fmt: skip
        for label, key, fmt, *scale in rows:
            k = scale[0] if scale else 1
            base, this = fmt.format(ab[key]["base"] * k), fmt.format(ab[key]["this"] * k)
            lines.append(f"| {label} | {base} | {this} |")
        lines += [
            "",
            f"Added by translation: {ab['cpu_us_per_token_added']:+.1f} µs of CPU per token, "
            f"{ab['ttft_p50_ms_added']:+.2f} ms of TTFT p50.\n",
        ]
    return "\n".join(lines)


def scenario_pages(results: dict[str, Any]) -> dict[str, str]:
    """One markdown page per scenario of the run (and the headline), by file name."""
    head = f"{results['machine']}\n\nCommand: `{results.get('command', 'python -m bench')}`\n"
    pages = {}
    for name, shape in results["scenarios"].items():
        lines = [f"# {name}\n", head, *_rows_md(results, name)]
        rig_figures = results.get("rig", {}).get(name)
        if rig_figures:
            direct = shape.get("direct")
            lines += ["", "What the rig can show: " + rig.describe(
                name, rig_figures, direct["tokens_per_s"] if direct else None)]  # fmt: skip
        if name == "throughput":
            lines += ["", f"Load client ceiling (direct): {results.get('client_ceiling')}"]
        pages[f"{name}.md"] = "\n".join(lines) + "\n"
    if results.get("sweep"):
        lines = ["# sweep (throughput shape)\n", head, "| target | C | tokens/s | TTFT p99 ms | failures |",
                 "|---|---|---|---|---|"]  # fmt: skip
        for target, points in results["sweep"].items():
            for c, r in sorted(points.items(), key=lambda kv: int(kv[0])):
                lines.append(
                    f"| {target} | {c} | {r['tokens_per_s']:,.0f} | {r['ttft_ms']['p99']:.1f} | {r['failures']} |"
                )
        pages["sweep.md"] = "\n".join(lines) + "\n"
    if results.get("sustained"):
        pages["sustained.md"] = (
            "\n".join(["# streams sustained\n", head, sustained.table(results["sustained"])]) + "\n"
        )
    if results.get("translated"):
        pages["translated.md"] = translated_page(results["translated"], head)
    lines = ["# headline\n", head, headline.table(results), "", "Targets:", ""]
    pages["headline.md"] = (
        "\n".join(lines + [f"- {t}" for t in headline.target_lines(results)]) + "\n"
    )
    return pages


def plots(results: dict[str, Any], out: Path) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    made = []
    for scenario, targets in results["scenarios"].items():
        if scenario == "idle":
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        for target, r in targets.items():
            xs = sorted(r.get("ttft_all_ms", []))
            if xs:
                ax.plot(xs, [(i + 1) / len(xs) for i in range(len(xs))], label=target)
        ax.set_xlabel("TTFT (ms)")
        ax.set_ylabel("fraction of requests")
        ax.set_title(f"TTFT CDF: {scenario}")
        ax.legend()
        ax.grid(alpha=0.3)
        path = out / f"{scenario}_ttft_cdf.png"
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        made.append(path.name)
    if results.get("sweep"):
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
        for target, points in results["sweep"].items():
            cs = sorted(points, key=int)
            a1.plot(
                [int(c) for c in cs],
                [points[c]["tokens_per_s"] for c in cs],
                marker="o",
                label=target,
            )
            a2.plot(
                [int(c) for c in cs],
                [points[c]["ttft_ms"]["p99"] for c in cs],
                marker="o",
                label=target,
            )
        for ax, label in ((a1, "tokens/s"), (a2, "TTFT p99 (ms)")):
            ax.set_xscale("log")
            ax.set_xlabel("concurrency")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
            ax.legend()
        fig.tight_layout()
        path = out / "sweep.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        made.append(path.name)
    return made


def write(results: dict[str, Any], out: Path) -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "latest.json").write_bytes(
        orjson.dumps(results, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)
    )
    made = ["latest.json"]
    for name, text in scenario_pages(results).items():
        (out / name).write_text(text)
        made.append(name)
    made += plots(results, out)
    if results.get("sustained") and sustained.plot(
        results["sustained"], str(out / "sustained.png")
    ):
        made.append("sustained.png")
    return made
