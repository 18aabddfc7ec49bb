"""End-to-end relay guarantees over real loopback sockets.

Gateway (Hypercorn trio worker) and mock upstream run in-process on port 0;
clients are raw h11 connections so each test controls reading and hang-ups.
Timing bounds are on medians and quantiles of several samples, each scaled by
``within`` (real sockets, a shared 2-core machine).
"""

from __future__ import annotations

import itertools
from contextlib import aclosing

import orjson
import pytest
import trio

from tests.conftest import (
    chat,
    events_of,
    eventually,
    hang_up_latencies,
    quantile,
    running,
    streaming_bodies,
    within,
)
from trioproxy.testing.rawclient import RawClient, request


async def test_tokens_arrive_unbuffered_as_the_upstream_sends_them() -> None:
    """Guarantee 1: no batching. Each event reaches the client as the upstream
    writes it: 3 of 4 within 20 ms of the upstream's write, tokens sent 50 ms
    apart arrive a median 40+ ms apart (a relay that held back every other
    event fails both)."""
    async with running() as (gw, _):
        assert gw.mock is not None
        gw.mock.record = True
        client = await RawClient.connect(gw.url)
        await client.send_request("POST", "/v1/chat/completions", chat("mock-t8-i50"))
        status, headers = await client.response_head()
        assert status == 200
        assert headers[b"content-type"] == b"text/event-stream"
        assert headers[b"cache-control"] == b"no-cache"
        assert headers[b"x-accel-buffering"] == b"no"
        arrivals: list[tuple[float, bytes]] = []
        async for at, chunk in client.body_chunks():
            arrivals += [(at, e) for e in events_of(chunk)]
        await client.close()
        tokens = [at for at, e in arrivals if b'"delta":{"content"' in e]
        assert len(tokens) == 8
        gaps = [b - a for a, b in itertools.pairwise(tokens)]
        assert quantile(gaps, 0.5) >= 0.040, gaps
        # Each event: from the mock's write to the client's read, through the gateway.
        completion_id = orjson.loads(arrivals[0][1][len(b"data: ") :])["id"]
        await eventually(lambda: completion_id in gw.mock.sent_times)
        sent = gw.mock.sent_times[completion_id]
        assert len(sent) == len(arrivals)
        added = [at - written for (at, _), written in zip(arrivals, sent, strict=True)]
        assert quantile(added, 0.75) < within(0.020), added


async def test_stream_bytes_are_identical_for_every_route() -> None:
    """Guarantee 2: byte fidelity for chat, completions, responses and messages."""
    bodies = streaming_bodies("mock-t20")
    async with running() as (gw, recorder):
        assert gw.mock is not None
        gw.mock.record = True
        for path, body in bodies.items():
            response = await request(gw.url, "POST", path, body)
            assert response.status == 200, response.body
            records = await recorder.wait_for(len(recorder.records) + 1)
            record = records[-1]
            assert record.outcome == "done" and record.final_event
            assert record.completion_id is not None
            assert response.body == gw.mock.transcripts[record.completion_id], path
            assert record.bytes_out == len(response.body)
            assert record.usage is not None, path


async def test_client_disconnect_closes_upstream_at_once_and_frees_the_slot() -> None:
    """Guarantee 3: hang-up -> upstream closed (median of 5 within 50 ms), slot
    freed, outcome once."""
    async with running() as (gw, recorder):
        assert gw.mock is not None

        async def first_chunk(client: RawClient) -> None:
            assert (await client.response_head())[0] == 200
            async with aclosing(client.body_chunks()) as chunks:
                await chunks.__anext__()
            assert gw.app.limiter.statistics().borrowed_tokens == 1

        latencies = await hang_up_latencies(gw.url, gw.mock, "mock-t2000-i20", first_chunk)
        assert quantile(latencies, 0.5) < within(0.050), latencies
        records = await recorder.wait_for(5)
        assert all(r.cancel_latency_ms is not None for r in records)
        assert gw.app.statistics().outcomes == {"client_disconnect": 5}
        assert gw.app.limiter.statistics().borrowed_tokens == 0


