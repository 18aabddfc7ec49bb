"""Running a chaos campaign: processes, concurrency, settling, collecting.

Resource handling: in local mode the mock upstream and the gateway are child
processes (``python -m trioproxy ...``) owned by :func:`open_local_gateway`;
they are terminated (SIGTERM, then SIGKILL after 10 s) when the block exits.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict
from typing import Any

import orjson
import trio

from ..rawclient import request
from .latency import P99_BOUND_MS
from .plan import TRANSLATE_TAGS, Limits, RunResult, execute_all, plan, poll_peer_closed
from .redis_chaos import ChaosRedis, check_redis_invariants
from .report import Observed, build_report

__all__ = ["open_local_gateway", "run_campaign"]

LOCAL_CONFIG = """
debug_endpoints = true
access_log = false
ttft_timeout = 1.0
idle_timeout = 1.0
client_stall_timeout = 0.5
channel_size = 4
max_streams = 2048
graceful_timeout = 5.0
data_dir = "{data_dir}"
"""
# One provider of each kind per --providers, all on the one mock. With one each,
# faults eject it and the pool runs in panic; with more, ejection is off so that
# every failure before the first byte fails over (hang-ups land mid-failover too).
PROVIDER_TABLES = """
[[providers]]
name = "openai-{i}"
base_url = "{mock}/v1"
[[providers]]
name = "anthropic-{i}"
kind = "anthropic"
base_url = "{mock}"
"""
# --translate: each kind serves the other route's tagged model names only.
TRANSLATED_MODELS = {
    "openai": 'models = ["*-' + TRANSLATE_TAGS["messages"] + '-x*"]\n',
    "anthropic": 'models = ["*-' + TRANSLATE_TAGS["chat"] + '-x*"]\n',
}


class CampaignError(Exception):
    """The campaign cannot run against this gateway; the message says what to do."""


async def _get(url: str, path: str) -> Any:
    response = await request(url, "GET", path)
    if response.status == 404 and path.startswith("/debug/"):
        raise CampaignError(
            f"{url} has no debug endpoints: start it with debug_endpoints = true in its config"
        )
    if response.status in (401, 403) and path.startswith("/debug/"):
        raise CampaignError(f"{url} has API keys: its /debug pages need an admin key")
    if response.status != 200:
        raise CampaignError(f"GET {url}{path} answered {response.status}: {response.body[:200]!r}")
    return response.json()


async def _records(url: str) -> list[dict[str, Any]]:
    """Every record the gateway kept, page by page (GET /debug/records is paginated)."""
    records: list[dict[str, Any]] = []
    offset: int | None = 0
    while offset is not None:
        page = await _get(url, f"/debug/records?offset={offset}&limit=1000")
        records += page["records"]
        offset = page["next"]
    return records


async def _wait_ready(url: str, path: str, proc: trio.Process) -> None:
    with trio.fail_after(30):
        while True:
            if proc.returncode is not None:
                raise RuntimeError(f"{proc.args!r} exited with {proc.returncode} before ready")
            try:
                if (await request(url, "GET", path)).status == 200:
                    return
            except OSError:
                pass
            await trio.sleep(0.05)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def open_local_gateway(
    providers: int = 1, redis_url: str = "", drain: float = 0.0, translate: bool = False
) -> AsyncIterator[str]:
    """A mock upstream and a gateway (debug endpoints on) as child processes,
    with ``providers`` providers of each kind (and its state in ``redis_url``);
    ``drain``: the providers drain after a hang-up, for at most that many seconds;
    ``translate``: each route reaches only providers of the other kind."""
    python = [sys.executable, "-m", "trioproxy"]
    mock_port, gw_port = _free_port(), _free_port()
    mock_url = f"http://127.0.0.1:{mock_port}"
    gw_url = f"http://127.0.0.1:{gw_port}"
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        data_dir = tempfile.mkdtemp(prefix="trioproxy-chaos-")
        f.write(LOCAL_CONFIG.format(data_dir=data_dir))
        if providers > 1:
            f.write("eject_after = 0\n")
        if redis_url:
            f.write(f'redis_url = "{redis_url}"\nreceipt_store = "redis"\n')
        tables = PROVIDER_TABLES
        if drain:
            policy = f'on_client_disconnect = "drain"\ndrain_max_seconds = {drain}\n'
            tables = tables.replace('base_url = "{mock}/v1"\n', 'base_url = "{mock}/v1"\n' + policy)
            tables = tables.replace('base_url = "{mock}"\n', 'base_url = "{mock}"\n' + policy)
        if translate:
            for kind, models in TRANSLATED_MODELS.items():
                line = 'base_url = "{mock}/v1"\n' if kind == "openai" else 'base_url = "{mock}"\n'
                tables = tables.replace(line, line + models)
        for i in range(providers):
            f.write(tables.format(mock=mock_url, i=i))
    try:
        mock_cmd = [*python, "mock-upstream", "--bind", f"127.0.0.1:{mock_port}"]
        gw_cmd = [*python, "serve", "--config", f.name, "--bind", f"127.0.0.1:{gw_port}"]
        ready = [(mock_url, "/mock/stats"), (gw_url, "/readyz")]
        async with open_children([mock_cmd, gw_cmd], ready):
            yield gw_url
    finally:
        os.unlink(f.name)
        shutil.rmtree(data_dir, ignore_errors=True)


@asynccontextmanager
async def open_children(
    commands: list[list[str]], ready: list[tuple[str, str]], quiet: bool = False
) -> AsyncIterator[list[trio.Process]]:
    """Child processes, each started once the one before answers (url, path)
    with a 200; terminated at the end (killed past 10 s). ``quiet``: their
    stderr too is discarded."""
    procs: list[trio.Process] = []
    stderr = subprocess.DEVNULL if quiet else None
    try:
        for cmd, (url, path) in zip(commands, ready, strict=True):
            proc = await trio.lowlevel.open_process(cmd, stdout=subprocess.DEVNULL, stderr=stderr)
            procs.append(proc)
            await _wait_ready(url, path, proc)
        yield procs
    finally:
        for proc in reversed(procs):
            proc.terminate()
        with trio.move_on_after(10, shield=True):
            for proc in procs:
                await proc.wait()
        for proc in procs:
            if proc.returncode is None:
                proc.kill()


async def _settle(url: str) -> dict[str, Any]:
    """The gateway's state once nothing is in flight (or after 20 s)."""
    with trio.move_on_after(20):
        while True:
            state: dict[str, Any] = await _get(url, "/debug/state")
            detached, drains = state["detached"] or {}, state.get("drains") or {}
            if (
                state["active_requests"] == 0
                and not detached.get("pending")
                and not drains.get("pending")
            ):
                # Let Hypercorn's connection tasks of closed clients end.
                await trio.sleep(0.2)
                return dict(await _get(url, "/debug/state"))
            await trio.sleep(0.05)
    return dict(await _get(url, "/debug/state"))


