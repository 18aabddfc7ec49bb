"""Servers that are not our mock: each stream shape of ``tests/shapes`` through the
relay, complete and cut by the upstream. The client gets the upstream's bytes
unchanged; the record says whether the stream was complete, and its usage is
the reported one or an estimate of the content relayed (never 0)."""

from __future__ import annotations

import hashlib
from typing import Any

import h11
import orjson
import pytest
import trio

from tests.conftest import chat, running
from tests.scripted_upstream import scripted_upstream
from tests.shapes import SHAPES, Shape, build
from trioproxy import dialects
from trioproxy.receipts.service import verify_receipt
from trioproxy.server.serve import RunningGateway
from trioproxy.testing.mock_scripts import Fault, FaultSpecError, parse_fault
from trioproxy.testing.rawclient import RawClient, RawResponse, request

CHAT = "/v1/chat/completions"


def _route(shape: Shape, url: str) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(path, body, gateway options) for a shape's route and its upstream at ``url``."""
    if shape.route == "messages":
        body = {**chat("m"), "max_tokens": 64}
        return "/v1/messages", body, {"anthropic_upstreams": (url.removesuffix("/v1"),)}
    if shape.route == "responses":
        body = {"model": "m", "input": "Say hi", "stream": True}
        return "/v1/responses", body, {"openai_upstreams": (url,)}
    return CHAT, chat("m"), {"openai_upstreams": (url,)}


async def _verified_receipt(gw: RunningGateway, response: RawResponse) -> dict[str, Any]:
    """The exchange's receipt, once signed, checked against the gateway's key."""
    ref = response.headers[b"x-trioproxy-receipt-id"].decode()
    with trio.fail_after(10):
        while (found := await request(gw.url, "GET", f"/v1/signature/{ref}")).status == 202:
            await trio.sleep(0.02)
    assert found.status == 200
    document: dict[str, Any] = found.json()
    assert gw.app.receipts is not None
    assert verify_receipt(document, gw.app.receipts.signer.public) is None
    receipt: dict[str, Any] = document["receipt"]
    assert receipt["response_sha256"] == hashlib.sha256(response.body).hexdigest()
    return receipt


@pytest.mark.parametrize("name", SHAPES)
async def test_a_complete_stream(name: str) -> None:
    shape = SHAPES[name]
    async with scripted_upstream(shape.events) as url:
        path, body, options = _route(shape, url)
        async with running(**options) as (gw, rec):
            response = await request(gw.url, "POST", path, body)
            (record,) = await rec.wait_for(1)
            receipt = await _verified_receipt(gw, response)
    assert response.status == 200
    assert response.body == b"".join(shape.events)  # unchanged: nothing added to an error
    if shape.error is not None:  # the server ended it with its own error event
        assert record.outcome.value == "upstream_error" and record.truncated
        assert record.error is not None and shape.error in record.error
        assert (record.completion_tokens, record.usage_source) == (12, "estimated")
        assert receipt["truncated"] is True
        return
    assert record.outcome.value == "done"
    assert not record.truncated  # also without [DONE]: a finish reason, then a clean end
    if shape.usage is not None:
        assert (record.prompt_tokens, record.completion_tokens) == shape.usage
        assert record.usage_source == "upstream"
    else:
        assert record.completion_tokens == shape.content_events
        assert record.usage_source == "estimated"
    assert record.completion_id  # the upstream's id, never an empty one
    assert b'"%b"' % record.completion_id.encode() in b"".join(shape.events)
    signed = (receipt["prompt_tokens"], receipt["completion_tokens"], receipt["usage_source"])
    assert signed == (record.prompt_tokens, record.completion_tokens, record.usage_source)
    assert receipt["truncated"] is False and receipt["final_event"] == record.final_event


@pytest.mark.parametrize("name", SHAPES)
async def test_a_stream_cut_by_the_upstream(name: str) -> None:
    shape = SHAPES[name]
    cut = shape.head + 5  # what comes before the first token, and 5 tokens
    async with scripted_upstream(shape.events, cut_after=cut) as url:
        path, body, options = _route(shape, url)
        async with running(**options) as (gw, rec):
            response = await request(gw.url, "POST", path, body)
            (record,) = await rec.wait_for(1)
            receipt = await _verified_receipt(gw, response)
    assert response.body.startswith(b"".join(shape.events[:cut]))
    assert b'"error"' in response.body[len(b"".join(shape.events[:cut])) :]
    assert record.truncated
    assert record.completion_tokens == 5 and record.usage_source == "estimated"
    assert (receipt["truncated"], receipt["final_event"]) == (True, False)
    assert (receipt["completion_tokens"], receipt["usage_source"]) == (5, "estimated")


