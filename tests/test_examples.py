"""The shipped examples work as documented."""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from trioproxy.config import load_config

pytestmark = pytest.mark.slow  # not in `make quick`

EXAMPLES = pathlib.Path(__file__).parent.parent / "examples"


def test_the_multi_provider_config_loads() -> None:
    config = load_config(EXAMPLES / "multi-provider.toml")
    specs = config.provider_specs
    assert [s.name for s in specs] == ["steady", "broken", "stalled"]
    assert config.eject_after == 2 and config.max_attempts == 3


def test_the_failover_demo_shows_failover_and_ejection_live() -> None:
    """Two mock upstreams broken in different ways (503s, a stall) behind a healthy one:
    every request succeeds, both broken providers get ejected (real processes)."""
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "failover_demo.py"), "--requests", "10"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "10/10 requests complete" in done.stdout
    assert "after broken (upstream_broken)" in done.stdout
    assert "stalled (upstream_ttft_timeout)" in done.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_multi_host_example_gives_each_host_its_own_data_dir() -> None:
    """examples/multi-host/run.sh: two hosts, one Redis; each host has its own
    signing key (its own data dir), and a key's limits hold across both."""
    assert shutil.which("redis-server"), "redis-server is needed (make redis-server installs it)"
    ports = [_free_port(), _free_port()]
    env = {
        **os.environ,
        "TRIOPROXY_DEMO_PORTS": " ".join(map(str, ports)),
        "TRIOPROXY_DEMO_REDIS_PORT": str(_free_port()),
    }
    proc = subprocess.Popen(
        ["bash", str(EXAMPLES / "multi-host" / "run.sh")],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        keys = [_wait_for_key(port) for port in ports]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    assert keys[0] != keys[1], "both hosts sign with one key: they share a data dir"


def _wait_for_key(port: int) -> bytes:
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/attestation/key") as answer:
                return bytes(answer.read())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