async def run_campaign(
    gateway: str | None,
    runs: int,
    concurrency: int,
    seed: int,
    progress: Any = None,
    providers: int = 1,
    redis: bool = False,
    drain: float = 0.0,
    cancel_p99_ms: float = P99_BOUND_MS,
    translate: bool = False,
) -> dict[str, Any]:
    """``redis``: the local gateway keeps its state in a Redis killed at random
    (:mod:`.redis_chaos`); ``drain``: its providers drain after a hang-up
    (``on_client_disconnect = "drain"``, ``drain_max_seconds = drain``);
    ``translate``: every request crosses dialects (chat to an Anthropic
    provider, messages to an OpenAI-compatible one)."""
    if gateway is None and redis:
        chaos_redis = ChaosRedis()
        await chaos_redis.start()
        try:
            async with open_local_gateway(providers, chaos_redis.url, drain, translate) as url:
                return await _campaign(
                    url, runs, concurrency, seed, progress, chaos_redis, drain, cancel_p99_ms,
                    translate,
                )  # fmt: skip
        finally:
            await chaos_redis.aclose()
    if gateway is None:
        async with open_local_gateway(providers, drain=drain, translate=translate) as url:
            return await _campaign(
                url, runs, concurrency, seed, progress, None, drain, cancel_p99_ms, translate
            )
    return await _campaign(
        gateway.rstrip("/"), runs, concurrency, seed, progress, None, 0.0, cancel_p99_ms,
        translate,
    )  # fmt: skip


async def _campaign(
    url: str,
    runs: int,
    concurrency: int,
    seed: int,
    progress: Any,
    redis: ChaosRedis | None = None,
    drain: float = 0.0,
    cancel_p99_ms: float = P99_BOUND_MS,
    translate: bool = False,
) -> dict[str, Any]:
    state = await _get(url, "/debug/state")
    cfg = state["config"]
    per_kind = max(len(urls) for urls in state["upstreams"].values())
    limits = Limits(
        cfg["ttft_timeout"],
        cfg["idle_timeout"],
        cfg["client_stall_timeout"],
        min(cfg["max_attempts"], per_kind),
    )
    mock_url = state["upstreams"]["anthropic"][0] if state["upstreams"]["anthropic"] else None
    if mock_url is None:
        mock_url = state["upstreams"]["openai"][0].removesuffix("/v1")
    await _get(mock_url, "/mock/stats")  # the upstream must be a trioproxy mock

    peer_closed = poll_peer_closed(_get, mock_url)

    # Warm up (pool connections, imports), then take the baseline.
    async with trio.open_nursery() as nursery:
        for i in range(min(concurrency, 16)):
            tag = f"-{TRANSLATE_TAGS['chat']}" if translate else ""
            body = {"model": f"mock-t2-i0{tag}-x{10**9 + i}", "messages": [], "stream": True}
            nursery.start_soon(request, url, "POST", "/v1/chat/completions", body)
    baseline = await _settle(url)

    planned = plan(runs, seed, limits, translate=translate)
    started = time.monotonic()
    counted: list[RunResult] = []

    def done(result: RunResult) -> None:
        counted.append(result)
        if progress is not None:
            progress(len(counted), len(planned), int(result.client_error is not None))

    finished = trio.Event()
    async with trio.open_nursery() as nursery:
        if redis is not None:
            nursery.start_soon(redis.kill_at_random, seed, finished, name="redis-killer")
        results = await execute_all(planned, url, limits, peer_closed, concurrency, done)
        finished.set()
    duration = time.monotonic() - started
    if redis is not None and (redis.proc is None or redis.proc.returncode is not None):
        await redis.start()
    final = await _settle(url)
    observed = Observed(
        baseline=baseline,
        final=final,
        records=await _records(url),
        mock_stats=dict(await _get(mock_url, "/mock/stats")),
        peer_closes=list(await _get(mock_url, "/mock/peer-closes")),
        faults=[tuple(f) for f in await _get(mock_url, "/mock/faults")],
    )
    report = build_report(
        seed, planned, results, observed, duration, concurrency, drain, cancel_p99_ms
    )
    if redis is not None:
        extra = await check_redis_invariants(url, observed.records, redis)
        report["invariants"] += [asdict(i) for i in extra]
        report["passed"] = report["passed"] and all(i.ok for i in extra)
    return report


def write_report(report: dict[str, Any], path: str) -> None:
    with open(path, "wb") as f:
        f.write(orjson.dumps(report, option=orjson.OPT_INDENT_2))