@pytest.mark.parametrize("name", SHAPES)
async def test_a_stream_the_upstream_ends_cleanly_too_early(name: str) -> None:
    """The upstream ends the body cleanly after 5 tokens, with no finish reason and
    no final event: truncated, 5 estimated (an empty finish reason is none)."""
    shape = SHAPES[name]
    cut = shape.head + 5
    async with scripted_upstream(shape.events[:cut]) as url:
        path, body, options = _route(shape, url)
        async with running(**options) as (gw, rec):
            response = await request(gw.url, "POST", path, body)
            (record,) = await rec.wait_for(1)
    assert response.body == b"".join(shape.events[:cut])
    assert record.truncated and not record.final_event
    assert (record.completion_tokens, record.usage_source) == (5, "estimated")


async def test_an_anthropic_stream_ending_after_its_stop_reason_is_complete() -> None:
    """``message_delta`` with a stop reason, then a clean end without
    ``message_stop``: complete, with the usage it reported."""
    shape = SHAPES["anthropic"]
    assert shape.events[-1].startswith(b"event: message_stop\n")
    async with scripted_upstream(shape.events[:-1]) as url:
        path, body, options = _route(shape, url)
        async with running(**options) as (gw, rec):
            await request(gw.url, "POST", path, body)
            (record,) = await rec.wait_for(1)
    assert not record.truncated and not record.final_event
    assert (record.prompt_tokens, record.completion_tokens, record.usage_source) == (
        25, 12, "upstream",
    )  # fmt: skip


def _error_event_of(body: bytes, route: str) -> dict[str, Any]:
    """The gateway's error event at the end of a stream, in the route's dialect."""
    last = [e for e in body.split(b"\n\n") if e][-1]
    if route == "messages":
        name, _, data = last.partition(b"\n")
        assert name == b"event: error", last
        error: dict[str, Any] = orjson.loads(data.removeprefix(b"data: "))
        assert error["type"] == "error" and error["error"]["type"]
        return error
    error = orjson.loads(last.removeprefix(b"data: "))
    assert set(error["error"]) >= {"message", "type", "code"}, last
    return dict(error)


@pytest.mark.parametrize("name", SHAPES)
async def test_a_stream_stalled_by_the_upstream(name: str) -> None:
    """Stalled after 5 tokens: the client gets them, then the error event in the
    route's dialect at idle_timeout; the upstream connection is closed."""
    shape = SHAPES[name]
    stall = shape.head + 5
    closed = trio.Event()
    async with scripted_upstream(shape.events, stall_after=stall, peer_closed=closed) as url:
        path, body, options = _route(shape, url)
        async with running(idle_timeout=0.3, **options) as (gw, rec):
            response = await request(gw.url, "POST", path, body)
            (record,) = await rec.wait_for(1)
            receipt = await _verified_receipt(gw, response)
            with trio.fail_after(5):
                await closed.wait()
    assert response.body.startswith(b"".join(shape.events[:stall]))
    assert _error_event_of(response.body, shape.route)
    assert record.outcome.value == "upstream_idle_timeout" and record.truncated
    assert (record.completion_tokens, record.usage_source) == (5, "estimated")
    assert (receipt["truncated"], receipt["completion_tokens"]) == (True, 5)


@pytest.mark.parametrize("name", SHAPES)
async def test_a_stream_the_client_hangs_up_on(name: str) -> None:
    """The client leaves after 5 tokens: the upstream connection is closed, the
    record says client_disconnect and counts what was relayed."""
    shape = SHAPES[name]
    stall = shape.head + 5
    closed = trio.Event()
    async with scripted_upstream(shape.events, stall_after=stall, peer_closed=closed) as url:
        path, body, options = _route(shape, url)
        async with running(**options) as (gw, rec):
            client = await RawClient.connect(gw.url)
            await client.send_request("POST", path, body)
            got = b""
            with trio.fail_after(5):
                assert (await client.response_head())[0] == 200
                while len(got) < len(b"".join(shape.events[:stall])):
                    event = await client.next_event()
                    assert isinstance(event, h11.Data)
                    got += event.data
            await client.close()
            with trio.fail_after(5):
                await closed.wait()
            (record,) = await rec.wait_for(1)
    assert got == b"".join(shape.events[:stall])
    assert record.outcome.value == "client_disconnect" and record.truncated
    assert (record.completion_tokens, record.usage_source) == (5, "estimated")


async def test_the_usage_chunk_the_gateway_asked_for_is_withheld_in_any_spacing() -> None:
    """request_usage: the gateway adds include_usage for a client that did not ask;
    the upstream's usage chunk (spaced JSON) must not reach that client."""
    shape = SHAPES["json_dumps"]
    usage_chunks = [e for e in shape.events if dialects.is_usage_only(e)]
    assert len(usage_chunks) == 1
    async with (
        scripted_upstream(shape.events) as url,
        running(openai_upstreams=(url,), request_usage=True) as (gw, rec),
    ):
        response = await request(gw.url, "POST", CHAT, chat("m"))
        (record,) = await rec.wait_for(1)
    assert response.body == b"".join(e for e in shape.events if e not in usage_chunks)
    assert record.usage_source == "upstream" and record.completion_tokens == 12


