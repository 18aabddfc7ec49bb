"""``trioproxy chaos --routing``: the field's fault-tolerance scenarios, against any gateway.

Two ways to run it:
- Alone: a primary and a backup ``trioproxy mock-upstream`` (the backup with
  ``--backup``: healthy whatever the model name asks) and trioproxy configured
  as :data:`ROUTING_CONFIG` says (the backup one tier down, one retry on the
  primary, a context window fallback, continuation with prefill-capable
  backups, one of which refuses prefills), all child processes.
- ``--target URL --mock URL [--backup-mock URL]``: any OpenAI-compatible
  gateway whose primary upstream is the mock at ``--mock`` (and whose backup,
  if it has one, the mock at ``--backup-mock``). Model names carry the faults.

Each family of :mod:`.families` runs ``runs`` times, one request at a time
(OpenAI chat, streamed, usage asked for), and is judged pass / safe / fail;
then ``primary flapping``: the primary answers 500 for :data:`FLAP_S` seconds
from its first request, then recovers, while a client sends
:data:`FLAP_RATE` requests a second for ``FLAP_S + 12`` s. Pass: every request
got its complete answer and the primary served again within 10 s of its
recovery; safe: every request got its answer or a clean error; fail otherwise.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import h11
import trio

from ..rawclient import RawClient, request
from .campaign import _free_port, open_children
from .families import (
    FAIL,
    FAMILIES,
    PASS,
    SAFE,
    TOKENS,
    Family,
    Seen,
    clean_error,
    complete,
    verdict,
)

__all__ = ["ROUTING_CONFIG", "format_routing_report", "open_routing_gateway", "run_routing"]

FLAP_S = 6.0
FLAP_RATE = 4.0
RECOVERY_BOUND_S = 10.0
_T = f"t{TOKENS}-i2"

ROUTING_CONFIG = f"""\
access_log = false
data_dir = "{{data_dir}}"
ttft_timeout = 1.0
idle_timeout = 0.5
first_byte_deadline = 4.0
continue_on_cut = true
context_window_fallbacks = {{{{ "mock-error-openai_context-x900" = "mock-{_T}-x910" }}}}
fallbacks = {{{{ "mock-error-openai_content_policy-x901" = ["mock-{_T}-x911"] }}}}

[[providers]]
name = "primary"
base_url = "{{primary}}/v1"
models = ["mock-*"]
aliases = {{{{ "rejects-prefill" = "mock-drop12-{_T}" }}}}
retries = 1
retry_backoff = 0.05

[[providers]]
name = "refuses-prefill"
base_url = "{{backup}}/v1"
priority = 1
models = []
aliases = {{{{ "rejects-prefill" = "mock-noprefill1-{_T}" }}}}
accepts_prefill = true

