"""How the tests, ``chaos --redis`` and the benchmarks start a ``redis-server``.

One command line for all of them: loopback only, no RDB snapshots, and with
``durable`` an append-only file synced on every write (what a deployment that
keeps receipts in Redis runs), so that what Redis acknowledged survives a
SIGKILL and a restart.
"""

from __future__ import annotations

import shutil

__all__ = ["redis_command"]


def redis_command(port: int, directory: str, durable: bool = True) -> list[str]:
    """The argv of a ``redis-server`` on ``127.0.0.1:port`` keeping its files in
    ``directory``. Raises ``RuntimeError`` when ``redis-server`` is not installed."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", directory]
    if durable:
        argv += ["--appendonly", "yes", "--appendfsync", "always"]
    return argv
