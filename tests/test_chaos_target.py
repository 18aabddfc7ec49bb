"""``trioproxy chaos --target``: the same campaign against any gateway, judged from outside."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from tests.conftest import running, within
from trioproxy.testing.mock_scripts import Fault
from trioproxy.testing.mock_upstream import MockUpstream, serve_mock
from trioproxy.testing.naive_relay import READ_TIMEOUT, serve_naive_relay

pytestmark = pytest.mark.slow  # not in `make quick`: campaigns

RUNS, SEED = 80, 20261124


@asynccontextmanager
async def _mock() -> AsyncIterator[MockUpstream]:
    async with trio.open_nursery() as nursery:
        yield await nursery.start(serve_mock, "127.0.0.1", 0, Fault())
        nursery.cancel_scope.cancel()


async def _cli(*args: str) -> tuple[int, str]:
    done = await trio.run_process(
        [sys.executable, "-m", "trioproxy", "chaos", *args],
        capture_stdout=True, capture_stderr=True, check=False,
    )  # fmt: skip
    return done.returncode, done.stdout.decode()


async def test_trioproxy_as_a_target_holds_every_invariant() -> None:
    async with _mock() as mock:
        overrides = {
            "openai_upstreams": (mock.base_url + "/v1",),
            "anthropic_upstreams": (mock.base_url,),
            "idle_timeout": 0.5,
            "ttft_timeout": 1.5,
            "client_stall_timeout": 1.0,
        }
        async with running(**overrides) as (gw, _):
            code, text = await _cli(
                "--target", gw.url, "--mock", mock.base_url, "--runs", str(RUNS),
                "--seed", str(SEED), "--target-timeouts", "0.5,1.5,1.0,5",
                "--cancel-p99-ms", str(within(100.0)),
            )  # fmt: skip
    assert code == 0, text
    assert "| upstream_closed_after_hangup | PASS |" in text and "ALL INVARIANTS HOLD" in text
    assert "| cancel_latency_p99 | PASS |" in text
    assert "client hang-up -> upstream connection closed, ms: n 0" not in text  # timed some


# The naive relay abandons httpx/httpcore body generators when a client hangs up (that is
# the fault this campaign finds); the garbage collector finalizing them during this test
# must not fail it.
@pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <async_generator object:pytest.PytestUnraisableExceptionWarning"
)
async def test_a_relay_that_reads_on_after_a_hang_up_fails_the_open_upstream_invariant() -> None:
    async with _mock() as mock, trio.open_nursery() as nursery:
        relay = await nursery.start(serve_naive_relay, mock.base_url)
        timeouts = f"{READ_TIMEOUT},{READ_TIMEOUT},{READ_TIMEOUT},3"
        code, text = await _cli(
            "--target", relay, "--mock", mock.base_url, "--runs", str(RUNS),
            "--seed", str(SEED), "--target-timeouts", timeouts,
        )  # fmt: skip
        nursery.cancel_scope.cancel()
    assert code == 1, text
    assert "| upstream_closed_after_hangup | FAIL |" in text and "INVARIANTS FAILED" in text
    # It closes an abandoned upstream only at its read timeout or the stream's end.
    assert "| cancel_latency_p99 | FAIL |" in text


def test_target_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    from trioproxy.cli import main

    assert main(["chaos", "--target", "http://127.0.0.1:9"]) == 2  # no --mock
    assert "--target and --mock go together" in capsys.readouterr().err
    args = ["chaos", "--target", "http://127.0.0.1:9", "--mock", "http://127.0.0.1:9"]
    assert main([*args, "--target-timeouts", "soon"]) == 2
    assert "IDLE,TTFT,STALL[,HANG]" in capsys.readouterr().err
    assert main([*args, "--runs", "1"]) == 2  # nothing listens there: one line
    assert "trioproxy chaos: cannot reach http://127.0.0.1:9" in capsys.readouterr().err