async def test_a_hang_up_before_the_response_head_closes_the_upstream_at_once() -> None:
    """The upstream has the request and has not sent its first event (the client
    has no response head yet): a hang-up closes it (median of 5 within 50 ms)."""
    async with running() as (gw, _):
        assert gw.mock is not None

        async def upstream_asked(client: RawClient) -> None:
            await eventually(lambda: gw.mock.statistics().streams_active == 1)

        latencies = await hang_up_latencies(gw.url, gw.mock, "mock-t5-f5000", upstream_asked)
        assert quantile(latencies, 0.5) < within(0.050), latencies
        assert gw.app.statistics().outcomes == {"client_disconnect": 5}
        assert gw.app.limiter.statistics().borrowed_tokens == 0


async def test_stalled_upstream_gets_idle_timeout_error_event() -> None:
    """Guarantee 4: stall -> error event after idle_timeout, slot and connection freed."""
    async with running(idle_timeout=0.3) as (gw, recorder):
        assert gw.mock is not None
        client = await RawClient.connect(gw.url)
        await client.send_request("POST", "/v1/chat/completions", chat("mock-t10-stall3"))
        assert (await client.response_head())[0] == 200
        chunks = [c async for c in client.body_chunks()]  # ends: the stream was closed
        await client.close()
        events = events_of(b"".join(c for _, c in chunks))
        error = orjson.loads(events[-1][len(b"data: ") :])
        assert error["error"]["code"] == "upstream_idle_timeout"
        assert len([e for e in events if b'"content"' in e]) == 4  # role + 3 tokens
        silent_for = chunks[-1][0] - chunks[-2][0]
        assert 0.29 <= silent_for < 0.3 + within(1.2), silent_for
        records = await recorder.wait_for(1)
        assert records[0].outcome == "upstream_idle_timeout"
        assert gw.app.limiter.statistics().borrowed_tokens == 0
        with trio.fail_after(2):
            await gw.mock.wait_peer_close()  # the gateway closed the upstream connection


async def test_heartbeats_do_not_mask_the_idle_timeout() -> None:
    """Guarantee 5: ': ping' comments every 50 ms still hit a 0.3 s idle timeout."""
    async with running(idle_timeout=0.3) as (gw, recorder):
        response = await request(gw.url, "POST", "/v1/chat/completions", chat("mock-t10-hb3-p50"))
        events = events_of(response.body)
        assert b": ping" in events
        assert b"upstream_idle_timeout" in events[-1]
        assert (await recorder.wait_for(1))[0].outcome == "upstream_idle_timeout"


async def test_heartbeat_only_upstream_hits_the_ttft_timeout() -> None:
    async with running(ttft_timeout=0.4, idle_timeout=0.2) as (gw, recorder):
        response = await request(gw.url, "POST", "/v1/messages", _messages("mock-hb0-p50"))
        events = events_of(response.body)
        assert events[-1].startswith(b"event: error\ndata: ")
        error = orjson.loads(events[-1].split(b"data: ", 1)[1])
        assert error == {
            "type": "error",
            "error": {"type": "timeout_error", "message": error["error"]["message"]},
        }
        assert (await recorder.wait_for(1))[0].outcome == "upstream_ttft_timeout"


async def test_upstream_failures_before_any_byte_are_http_errors() -> None:
    """Guarantee 6: 500 -> 502, TTFT -> 504, unreachable -> 502, 429 relayed."""
    async with running(ttft_timeout=0.3) as (gw, recorder):
        r500 = await request(gw.url, "POST", "/v1/chat/completions", chat("mock-e500"))
        assert r500.status == 502
        assert r500.json()["error"]["code"] == "upstream_broken"
        assert "HTTP 500" in r500.json()["error"]["message"]
        slow = await request(gw.url, "POST", "/v1/chat/completions", chat("mock-f3000"))
        assert slow.status == 504
        assert slow.json()["error"]["code"] == "upstream_ttft_timeout"
        r429 = await request(gw.url, "POST", "/v1/messages", _messages("mock-e429"))
        assert r429.status == 429
        assert r429.headers[b"retry-after"] == b"1"
        assert r429.json()["type"] == "error"  # the upstream's own Anthropic error body
        outcomes = [r.outcome for r in await recorder.wait_for(3)]
        assert outcomes == ["upstream_error", "upstream_ttft_timeout", "upstream_error"]
    async with running(openai_upstreams=("http://127.0.0.1:1/v1",)) as (gw, _):
        down = await request(gw.url, "POST", "/v1/chat/completions", chat("x"))
        assert down.status == 502
        assert down.json()["error"]["code"] == "upstream_unreachable"


