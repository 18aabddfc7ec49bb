"""The relay's timers on trio's MockClock: exact, instant.

The upstream is a scripted body of (delay, bytes) steps, in three kinds (every
test runs on each): behind httpx's public ``MockTransport`` (the deadline moves
with each event); chunked over a local socket pair into the transport's own
``UpstreamBody`` (the deadline follows lazily; its early wakes are counted); and
the same over TLS (never resumed: the deadline moves with each event). The
client is an ASGI send that records when each message went out (or blocks, for
a client that stopped reading). Every timer fires at the second it must, not
roughly: ``autojump_clock`` makes the test take no time.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import math
import pathlib
import ssl
import tempfile
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import trio
import trio.testing
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from trioproxy.config import Config
from trioproxy.dialects import Dialect
from trioproxy.errors import Outcome
from trioproxy.relay.exchange import Exchange, Phase
from trioproxy.relay.reader import IDLE_TIMER
from trioproxy.relay.run import Relay
from trioproxy.routing.pools import Router
from trioproxy.routing.providers import parse_providers
from trioproxy.routing.targets import UpstreamRequest
from trioproxy.upstream.body import BODY_EXTENSION, Conn, UpstreamBody
from trioproxy.upstream.client import Upstream
from trioproxy.upstream.http11 import Head

EVENT = b'data: {"id":"c1","choices":[]}\n\n'
HEARTBEAT = b": ping\n\n"
Step = tuple[float, bytes]  # wait this long, then the upstream sends these bytes


class ScriptedBody(httpx.AsyncByteStream):
    def __init__(self, steps: list[Step], closed: list[float]) -> None:
        self.steps = steps
        self.closed = closed  # when the relay closed it (the upstream's view)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for delay, data in self.steps:
            await trio.sleep(delay)
            yield data
        await trio.sleep_forever()  # an upstream that never ends the stream

    async def aclose(self) -> None:
        self.closed.append(trio.current_time())


class Client:
    """The ASGI side: what was sent and when; a hang-up on demand; or a client
    that stops reading after ``reads`` body messages (its send never returns)."""

    def __init__(self, reads: float = math.inf) -> None:
        self.messages: list[tuple[float, dict[str, Any]]] = []
        self.reads = reads
        self.gone = trio.Event()

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            if self.reads <= 0:
                await trio.sleep_forever()
            self.reads -= 1
        self.messages.append((trio.current_time(), message))

    async def receive(self) -> dict[str, Any]:
        await self.gone.wait()
        return {"type": "http.disconnect"}

    @property
    def status(self) -> int:
        return int(self.messages[0][1]["status"])

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for _, m in self.messages[1:])


async def _send_chunks(stream: trio.abc.Stream, steps: list[Step], closed: list[float]) -> None:
    """The upstream's end of the socket: sends ``steps``; notes in ``closed``
    when it sees the relay's end close (an EOF or a reset, read at once)."""

    async def watch() -> None:
        with contextlib.suppress(trio.BrokenResourceError):
            while await stream.receive_some(4096):
                pass
        closed.append(trio.current_time())
        nursery.cancel_scope.cancel()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            for delay, data in steps:
                await trio.sleep(delay)
                await stream.send_all(b"%x\r\n%b\r\n" % (len(data), data))
            await trio.sleep_forever()
    except trio.BrokenResourceError:  # the relay closed the upstream
        pass
    finally:
        await trio.aclose_forcefully(stream)  # closes it in a cancelled scope too


@functools.cache
def _tls() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server and a client context for a self-signed certificate of host ``up``."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "up")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("up")]), critical=False)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    pem = cert.public_bytes(serialization.Encoding.PEM)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    with tempfile.TemporaryDirectory() as tmp:
        chain = pathlib.Path(tmp) / "chain.pem"
        chain.write_bytes(pem + key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ))  # fmt: skip
        server.load_cert_chain(chain)
    return server, ssl.create_default_context(cadata=pem.decode())


