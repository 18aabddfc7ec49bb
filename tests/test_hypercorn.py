"""The Hypercorn guards: each one works, and each fault still exists without it.

Every guard's test runs twice: guarded (must pass) and with Hypercorn as
released, where it must fail with the fault its ``@pytest.mark.fault(raises=...)``
names (an expected failure; any other error fails the suite). When a Hypercorn
release fixes a fault, its unguarded run passes, which fails the suite, and
the guard can be deleted from ``trioproxy/server/hypercorn.py``.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any, cast

import h11
import hypercorn.config
import hypercorn.trio
import pytest
import trio
from hypercorn.events import RawData
from hypercorn.protocol.events import Body, EndBody, Response
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.protocol.http_stream import HTTPStream
from hypercorn.trio.tcp_server import TCPServer

from tests.conftest import chat, eventually, running, within
from trioproxy.asgi import read_body, take_queued
from trioproxy.observe.debug import task_names
from trioproxy.server import guard_install
from trioproxy.server import hypercorn as guards
from trioproxy.testing.rawclient import RawClient, request


@pytest.fixture(params=["guarded", "unguarded"])
def hypercorn_as(request: pytest.FixtureRequest) -> Iterator[str]:
    """Hypercorn with every guard, or as released (guards back afterwards)."""
    guard_install.install_hypercorn_guards()
    if request.param == "unguarded":  # must fail as its @pytest.mark.fault says (conftest)
        assert request.node.get_closest_marker("fault"), "a guard's twin names its fault"
        guard_install.uninstall_hypercorn_guards()
        # open_gateway installs the guards; keep them out for this test.
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(guard_install, "install_hypercorn_guards", lambda *names: None)
            patch.setattr("trioproxy.server.serve.install_hypercorn_guards", lambda **k: None)
            yield request.param
        guard_install.install_hypercorn_guards()
    else:
        yield request.param


def _protocol(sent: list[Any]) -> H11Protocol:
    """An H11Protocol that has read one request, writing to ``sent``."""

    async def send(event: Any) -> None:
        sent.append(event)

    proto = H11Protocol.__new__(H11Protocol)
    proto.config = hypercorn.config.Config()
    proto.keep_alive_requests = 0
    proto.send = send
    proto.stream = None  # as before its stream is made: guard 6 leaves it to h11
    proto.connection = h11.Connection(h11.SERVER)
    proto.connection.receive_data(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
    assert isinstance(proto.connection.next_event(), h11.Request)
    return proto


@pytest.mark.fault(raises=(OSError, trio.BusyResourceError))
async def test_an_internal_hypercorn_error_ends_one_connection_not_the_worker(
    hypercorn_as: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hypercorn #225, found by the fuzz test: the error response to a malformed
    body raced Hypercorn's own send_eof (BusyResourceError) and stopped the
    whole server. The race is made deterministic here."""

    async def racing_error_response(self: object, status_code: int) -> None:
        raise trio.BusyResourceError("another task is currently sending data on this SocketStream")

    async with running() as (gw, _):
        with monkeypatch.context() as patch:
            patch.setattr(H11Protocol, "_send_error_response", racing_error_response)
            host, port = gw.url.removeprefix("http://").split(":")
            stream = await trio.open_tcp_stream(host, int(port))
            async with stream:
                await stream.send_all(b"GARBAGE\r\n\r\n")
                with trio.fail_after(5):
                    assert await stream.receive_some(100) == b""  # that connection ends
        ok = await request(gw.url, "POST", "/v1/chat/completions", chat("mock-t2-i0"))
        assert ok.status == 200 and ok.body.endswith(b"data: [DONE]\n\n")


@pytest.mark.fault(raises=(trio.TooSlowError,))
async def test_closed_keep_alive_connections_do_not_linger(hypercorn_as: str) -> None:
    """Found by chaos (no_orphan_tasks): a keep-alive connection closed by its
    client kept its task and socket for keep_alive_timeout (75 s here)."""
    async with running() as (gw, _):
        client = await RawClient.connect(gw.url)
        await client.send_request("GET", "/healthz")
        assert (await client.read_response()).status == 200
        await eventually(lambda: _timer_tasks() == 1)  # idle, kept alive
        await client.close()
        await eventually(lambda: _timer_tasks() == 0, timeout=1)


