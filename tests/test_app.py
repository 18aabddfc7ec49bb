"""The ASGI app over real sockets: routes, bad input in each dialect, malformed HTTP,
non-streaming relays, health endpoints."""

from __future__ import annotations

import contextlib

import pytest
import trio

from tests.conftest import chat, running
from trioproxy.testing.rawclient import request

BAD_BODIES = [
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "must be a JSON object"),
    (b'{"messages": []}', "'model' is required"),
    (b'{"model": "", "messages": []}', "'model' is required"),
    (b'{"model": "m", "messages": [], "stream": "yes"}', "'stream' must be a boolean"),
    (b'{"model": "m", "messages": "hi"}', "'messages' must be an array"),
    (b"", "body is empty"),
]


@pytest.mark.parametrize(("body", "message"), BAD_BODIES)
async def test_bad_openai_bodies_get_400_and_nothing_goes_upstream(
    body: bytes, message: str
) -> None:
    async with running() as (gw, recorder):
        assert gw.mock is not None
        response = await request(gw.url, "POST", "/v1/chat/completions", body)
        assert response.status == 400
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error"
        assert message in error["message"]
        assert gw.mock.statistics().requests_total == 0
        assert (await recorder.wait_for(1))[0].outcome == "bad_request"


async def test_bad_anthropic_body_gets_anthropic_error() -> None:
    async with running() as (gw, _):
        response = await request(gw.url, "POST", "/v1/messages", {"model": "m", "messages": []})
        assert response.status == 400
        assert response.json() == {
            "type": "error",
            "error": {"type": "invalid_request_error", "message": "'max_tokens' is required"},
        }


async def test_oversized_body_is_413_before_reading_it() -> None:
    async with running(max_body_bytes=1000) as (gw, _):
        assert gw.mock is not None
        big = chat("m", stream=False, pad="x" * 2000)
        response = await request(gw.url, "POST", "/v1/messages", big)
        assert response.status == 413
        assert response.json()["error"]["type"] == "request_too_large"
        chunked = await _raw(
            gw.url,
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
            + b"".join(b"100\r\n" + b"x" * 256 + b"\r\n" for _ in range(8))
            + b"0\r\n\r\n",
        )
        assert chunked.startswith(b"HTTP/1.1 413")
        # Before reading it: only the head is sent, the 413 comes without a byte of body.
        head_only = await _raw(
            gw.url,
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: localhost\r\n"
            b"content-type: application/json\r\ncontent-length: 1000000\r\n\r\n",
        )
        assert head_only.startswith(b"HTTP/1.1 413"), head_only
        assert gw.mock.statistics().requests_total == 0


async def test_unknown_route_and_wrong_method() -> None:
    async with running() as (gw, _):
        missing = await request(gw.url, "GET", "/v2/nothing")
        assert missing.status == 404
        assert missing.json()["error"]["code"] == "not_found"
        wrong = await request(gw.url, "GET", "/v1/chat/completions")
        assert wrong.status == 405
        anthropic_404 = await request(gw.url, "POST", "/v1/messages/count")
        assert anthropic_404.json()["type"] == "error"


async def test_route_without_configured_upstream_is_404() -> None:
    # Chat and messages reach every kind (translated); embeddings only OpenAI's.
    async with running(anthropic_upstreams=("http://127.0.0.1:9/",)) as (gw, _):
        body = {"model": "m", "input": "hi"}
        response = await request(gw.url, "POST", "/v1/embeddings", body)
        assert response.status == 404
        assert "no openai provider" in response.json()["error"]["message"]


async def test_health_and_readiness() -> None:
    async with running() as (gw, _):
        assert (await request(gw.url, "GET", "/healthz")).json() == {"status": "ok"}
        ready = (await request(gw.url, "GET", "/readyz")).json()
        assert ready["ready"] is True and ready["unhealthy_pools"] == []
        assert (await request(gw.url, "GET", "/debug/state")).status == 404  # off by default
    async with running(debug_endpoints=True) as (gw, _):
        state = (await request(gw.url, "GET", "/debug/state")).json()
        assert state["limiter"]["borrowed_tokens"] == 0 and state["ready"] is True