async def test_broken_upstream_after_first_byte_ends_with_one_error_event() -> None:
    async with running() as (gw, recorder):
        response = await request(gw.url, "POST", "/v1/chat/completions", chat("mock-t10-drop4"))
        assert response.status == 200
        events = events_of(response.body)
        assert len([e for e in events if b'"content"' in e]) == 5
        error = orjson.loads(events[-1][len(b"data: ") :])
        assert error["error"]["code"] == "upstream_broken"
        assert (await recorder.wait_for(1))[0].outcome == "upstream_error"


async def test_over_capacity_is_429_then_recovers() -> None:
    """Guarantee 7: a full limiter answers 429 + Retry-After; freed slots serve again."""
    async with running(max_streams=2) as (gw, _):
        clients = []
        for _ in range(2):
            c = await RawClient.connect(gw.url)
            await c.send_request("POST", "/v1/chat/completions", chat("mock-t1000-i20"))
            assert (await c.response_head())[0] == 200
            clients.append(c)
        rejected = await request(gw.url, "POST", "/v1/messages", _messages("mock-t2"))
        assert rejected.status == 429
        assert rejected.headers[b"retry-after"] == b"1"
        assert rejected.json()["error"]["type"] == "rate_limit_error"
        for c in clients:
            await c.close()
        await eventually(lambda: gw.app.limiter.statistics().borrowed_tokens == 0, timeout=5)
        ok = await request(gw.url, "POST", "/v1/chat/completions", chat("mock-t2"))
        assert ok.status == 200 and ok.body.endswith(b"data: [DONE]\n\n")
        assert gw.app.statistics().outcomes["rejected_overload"] == 1


@pytest.mark.slow
async def test_client_that_never_reads_releases_the_upstream() -> None:
    """Guarantee 8: slow client -> upstream cancelled after client_stall_timeout.
    The gateway stops reading the upstream once its writes to the client wait
    (the mock's last write completes then): the upstream is closed about 0.5 s
    later, not at a longer timeout."""
    async with running(client_stall_timeout=0.5, channel_size=2) as (gw, recorder):
        assert gw.mock is not None
        client = await RawClient.connect(gw.url)
        await client.send_request("POST", "/v1/chat/completions", chat("mock-t10000000-i0"))
        try:
            with trio.fail_after(20):
                peer = await gw.mock.wait_peer_close()
        finally:
            await client.close()  # (a client left open would hold the shutdown)
        assert peer.last_write is not None
        assert peer.at - peer.last_write < 0.5 + within(1.5), peer
        assert gw.app.limiter.statistics().borrowed_tokens == 0
        records = await recorder.wait_for(1)
        assert records[0].outcome == "slow_client"


def _messages(model: str, stream: bool = True) -> dict[str, object]:
    return {
        "model": model,
        "max_tokens": 32,
        "messages": [{"role": "user", "content": "hi"}],
        "stream": stream,
    }


async def test_heartbeats_can_count_and_max_stream_duration_ends_the_stream() -> None:
    """heartbeat_resets_idle keeps a pinging stream alive past idle_timeout;
    max_stream_duration (off by default) then ends it with an error event."""
    async with running(idle_timeout=0.3, heartbeat_resets_idle=True, max_stream_duration=1.2) as (
        gw,
        recorder,
    ):
        started = trio.current_time()
        response = await request(gw.url, "POST", "/v1/chat/completions", chat("mock-t10-hb3-p50"))
        elapsed = trio.current_time() - started
        assert 1.1 < elapsed < within(3.0), elapsed  # well past idle_timeout, cut at the duration
        last = orjson.loads(events_of(response.body)[-1][len(b"data: ") :])
        assert last["error"]["code"] == "max_stream_duration"
        assert (await recorder.wait_for(1))[0].outcome == "max_duration"


async def test_a_hang_up_queued_before_the_upstream_request_is_seen_without_polling() -> None:
    from trioproxy.asgi import already_disconnected

    send_ch, recv_ch = trio.open_memory_channel[dict[str, str]](4)
    assert not already_disconnected(recv_ch.receive)  # nothing queued: does not block
    send_ch.send_nowait({"type": "http.disconnect"})
    assert already_disconnected(recv_ch.receive)

    async def plain_receive() -> dict[str, str]:
        raise AssertionError("must not be awaited")

    assert not already_disconnected(plain_receive)  # another server: skipped
