"""The ``idle`` scenario: N open streams stalled by the upstream after their
first tokens; the proxy's RSS with them open, and per stream."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlsplit

import trio

from .loadgen import MARKERS, request_bytes
from .procs import Proc


async def _hold(url: str, model: str, n: int, opened: trio.Event, release: trio.Event) -> int:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    req = request_bytes("chat", model, f"{host}:{port}")
    ready = 0

    async def one() -> None:
        nonlocal ready
        try:
            stream = await trio.open_tcp_stream(host, port)
            async with stream:
                await stream.send_all(req)
                seen = b""
                while MARKERS["chat"] not in seen:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    seen += data
                ready += 1
                if ready == n:
                    opened.set()
                await release.wait()
        except (OSError, trio.BrokenResourceError):  # refused or reset: a failed stream
            return

    async with trio.open_nursery() as nursery:
        for _ in range(n):
            nursery.start_soon(one)
        with trio.move_on_after(60):
            await opened.wait()
        opened.set()
        # Give the proxy a moment to settle, then let the caller measure.
        await trio.sleep(1.0)
        release.set()
    return ready


def run_idle(proc: Proc | None, url: str, model: str, n: int) -> dict[str, Any]:
    base = proc.rss_bytes() if proc else 0
    peak = [base]

    async def main() -> int:
        opened, release = trio.Event(), trio.Event()
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                await opened.wait()
                await trio.sleep(0.8)
                if proc:
                    peak[0] = proc.rss_bytes()

            nursery.start_soon(watch)
            return await _hold(url, model, n, opened, release)

    started = time.monotonic()
    ready = trio.run(main)
    result: dict[str, Any] = {
        "streams": n,
        "streams_open": ready,
        "failures": n - ready,
        "elapsed_s": time.monotonic() - started,
    }
    if proc is not None:
        result["proxy_rss_mb"] = peak[0] / 2**20
        result["proxy_rss_baseline_mb"] = base / 2**20
        result["per_stream_kb"] = (peak[0] - base) / max(ready, 1) / 1024
    return result
