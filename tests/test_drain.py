"""``on_client_disconnect = "drain"``: a client that hangs up leaves at once, and
the upstream is read on, detached and bounded, to its usage; then closed. The
record and the receipt carry the usage the upstream reported."""

from __future__ import annotations

import logging
import tomllib
from typing import Any

import h11
import pytest
import trio

from tests.conftest import chat, eventually, open_mocks, provider, running, within
from tests.redis_server import RedisServer
from tests.scripted_upstream import scripted_upstream
from tests.shapes import build
from trioproxy import dialects
from trioproxy.admission.auth import new_key
from trioproxy.errors import ConfigError
from trioproxy.receipts.service import verify_receipt
from trioproxy.routing.providers import parse_providers
from trioproxy.server.serve import RunningGateway
from trioproxy.testing.mock_scripts import Fault
from trioproxy.testing.rawclient import RawClient, request

CHAT = "/v1/chat/completions"


async def _hang_up_after(gw: RunningGateway, path: str, body: object, tokens: int) -> None:
    """A client that reads ``tokens`` content events, then closes its connection."""
    client = await RawClient.connect(gw.url)
    await client.send_request("POST", path, body)
    seen = 0
    with trio.fail_after(10):
        assert (await client.response_head())[0] == 200
        while seen < tokens:
            event = await client.next_event()
            assert isinstance(event, h11.Data)
            seen += sum(1 for e in event.data.split(b"\n\n") if dialects.classify(e + b"\n\n") & 1)
    await client.close()


async def test_a_client_that_leaves_after_3_of_30_tokens_is_billed_what_the_upstream_reports() -> (
    None
):
    """30 tokens at 40 ms: the client leaves after 3. Its request ends at once (no
    active request, no slot held) while the drain reads on; then the record and
    the signed receipt carry the upstream's usage: 30 completion tokens, reported."""
    async with open_mocks(Fault()) as (mock,):
        drains = (provider("p", mock, on_client_disconnect="drain"),)
        async with running(providers=drains) as (gw, rec):
            await _hang_up_after(gw, CHAT, chat("mock-t30-i40"), 3)
            # The client side is released while the upstream is still being read.
            await eventually(lambda: gw.app.statistics().active_requests == 0)
            stats = gw.app.statistics()
            assert stats.limiter.borrowed_tokens == 0
            assert stats.drains is not None and stats.drains.running == 1
            assert mock.statistics().streams_active == 1
            (record,) = await rec.wait_for(1)
            ref = record.receipt_id
            with trio.fail_after(10):
                while (found := await request(gw.url, "GET", f"/v1/signature/{ref}")).status == 202:
                    await trio.sleep(0.02)
            assert gw.app.receipts is not None
            assert verify_receipt(found.json(), gw.app.receipts.signer.public) is None
        assert mock.statistics().streams_active == 0
    assert record.outcome.value == "client_disconnect" and record.drained == "final"
    assert (record.completion_tokens, record.usage_source) == (30, "upstream")
    assert record.truncated  # the client got 3 of them
    receipt = found.json()["receipt"]
    assert (receipt["completion_tokens"], receipt["usage_source"]) == (30, "upstream")
    assert receipt["truncated"] is True
    assert b'"drained":"final"' in record.to_json()


async def test_the_usage_the_gateway_asks_for_is_withheld_from_a_client_that_did_not() -> None:
    """A drain provider of an OpenAI stream is asked for usage; a client that did
    not ask gets its stream without the usage chunk, and the record the usage."""
    async with open_mocks(Fault()) as (mock,):
        drains = (provider("p", mock, on_client_disconnect="drain"),)
        async with running(providers=drains) as (gw, rec):
            plain = await request(gw.url, "POST", CHAT, chat("mock-t5-i0"))
            asked = await request(
                gw.url, "POST", CHAT, chat("mock-t5-i0", stream_options={"include_usage": True})
            )
            first, second = await rec.wait_for(2)
    usage_chunks = [e for e in plain.body.split(b"\n\n") if b'"usage":{' in e]
    assert usage_chunks == [] and plain.body.endswith(b"data: [DONE]\n\n")
    assert any(b'"usage":{' in e for e in asked.body.split(b"\n\n"))
    assert (first.completion_tokens, first.usage_source) == (5, "upstream")
    assert (second.completion_tokens, second.usage_source) == (5, "upstream")


async def test_an_upstream_that_stalls_during_a_drain_is_closed_at_drain_max_seconds() -> None:
    """The upstream stops after 5 tokens and never ends: the drain closes it at its
    bound (0.5 s here, idle_timeout being 30 s), and the usage is an estimate."""
    shape = build("json_dumps", 30)
    closed = trio.Event()
    async with scripted_upstream(shape.events, stall_after=6, peer_closed=closed) as url:
        drains = ({"name": "p", "base_url": url, "on_client_disconnect": "drain",
                   "drain_max_seconds": 0.5},)  # fmt: skip
        async with running(providers=drains, idle_timeout=30) as (gw, rec):
            await _hang_up_after(gw, CHAT, chat("m"), 3)
            left = trio.current_time()
            with trio.fail_after(10):
                await closed.wait()
            waited = trio.current_time() - left
            (record,) = await rec.wait_for(1)
    assert 0.4 <= waited < within(5.0)  # at the drain's bound, not the idle timeout's
    assert record.drained == "time" and record.usage_source == "estimated"
    assert record.completion_tokens == 5  # what the upstream sent, relayed or read on
    assert record.cancel_latency_ms is not None and 400 <= record.cancel_latency_ms < within(5000)