@pytest.fixture(params=["httpx", "socket", "tls"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def _relay(
    steps: list[Step], client: Client, kind: str, closed: list[float] | None = None, **options: Any
) -> Exchange:
    """``closed``: when the upstream saw its connection closed, from its end."""
    config = Config(bind="127.0.0.1:0", **options)
    async with trio.open_nursery() as nursery:
        ex = await _relay_in(nursery, steps, client, kind, config, [] if closed is None else closed)
        nursery.cancel_scope.cancel()
    return ex


async def _relay_in(
    nursery: trio.Nursery,
    steps: list[Step],
    client: Client,
    kind: str,
    config: Config,
    closed: list[float],
) -> Exchange:
    async def upstream(request: httpx.Request) -> httpx.Response:
        await trio.sleep(0)
        headers = {"content-type": "text/event-stream"}
        if kind == "httpx":
            return httpx.Response(200, headers=headers, stream=ScriptedBody(steps, closed))
        ours, theirs = trio.socket.socketpair()
        near: trio.abc.Stream = trio.SocketStream(ours)
        far: trio.abc.Stream = trio.SocketStream(theirs)
        if kind == "tls":
            server, client = _tls()
            far = trio.SSLStream(far, server, server_side=True)
            near = trio.SSLStream(near, client, server_hostname="up")
        nursery.start_soon(_send_chunks, far, steps, closed)
        head = Head(200, list(headers.items()), None, True, True)  # type: ignore[arg-type]
        conn = Conn(near, (b"http", b"up", 80))
        body = UpstreamBody(lambda conn, reusable: conn.close(), conn, head)
        assert body.resumable is (kind == "socket")  # a cut-short TLS read is never resumed
        return httpx.Response(200, headers=headers, stream=body, extensions={BODY_EXTENSION: body})

    router = Router(parse_providers([{"name": "up", "base_url": "http://up/v1"}]), environ={})
    request = UpstreamRequest(
        method="POST", path="/chat/completions", headers={}, body=b"{}", body_json=None,
        plan=router.pool(("openai",), "m").plan(), dialect=Dialect.OPENAI, parse_body=True,
        router=router, kinds=("openai",), model="m",
    )  # fmt: skip
    ex = Exchange("r", "chat", "POST", trio.current_time(), stream=True, model="m")
    ex.move(Phase.ADMITTED)
    await Relay(Upstream(httpx.MockTransport(upstream)), config, request, ex, []).run(
        client.send, client.receive
    )
    ex.ended = trio.current_time()
    return ex


async def test_ttft_timeout_fires_at_its_second_and_answers_an_http_error(
    autojump_clock: trio.testing.MockClock, kind: str
) -> None:
    client = Client()
    ex = await _relay([(70, EVENT)], client, kind, ttft_timeout=60)
    assert ex.outcome is Outcome.UPSTREAM_TTFT_TIMEOUT
    assert client.status == 504 and b"ttft_timeout" in client.body
    assert trio.current_time() == 60


async def test_heartbeats_before_the_first_event_do_not_stop_the_ttft_timer(
    autojump_clock: trio.testing.MockClock, kind: str
) -> None:
    client = Client()
    steps = [(10, HEARTBEAT)] * 10
    ex = await _relay(steps, client, kind, ttft_timeout=25, heartbeat_resets_idle=True)
    assert ex.outcome is Outcome.UPSTREAM_TTFT_TIMEOUT and ex.first_event_at is None
    assert trio.current_time() == 25


async def test_idle_timeout_counts_from_the_last_event(
    autojump_clock: trio.testing.MockClock, kind: str
) -> None:
    client = Client()
    early_wakes = IDLE_TIMER.early_wakes
    ex = await _relay([(1, EVENT), (5, EVENT), (40, EVENT)], client, kind, idle_timeout=30)
    assert ex.outcome is Outcome.UPSTREAM_IDLE_TIMEOUT
    assert trio.current_time() == 36  # last event at 6 s + 30 s
    # Over the socket, the deadline set at the first event (31 s) wakes the read
    # early, and it goes on to 36 s; through httpx the deadline moved at 6 s.
    assert IDLE_TIMER.early_wakes - early_wakes == (1 if kind == "socket" else 0)
    assert client.status == 200 and client.body.endswith(b'"upstream_idle_timeout"}}\n\n')
    assert client.body.count(EVENT) == 2


async def test_a_stream_longer_than_the_idle_timeout_loses_no_byte_to_its_early_wakes(
    autojump_clock: trio.testing.MockClock, kind: str
) -> None:
    client = Client()
    events = [b'data: {"id":"c1","n":%d}\n\n' % n for n in range(100)]  # one a second
    early_wakes = IDLE_TIMER.early_wakes
    ex = await _relay([(1, event) for event in events], client, kind, idle_timeout=30)
    assert ex.outcome is Outcome.UPSTREAM_IDLE_TIMEOUT
    assert trio.current_time() == 130  # the last event at 100 s, + 30 s
    assert client.body.startswith(b"".join(events)) and ex.events == 100
    assert IDLE_TIMER.early_wakes - early_wakes == (4 if kind == "socket" else 0)


@pytest.mark.parametrize(("resets", "ends_at"), [(False, 31), (True, 81)])
async def test_heartbeats_reset_the_idle_timer_only_when_configured(
    autojump_clock: trio.testing.MockClock, kind: str, resets: bool, ends_at: float
) -> None:
    client = Client()
    steps = [(1, EVENT), *[(10, HEARTBEAT)] * 5]  # heartbeats until 51 s, then silence
    ex = await _relay(steps, client, kind, idle_timeout=30, heartbeat_resets_idle=resets)
    assert ex.outcome is Outcome.UPSTREAM_IDLE_TIMEOUT
    assert trio.current_time() == ends_at


async def test_max_stream_duration_ends_a_stream_that_never_stops(
    autojump_clock: trio.testing.MockClock, kind: str
) -> None:
    client = Client()
    ex = await _relay([(1, EVENT)] * 100, client, kind, max_stream_duration=10.5, idle_timeout=30)
    assert ex.outcome is Outcome.MAX_DURATION
    assert trio.current_time() == 10.5
    assert client.body.count(EVENT) == 10 and b"max_stream_duration" in client.body


async def test_a_client_that_stops_reading_is_cut_after_the_stall_timeout(
    autojump_clock: trio.testing.MockClock, kind: str
) -> None:
    client = Client(reads=1)  # takes the first body message, then blocks (shielded write)
    steps = [(1, EVENT)] * 50
    ex = await _relay(steps, client, kind, channel_size=2, client_stall_timeout=30, idle_timeout=5)
    assert ex.outcome is Outcome.SLOW_CLIENT
    # 1 s: sent; 2 s: stuck in the client's send; 3 s, 4 s: queued (channel full);
    # 5 s: no room, the stall timer starts. The idle timer (5 s) never fires meanwhile.
    assert trio.current_time() == 5 + 30
    assert ex.upstream_closed_at == 35 and not ex.held


async def test_a_hang_up_ends_the_relay_at_once(
    autojump_clock: trio.testing.MockClock, kind: str
) -> None:
    client = Client()

    async def hang_up() -> None:
        await trio.sleep(2.5)
        client.gone.set()

    closed: list[float] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(hang_up)
        ex = await _relay([(1, EVENT)] * 10, client, kind, closed)
    assert ex.outcome is Outcome.CLIENT_DISCONNECT
    assert ex.disconnected_at == 2.5
    assert closed[:1] == [2.5]  # seen closed by the upstream itself, at once