def _timer_tasks() -> int:
    """Keep-alive timer tasks: Hypercorn's (one per idle connection) or guard 4's."""
    names = task_names()
    return names.get("_idle_timeout", 0) + names.get("keep-alive-timer", 0)


def test_an_untested_hypercorn_release_is_refused_with_one_line() -> None:
    guards.check_hypercorn_version("0.18.0")
    guards.check_hypercorn_version("0.17.3")
    with pytest.raises(guards.UnsupportedHypercorn, match=r"^Hypercorn 0\.19\.0 is not supported"):
        guards.check_hypercorn_version("0.19.0")


def test_uninstall_puts_hypercorn_back() -> None:

    guard_install.install_hypercorn_guards()
    patched = (TCPServer.run, H11Protocol._send_h11_event)
    assert set(guard_install.uninstall_hypercorn_guards()) == set(guards.GUARDS)
    assert (TCPServer.run, H11Protocol._send_h11_event) != patched
    guard_install.install_hypercorn_guards()
    assert (TCPServer.run.__name__, H11Protocol._send_h11_event.__name__) == (
        "run_after_taking_the_queue",
        "_send_h11_event",
    )


@pytest.mark.fault(raises=(trio.TooSlowError,))
async def test_connections_past_max_connections_are_closed_at_once(
    hypercorn_as: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The flood: idle connections each cost a task and buffers; Hypercorn's trio
    worker accepts without bound. Past max_connections a new one is closed."""
    guards.CONNECTIONS.limit = 3
    try:
        async with running(max_connections=3) as (gw, _):
            host, port = gw.url.removeprefix("http://").split(":")
            held = [await trio.open_tcp_stream(host, int(port)) for _ in range(3)]
            extra = None
            try:
                await eventually(
                    lambda: guards.CONNECTIONS.open == 3 or hypercorn_as == "unguarded"
                )
                extra = await trio.open_tcp_stream(host, int(port))
                with trio.fail_after(1):
                    assert await extra.receive_some(100) == b""  # closed by the gateway
                assert "max_connections (3) reached" in caplog.text
            finally:  # closed whatever happens (the unguarded run fails above)
                for stream in [*held, *([extra] if extra else [])]:
                    await stream.aclose()
            await eventually(lambda: guards.CONNECTIONS.open == 0)
            ok = await request(gw.url, "POST", "/v1/chat/completions", chat("mock-t2-i0"))
            assert ok.status == 200
    finally:
        guards.CONNECTIONS.limit = 4096


@pytest.mark.fault(raises=(AssertionError,))
async def test_a_write_the_socket_can_take_does_not_wait_for_the_scheduler(
    hypercorn_as: str,
) -> None:
    """Found profiling paced streams: Hypercorn took a lock and called send_all
    for every chunk, two trips through the scheduler each. Here a write the
    socket can take returns before any other task runs."""
    ours, theirs = trio.socket.socketpair()
    server = SimpleNamespace(send_lock=trio.Lock(), stream=trio.SocketStream(ours))
    ran: list[int] = []

    async def other_task() -> None:
        ran.append(1)

    with theirs:
        async with server.stream, trio.open_nursery() as nursery:
            nursery.start_soon(other_task)
            await TCPServer.protocol_send(server, RawData(data=b"data: 1\n\n"))
            assert ran == []  # no trip through the scheduler
        assert await theirs.recv(100) == b"data: 1\n\n"


async def test_what_a_slow_client_socket_cannot_take_goes_the_waiting_way_in_order() -> None:
    """A client that reads slowly: the part the socket did not take is sent by
    Hypercorn's own shielded send_all, after what went at once; nothing is lost."""
    guard_install.install_hypercorn_guards()
    async with running() as (gw, _):
        client = await RawClient.connect(gw.url)
        client.stream.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        direct, waited = guards.WRITES.direct, guards.WRITES.waited
        await client.send_request("POST", "/v1/chat/completions", chat("mock-t20000-i0"))
        await eventually(lambda: guards.WRITES.waited > waited)  # the socket was full
        response = await client.read_response()
        await client.close()
        read_at_once = await request(gw.url, "POST", "/v1/chat/completions", chat("mock-t20000-i0"))
    assert response.status == 200 and response.body.endswith(b"data: [DONE]\n\n")
    events = response.body.count(b"\n\ndata: ")
    assert events == read_at_once.body.count(b"\n\ndata: ") > 20000
    assert guards.WRITES.direct > direct  # the stream's earlier writes went at once


class _SpawnCounter(trio.abc.Instrument):
    def __init__(self) -> None:
        self.names: list[str] = []

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        self.names.append(task.name)


@pytest.mark.fault(raises=(AssertionError,))
async def test_keep_alive_requests_start_no_task_for_their_timer(hypercorn_as: str) -> None:
    """Found profiling the per-request cost: Hypercorn started a new keep-alive
    timer task (under a lock, with nursery.start) at the end of every request
    and cancelled it at the start of the next. Here a connection has one timer."""
    async with running() as (gw, _):
        client = await RawClient.connect(gw.url)
        counter = _SpawnCounter()
        trio.lowlevel.add_instrument(counter)
        try:
            for _ in range(20):  # stock Hypercorn starts a timer for many (3-13 of 20 seen)
                await client.send_request("POST", "/v1/chat/completions", chat("mock-t2-i0"))
                response = await client.read_response()
                assert response.status == 200 and response.body.endswith(b"data: [DONE]\n\n")
        finally:
            trio.lowlevel.remove_instrument(counter)
            await client.close()
    timers = [n for n in counter.names if n.endswith(("_idle_timeout", "keep-alive-timer"))]
    assert len(timers) <= 1, timers


class _Passes(trio.abc.Instrument):
    """Scheduler passes (one I/O poll each), and the pass each connection task started in."""

    def __init__(self) -> None:
        self.passes = 0
        self.handlers: list[int] = []

    def before_io_wait(self, timeout: float) -> None:
        self.passes += 1

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        if task.name.endswith("._run_handler"):
            self.handlers.append(self.passes)


@pytest.mark.fault(raises=(AssertionError,))
async def test_a_burst_of_connections_is_taken_in_a_few_scheduler_passes(hypercorn_as: str) -> None:
    """Found timing 200 streams that arrive together (650 ms before the last
    request reached the app): trio's listener takes one connection per scheduler
    pass. Here 32 connections queued at once all have their task within a few
    passes, and each is served."""
    async with running() as (gw, _):
        host, port = gw.url.removeprefix("http://").rsplit(":", 1)
        # Blocking connects: the kernel queues them while the trio loop does not run.
        socks = [socket.create_connection((host, int(port))) for _ in range(32)]
        passes = _Passes()
        trio.lowlevel.add_instrument(passes)
        try:
            await eventually(lambda: len(passes.handlers) == 32)
        finally:
            trio.lowlevel.remove_instrument(passes)
        streams = [trio.SocketStream(trio.socket.from_stdlib_socket(s)) for s in socks]
        for stream in streams:
            await stream.send_all(f"GET /healthz HTTP/1.1\r\nhost: {host}:{port}\r\n\r\n".encode())
        for stream in streams:
            with trio.fail_after(5):
                assert (await stream.receive_some(4096)).startswith(b"HTTP/1.1 200")
            await stream.aclose()
    assert max(passes.handlers) <= 4, passes.handlers  # stock trio: one per pass, 32+


def _timed_connection() -> SimpleNamespace:
    """What guard 4's timer reads of its TCPServer; ``closed`` records when it closed."""
    conn = SimpleNamespace(closed=[])
    conn.config = SimpleNamespace(keep_alive_timeout=75.0)
    conn.context = SimpleNamespace(terminated=trio.Event())

    async def close() -> None:
        conn.closed.append(trio.current_time())

    conn._initiate_server_close = close
    return conn


class _Group:
    """Hypercorn's TaskGroup, as far as the timer uses it."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery


async def test_an_idle_connection_closes_keep_alive_timeout_after_its_last_response(
    autojump_clock: trio.testing.MockClock,
) -> None:
    conn = _timed_connection()
    timer = guards.keep_alive_timer(conn)
    async with trio.open_nursery() as nursery:
        await timer.restart(_Group(nursery), None)  # connected: idle
        await trio.sleep(10)
        await timer.stop()  # a request for 100 s: never closed meanwhile
        await trio.sleep(100)
        assert conn.closed == []
        await timer.restart(_Group(nursery), None)  # its response ended at 110
        await trio.sleep(50)
        await timer.stop()
        await timer.restart(_Group(nursery), None)  # another one at 160
    assert conn.closed == [160 + 75]


async def test_a_terminating_server_closes_idle_connections_at_once_and_leaves_busy_ones(
    autojump_clock: trio.testing.MockClock,
) -> None:
    idle, busy = _timed_connection(), _timed_connection()
    async with trio.open_nursery() as nursery:
        idle_timer, busy_timer = guards.keep_alive_timer(idle), guards.keep_alive_timer(busy)
        await idle_timer.restart(_Group(nursery), None)
        await busy_timer.restart(_Group(nursery), None)
        await trio.sleep(1)
        await busy_timer.stop()
        await trio.sleep(1)
        for conn in (idle, busy):
            conn.context.terminated.set()
    assert idle.closed == [2] and busy.closed == []  # Hypercorn closes it after its response


async def test_a_connection_whose_reads_ended_ends_its_timer_without_closing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    conn = _timed_connection()
    timer = guards.keep_alive_timer(conn)
    async with trio.open_nursery() as nursery:
        await timer.restart(_Group(nursery), None)
        await trio.sleep(5)
        timer.end()
        early = guards.keep_alive_timer(conn)
        await early.restart(_Group(nursery), None)
        early.end()  # before its task even ran
    assert trio.current_time() == 5 and conn.closed == []


async def test_a_body_hypercorn_has_queued_is_read_without_awaiting_receive() -> None:
    """The per-request fast path: Hypercorn queues the body with the head, so
    the app takes it without a trip through the scheduler (``take_queued``);
    under another server (a plain function as receive) it awaits as usual."""
    send_ch, recv_ch = trio.open_memory_channel[dict[str, Any]](10)
    assert take_queued(recv_ch.receive) is None  # nothing queued yet
    send_ch.send_nowait({"type": "http.request", "body": b'{"a":', "more_body": True})
    send_ch.send_nowait({"type": "http.request", "body": b"1}", "more_body": False})

    async def never() -> dict[str, Any]:
        raise AssertionError("awaited receive although the body was queued")

    scope = {"headers": [(b"content-length", b"7")]}
    body = await read_body(scope, never, 100, lambda: take_queued(recv_ch.receive))
    assert body == b'{"a":1}'
    received: list[str] = []

    async def plain_receive() -> dict[str, Any]:
        received.append("awaited")
        return {"type": "http.request", "body": b"{}"}

    assert take_queued(plain_receive) is None
    assert await read_body(scope, plain_receive, 100, lambda: None) == b"{}"
    assert received == ["awaited"]


def _on_stream(proto: H11Protocol, method: str) -> H11Protocol:
    """Give the protocol the HTTP stream of a ``method`` request (all guard 6 reads of it)."""
    stream = HTTPStream.__new__(HTTPStream)
    stream.scope = cast(Any, {"method": method})
    proto.stream = stream
    return proto


def _client_reads(data: bytes, method: bytes = b"GET") -> list[Any]:
    """What an h11 client makes of the bytes the server wrote."""
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method=method, target="/", headers=[(b"host", b"x")]))
    client.send(h11.EndOfMessage())
    client.receive_data(data)
    events: list[Any] = []
    while (event := client.next_event()) is not h11.NEED_DATA:
        events.append(event)
        if type(event) is h11.EndOfMessage:
            break
    return events


@pytest.mark.fault(raises=(AssertionError,))
async def test_a_plain_response_is_checked_once_and_its_chunks_skip_h11(
    hypercorn_as: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found profiling one stream at a time: a head's headers went through h11's
    checks four times (after Hypercorn's own), and every chunk through h11's state
    machine. Guarded: checked once, the chunks framed without h11, the same bytes."""
    checks: list[int] = []
    for module in (h11._headers, h11._events):
        real = module.normalize_and_validate

        def counting(headers: Any, _parsed: bool = False, real: Any = real) -> Any:
            if not _parsed and any(name == b"x-probe" for name, _ in headers):
                checks.append(1)
            return real(headers, _parsed=_parsed)

        monkeypatch.setattr(module, "normalize_and_validate", counting)
    data_sends: list[int] = []
    real_send = h11.Connection.send

    def send(conn: h11.Connection, event: Any) -> Any:
        data_sends.extend([1] if type(event) is h11.Data else [])
        return real_send(conn, event)

    monkeypatch.setattr(h11.Connection, "send", send)
    sent: list[Any] = []
    proto, plain = _on_stream(_protocol(sent), "GET"), guards.HEADS.plain
    headers = [(b"x-probe", b"1"), (b"content-type", b"text/event-stream")]
    await proto.stream_send(Response(stream_id=1, headers=headers, status_code=200))
    for i in range(3):
        await proto.stream_send(Body(stream_id=1, data=b"data: %d\n\n" % i))
    await proto.stream_send(EndBody(stream_id=1))
    writes = [e.data for e in sent if isinstance(e, RawData)]
    head, *chunks, end = _client_reads(b"".join(writes))
    assert head.status_code == 200 and (b"x-probe", b"1") in head.headers
    assert [c.data for c in chunks] == [b"data: 0\n\n", b"data: 1\n\n", b"data: 2\n\n"]
    assert type(end) is h11.EndOfMessage and len(writes) == 5  # head, three chunks, end
    assert proto.connection.our_state is h11.DONE
    assert len(checks) + guards.HEADS.plain - plain == 1  # stock: 4
    assert data_sends == []  # stock: one h11 Data event per chunk


@pytest.mark.parametrize("case", ["HEAD request", "last keep-alive request", "content-length"])
async def test_a_head_h11_must_decide_goes_hypercorns_way(case: str) -> None:
    guard_install.install_hypercorn_guards()
    sent: list[Any] = []
    proto = _on_stream(_protocol(sent), "HEAD" if case == "HEAD request" else "GET")
    if case == "last keep-alive request":
        proto.keep_alive_requests = proto.config.keep_alive_max_requests
    headers = [(b"content-type", b"text/plain")]
    if case == "content-length":
        headers.append((b"content-length", b"2"))
    plain, by_h11 = guards.HEADS.plain, guards.HEADS.h11
    await proto.stream_send(Response(stream_id=1, headers=headers, status_code=200))
    if case != "HEAD request":  # Hypercorn sends a HEAD response no body
        await proto.stream_send(Body(stream_id=1, data=b"ok"))
    await proto.stream_send(EndBody(stream_id=1))
    assert (guards.HEADS.plain, guards.HEADS.h11) == (plain, by_h11 + 1)
    data = b"".join(e.data for e in sent if isinstance(e, RawData))
    head, *body = _client_reads(data, b"HEAD" if case == "HEAD request" else b"GET")
    assert head.status_code == 200
    assert [e.data for e in body if type(e) is h11.Data] == (
        [] if case == "HEAD request" else [b"ok"]
    )
    if case == "last keep-alive request":
        assert (b"connection", b"close") in head.headers


async def test_the_relays_streams_take_the_plain_way_and_keep_alive_goes_on() -> None:
    guard_install.install_hypercorn_guards()
    async with running() as (gw, _):
        client = await RawClient.connect(gw.url)
        plain, chunks = guards.HEADS.plain, guards.HEADS.chunks
        responses = []
        for _ in range(2):  # the second on the same connection
            await client.send_request("POST", "/v1/chat/completions", chat("mock-t5-i0"))
            responses.append(await client.read_response())
        await client.close()
    for response in responses:
        assert response.status == 200 and response.body.endswith(b"data: [DONE]\n\n")
        assert response.body.count(b"data: ") == 8  # role, 5 tokens, finish, [DONE]
    assert guards.HEADS.plain == plain + 2 and guards.HEADS.chunks > chunks


async def _trickle_head(url: str, seconds: float) -> float | None:
    """Send a request head a byte every 50 ms; the seconds until the server
    closed the connection, or None if it had not after ``seconds``."""
    host, port = url.removeprefix("http://").split(":")
    stream = await trio.open_tcp_stream(host, int(port))
    head = f"POST /v1/chat/completions HTTP/1.1\r\nhost: {host}:{port}\r\nx-slow: ".encode()
    started = trio.current_time()
    try:
        with trio.move_on_after(seconds):
            async with trio.open_nursery() as nursery:

                async def write() -> None:
                    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                        for byte in head + b"a" * 10_000:
                            await stream.send_all(bytes([byte]))
                            await trio.sleep(0.05)

                nursery.start_soon(write)
                while await stream.receive_some(100):
                    pass
                nursery.cancel_scope.cancel()
                return trio.current_time() - started
        return None
    finally:
        await stream.aclose()


@pytest.mark.fault(raises=(AssertionError,))
async def test_a_trickled_request_head_is_closed_at_header_timeout(hypercorn_as: str) -> None:
    """The slowloris: a head one byte at a time held its connection for
    keep_alive_timeout (75 s); 200 of them shut everyone out."""
    async with running(header_timeout=0.5) as (gw, _):
        closed_after = await _trickle_head(gw.url, 5.0)
        assert closed_after is not None and closed_after <= 0.5 + within(1.0), closed_after
        ok = await request(gw.url, "POST", "/v1/chat/completions", chat("mock-t2-i0"))
        assert ok.status == 200


async def test_header_timeout_leaves_idle_keep_alive_and_slow_bodies_alone() -> None:
    """A connection idle between requests waits keep_alive_timeout, not
    header_timeout; a whole head followed by a slow body is the body's timeout's."""
    async with running(header_timeout=0.3, body_timeout=10) as (gw, _):
        client = await RawClient.connect(gw.url)
        await client.send_request("POST", "/v1/chat/completions", chat("mock-t2-i0"))
        assert (await client.read_response()).status == 200
        stats = guards.CONNECTIONS
        await trio.sleep(0.6)  # idle past header_timeout: still open
        assert stats.open == 1
        await client.send_request(
            "POST", "/v1/chat/completions", chat("mock-t2-i0"), body_pieces=4, piece_gap=0.15
        )
        assert (await client.read_response()).status == 200
        await client.close()


@pytest.mark.fault(raises=(trio.TooSlowError,))
async def test_connections_past_max_connections_per_ip_are_closed_at_once(
    hypercorn_as: str, caplog: pytest.LogCaptureFixture
) -> None:
    """One client's flood fills its own share: past max_connections_per_ip its
    next connection is closed, while another address is still served."""
    async with running(max_connections_per_ip=3) as (gw, _):
        await eventually(lambda: guards.CONNECTIONS.open == 0)  # earlier tests' all ended
        host, port = gw.url.removeprefix("http://").split(":")
        held = [await trio.open_tcp_stream(host, int(port)) for _ in range(3)]
        extra = other = None
        try:
            await eventually(lambda: guards.CONNECTIONS.open == 3 or hypercorn_as == "unguarded")
            extra = await trio.open_tcp_stream(host, int(port))
            with trio.fail_after(1):
                assert await extra.receive_some(100) == b""  # closed by the gateway
            assert "max_connections_per_ip (3) reached by 127.0.0.1" in caplog.text
            other = trio.SocketStream(trio.socket.socket())
            await other.socket.bind(("127.0.0.2", 0))
            await other.socket.connect((host, int(port)))
            client = RawClient(other, host=f"{host}:{port}")
            await client.send_request("POST", "/v1/chat/completions", chat("mock-t2-i0"))
            assert (await client.read_response()).status == 200
        finally:
            for stream in [*held, *(s for s in (extra, other) if s is not None)]:
                await stream.aclose()


async def test_a_trusted_proxy_is_held_to_the_process_cap_only() -> None:
    async with running(max_connections_per_ip=2, trusted_proxies=("127.0.0.1",)) as (gw, _):
        await eventually(lambda: guards.CONNECTIONS.open == 0)
        host, port = gw.url.removeprefix("http://").split(":")
        held = [await trio.open_tcp_stream(host, int(port)) for _ in range(4)]
        try:
            await eventually(lambda: guards.CONNECTIONS.open == 4)
        finally:
            for stream in held:
                await stream.aclose()
