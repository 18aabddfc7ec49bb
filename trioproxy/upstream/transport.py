"""An httpx transport of our own: HTTP/1.1 over trio sockets, O(1) keep-alive pool.

Why: httpcore's ``AsyncConnectionPool`` walks every pooled connection (expiry,
idleness, a socket readability poll) on every request and every release. With
hundreds of live streams that bookkeeping took 75% of the gateway's core. Here
each origin keeps a LIFO list of idle connections: taking and returning one is
O(1), and only the connection being reused is checked.

Rules:
- HTTP/1.1 only (a cancelled HTTP/2 stream never reaches the server as a reset).
- A connection goes back to the pool only after its whole body was read and
  the server allowed keep-alive. Any other ending (cancellation, error, an early
  ``aclose``) closes its socket at once, synchronously: the upstream sees the
  close without waiting for a checkpoint.
- A request is never sent twice once its bytes may have reached the server (a
  model server bills the generation it started). A reused connection the
  server already closed is detected before writing (readable idle socket = EOF
  or junk) and replaced; a write that fails on a reused connection (the peer had
  reset it) is retried once on a new one. A request that was written and got
  no response fails: :class:`~trioproxy.errors.UpstreamBroken`.
- Cookies: the ``Cookie`` request header is never sent and ``Set-Cookie`` is
  dropped from responses, so no client (and no cookie jar) ever holds one.
- No read timeout: the relay owns the TTFT and idle timers.
- One TLS context per transport, built on first use.

Error handling: every library error (``OSError``, trio's stream errors,
``ssl.SSLError``, a :class:`~trioproxy.upstream.http11.ProtocolError`) is
mapped here, once, to the gateway's hierarchy: ``UpstreamUnreachable`` while
connecting, ``UpstreamBroken`` after. httpx passes them through unchanged.

The body is an :class:`UpstreamBody` (a plain async iterator, one piece per
socket read, chunk payloads joined); the relay takes it from the response's
public ``extensions`` (:func:`body_of`), skipping httpx's wrappers.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import trio

from ..errors import UpstreamBroken, UpstreamUnreachable
from .body import BODY_EXTENSION, STREAM_ERRORS, TRACE_EXTENSION, Conn, UpstreamBody
from .http11 import MAX_HEAD, Head, ProtocolError, parse_head, request_head

__all__ = ["PoolStatistics", "UpstreamTransport"]

Origin = tuple[bytes, bytes, int]


async def open_tcp(host: str, port: int) -> trio.SocketStream:
    """``trio.open_tcp_stream``, but an IP address is connected to at once: no
    resolver call and no happy-eyeballs nursery (263 -> 101 µs a connection; a
    burst of new streams on an empty pool opens one each). A name still goes
    through ``open_tcp_stream``."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return await trio.open_tcp_stream(host, port)
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    sock = trio.socket.socket(family, socket.SOCK_STREAM)
    try:
        await sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)


@dataclass(frozen=True, slots=True)
class PoolStatistics:
    idle: int
    active: int
    opened: int
    reused: int
    written_at_once: int


