"""The upstream transport against the mock upstream and small scripted servers."""

from __future__ import annotations

import functools
import itertools
import os
from collections.abc import Awaitable, Callable

import httpx
import pytest
import trio

from tests.conftest import quantile, within
from trioproxy.config import Config
from trioproxy.errors import UpstreamBroken, UpstreamUnreachable
from trioproxy.testing.mock_scripts import Fault
from trioproxy.testing.mock_upstream import serve_mock
from trioproxy.upstream import body as body_module
from trioproxy.upstream.body import Conn
from trioproxy.upstream.client import DEFAULT_HEADERS, open_upstream, request_headers
from trioproxy.upstream.transport import UpstreamTransport

CHAT = {"model": "mock-t5-i0", "messages": [], "stream": True}


async def test_keep_alive_connections_are_reused() -> None:
    async with trio.open_nursery() as nursery:
        mock = await nursery.start(serve_mock, "127.0.0.1", 0, Fault())
        transport = UpstreamTransport()
        async with httpx.AsyncClient(transport=transport, base_url=mock.base_url) as client:
            for _ in range(3):
                response = await client.post("/v1/chat/completions", json=CHAT)
                assert response.text.endswith("data: [DONE]\n\n")
            models = await client.get("/v1/models")
            assert models.json()["object"] == "list"  # content-length body
            stats = transport.statistics()
            assert (stats.opened, stats.reused, stats.idle, stats.active) == (1, 3, 1, 0)
            assert stats.written_at_once == 4  # each request went out without a wait
        nursery.cancel_scope.cancel()


