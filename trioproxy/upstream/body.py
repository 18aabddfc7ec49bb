"""An upstream connection and the response body read from it.

Rules:
- :class:`UpstreamBody` is a plain async iterator (``__anext__`` / ``aclose``),
  not an async generator: nothing is left for the garbage collector to close,
  and ``aclose`` never awaits, so it runs inside a cancelled scope too.
- It yields one piece per socket read (chunk payloads joined, see
  :class:`~trioproxy.upstream.http11.ChunkedDecoder`), never an empty piece.
- The connection goes back to its pool only when the body was read to its end
  and the server allowed keep-alive; every other ending closes the socket at
  once, synchronously (:meth:`Conn.close`), by ``aclose`` when the ending was a
  cancellation: a read cut short by one leaves the body as it was, and over a
  plain socket (:attr:`UpstreamBody.resumable`) the next read simply goes on
  (the only wait is for readiness, which consumes nothing).

The transport passes the body in the response's public ``extensions`` under
:data:`BODY_EXTENSION`; :func:`body_of` takes it from there, or wraps
``Response.aiter_raw()`` for a response from any other transport.

Error handling: a reset or early close is :class:`~trioproxy.errors.UpstreamBroken`
(mapped here, where the socket is read).
"""

from __future__ import annotations

import enum
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import httpx
import trio

from ..errors import UpstreamBroken
from .http11 import ChunkedDecoder, Head, ProtocolError

__all__ = [
    "AnyBody",
    "BODY_EXTENSION",
    "READS",
    "READS_AT_ONCE",
    "STREAM_ERRORS",
    "TRACE_EXTENSION",
    "Conn",
    "ReadPaths",
    "UpstreamBody",
    "body_of",
]

BODY_EXTENSION = "trioproxy.body"
# A request may carry a callable here: the transport reports its moments to it
# (connect_start, connected / reused, request_written, response_head).
TRACE_EXTENSION = "trioproxy.trace"
READ_SIZE = 65536
# What a broken or closed upstream socket raises (the transport maps these too).
STREAM_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)
read_now = os.read  # a non-blocking read of a socket descriptor (tests replace it)


# Reads in a row a connection takes at once, before it waits for readiness (a
# checkpoint: cancellation and the other tasks get their turn) although data is there.
READS_AT_ONCE = 16


@dataclass
class ReadPaths:
    """Upstream socket reads of this process: taken at once, or after a wait."""

    at_once: int = 0  # data was there: no trip through the scheduler
    waited: int = 0  # nothing yet (or READS_AT_ONCE in a row): waited for readiness


READS = ReadPaths()


class Conn:
    """One upstream connection: its stream, origin and any bytes read past a response.

    A plain TCP connection reads its socket itself (:meth:`receive`): a
    non-blocking ``os.read`` first, and only when nothing is there a wait for
    readiness. trio's ``receive_some`` makes the same read but then passes
    through the scheduler even when data was there: one more task step per
    upstream read. At most ``READS_AT_ONCE`` reads in a row skip the wait."""

    __slots__ = ("_fd", "_in_a_row", "buf", "idle_since", "origin", "stream")

    def __init__(self, stream: trio.abc.Stream, origin: tuple[bytes, bytes, int]) -> None:
        self.stream = stream
        self.origin = origin
        self.buf = b""  # bytes read past the previous response (should stay empty)
        self.idle_since = 0.0
        self._fd = stream.socket.fileno() if type(stream) is trio.SocketStream else -1
        self._in_a_row = 0

    def _socket_stream(self) -> trio.abc.Stream:
        stream = self.stream
        return stream.transport_stream if isinstance(stream, trio.SSLStream) else stream

    def close(self) -> None:
        """Close now, without a checkpoint (safe in a cancelled scope). The
        descriptor is forgotten first: its number may be reused at once."""
        self._fd = -1
        stream = self._socket_stream()
        if isinstance(stream, trio.SocketStream):
            stream.socket.close()

    @property
    def plain(self) -> bool:
        """A plain TCP connection, read here (not TLS, not closed)."""
        return self._fd >= 0

    def looks_dead(self) -> bool:
        """An idle connection with something to read: EOF, a reset or junk."""
        stream = self._socket_stream()
        return isinstance(stream, trio.SocketStream) and stream.socket.is_readable()

    async def receive(self) -> bytes:
        """The next bytes (b"" at EOF). Error handling: a reset or a closed
        connection is :class:`~trioproxy.errors.UpstreamBroken`."""
        try:
            fd = self._fd
            if fd < 0:  # TLS: trio's stream
                return bytes(await self.stream.receive_some(READ_SIZE))
            while True:
                if 0 <= self._in_a_row < READS_AT_ONCE:
                    try:
                        data = read_now(fd, READ_SIZE)
                    except BlockingIOError:
                        pass
                    else:
                        # A short read took all there was: the next one waits first
                        # (no read that can only fail, one syscall less per token).
                        self._in_a_row = self._in_a_row + 1 if len(data) == READ_SIZE else -1
                        READS.at_once += 1
                        return data
                self._in_a_row = 0
                READS.waited += 1
                await trio.lowlevel.wait_readable(fd)
        except STREAM_ERRORS as exc:
            raise UpstreamBroken(f"upstream connection reset: {exc}") from None


