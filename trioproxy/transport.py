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
- A reused connection that the server already closed is detected before use
  (readable idle socket = EOF or junk) and replaced; a request that fails on a
  reused connection before any response byte is retried once on a new one.
- Errors are httpx's (``ConnectError``, ``ConnectTimeout``, ``ReadError``,
  ``WriteError``, ``RemoteProtocolError``), so the gateway's mapping table in
  :mod:`trioproxy.errors` applies unchanged.
- No read timeout: the relay owns the TTFT and idle timers.

The body stream yields one piece per socket read (chunk payloads joined).
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncGenerator
from dataclasses import dataclass

import httpx
import trio

from .http11 import MAX_HEAD, ChunkedDecoder, Head, ProtocolError, parse_head, request_head

__all__ = ["PoolStatistics", "UpstreamTransport", "raw_chunks"]

READ_SIZE = 65536
Origin = tuple[bytes, bytes, int]


class _Conn:
    __slots__ = ("buf", "idle_since", "origin", "stream")

    def __init__(self, stream: trio.abc.Stream, origin: Origin) -> None:
        self.stream = stream
        self.origin = origin
        self.buf = b""  # bytes read past the previous response (should stay empty)
        self.idle_since = 0.0

    def close(self) -> None:
        """Close now, without a checkpoint (safe in a cancelled scope)."""
        stream = self.stream
        if isinstance(stream, trio.SSLStream):
            stream = stream.transport_stream
        if isinstance(stream, trio.SocketStream):
            stream.socket.close()

    def looks_dead(self) -> bool:
        stream = self.stream
        if isinstance(stream, trio.SSLStream):
            stream = stream.transport_stream
        return isinstance(stream, trio.SocketStream) and stream.socket.is_readable()


@dataclass(frozen=True, slots=True)
class PoolStatistics:
    idle: int
    active: int
    opened: int
    reused: int