@pytest.mark.parametrize(
    ("event", "flags"),
    [
        (b'data: {"choices":[{"delta":{"content":"x"}}]}\n\n', dialects.CONTENT),
        (b'data: {"choices": [{"delta": {"content": "x"}}]}\n\n', dialects.CONTENT),
        (b'data: {"choices":[{"delta":{"content":"","reasoning_content":"x"}}]}\n\n', 1),
        (b'data: {"choices":[{"delta":{"role":"assistant","content":""}}]}\n\n', 0),
        (b'data: {"choices": [{"delta": {"content": ""}}]}\n\n', 0),
        (b'data: {"choices":[{"delta":{"content":"\\": "}}]}\n\n', dialects.CONTENT),
        (b'data: {"choices":[],"usage":{"prompt_tokens":1}}\n\n', 2 | 8),
        (b'data: {"choices": [], "usage": {"prompt_tokens": 1}}\n\n', 2 | 8),
        (b'data: {"choices":[],"usage":null}\n\n', 0),
        (b'data: {"choices": [{"delta": {}, "finish_reason": null}], "usage": null}\n\n', 0),
        (b'data: {"choices": [{"delta": {}, "finish_reason": "stop"}]}\n\n', dialects.FINISH),
        (b'data: {"choices":[{"delta":{},"finish_reason":"length"}]}\n\n', dialects.FINISH),
        (b'data: {"choices":[],"x_groq":{"usage":{"prompt_tokens":1}}}\n\n', 2 | 8),
        (b"event: content_block_delta\ndata: {}\n\n", dialects.CONTENT),
        # An empty finish reason is none (Ollama wrote one in every chunk).
        (b'data: {"choices":[{"delta":{"content":"x"},"finish_reason":""}]}\n\n', 1),
        (b'data: {"choices": [{"delta": {}, "finish_reason": ""}]}\n\n', 0),
        # Anthropic's stop reason, and its usage, in message_delta.
        (b'event: message_delta\ndata: {"delta":{"stop_reason":"end_turn"},"usage":{}}\n\n', 6),
        (b'event: message_delta\ndata: {"delta": {"stop_reason": null}}\n\n', 0),
        # The upstream's own error events, in either dialect and any spacing.
        (b'event: error\ndata: {"type": "error", "error": {"type": "overloaded_error"}}\n\n', 16),
        (b'data: {"error":{"message":"x","type":"server_error"}}\n\n', dialects.ERROR),
        (b'data: {"error": {"message": "x"}}\n\n', dialects.ERROR),
        (b'data: {"id": "x", "error": {"message": "x"}}\n\n', dialects.ERROR),
        (b'data: {"error": "not an object"}\n\n', 0),
        (b'data: {"choices":[{"delta":{"content":"{\\"error\\":{"}}]}\n\n', 1),
    ],
)
def test_events_are_recognised_in_any_spacing(event: bytes, flags: int) -> None:
    assert dialects.classify(event) == flags


async def test_the_mock_replays_a_shape_with_its_timing_and_faults() -> None:
    """``mock-shape-NAME-…``: the built-in mock streams as that server does, paced
    and faulted like any mock stream, so chaos runs can use real servers' shapes."""
    async with running(idle_timeout=0.3) as (gw, rec):
        client = await RawClient.connect(gw.url)
        await client.send_request("POST", CHAT, chat("mock-shape-groq-t20-i10"))
        with trio.fail_after(10):
            response = await client.read_response()
        await client.close()
        assert response.body == b"".join(build("groq", 20).events)
        reads = [t for t, chunk in response.chunks if b'"content":"t' in chunk]
        assert reads[-1] - reads[0] >= 19 * 0.010 * 0.5  # paced, not in one burst
        body = {**chat("mock-shape-anthropic-t8-stall3"), "max_tokens": 64}
        stalled = await request(gw.url, "POST", "/v1/messages", body)
        events = build("anthropic", 8).events
        assert stalled.body.startswith(b"".join(events[: 3 + 3]))
        assert _error_event_of(stalled.body, "messages")["error"]["type"]
        records = await rec.wait_for(2)
    assert (records[0].prompt_tokens, records[0].completion_tokens) == (23, 20)
    assert records[0].usage_source == "upstream" and not records[0].truncated
    assert records[1].outcome.value == "upstream_idle_timeout" and records[1].truncated
    with pytest.raises(FaultSpecError, match="unknown stream shape"):
        parse_fault("mock-shape-nosuch-t3", Fault())
