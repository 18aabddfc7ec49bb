"""The shipped examples work as documented."""

from __future__ import annotations

import pathlib
import subprocess
import sys

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