async def test_a_drain_stops_at_drain_max_bytes() -> None:
    shape = build("json_dumps", 2000)  # ~250 kB of events
    closed = trio.Event()
    stall = len(shape.events) - 1  # all but [DONE], then silence
    async with scripted_upstream(shape.events, stall_after=stall, peer_closed=closed) as url:
        drains = ({"name": "p", "base_url": url, "on_client_disconnect": "drain",
                   "drain_max_bytes": 4096},)  # fmt: skip
        async with running(providers=drains, idle_timeout=30) as (gw, rec):
            await _hang_up_after(gw, CHAT, chat("m"), 3)
            with trio.fail_after(10):
                await closed.wait()
            (record,) = await rec.wait_for(1)
    assert record.drained == "bytes" and record.usage_source == "estimated"
    assert record.bytes_in < sum(len(e) for e in shape.events)


async def test_an_anthropic_stream_is_drained_to_its_message_delta_usage() -> None:
    async with open_mocks(Fault()) as (mock,):
        drains = (provider("p", mock, kind="anthropic", on_client_disconnect="drain"),)
        async with running(providers=drains) as (gw, rec):
            body = {**chat("mock-t30-i20"), "max_tokens": 64}
            await _hang_up_after(gw, "/v1/messages", body, 3)
            (record,) = await rec.wait_for(1)
    assert record.outcome.value == "client_disconnect" and record.drained == "final"
    assert (record.completion_tokens, record.usage_source) == (30, "upstream")


async def test_with_cancel_and_past_max_drains_a_hang_up_closes_the_upstream_at_once() -> None:
    """The default policy, and a drain provider when ``max_drains`` drains run
    already: the upstream is closed the moment the client leaves."""
    async with open_mocks(Fault()) as (mock,):
        providers = (provider("p", mock, on_client_disconnect="drain"),)
        async with running(providers=providers, max_drains=1) as (gw, rec):
            await _hang_up_after(gw, CHAT, chat("mock-t30-i40-x1"), 3)
            await _hang_up_after(gw, CHAT, chat("mock-t30-i40-x2"), 3)
            with trio.fail_after(10):  # closed mid-stream, while the first still drains
                assert (await mock.wait_peer_close(1)).model == "mock-t30-i40-x2"
            records = await rec.wait_for(2)
    by_tag = {r.model: r for r in records}
    assert by_tag["mock-t30-i40-x2"].drained is None  # closed at once: the one drain was busy
    assert by_tag["mock-t30-i40-x2"].usage_source == "estimated"
    assert by_tag["mock-t30-i40-x1"].drained == "final"
    async with (
        open_mocks(Fault()) as (mock,),
        running(providers=(provider("p", mock),)) as (gw, rec),
    ):
        await _hang_up_after(gw, CHAT, chat("mock-t30-i40"), 3)
        with trio.fail_after(10):
            await mock.wait_peer_close(1)
        (record,) = await rec.wait_for(1)
    assert record.drained is None and record.usage_source == "estimated"


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"on_client_disconnect": "wait"}, "on_client_disconnect must be cancel or drain"),
        ({"drain_max_seconds": 0}, "drain_max_seconds must be"),
        ({"drain_max_bytes": 0}, "drain_max_bytes must be"),
    ],
)
def test_drain_options_are_checked_at_start_up(option: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_providers([{"name": "p", "base_url": "http://127.0.0.1:1/v1", **option}])


async def test_a_drain_that_ends_before_its_request_does_is_recorded_once(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A drain can end while the request it left behind is still running: here
    the request's early admission is still being counted in a Redis that has
    not answered yet. The exchange is recorded once, by the drain, not again
    when the request ends."""
    key, block = new_key("drainer")
    keys = tuple(tomllib.loads(block.replace("rpm = 0", "rpm = 1000"))["keys"])
    auth = [("authorization", f"Bearer {key}")]
    async with open_mocks(Fault()) as (mock,):
        drains = (provider("p", mock, on_client_disconnect="drain"),)
        async with running(providers=drains, redis_url=redis_server.url, keys=keys) as (gw, rec):
            first = await request(gw.url, "POST", CHAT, chat("mock-t1-i0"), auth)
            assert first.status == 200  # Redis has counted the key: far from its limits
            await rec.wait_for(1)
            rec.records.clear()
            redis = gw.app.accounts.redis
            assert redis is not None
            real_run, answer = redis.run, trio.Event()

            async def slow_run(*args: Any, off_path: bool = False) -> Any:
                if off_path:  # the early admission's count: Redis answers when told
                    await answer.wait()
                return await real_run(*args, off_path=off_path)

            redis.run = slow_run  # type: ignore[method-assign]
            client = await RawClient.connect(gw.url)
            await client.send_request("POST", CHAT, chat("mock-t5-i20"), auth)
            with trio.fail_after(10):
                assert (await client.response_head())[0] == 200
                assert isinstance(await client.next_event(), h11.Data)
            await client.close()
            (record,) = await rec.wait_for(1)  # the drain read to the end
            assert record.drained == "final"
            assert gw.app.statistics().active_requests == 1  # its count is still on its way
            answer.set()
            await eventually(lambda: gw.app.statistics().active_requests == 0)
            assert gw.app.statistics().outcomes == {"done": 1, "client_disconnect": 1}
            # (Recorded twice, the exchange's state machine refuses the second:
            # an error here, in production a second access line and receipt.)
            assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
            assert len(rec.records) == 1
