"""``trioproxy chaos --redis``: the campaign with a Redis that dies at random.

The local gateway keeps its receipts and usage in a ``redis-server`` started
here (an append-only file synced on every write, as a deployment that keeps
receipts in Redis runs it). While the runs go on, Redis is killed (SIGKILL) at
seeded random moments and restarted a moment later. Two more invariants:

- ``no_run_failed_for_redis``: no record's error mentions Redis (a Redis
  outage must cost no request);
- ``receipts_survive_redis_outages``: once Redis is back, every receipt the
  gateway announced is readable from Redis (spooled ones copied back).
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import tempfile
from typing import Any

import trio

from ..rawclient import request
from ..redis_server import redis_command
from .report import Invariant

__all__ = ["ChaosRedis", "check_redis_invariants"]


class ChaosRedis:
    def __init__(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.dir = tempfile.mkdtemp(prefix="trioproxy-chaos-redis-")
        self.argv = redis_command(self.port, self.dir)
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: trio.Process | None = None
        self.kills = 0

    async def start(self) -> None:
        self.proc = await trio.lowlevel.open_process(self.argv, stdout=subprocess.DEVNULL)
        with trio.fail_after(10):
            while True:
                try:
                    stream = await trio.open_tcp_stream("127.0.0.1", self.port)
                    await stream.aclose()
                    return
                except OSError:
                    await trio.sleep(0.02)

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
            self.kills += 1

    async def kill_at_random(self, seed: int, done: trio.Event) -> None:
        """Until ``done``: up 0.3-1.5 s, then killed, down 0.2-1.0 s, restarted."""
        rng = random.Random(seed ^ 0x5EED)
        while not done.is_set():
            with trio.move_on_after(rng.uniform(0.3, 1.5)):
                await done.wait()
            if done.is_set():
                break
            await self.kill()
            await trio.sleep(rng.uniform(0.2, 1.0))
            await self.start()

    async def aclose(self) -> None:
        await self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


async def check_redis_invariants(
    url: str, records: list[dict[str, Any]], redis: ChaosRedis, wait: float = 30.0
) -> list[Invariant]:
    failed = [r for r in records if "redis" in (r.get("error") or "").lower()]
    ids = [r["receipt_id"] for r in records if r.get("receipt_id")]
    missing = list(ids)
    with trio.move_on_after(wait):
        while missing:
            missing = [rid for rid in missing if not await _readable(url, rid)]
            if missing:
                await trio.sleep(0.25)
    return [
        Invariant(
            "no_run_failed_for_redis", not failed,
            f"{len(failed)} of {len(records)} records failed for Redis "
            f"({redis.kills} Redis kills)",
        ),
        Invariant(
            "receipts_survive_redis_outages", not missing,
            f"{len(ids) - len(missing)} of {len(ids)} receipts readable after Redis returned",
        ),
    ]  # fmt: skip


async def _readable(url: str, receipt_id: str) -> bool:
    return (await request(url, "GET", f"/v1/signature/{receipt_id}")).status == 200