class UpstreamTransport(httpx.AsyncBaseTransport):
    def __init__(
        self,
        connect_timeout: float = 10.0,
        keepalive_expiry: float = 30.0,
        max_idle_per_origin: int = 1024,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._idle: dict[Origin, list[_Conn]] = {}
        self._connect_timeout = connect_timeout
        self._expiry = keepalive_expiry
        self._max_idle = max_idle_per_origin
        self._ssl = ssl_context
        self._active = 0
        self._opened = 0
        self._reused = 0

    def statistics(self) -> PoolStatistics:
        idle = sum(len(conns) for conns in self._idle.values())
        return PoolStatistics(idle, self._active, self._opened, self._reused)

    async def aclose(self) -> None:
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()

    # -- pool -----------------------------------------------------------------
    def _take_idle(self, origin: Origin) -> _Conn | None:
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

    def _release(self, conn: _Conn, reusable: bool) -> None:
        self._active -= 1
        conns = self._idle.setdefault(conn.origin, [])
        if reusable and not conn.buf and len(conns) < self._max_idle:
            conn.idle_since = trio.current_time()
            conns.append(conn)
        else:
            conn.close()

    async def _connect(self, origin: Origin) -> _Conn:
        scheme, host, port = origin
        try:
            with trio.fail_after(self._connect_timeout):
                stream: trio.abc.Stream = await trio.open_tcp_stream(host.decode(), port)
                if scheme == b"https":
                    context = self._ssl or ssl.create_default_context()
                    tls = trio.SSLStream(stream, context, server_hostname=host.decode())
                    await tls.do_handshake()
                    stream = tls
        except trio.TooSlowError:
            raise httpx.ConnectTimeout(f"connecting to {host.decode()}:{port} timed out") from None
        except (OSError, trio.BrokenResourceError, ssl.SSLError) as exc:
            raise httpx.ConnectError(f"cannot connect to {host.decode()}:{port}: {exc}") from exc
        self._opened += 1
        return _Conn(stream, origin)

    # -- exchange -------------------------------------------------------------
    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        port = url.port or (443 if url.raw_scheme == b"https" else 80)
        origin: Origin = (url.raw_scheme, url.raw_host, port)
        body = await request.aread()
        head = request_head(request.method.encode(), url.raw_path, request.headers.raw) + body
        for attempt in (0, 1):
            conn = self._take_idle(origin) if attempt == 0 else None
            reused = conn is not None
            if conn is None:
                conn = await self._connect(origin)
            self._active += 1
            try:
                await _send_all(conn, head)
                response_head = await _read_head(conn)
            except _NothingReceived:
                self._active -= 1
                conn.close()
                if reused:
                    continue  # the server had closed this keep-alive connection
                raise httpx.RemoteProtocolError(
                    "upstream closed the connection without a response"
                ) from None
            except BaseException:
                self._active -= 1
                conn.close()
                raise
            stream = _BodyStream(self, conn, response_head)
            return httpx.Response(
                response_head.status,
                headers=response_head.headers,
                stream=stream,
                extensions={"http_version": b"HTTP/1.1"},
                request=request,
            )
        raise AssertionError("unreachable")  # pragma: no cover


def raw_chunks(response: httpx.Response) -> AsyncGenerator[bytes, None]:
    """The body's pieces: straight from our byte stream when the response came
    from this transport (two generator layers fewer per chunk than
    ``aiter_raw``), else ``aiter_raw``.

    Resource handling: the caller closes the generator (``aclosing``) when it
    stops early; left to the garbage collector, an unfinished one is closed
    late and trio warns (``ResourceWarning``)."""
    inner = getattr(response.stream, "_stream", None)
    if isinstance(inner, _BodyStream):
        return inner.__aiter__()
    return _aiter_raw(response)


async def _aiter_raw(response: httpx.Response) -> AsyncGenerator[bytes, None]:
    async for chunk in response.aiter_raw():
        yield chunk


class _NothingReceived(Exception):
    pass


async def _send_all(conn: _Conn, data: bytes) -> None:
    try:
        await conn.stream.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        raise _NothingReceived from exc


async def _receive(conn: _Conn) -> bytes:
    try:
        return bytes(await conn.stream.receive_some(READ_SIZE))
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        raise httpx.ReadError(f"upstream connection reset: {exc}") from exc


async def _read_head(conn: _Conn) -> Head:
    buf = conn.buf
    while True:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            try:
                head = parse_head(buf[:end])
            except ProtocolError as exc:
                raise httpx.RemoteProtocolError(str(exc)) from None
            buf = buf[end + 4 :]
            if 100 <= head.status < 200:  # informational: the real head follows
                continue
            conn.buf = buf
            return head
        if len(buf) > MAX_HEAD:
            raise httpx.RemoteProtocolError("upstream response head too large")
        try:
            data = await conn.stream.receive_some(READ_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            data = b""
        if not data:
            if not buf:
                raise _NothingReceived
            raise httpx.RemoteProtocolError("upstream closed the connection mid-head")
        buf += data


class _BodyStream(httpx.AsyncByteStream):
    """The response body; the connection returns to the pool only after it was
    read to its end, and is closed at once on any other ending."""

    def __init__(self, transport: UpstreamTransport, conn: _Conn, head: Head) -> None:
        self._transport = transport
        self._conn: _Conn | None = conn
        self._head = head
        self._complete = False

    async def __aiter__(self) -> AsyncGenerator[bytes, None]:
        conn = self._conn
        if conn is None:
            raise httpx.StreamClosed()
        head = self._head
        try:
            if not head.has_body:
                pass
            elif head.chunked:
                decoder = ChunkedDecoder()
                data, conn.buf = conn.buf, b""
                while True:
                    if data:
                        try:
                            piece = decoder.feed(data)
                        except ProtocolError as exc:
                            raise httpx.RemoteProtocolError(str(exc)) from None
                        if piece:
                            yield piece
                        if decoder.done:
                            conn.buf = decoder.rest
                            break
                    data = await _receive(conn)
                    if not data:
                        raise httpx.RemoteProtocolError("upstream closed mid-body (chunked)")
            else:
                left = head.length  # None: until the connection closes
                data, conn.buf = conn.buf, b""
                while left is None or left > 0:
                    if data:
                        if left is not None:
                            if len(data) > left:
                                data, conn.buf = data[:left], data[left:]
                            left -= len(data)
                        yield data
                        if left == 0:
                            break
                    data = await _receive(conn)
                    if not data:
                        if left is None:
                            break
                        raise httpx.RemoteProtocolError("upstream closed mid-body")
            self._complete = True
        finally:
            self._finish()  # complete: back to the pool now; otherwise closed now

    def _finish(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._transport._release(conn, self._complete and self._head.keep_alive)

    async def aclose(self) -> None:
        self._finish()