class UpstreamTransport(httpx.AsyncBaseTransport):
    def __init__(
        self,
        connect_timeout: float = 10.0,
        keepalive_expiry: float = 30.0,
        max_idle_per_origin: int = 1024,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._idle: dict[Origin, list[Conn]] = {}
        self._connect_timeout = connect_timeout
        self._expiry = keepalive_expiry
        self._max_idle = max_idle_per_origin
        self._ssl = ssl_context
        self._active = 0
        self._opened = 0
        self._reused = 0
        self._written_at_once = 0  # requests the socket took without a wait

    def statistics(self) -> PoolStatistics:
        idle = sum(len(conns) for conns in self._idle.values())
        return PoolStatistics(idle, self._active, self._opened, self._reused, self._written_at_once)

    async def aclose(self) -> None:
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()

    # -- pool -----------------------------------------------------------------
    def _take_idle(self, origin: Origin) -> Conn | None:
        conns = self._idle.get(origin)
        now = trio.current_time()
        while conns:
            conn = conns.pop()
            if now - conn.idle_since > self._expiry:
                for old in [conn, *conns]:  # LIFO: everything below is older
                    old.close()
                conns.clear()
                return None
            if conn.looks_dead():
                conn.close()
                continue
            self._reused += 1
            return conn
        return None

    def release(self, conn: Conn, reusable: bool) -> None:
        self._active -= 1
        conns = self._idle.setdefault(conn.origin, [])
        if reusable and not conn.buf and len(conns) < self._max_idle:
            conn.idle_since = trio.current_time()
            conns.append(conn)
        else:
            conn.close()

    def _tls(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl

    async def _connect(self, origin: Origin) -> Conn:
        scheme, host, port = origin
        where = f"{host.decode()}:{port}"
        try:
            with trio.fail_after(self._connect_timeout):
                stream: trio.abc.Stream = await open_tcp(host.decode(), port)
                if scheme == b"https":
                    stream = await self._handshake(stream, host.decode())
        except trio.TooSlowError:
            raise UpstreamUnreachable(f"timed out connecting to upstream {where}") from None
        except (*STREAM_ERRORS, ssl.SSLError) as exc:
            # trio wraps a failed handshake's SSLError (certificate, protocol) in a
            # BrokenResourceError whose own text is empty: the reason is the cause.
            reason = exc.__cause__ if isinstance(exc.__cause__, ssl.SSLError) else exc
            raise UpstreamUnreachable(f"cannot connect to upstream {where}: {reason}") from None
        self._opened += 1
        return Conn(stream, origin)

    async def _handshake(self, stream: trio.abc.Stream, host: str) -> trio.abc.Stream:
        """TLS over ``stream``; a handshake that fails (or is cancelled, or
        times out) closes the socket at once."""
        tls = trio.SSLStream(stream, self._tls(), server_hostname=host)
        try:
            await tls.do_handshake()
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        return tls

    # -- exchange -------------------------------------------------------------
    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        return await self.send(
            request.method.encode(), request.url, request.headers.raw, body,
            request.extensions, request,
        )  # fmt: skip

    async def send(
        self,
        method: bytes,
        url: httpx.URL,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        extensions: Mapping[str, Any],
        request: httpx.Request | None = None,
    ) -> httpx.Response:
        """The request as the bytes it is made of (what :meth:`handle_async_request`
        takes from an ``httpx.Request``; :class:`~trioproxy.upstream.client.Upstream`
        calls it directly). ``Cookie`` headers are never sent."""
        port = url.port or (443 if url.raw_scheme == b"https" else 80)
        origin: Origin = (url.raw_scheme, url.raw_host, port)
        headers = [(n, v) for n, v in headers if n.lower() != b"cookie"]
        data = request_head(method, url.raw_path, headers) + body
        mark = extensions.get(TRACE_EXTENSION) or _no_mark
        conn = self._take_idle(origin)
        if conn is not None:
            mark("reused")
            if not await self._write(conn, data):
                conn = None  # the peer had reset the reused connection: nothing was read
        if conn is None:
            mark("connect_start")
            conn = await self._connect(origin)
            mark("connected")
            if not await self._write(conn, data):
                raise UpstreamBroken("upstream connection failed while sending the request")
        mark("request_written")
        try:
            head = await _read_head(conn)
        except BaseException:
            self._active -= 1
            conn.close()
            raise
        mark("response_head")
        stream = UpstreamBody(self.release, conn, head)
        return httpx.Response(
            head.status,
            headers=[(n, v) for n, v in head.headers if n.lower() != b"set-cookie"],
            stream=stream,
            extensions={"http_version": b"HTTP/1.1", BODY_EXTENSION: stream},
            request=request,
        )

    async def _write(self, conn: Conn, data: bytes) -> bool:
        """Send the request; False (connection closed) if the write failed.

        A plain TCP socket that takes the whole request takes it at once (a
        non-blocking ``os.write``: no trip through the scheduler before the
        upstream has the request); what it does not take goes by ``send_all``."""
        self._active += 1
        try:
            stream = conn.stream
            if type(stream) is trio.SocketStream:
                try:
                    written = os.write(stream.socket.fileno(), data)
                except (BlockingIOError, InterruptedError):
                    written = 0
                if written == len(data):
                    self._written_at_once += 1
                    return True
                data = data[written:]
            await stream.send_all(data)
        except STREAM_ERRORS:
            self._active -= 1
            conn.close()
            return False
        except BaseException:
            self._active -= 1
            conn.close()
            raise
        return True


def _no_mark(event: str) -> None:
    pass


async def _read_head(conn: Conn) -> Head:
    buf = conn.buf
    while True:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            try:
                head = parse_head(buf[:end])
            except ProtocolError as exc:
                raise UpstreamBroken(f"upstream sent an invalid response: {exc}") from None
            buf = buf[end + 4 :]
            if 100 <= head.status < 200:  # informational: the real head follows
                continue
            conn.buf = buf
            return head
        if len(buf) > MAX_HEAD:
            raise UpstreamBroken("upstream response head too large")
        try:
            data = await conn.receive()
        except UpstreamBroken:  # reset or closed: no response
            data = b""
        if not data:
            if not buf:
                raise UpstreamBroken("upstream closed the connection without a response")
            raise UpstreamBroken("upstream closed the connection mid-head")
        buf += data
