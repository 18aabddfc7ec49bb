"""Same-provider retries: what is retried, after what wait, within what deadline.

Over loopback with mock upstreams; the waits run on the gateway's movable clock
(``MovableClock.sleep`` notes each wait and passes it at once), so Retry-After
and backoff are asserted exactly, with no sleep in the test.
"""

from __future__ import annotations

from typing import Any

from tests.conftest import (
    MovableClock,
    chat,
    events_of,
    eventually,
    open_mocks,
    provider,
    running,
    signed_receipt,
)
from trioproxy.errors import (
    UpstreamRateLimited,
    UpstreamServerError,
    UpstreamTTFTTimeout,
    UpstreamUnreachable,
)
from trioproxy.routing.providers import ProviderSpec
from trioproxy.routing.retries import retry_wait
from trioproxy.testing.mock_scripts import Fault
from trioproxy.testing.rawclient import RawClient, request

HEALTHY = "mock-t3-i0"


def _spec(**extra: Any) -> ProviderSpec:
    return ProviderSpec(name="p", kind="openai", base_url="http://p/v1", **extra)


def test_the_wait_is_retry_after_when_given_else_full_jitter_doubling() -> None:
    spec = _spec(retries=3, retry_backoff=0.25, max_retry_wait=10.0)
    high, low = (lambda: 0.999), (lambda: 0.0)
    broken = UpstreamServerError("HTTP 500", 500)
    assert [retry_wait(spec, n, broken, 60, high) for n in range(3)] == [
        0.999 * 0.25,
        0.999 * 0.5,
        0.999 * 1.0,
    ]
    assert retry_wait(spec, 0, broken, 60, low) == 0.0  # full jitter: from zero
    assert retry_wait(spec, 3, broken, 60, high) is None  # retries spent
    assert retry_wait(spec, 0, UpstreamRateLimited("429", 7), 60, high) == 7.0
    assert retry_wait(spec, 0, UpstreamServerError("503", 503, 4), 60, high) == 4.0
    assert retry_wait(spec, 0, UpstreamRateLimited("429", 11), 60, high) is None  # > max wait
    assert retry_wait(spec, 0, UpstreamRateLimited("429", 7), 6.5, high) is None  # past deadline
    assert retry_wait(spec, 0, UpstreamUnreachable("refused"), 60, high) is not None
    assert retry_wait(spec, 0, UpstreamTTFTTimeout("slow"), 60, high) is None  # may be billed
    assert retry_wait(_spec(), 0, broken, 60, high) is None  # retries = 0: the default


async def test_a_500_once_is_retried_on_the_same_provider_after_a_jittered_wait() -> None:
    clock = MovableClock()
    async with open_mocks(Fault()) as (mock,):
        only = provider("a", mock, retries=2, aliases={"m": "mock-e500-n1-t3-x1"})
        async with running(clock, providers=(only,), debug_endpoints=True) as (gw, recorder):
            response = await request(gw.url, "POST", "/v1/chat/completions", chat("m"))
            assert response.status == 200 and events_of(response.body)[-1] == b"data: [DONE]"
            assert mock.statistics().requests_total == 2
            (record,) = await recorder.wait_for(1)
            assert record.attempts == 2 and record.provider == "a"
            assert record.failovers == (("a", "upstream_broken"),)
            (wait,) = clock.slept
            assert 0 <= wait < 0.25  # retry_backoff x 2^0, full jitter
            marks = [event for event, _ in record.timeline]
            assert marks.count("attempt a") == 2
            assert any(m.startswith("retry a in ") for m in marks)
            ref = response.headers[b"x-trioproxy-receipt-id"].decode()
            receipt = (await signed_receipt(gw.url, ref))["receipt"]
            assert receipt["attempts"] == 2
            assert receipt["failed_attempts"] == [["a", "upstream_broken"]]