class _Framing(enum.Enum):
    NONE = "no body"
    CHUNKED = "chunked"
    LENGTH = "content-length"
    UNTIL_CLOSE = "until close"


class UpstreamBody(httpx.AsyncByteStream):
    """The response body, read from ``conn``; ``release(conn, reusable)`` is
    called exactly once, when the body ends or is closed."""

    __slots__ = ("_conn", "_decoder", "_framing", "_keep_alive", "_left", "_release")

    def __init__(self, release: Callable[[Conn, bool], None], conn: Conn, head: Head) -> None:
        self._release = release
        self._conn: Conn | None = conn
        self._keep_alive = head.keep_alive
        self._left = head.length or 0
        self._decoder: ChunkedDecoder | None = None
        if not head.has_body:
            self._framing = _Framing.NONE
        elif head.chunked:
            self._framing = _Framing.CHUNKED
            self._decoder = ChunkedDecoder()
        elif head.length is not None:
            self._framing = _Framing.LENGTH
        else:
            self._framing = _Framing.UNTIL_CLOSE

    def __aiter__(self) -> UpstreamBody:
        return self

    async def __anext__(self) -> bytes:
        conn = self._conn
        if conn is None:
            raise StopAsyncIteration
        try:
            piece = await self._next_piece(conn)
        except trio.Cancelled:
            raise  # cut short: nothing was consumed; ``aclose`` ends the body
        except BaseException:
            self._finish(False)
            raise
        if piece is None:
            self._finish(self._keep_alive)
            raise StopAsyncIteration
        return piece

    async def _next_piece(self, conn: Conn) -> bytes | None:
        """The next non-empty piece of body, or None at its end."""
        framing = self._framing
        while True:
            data, conn.buf = conn.buf, b""
            if framing is _Framing.CHUNKED:
                decoder = self._decoder
                assert decoder is not None
                if decoder.done:
                    conn.buf = decoder.rest
                    return None
                if data:
                    try:
                        piece = decoder.feed(data)
                    except ProtocolError as exc:
                        raise UpstreamBroken(f"upstream sent an invalid chunk: {exc}") from None
                    if decoder.done:
                        conn.buf, decoder.rest = decoder.rest, b""
                        if piece:
                            return piece
                        return None
                    if piece:
                        return piece
            elif framing is _Framing.LENGTH:
                if self._left == 0:
                    conn.buf = data
                    return None
                if data:
                    if len(data) > self._left:
                        data, conn.buf = data[: self._left], data[self._left :]
                    self._left -= len(data)
                    return data
            elif framing is _Framing.UNTIL_CLOSE:
                if data:
                    return data
            else:
                conn.buf = data
                return None
            data = await conn.receive()
            if not data:
                if framing is _Framing.UNTIL_CLOSE:
                    self._keep_alive = False
                    return None
                raise UpstreamBroken(f"upstream closed the connection mid-body ({framing.value})")
            conn.buf = data

    @property
    def resumable(self) -> bool:
        """Whether a read cut short by a cancellation can simply be made again: a
        plain socket's. (A TLS stream cancelled mid-record may be broken.)"""
        return self._conn is not None and self._conn.plain

    def _finish(self, reusable: bool) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._release(conn, reusable)

    async def aclose(self) -> None:
        """Stop early: the connection is closed, not reused (no checkpoint)."""
        self._finish(False)


class _RawBody:
    """Any other transport's body, through httpx's public ``aiter_raw``."""

    __slots__ = ("_iterator", "_response")

    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self._iterator: AsyncIterator[bytes] = response.aiter_raw()

    def __aiter__(self) -> _RawBody:
        return self

    async def __anext__(self) -> bytes:
        return await self._iterator.__anext__()

    async def aclose(self) -> None:
        await self._response.aclose()


AnyBody = UpstreamBody | _RawBody  # what body_of gives


def body_of(response: httpx.Response) -> AnyBody:
    """The body of ``response`` as an async iterator with ``aclose``."""
    body = response.extensions.get(BODY_EXTENSION)
    return body if isinstance(body, UpstreamBody) else _RawBody(response)