[[providers]]
name = "backup"
base_url = "{{backup}}/v1"
priority = 1
models = ["mock-*"]
aliases = {{{{ "rejects-prefill" = "mock-{_T}" }}}}
accepts_prefill = true
"""


@asynccontextmanager
async def open_routing_gateway() -> AsyncIterator[tuple[str, str, str]]:
    """(gateway, primary mock, backup mock) URLs, as child processes."""
    python = [sys.executable, "-m", "trioproxy"]
    ports = [_free_port() for _ in range(3)]
    primary, backup, gateway = (f"http://127.0.0.1:{p}" for p in ports)
    data_dir = tempfile.mkdtemp(prefix="trioproxy-routing-")
    with tempfile.NamedTemporaryFile("w", suffix=".toml", dir=data_dir, delete=False) as f:
        f.write(ROUTING_CONFIG.format(data_dir=data_dir, primary=primary, backup=backup))
    config = f.name
    commands = [
        [*python, "mock-upstream", "--bind", f"127.0.0.1:{ports[0]}"],
        [*python, "mock-upstream", "--backup", "--bind", f"127.0.0.1:{ports[1]}"],
        [*python, "serve", "--config", config, "--bind", f"127.0.0.1:{ports[2]}"],
    ]
    ready = [(primary, "/mock/stats"), (backup, "/mock/stats"), (gateway, "/readyz")]
    try:
        async with open_children(commands, ready, quiet=True):
            yield gateway, primary, backup
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


async def _started(mock: str | None) -> list[tuple[str, float]]:
    if mock is None:
        return []
    return [(str(m), float(at)) for m, at in (await request(mock, "GET", "/mock/started")).json()]


async def _ask(gateway: str, model: str, bound: float) -> Seen:
    body = {
        "model": model, "stream": True, "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "hi"}], "max_tokens": 64,
    }  # fmt: skip
    seen = Seen()
    client = await RawClient.connect(gateway)
    try:
        await client.send_request("POST", "/v1/chat/completions", body)
        with trio.move_on_after(bound) as scope:
            try:
                seen.status, seen.headers = await client.response_head()
                async for _, data in client.body_chunks():
                    seen.body += data
            except (h11.RemoteProtocolError, trio.BrokenResourceError, OSError):
                seen.cut = True
        seen.hung = scope.cancelled_caught
    finally:
        await client.close()
    return seen


async def _run_family(
    family: Family, n: int, gateway: str, mocks: tuple[str, str | None], own: bool, bound: float
) -> str:
    model = family.fixed_model if own and family.fixed_model else f"mock-{family.fault}-x{n}"
    before = [len(await _started(m)) for m in mocks]
    seen = await _ask(gateway, model, bound)
    await trio.sleep(0.05)  # let the mocks note streams a late attempt began
    after = [await _started(m) for m in mocks]
    new = [entries[count:] for entries, count in zip(after, before, strict=True)]
    seen.primary_streams = len(new[0])
    seen.backup_streams = len(new[1])
    if family.name.startswith("content-filter"):  # no other model asked, anywhere
        seen.backup_streams += seen.primary_streams
    return family.judge(seen)


async def _flapping(gateway: str, primary: str, n: int, bound: float) -> tuple[str, str]:
    model = f"mock-flap{FLAP_S:g}-t5-i2-x{n}"
    began = time.monotonic()
    answers: list[Seen] = []
    while time.monotonic() - began < FLAP_S + 12:
        answers.append(await _ask(gateway, model, bound))
        await trio.sleep(max(0.0, len(answers) / FLAP_RATE - (time.monotonic() - began)))
    recovered = began + FLAP_S
    served = [at for name, at in await _started(primary) if name == model and at >= recovered]
    back = served[0] - recovered if served else None
    detail = (
        f"primary back {back:.1f} s after recovering" if back is not None else "primary never back"
    )
    if all(complete(a, 5) for a in answers):
        return (PASS if back is not None and back <= RECOVERY_BOUND_S else SAFE), detail
    return (SAFE if all(complete(a, 5) or clean_error(a) for a in answers) else FAIL), detail


async def run_routing(
    gateway: str | None,
    primary: str | None,
    backup: str | None,
    runs: int = 3,
    bound: float = 15.0,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The campaign (alone when ``gateway`` is None); the report as a dict."""
    if gateway is None:
        async with open_routing_gateway() as (url, first, second):
            return await _campaign(url, first, second, True, runs, bound, progress)
    assert primary is not None
    return await _campaign(gateway, primary, backup, False, runs, bound, progress)


async def _campaign(
    gateway: str, primary: str, backup: str | None, own: bool, runs: int, bound: float,
    progress: Callable[[str], None] | None,
) -> dict[str, Any]:  # fmt: skip
    rows = []
    for i, family in enumerate(FAMILIES):
        results = [
            await _run_family(family, 1000 * i + n, gateway, (primary, backup), own, bound)
            for n in range(runs)
        ]
        rows.append({"family": family.name, "fault": family.fault, "correct": family.correct,
                     "results": results, "verdict": verdict(results)})  # fmt: skip
        if progress is not None:
            progress(f"{family.name}: {verdict(results)}")
    flap, detail = await _flapping(gateway, primary, 99_000, bound)
    rows.append({"family": "primary flapping", "fault": f"flap{FLAP_S:g} (500s, then well)",
                 "correct": f"serves every request; the primary again within "
                 f"{RECOVERY_BOUND_S:g} s of recovering", "results": [flap], "verdict": flap,
                 "detail": detail})  # fmt: skip
    counts = {v: sum(r["verdict"] == v for r in rows) for v in (PASS, SAFE, FAIL)}
    return {"target": "trioproxy" if own else gateway, "runs": runs, "rows": rows, **counts}


def format_routing_report(report: dict[str, Any]) -> str:
    lines = [
        f"routing campaign against {report['target']}: {report[PASS]} pass, {report[SAFE]} safe, "
        f"{report[FAIL]} fail ({report['runs']} runs a family)",
        "",
        "| family | fault on the primary | a correct gateway | runs (pass/safe/fail) | verdict |",
        "|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        tally = "/".join(str(row["results"].count(v)) for v in (PASS, SAFE, FAIL))
        note = f" ({row['detail']})" if row.get("detail") else ""
        lines.append(
            f"| {row['family']} | `{row['fault']}` | {row['correct']} | {tally} | "
            f"**{row['verdict']}**{note} |"
        )
    return "\n".join(lines)