async def test_a_429_waits_exactly_its_retry_after_then_succeeds_there() -> None:
    clock = MovableClock()
    async with open_mocks(Fault()) as (mock,):
        only = provider("a", mock, retries=1, aliases={"m": "mock-e429-n1-ra3-t3-x2"})
        async with running(clock, providers=(only,)) as (gw, recorder):
            response = await request(gw.url, "POST", "/v1/chat/completions", chat("m", False))
            assert response.status == 200 and response.json()["object"] == "chat.completion"
            assert clock.slept == [3.0]
            (record,) = await recorder.wait_for(1)
            assert record.failovers == (("a", "upstream_rate_limited"),)


async def test_a_retry_after_past_max_retry_wait_moves_on_at_once() -> None:
    clock = MovableClock()
    async with open_mocks(Fault()) as (mock,):
        providers = (
            provider("a", mock, retries=3, max_retry_wait=10, aliases={"m": "mock-e429-ra30"}),
            provider("b", mock, priority=1, aliases={"m": HEALTHY}),
        )
        async with running(clock, providers=providers) as (gw, recorder):
            response = await request(gw.url, "POST", "/v1/chat/completions", chat("m"))
            assert response.status == 200
            assert clock.slept == []  # no 30 s wait: b at once
            (record,) = await recorder.wait_for(1)
            assert record.provider == "b" and record.attempts == 2
        alone = (provider("a", mock, retries=3, aliases={"m": "mock-e429-ra30"}),)
        async with running(clock, providers=alone) as (gw, _):
            limited = await request(gw.url, "POST", "/v1/chat/completions", chat("m"))
            assert limited.status == 429 and limited.headers[b"retry-after"] == b"30"
            assert limited.json()["error"]["type"] == "rate_limit_error"


async def test_a_ttft_timeout_is_never_retried_on_the_provider_that_may_be_generating() -> None:
    async with open_mocks(Fault()) as (mock,):
        providers = (
            provider("a", mock, retries=3, aliases={"m": "mock-f5000-x3"}),
            provider("b", mock, priority=1, aliases={"m": HEALTHY}),
        )
        async with running(providers=providers, ttft_timeout=0.3) as (gw, recorder):
            response = await request(gw.url, "POST", "/v1/chat/completions", chat("m"))
            assert response.status == 200
            (record,) = await recorder.wait_for(1)
            assert record.failovers == (("a", "upstream_ttft_timeout"),)
            assert record.provider == "b" and record.attempts == 2


async def test_first_byte_deadline_bounds_every_retry_and_wait() -> None:
    clock = MovableClock()
    async with open_mocks(Fault()) as (mock,):
        only = provider("a", mock, retries=10, aliases={"m": "mock-e503-ra1"})
        overrides = {"providers": (only,), "first_byte_deadline": 2.5, "eject_after": 0}
        async with running(clock, **overrides) as (gw, recorder):
            response = await request(gw.url, "POST", "/v1/chat/completions", chat("m"))
            assert response.status == 502 and "HTTP 503" in response.json()["error"]["message"]
            # waits of 1 s (the 503's Retry-After): at 0 s and 1 s; a third would end past 2.5 s
            assert clock.slept == [1.0, 1.0]
            (record,) = await recorder.wait_for(1)
            assert record.attempts == 3 and mock.statistics().requests_total == 3


async def test_a_hang_up_during_a_retry_wait_ends_the_request_and_asks_no_more() -> None:
    """The attack a retry invites: a client that leaves must not leave a retry behind."""
    async with open_mocks(Fault()) as (mock,):
        only = provider("a", mock, retries=3, aliases={"m": "mock-e503-ra30"}, max_retry_wait=60)
        async with running(providers=(only,)) as (gw, recorder):
            client = await RawClient.connect(gw.url)
            await client.send_request("POST", "/v1/chat/completions", chat("m"))
            await eventually(
                lambda: any(
                    e.startswith("retry ") for ex in gw.app.active for e, _ in ex.timeline.moments
                )
            )  # the gateway is waiting out the 503's Retry-After
            await client.close()
            (record,) = await recorder.wait_for(1)
            assert record.outcome == "client_disconnect"
            assert mock.statistics().requests_total == 1  # the 30 s retry never happened