@pytest.mark.parametrize(
    ("path", "body", "key"),
    [
        ("/v1/chat/completions", chat("mock-t5", stream=False), "choices"),
        ("/v1/completions", {"model": "mock-t5", "prompt": "hi"}, "choices"),
        ("/v1/responses", {"model": "mock-t5", "input": "hi"}, "output"),
        ("/v1/embeddings", {"model": "mock", "input": ["a", "b"]}, "data"),
        ("/v1/messages", {"model": "mock-t5", "max_tokens": 8, "messages": []}, "content"),
    ],
)
async def test_non_streaming_calls_relay_whole_json(path: str, body: object, key: str) -> None:
    async with running() as (gw, recorder):
        response = await request(gw.url, "POST", path, body)
        assert response.status == 200
        assert response.headers[b"content-type"] == b"application/json"
        assert key in response.json()
        record = (await recorder.wait_for(1))[0]
        assert record.outcome == "done" and record.bytes_out == len(response.body)
        if path != "/v1/embeddings":
            assert record.usage and record.completion_id == response.json()["id"]


async def test_models_and_upstream_4xx_relayed() -> None:
    async with running() as (gw, recorder):
        models = await request(gw.url, "GET", "/v1/models")
        assert models.status == 200 and models.json()["object"] == "list"
        typo = await request(gw.url, "POST", "/v1/chat/completions", chat("mock-zz9"))
        assert typo.status == 400
        assert "unknown mock option" in typo.json()["error"]["message"]
        outcomes = [r.outcome for r in await recorder.wait_for(2)]
        assert outcomes == ["done", "upstream_error"]


MALFORMED = [
    b"GARBAGE\r\n\r\n",
    b"POST /v1/chat/completions HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: abc\r\n\r\n",
    b"POST /v1/chat/completions HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
    b"GET /healthz HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\nx-big: "
    + b"a" * 200_000
    + b"\r\n\r\n",
    b"POST /v1/chat/completions HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: 5\r\n"
    b"content-length: 6\r\n\r\nhello",
    b"GET /\xff\xfe HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n\r\n",
    b"POST /v1/chat/completions HTTP/9.9\r\nhost: localhost\r\ncontent-type: application/json\r\n\r\n",
]


@pytest.mark.parametrize("raw", MALFORMED)
async def test_malformed_http_gets_4xx_and_the_worker_keeps_serving(raw: bytes) -> None:
    async with running() as (gw, _):
        assert gw.mock is not None
        answer = await _raw(gw.url, raw)
        assert answer[:10] in (b"HTTP/1.1 4", b"HTTP/1.0 4"), answer[:200]
        assert gw.mock.statistics().requests_total == 0  # nothing went upstream
        ok = await request(gw.url, "POST", "/v1/chat/completions", chat("mock-t2"))
        assert ok.status == 200 and ok.body.endswith(b"data: [DONE]\n\n")


async def _raw(url: str, data: bytes) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        with contextlib.suppress(trio.BrokenResourceError):
            await stream.send_all(data)
        received = b""
        with trio.move_on_after(3):
            try:
                while chunk := await stream.receive_some(65536):
                    received += chunk
                    if b"\r\n\r\n" in received:
                        break
            except trio.BrokenResourceError:
                pass
        return received


async def test_request_id_goes_upstream_and_overhead_is_reported() -> None:
    async with running() as (gw, recorder):
        assert gw.mock is not None
        plain = await request(gw.url, "POST", "/v1/chat/completions", chat("mock-t3", stream=False))
        request_id = plain.headers[b"x-trioproxy-request-id"]
        assert gw.mock.last_headers[b"x-request-id"] == request_id
        assert float(plain.headers[b"x-trioproxy-overhead-ms"]) >= 0
        mine = [("x-request-id", "client-chosen-1")]
        streamed = await request(gw.url, "POST", "/v1/chat/completions", chat("mock-t3-i0"), mine)
        assert streamed.headers[b"x-trioproxy-request-id"] == b"client-chosen-1"
        assert gw.mock.last_headers[b"x-request-id"] == b"client-chosen-1"
        records = await recorder.wait_for(2)
        assert all(r.overhead_ms is not None and r.overhead_ms >= 0 for r in records)
