"""Clients that are not ours: HTTP/1.0 and ``Connection: close``.

The body of an HTTP/1.0 response (and of any response to ``Connection: close``)
ends only when the server closes the connection. Hypercorn says
``http.disconnect`` from inside the response's last ``send()`` as it closes;
a gateway that cancels its relay on that message cancels Hypercorn's own close,
and the client waits forever after ``[DONE]``. These tests speak raw bytes, as
curl --http1.0 and nginx's default proxy do, and read until the server closes.
"""

from __future__ import annotations

import time

import pytest
import trio

from tests.conftest import eventually, running, within
from trioproxy.server import hypercorn as guards

# The socket must close right after the last byte; the bound is what a busy
# 2-core machine always keeps (a response that never closes waits forever).
CLOSE_WITHIN = within(2.0)


async def raw_exchange(url: str, request: bytes) -> tuple[bytes, float]:
    """Send ``request`` as is; read until the server closes. Returns the bytes
    and the seconds from the last byte to the close."""
    host, port = url.split("//")[1].split(":")
    stream = await trio.open_tcp_stream(host, int(port))
    try:
        await stream.send_all(request)
        data, last = b"", time.monotonic()
        with trio.fail_after(15):  # a stream of a few tokens: seconds at most
            while chunk := await stream.receive_some(65536):
                data, last = data + chunk, time.monotonic()
        return data, time.monotonic() - last
    finally:
        await stream.aclose()


def http_request(url: str, version: str, path: str, body: bytes | None, close: bool) -> bytes:
    head = f"{'GET' if body is None else 'POST'} {path} {version}\r\nHost: {url.split('//')[1]}\r\n"
    if close:
        head += "Connection: close\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + (body or b"")


STREAM = b'{"model":"mock-t5-i5","messages":[{"role":"user","content":"hi"}],"stream":true}'
WHOLE = b'{"model":"mock-t5","messages":[{"role":"user","content":"hi"}],"stream":false}'
ANSWERS = {  # what a client asks -> (path, body, what the complete answer ends with)
    "stream": ("/v1/chat/completions", STREAM, b"data: [DONE]\n\n"),
    "whole": ("/v1/chat/completions", WHOLE, b"}"),
    "error": ("/v1/chat/completions", b'{"model": 1}', b"}"),
    "not-found": ("/v1/nothing", b"{}", b"}"),
    "ops": ("/healthz", None, b"}"),
    "upstream-error": (
        "/v1/chat/completions",
        b'{"model":"mock-e500","messages":[{"role":"user","content":"hi"}],"stream":true}',
        b"}",
    ),
    "stalled-stream": (  # ends with the gateway's error event at the idle timeout
        "/v1/chat/completions",
        b'{"model":"mock-t3-stall2","messages":[{"role":"user","content":"hi"}],"stream":true}',
        b"\n\n",
    ),
}
CLIENTS = {"http1.0": ("HTTP/1.0", False), "connection-close": ("HTTP/1.1", True)}


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("answer", ANSWERS)
async def test_every_answer_ends_and_closes(client: str, answer: str) -> None:
    version, close = CLIENTS[client]
    path, body, end = ANSWERS[answer]
    async with running(idle_timeout=0.3) as (gw, rec):
        data, closed = await raw_exchange(gw.url, http_request(gw.url, version, path, body, close))
        head, _, payload = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 ")
        if version == "HTTP/1.1":  # chunked: the terminating chunk, then the close
            assert payload.endswith(b"0\r\n\r\n") or b"content-length" in head.lower()
        else:
            assert payload.rstrip(b"\r\n").endswith(end.rstrip(b"\n")), payload[-80:]
        assert closed < CLOSE_WITHIN, f"socket closed {closed:.2f} s after the last byte"
        if answer in ("stream", "whole"):
            (record,) = await rec.wait_for(1)
            assert record.outcome.value == "done" and not record.truncated


async def test_thirty_closing_streams_leave_no_socket_open() -> None:
    """30 ``Connection: close`` streams at once: every one ends and, at the
    server, no connection is left open."""
    async with running() as (gw, rec):
        request = http_request(gw.url, "HTTP/1.1", "/v1/chat/completions", STREAM, True)
        results: list[tuple[bytes, float]] = []

        async def one() -> None:
            results.append(await raw_exchange(gw.url, request))

        async with trio.open_nursery() as nursery:
            for _ in range(30):
                nursery.start_soon(one)
        assert len(results) == 30
        assert all(b"data: [DONE]" in data for data, _ in results)
        assert max(closed for _, closed in results) < CLOSE_WITHIN
        await eventually(lambda: guards.CONNECTIONS.open == 0, timeout=1.0)
        records = await rec.wait_for(30)
        assert {r.outcome.value for r in records} == {"done"}


async def test_a_hang_up_of_an_http10_client_still_closes_the_upstream() -> None:
    """Not reacting to a settled exchange's disconnect must not blind the
    watcher: an HTTP/1.0 client that leaves mid-stream is a hang-up."""
    async with running() as (gw, rec):
        body = STREAM.replace(b"mock-t5-i5", b"mock-t200-i20")
        host, port = gw.url.split("//")[1].split(":")
        stream = await trio.open_tcp_stream(host, int(port))
        await stream.send_all(http_request(gw.url, "HTTP/1.0", "/v1/chat/completions", body, False))
        with trio.fail_after(10):
            while b"data: " not in await stream.receive_some(65536):
                pass
        await stream.aclose()
        (record,) = await rec.wait_for(1)
        assert record.outcome.value == "client_disconnect"
        assert record.cancel_latency_ms is not None


async def test_content_length_with_transfer_encoding_is_refused_and_closes() -> None:
    """The smuggling attack: a request framed both ways, another request behind
    it. The gateway answers 400 and closes; the request behind is never answered."""
    async with running() as (gw, rec):
        host = gw.url.split("//")[1]
        smuggled = f"GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
        request = (
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\n"
            "Content-Type: application/json\r\nContent-Length: 5\r\n"
            "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        ).encode() + smuggled
        data, closed = await raw_exchange(gw.url, request)
        assert data.startswith(b"HTTP/1.1 400 ")
        assert data.count(b"HTTP/1.1 ") == 1, data
        assert b"Content-Length and Transfer-Encoding" in data
        assert closed < CLOSE_WITHIN
        (record,) = await rec.wait_for(1)
        assert record.status == 400 and record.upstream is None
