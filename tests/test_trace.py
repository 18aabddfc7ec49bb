"""Every request's life as a timeline: /debug/trace/{id} and `trioproxy trace`."""

from __future__ import annotations

import sys
from contextlib import aclosing

import pytest
import trio

from tests.conftest import chat, eventually, open_mocks, provider, running
from trioproxy.testing.mock_scripts import Fault
from trioproxy.testing.rawclient import RawClient, request


def _events(trace: dict[str, object]) -> list[str]:
    return [event for event, _ in trace["timeline"]]  # type: ignore[attr-defined]


async def _trace(url: str, rid: str) -> dict[str, object]:
    response = await request(url, "GET", f"/debug/trace/{rid}")
    assert response.status == 200, response.body
    return dict(response.json())


async def test_a_streamed_request_has_every_moment_in_order() -> None:
    async with running(debug_endpoints=True) as (gw, recorder):
        done = await request(
            gw.url, "POST", "/v1/chat/completions", chat("mock-t3-i0"), [("x-request-id", "r-1")]
        )
        assert done.status == 200
        await recorder.wait_for(1)
        assert gw.app.receipts is not None
        await eventually(lambda: "r-1" in gw.app.receipts.stored_at)  # signed after the stream
        trace = await _trace(gw.url, "r-1")
    events = _events(trace)
    assert events.pop() == "receipt_stored"
    assert events[:4] == ["received", "body_read", "admitted", events[3]]
    assert events[3].startswith("attempt ")
    assert events.index("request_written") < events.index("response_head")
    assert events.index("response_head") < events.index("first_event") < events.index("committed")
    assert events.index("committed") < events.index("upstream_closed")
    assert events.index("upstream_closed") < events.index("slots_released")
    assert events[-1] == "outcome done"  # the writer settles after its last send
    assert {"connect_start", "reused"} & set(events)
    times = [ms for _, ms in trace["timeline"]]  # type: ignore[attr-defined]
    assert times == sorted(times) and times[0] == 0.0 and trace["live"] is False


async def test_a_cancelled_request_shows_the_hang_up_then_the_upstream_closing() -> None:
    async with running(debug_endpoints=True) as (gw, recorder):
        client = await RawClient.connect(gw.url)
        await client.send_request(
            "POST", "/v1/chat/completions", chat("mock-t500-i10"), [("x-request-id", "r-2")]
        )
        await client.response_head()
        async with aclosing(client.body_chunks()) as chunks:
            await chunks.__anext__()
        live = await _trace(gw.url, "r-2")
        assert live["live"] is True and "committed" in _events(live)
        await client.close()
        await recorder.wait_for(1)
        events = _events(await _trace(gw.url, "r-2"))
    hangup = events.index("client_hangup")
    assert hangup < events.index("outcome client_disconnect") <= events.index("upstream_closed")


async def test_a_failover_is_a_moment_between_two_attempts() -> None:
    async with open_mocks(Fault(error_status=500), Fault(tokens=2)) as (sick, well):
        providers = (provider("sick", sick), provider("well", well))
        async with running(providers=providers, debug_endpoints=True) as (gw, recorder):
            for rid in ("r-3", "r-4"):  # round robin: one of the two starts at "sick"
                await request(gw.url, "POST", "/v1/chat/completions", chat("m"),
                              [("x-request-id", rid)])  # fmt: skip
            await recorder.wait_for(2)
            traces = [_events(await _trace(gw.url, rid)) for rid in ("r-3", "r-4")]
    failed_over = next(t for t in traces if "attempt sick" in t and "attempt well" in t)
    assert (
        failed_over.index("attempt sick")
        < failed_over.index("failover upstream_broken")
        < failed_over.index("attempt well")
    )


@pytest.mark.slow  # a subprocess
async def test_trioproxy_trace_prints_the_timeline_with_deltas() -> None:
    async with running(debug_endpoints=True) as (gw, recorder):
        await request(gw.url, "POST", "/v1/chat/completions", chat("mock-t2-i0"),
                      [("x-request-id", "r-5")])  # fmt: skip
        await recorder.wait_for(1)
        done = await trio.run_process(
            [sys.executable, "-m", "trioproxy", "trace", "r-5", "--gateway", gw.url],
            capture_stdout=True, capture_stderr=True, check=False,
        )  # fmt: skip
        missing = await trio.run_process(
            [sys.executable, "-m", "trioproxy", "trace", "nope", "--gateway", gw.url],
            capture_stdout=True, capture_stderr=True, check=False,
        )  # fmt: skip
    out = done.stdout.decode().splitlines()
    assert done.returncode == 0 and out[0] == "request r-5 (outcome done)"
    assert out[1].split() == ["ms", "+ms", "event"]
    assert out[2].split() == ["0.000", "+0.000", "received"]
    assert any(line.endswith("outcome done") for line in out)
    assert missing.returncode == 1
    assert missing.stderr.decode().startswith("trioproxy trace: 404: unknown request id")