async def test_a_request_larger_than_the_socket_takes_goes_out_whole_and_in_order() -> None:
    """The write fast path's other side: what os.write does not take is sent by
    send_all after it, and the upstream reads exactly the request."""
    received: list[bytes] = []

    async def read_body(stream: trio.SocketStream) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            data += await stream.receive_some(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        while len(body) < length:
            body += await stream.receive_some(65536)
        received.append(body)
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")

    payload = bytes(range(256)) * (64 * 1024)  # 16 MiB: more than loopback buffers hold
    async with trio.open_nursery() as nursery:
        url = await _scripted_server(read_body, nursery)
        transport = UpstreamTransport()
        async with httpx.AsyncClient(transport=transport) as client:
            assert (await client.post(url, content=payload)).text == "ok"
        assert received == [payload]
        assert transport.statistics().written_at_once == 0
        nursery.cancel_scope.cancel()


async def test_cancelling_mid_body_closes_the_connection_at_once() -> None:
    """The median of 5 cancellations: the mock sees the close within 50 ms."""
    async with trio.open_nursery() as nursery:
        mock = await nursery.start(serve_mock, "127.0.0.1", 0, Fault())
        transport = UpstreamTransport()
        latencies = []
        async with httpx.AsyncClient(transport=transport, base_url=mock.base_url) as client:
            for n in range(1, 6):
                body = {**CHAT, "model": "mock-t1000-i20"}
                with trio.CancelScope() as scope:
                    async with client.stream("POST", "/v1/chat/completions", json=body) as r:
                        async for _ in r.aiter_raw():
                            scope.cancel()  # mid-body, once bytes arrived
                cancelled_at = trio.current_time()
                with trio.fail_after(5):
                    peer = await mock.wait_peer_close(n)
                latencies.append(peer.at - cancelled_at)
                assert transport.statistics().idle == 0 and transport.statistics().active == 0
        assert quantile(latencies, 0.5) < within(0.05), latencies
        nursery.cancel_scope.cancel()


async def _scripted_server(
    handler: Callable[[trio.SocketStream], Awaitable[None]], nursery: trio.Nursery
) -> str:
    listeners = await nursery.start(functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    return f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"


async def _read_request(stream: trio.SocketStream) -> bytes:
    """A request's head (lowercased), or b"" when the client closed first."""
    data = b""
    while b"\r\n\r\n" not in data:
        more = await stream.receive_some(65536)
        if not more:
            return b""
        data += more
    return data.lower()


async def test_stale_keep_alive_connection_is_replaced() -> None:
    closed = trio.Event()

    async def one_request_then_close(stream: trio.SocketStream) -> None:
        await _read_request(stream)
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await stream.aclose()  # keep-alive advertised, but the server closes
        closed.set()

    async with trio.open_nursery() as nursery:
        url = await _scripted_server(one_request_then_close, nursery)
        transport = UpstreamTransport()
        async with httpx.AsyncClient(transport=transport) as client:
            assert (await client.get(url)).text == "ok"
            await closed.wait()
            assert (await client.get(url)).text == "ok"
            assert transport.statistics().opened == 2
        nursery.cancel_scope.cancel()


async def test_close_delimited_body_and_errors() -> None:
    async def until_close(stream: trio.SocketStream) -> None:
        await _read_request(stream)
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nall of it")
        await stream.aclose()

    async def garbage(stream: trio.SocketStream) -> None:
        await _read_request(stream)
        await stream.send_all(b"NOT HTTP\r\n\r\n")
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        eof_url = await _scripted_server(until_close, nursery)
        bad_url = await _scripted_server(garbage, nursery)
        async with httpx.AsyncClient(transport=UpstreamTransport()) as client:
            assert (await client.get(eof_url)).text == "all of it"
            with pytest.raises(UpstreamBroken, match="bad status line"):
                await client.get(bad_url)
            with pytest.raises(UpstreamUnreachable, match="cannot connect"):
                await client.get("http://127.0.0.1:1/")
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_an_ip_address_is_connected_to_without_the_resolver(
    host: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bursts on an empty pool: ``trio.open_tcp_stream`` (resolver, happy-eyeballs
    nursery) cost 263 µs a connection, a plain connect 101. A name still goes
    through it; a refused connection is unreachable either way."""
    resolved: list[str] = []
    real = trio.open_tcp_stream

    async def counted(name: str, port: int) -> trio.SocketStream:
        resolved.append(name)
        return await real(name, port)

    monkeypatch.setattr(trio, "open_tcp_stream", counted)

    async def ok(stream: trio.SocketStream) -> None:
        await _read_request(stream)
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")

    async with trio.open_nursery() as nursery:
        url = (await _scripted_server(ok, nursery)).replace("127.0.0.1", host)
        async with httpx.AsyncClient(transport=UpstreamTransport()) as client:
            assert (await client.get(url)).text == "ok"
            with pytest.raises(UpstreamUnreachable, match="cannot connect"):
                await client.get(f"http://{host}:1/")
        nursery.cancel_scope.cancel()
    assert resolved == ([] if host == "127.0.0.1" else ["localhost", "localhost"])


async def test_a_request_that_reached_the_upstream_is_never_sent_twice() -> None:
    """The attack on billing: an upstream that reads a POST on a reused keep-alive
    connection, then closes without answering. Resending it on a new connection
    would start (and bill) a second generation."""
    received: list[bytes] = []

    async def answer_once_then_read_and_close(stream: trio.SocketStream) -> None:
        await _read_request(stream)
        received.append(b"first")
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await _read_request(stream)  # the second request arrived ...
        received.append(b"second")
        await stream.aclose()  # ... and the connection ends without a response

    async with trio.open_nursery() as nursery:
        url = await _scripted_server(answer_once_then_read_and_close, nursery)
        transport = UpstreamTransport()
        async with httpx.AsyncClient(transport=transport) as client:
            assert (await client.post(url, content=b"{}")).text == "ok"
            with pytest.raises(UpstreamBroken, match="without a response"):
                await client.post(url, content=b"{}")
            assert received == [b"first", b"second"]
            assert transport.statistics().opened == 1  # no new connection, no resend
        nursery.cancel_scope.cancel()


async def test_upstream_cookies_are_never_stored_nor_sent() -> None:
    """The attack on tenant isolation: an upstream sets a cookie while serving one
    tenant; the next request (any tenant) through the gateway's one sender must
    carry no Cookie. A Cookie header handed to the sender is not sent either."""
    requests: list[bytes] = []

    async def set_cookie(stream: trio.SocketStream) -> None:
        while head := await _read_request(stream):  # keep-alive: every request
            requests.append(head)
            await stream.send_all(
                b"HTTP/1.1 200 OK\r\nset-cookie: session=tenant-a; Path=/\r\n"
                b"set-cookie: other=1\r\ncontent-length: 2\r\n\r\nok"
            )

    async with trio.open_nursery() as nursery:
        url = await _scripted_server(set_cookie, nursery)
        async with open_upstream(Config(bind="127.0.0.1:0")) as upstream:
            first = await upstream.send("POST", url + "/v1/chat/completions", {}, b"{}")
            assert "set-cookie" not in first.headers
            await first.aread()
            for path, headers in (("/v1/chat/completions", {}), ("/v1/x", {"cookie": "forged=1"})):
                response = await upstream.send("POST", url + path, headers, b"{}")
                assert "set-cookie" not in response.headers
                await response.aread()
        assert len(requests) == 3
        assert not [r for r in requests if b"\r\ncookie:" in r]
        nursery.cancel_scope.cancel()


def test_one_tls_context_per_transport() -> None:
    transport = UpstreamTransport()
    assert transport._tls() is transport._tls()  # built once, on first use


async def test_requests_ask_for_identity_bodies_and_a_target_header_replaces_a_default() -> None:
    requests: list[bytes] = []

    async def answer(stream: trio.SocketStream) -> None:
        while head := await _read_request(stream):  # keep-alive: every request
            requests.append(head)
            await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")

    async with trio.open_nursery() as nursery:
        url = await _scripted_server(answer, nursery)
        async with open_upstream(Config(bind="127.0.0.1:0")) as upstream:
            for headers in ({}, {"User-Agent": "custom/1"}):
                response = await upstream.send("POST", url, headers, b"{}")
                assert await response.aread() == b"ok"
        assert [r.count(b"\r\nuser-agent:") for r in requests] == [1, 1]
        assert b"\r\nuser-agent: trioproxy\r\n" in requests[0]
        assert b"\r\nuser-agent: custom/1\r\n" in requests[1]
        assert all(b"\r\naccept-encoding: identity\r\n" in r for r in requests)
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("method", "headers", "content"),
    [
        ("POST", {}, b"{}"),
        ("POST", {"User-Agent": "custom/1", "authorization": "Bearer k"}, b'{"a": 1}'),
        ("POST", {"ACCEPT-ENCODING": "gzip", "traceparent": "00-ab-cd-01"}, b"x"),
        ("POST", {"Authorization": "Bearer a", "authorization": "Bearer b"}, b"x"),
        ("POST", {"host": "other:1", "cookie": "c=1", "content-length": "1"}, b"x"),
        ("POST", {}, b""),
        ("GET", {"accept": "text/event-stream"}, b""),
        ("POST", {"transfer-encoding": "chunked"}, b""),
    ],
)
def test_the_request_headers_are_the_ones_httpx_would_send(
    method: str, headers: dict[str, str], content: bytes
) -> None:
    """Per-request cost: the headers are built without httpx's ``Headers``
    (42 -> 3 µs); they must be the same bytes, in the same order."""
    url = httpx.URL("http://127.0.0.1:8000/v1/chat/completions")
    merged = httpx.Headers(DEFAULT_HEADERS)
    merged.update(headers)
    expected = httpx.Request(method, url, headers=merged, content=content).headers.raw
    assert request_headers(method, url, headers, content) == expected


def test_a_header_httpx_cannot_encode_is_refused_alike() -> None:
    for headers in ({"x-é": "1"}, {"x-a": "ü"}):
        with pytest.raises(UnicodeEncodeError):
            httpx.Headers(DEFAULT_HEADERS).update(headers)
        with pytest.raises(UnicodeEncodeError):
            request_headers("POST", httpx.URL("http://h/"), headers, b"x")


async def test_upstream_reads_take_what_is_there_and_wait_only_for_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An upstream read finds data there: it returns with no trip through the
    scheduler. Never more than READS_AT_ONCE in a row, so a stream that always
    has data still lets other tasks run and is cancelled within that many reads."""
    ours, theirs = trio.socket.socketpair()
    reads: list[int] = []

    def always_data(fd: int, size: int) -> bytes:
        reads.append(fd)
        return b"x" * size  # a full read: there may be more

    monkeypatch.setattr(body_module, "read_now", always_data)
    conn = Conn(trio.SocketStream(ours), (b"http", b"up", 80))
    other_ran_after: list[int] = []

    async def other_task() -> None:
        while True:
            other_ran_after.append(len(reads))
            await trio.sleep(0)

    with theirs, ours:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(other_task)
            await trio.sleep(0)
            await theirs.send(b"ready")  # wait_readable has something to report
            at_once = body_module.READS.at_once
            with trio.move_on_after(0) as scope:  # cancelled: seen at the first wait
                for _ in range(100):
                    assert len(await conn.receive()) == body_module.READ_SIZE
            assert scope.cancelled_caught
            assert len(reads) == body_module.READS_AT_ONCE
            assert body_module.READS.at_once - at_once == body_module.READS_AT_ONCE
            for _ in range(3 * body_module.READS_AT_ONCE):
                await conn.receive()
            nursery.cancel_scope.cancel()
    runs = sorted(set(other_ran_after))
    steps = [b - a for a, b in itertools.pairwise(runs)]
    # The others ran at every wait (one of them may fall in the reader's batch).
    assert steps and max(steps) <= 2 * body_module.READS_AT_ONCE  # of 64 reads in all


async def test_a_paced_upstream_read_waits_for_readiness_and_a_closed_conn_reads_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A short read took everything there was: the next read waits for readiness
    first, without a read that could only fail (one syscall less per token)."""
    ours, theirs = trio.socket.socketpair()
    conn = Conn(trio.SocketStream(ours), (b"http", b"up", 80))
    tries: list[bytes] = []

    def counted(fd: int, size: int) -> bytes:
        try:
            data = os.read(fd, size)
        except BlockingIOError:
            tries.append(b"(would block)")
            raise
        tries.append(data)
        return data

    monkeypatch.setattr(body_module, "read_now", counted)
    waited = body_module.READS.waited
    with theirs:
        for token in (b"token 1", b"token 2"):
            async with trio.open_nursery() as nursery:

                async def later(token: bytes = token) -> None:
                    await trio.testing.wait_all_tasks_blocked()  # the reader waits
                    await theirs.send(token)

                nursery.start_soon(later)
                assert await conn.receive() == token
        assert body_module.READS.waited - waited == 2
        # The first read tries at once; after its short read the second waits first.
        assert tries == [b"(would block)", b"token 1", b"token 2"]
        conn.close()
        with pytest.raises(UpstreamBroken):  # the descriptor is forgotten, never reused
            await conn.receive()
