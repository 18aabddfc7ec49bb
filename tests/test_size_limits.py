"""``max_event_bytes`` and ``max_response_bytes`` end to end: an upstream that
sends more than the bound gets its connection closed, the client a clean error
in its dialect, and the gateway holds no more than the bound."""

from __future__ import annotations

import orjson
import trio

from tests.conftest import chat, running
from tests.scripted_upstream import scripted_upstream
from trioproxy.testing.rawclient import request

CHAT = "/v1/chat/completions"


def _chunk(n: int, text: str) -> bytes:
    delta = {"id": "chatcmpl-big", "object": "chat.completion.chunk", "model": "m",
             "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}  # fmt: skip
    return b"data: " + orjson.dumps(delta) + b"\n\n"


# An event that does not end: its data line grows over chunks of 600 bytes.
UNENDED = [b'data: {"choices":[{"delta":{"content":"', *[b"x" * 600] * 4]


async def test_an_event_growing_past_max_event_bytes_ends_the_stream_with_an_error_event() -> None:
    """The gateway holds an unfinished event until its end: past ``max_event_bytes``
    it stops, closes the upstream and ends the client's stream with the error event."""
    events = [_chunk(0, "a"), _chunk(1, "b"), *UNENDED]
    closed = trio.Event()
    upstream = scripted_upstream(events, stall_after=len(events), peer_closed=closed)
    async with upstream as url, running(openai_upstreams=(url,), max_event_bytes=1024) as (gw, rec):
        response = await request(gw.url, "POST", CHAT, chat("m"))
        with trio.fail_after(5):
            await closed.wait()  # the gateway closed the upstream
        (record,) = await rec.wait_for(1)
    assert response.status == 200
    # The upstream's bytes as they came (nothing is held back), the unfinished
    # event ended by the gateway, then the error event.
    relayed, _, error_event = response.body.rpartition(b"\n\ndata: ")
    upstream = b"".join(events)
    assert upstream.startswith(relayed) and len(relayed) < len(upstream)
    assert len(relayed) - len(b"".join(events[:2])) <= 1024 + 600  # the bound, one read past it
    error = orjson.loads(error_event)
    assert error["error"]["code"] == "upstream_broken", error
    assert "exceeds 1024 bytes" in error["error"]["message"]
    assert record.outcome.value == "upstream_error" and record.truncated


async def test_a_whole_answer_past_max_response_bytes_is_a_502_and_the_upstream_closed() -> None:
    async with running(max_response_bytes=4096) as (gw, rec):
        assert gw.mock is not None
        small = await request(gw.url, "POST", CHAT, chat("mock-t5", stream=False))
        assert small.status == 200 and small.json()["choices"]
        big = await request(gw.url, "POST", CHAT, chat("mock-t5000", stream=False))
        records = await rec.wait_for(2)
    assert big.status == 502
    error = big.json()["error"]
    assert error["code"] == "upstream_broken" and "exceeds 4096 bytes" in error["message"]
    assert [r.outcome.value for r in records] == ["done", "upstream_error"]
    assert records[1].bytes_in <= 4096 + 65536  # read no further than the bound (one read)
