"""Guards around Hypercorn's trio worker (0.17-0.18): each found by our tests or bench.

This is the one module that touches Hypercorn's private names.

Rules:
- Each guard wraps one Hypercorn method, keeps its behaviour but for the one fault it
  names. The server installs them as it starts serving
  (:func:`trioproxy.server.guard_install.install_hypercorn_guards`), after
  :func:`check_hypercorn_version` refused a release they were not read against
  (``TESTED_HYPERCORN``; bounded in ``pyproject.toml``).
- Each guard but 7 has a strict-xfail twin in ``tests/test_hypercorn.py``: without the guard
  the fault shows; when a release fixes it, the twin passes, fails the suite: the guard can go.
- A guard for speed stays only while it pays: ``python -m bench.guards`` prices each one
  with and without it (docs/hypercorn-guards.md has the ledger).

The guards (what each fixes and how it was found: its docstring):

1. ``_end_idle_wait_on_eof``: a closed idle connection lingered (chaos).
2. ``_contain_connection_errors``: Hypercorn #225, one connection stopped the worker.
3. ``_cap_connections``: no cap on open connections (``max_connections``).
4. ``_keep_alive_without_a_task_per_request``: a timer task started per request.
5. ``_accept_what_is_queued``: one accept per scheduler pass in a burst.
6. ``_frame_plain_responses_here``: a head checked five times, chunks through h11.
7. ``_write_chunks_from_the_reader``: no fault, the relay's fast path (no twin).
8. ``_bound_request_heads``: a request head trickled in for ``keep_alive_timeout``.
9. ``_write_without_waiting``: a write yielded first; a closing response could lose its bytes.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from typing import Any, cast

import h11
import trio

from .. import asgi
from .connections import ACCEPT_BATCH, CONNECTIONS, peer_address, run_handler
from .direct_write import DirectChunks
from .guard_stats import HEADS, WRITES, Patch, WritePaths
from .hypercorn_version import TESTED_HYPERCORN, UnsupportedHypercorn, check_hypercorn_version
from .keepalive import KeepAliveTimer
from .response_head import frame_chunk, is_chunked, plain_head

__all__ = ["CONNECTIONS", "GUARDS", "HEADS", "KeepAliveTimer", "WRITES", "WritePaths"]
__all__ += [
    "keep_alive_timer",
    "TESTED_HYPERCORN",
    "UnsupportedHypercorn",
    "check_hypercorn_version",
]

log = logging.getLogger("trioproxy")


def _end_idle_wait_on_eof() -> Patch:
    """1. A client closing an idle keep-alive connection ends ``TCPServer.run``'s
    read loop, but its task group waits for the idle task: the task and CLOSE_WAIT
    socket stayed ``keep_alive_timeout``. The idle task stops when the reads end."""
    from hypercorn.trio.tcp_server import TCPServer

    read_data = TCPServer._read_data

    async def _read_data(self: Any) -> None:
        await read_data(self)
        idle = self.idle_task
        if isinstance(idle, KeepAliveTimer):  # guard 4's timer: stop is "busy", end is the end
            idle.end()
        else:
            await idle.stop()

    return TCPServer, "_read_data", _read_data


def _contain_connection_errors() -> Patch:
    """2. Hypercorn #225: a malformed chunked body while the response closes the
    connection races Hypercorn's error response with its ``send_eof``
    (``BusyResourceError``), which stopped the server. It ends that connection only."""
    from hypercorn.trio.tcp_server import TCPServer

    run = TCPServer.run

    async def guarded_run(self: Any) -> None:
        try:
            await run(self)
        except* Exception as group:  # Cancelled is not an Exception: it propagates
            log.warning("connection ended by an internal Hypercorn error: %r", group.exceptions)
            with trio.move_on_after(1, shield=True):
                await self.stream.aclose()

    return TCPServer, "run", guarded_run


def _cap_connections() -> Patch:
    """3. ``_cap_connections``: Hypercorn's trio worker accepts connections without
    bound (its ``backlog`` only queues them), so a flood of idle or trickling
    connections costs a task and buffers each. Past ``max_connections`` a new
    connection is closed at once, counted, and logged (at most once a second); so is
    one past ``max_connections_per_ip`` from its peer (:mod:`.connections`)."""
    from hypercorn.trio.tcp_server import TCPServer

    run = TCPServer.run

    async def capped_run(self: Any) -> None:
        peer = peer_address(self.stream)
        if not CONNECTIONS.take(peer):
            with trio.move_on_after(1, shield=True):
                await self.stream.aclose()
            return
        try:
            await run(self)
        finally:
            CONNECTIONS.give_back(peer)

    return TCPServer, "run", capped_run


def keep_alive_timer(server: Any) -> KeepAliveTimer:
    """Guard 4's timer for a Hypercorn ``TCPServer`` (what it reads of the server)."""
    return KeepAliveTimer(
        server.config.keep_alive_timeout,
        server.context.terminated,
        server._initiate_server_close,
        lambda task_group, run: task_group._nursery.start_soon(run, name="keep-alive-timer"),
        getattr(server.config, "header_timeout", math.inf),
    )


def _keep_alive_without_a_task_per_request() -> Patch:
    """4. ``_keep_alive_without_a_task_per_request``: Hypercorn keeps a
    connection's keep-alive timer as a ``TrioSingleTask``: a request's end
    starts an ``_idle_timeout`` task (``nursery.start``, under a lock), the next
    request's start takes the lock to cancel it before the app is called. Here a
    connection's :class:`KeepAliveTimer` is one task whose deadline moves. Same
    behaviour: an idle connection closes ``keep_alive_timeout`` after its last
    response, and at once when the server terminates."""
    from hypercorn.trio.tcp_server import TCPServer

    run = TCPServer.run

    async def run_with_one_timer(self: Any) -> None:
        self.idle_task = keep_alive_timer(self)
        await run(self)

    return TCPServer, "run", run_with_one_timer


def _accept_what_is_queued() -> Patch:
    """5. ``_accept_what_is_queued``: trio's listener accept checkpoints after each
    connection, so a burst of N connections is taken one per scheduler pass, and
    each pass is as long as the work of the connections taken before it (200
    streams arriving together: 650 ms before the last request reached the app).
    Here a new connection's task first takes, without waiting, what else its
    listening socket has queued (at most ``ACCEPT_BATCH``) and starts each in the
    handler nursery, as trio would have. The listening sockets are the ones the
    config made (``listening_sockets``, set by
    :class:`trioproxy.server.serve.HypercornConfig`); without them nothing changes."""
    from hypercorn.trio.tcp_server import TCPServer

    run = TCPServer.run

    async def run_after_taking_the_queue(self: Any) -> None:
        nursery = trio.lowlevel.current_task().parent_nursery
        listening = getattr(self.config, "listening_sockets", ()) if nursery else ()
        for sock in listening:
            for _ in range(ACCEPT_BATCH):
                try:
                    conn, _ = sock.accept()
                except OSError:  # none queued (EAGAIN), closed, out of fds: trio's loop decides
                    break
                stream: Any = trio.SocketStream(trio.socket.from_stdlib_socket(conn))
                server = TCPServer(self.app, self.config, self.context, self.state, stream)
                cast(trio.Nursery, nursery).start_soon(run_handler, server)
        await run(self)

    return TCPServer, "run", run_after_taking_the_queue


def _frame_plain_responses_here() -> Patch:
    """6. A plain head (:mod:`trioproxy.server.response_head` has the rules) is
    checked once, h11 told of it without the app's headers, and written; a chunked
    body's pieces are framed here. ``HEAD``, HTTP/1.0,
    WebSocket, a connection's last request (``connection: close``) and every
    head the rules leave out go Hypercorn's way."""
    from hypercorn.events import RawData
    from hypercorn.protocol.events import Body, Response
    from hypercorn.protocol.h11 import H11Protocol
    from hypercorn.protocol.http_stream import HTTPStream

    stream_send = H11Protocol.stream_send

    async def send_framed_here(self: Any, event: Any) -> None:
        if type(event) is Body and self.__dict__.get("_trioproxy_chunked") and event.data:
            if self.connection.our_state is h11.SEND_BODY:
                HEADS.chunks += 1
                await self.send(RawData(data=frame_chunk(event.data)))
                return
        elif type(event) is Response and event.status_code >= 200:
            self._trioproxy_chunked = False
            stream = self.stream
            if (
                type(stream) is HTTPStream
                and stream.scope["method"] != "HEAD"
                and type(self.connection) is h11.Connection
                and self.keep_alive_requests < self.config.keep_alive_max_requests
            ):
                headers = [*event.headers, *self.config.response_headers("h11")]
                try:
                    head = plain_head(self.connection, event.status_code, headers)
                except h11.LocalProtocolError:
                    if self.connection.their_state != h11.ERROR:
                        raise
                    return
                if head is not None:
                    HEADS.plain += 1
                    self._trioproxy_chunked = is_chunked(head)
                    await self.send(RawData(data=head))
                    return
            HEADS.h11 += 1
        await stream_send(self, event)

    return H11Protocol, "stream_send", send_framed_here


def _write_chunks_from_the_reader() -> Patch:
    """7. :func:`trioproxy.asgi.direct_writer` for a plain HTTP/1.1 connection: ready
    when guard 6 framed the body chunked and sent the head, the lock is free and
    the stream open; the rest goes through ``protocol_send``."""
    from hypercorn.events import RawData
    from hypercorn.protocol.h11 import H11Protocol
    from hypercorn.protocol.http_stream import HTTPStream
    from hypercorn.trio.tcp_server import TCPServer

    def direct_writer(send: Any) -> DirectChunks | None:
        http = getattr(send, "__self__", None)
        proto = getattr(getattr(http, "send", None), "__self__", None)
        server = getattr(getattr(proto, "send", None), "__self__", None)
        if type(http) is not HTTPStream or type(proto) is not H11Protocol:
            return None
        stream: Any = getattr(server, "stream", None)
        if type(server) is not TCPServer or type(stream) is not trio.SocketStream:
            return None  # TLS streams go the usual way

        def ready() -> bool:
            if http.closed or server.send_lock.locked():
                return False
            return (
                bool(proto.__dict__.get("_trioproxy_chunked"))
                and proto.connection.our_state is h11.SEND_BODY
            )

        return DirectChunks(
            ready, stream.socket.fileno, lambda rest: proto.send(RawData(data=rest))
        )

    return asgi, "direct_writer", direct_writer


def _bound_request_heads() -> Patch:
    """8. Found by an outside review: reading a request head was bounded only by
    ``keep_alive_timeout`` (75 s), so 200 connections trickling heads shut everyone
    out. The first bytes that reach an idle connection tell guard 4's timer, which
    then closes the connection ``header_timeout`` later unless the head is whole."""
    from hypercorn.events import RawData
    from hypercorn.protocol.h11 import H11Protocol

    handle = H11Protocol.handle

    async def handle_bounding_heads(self: Any, event: Any) -> None:
        if type(event) is RawData:
            timer = getattr(getattr(self.send, "__self__", None), "idle_task", None)
            if type(timer) is KeepAliveTimer:
                timer.arrived()
        await handle(self, event)

    return H11Protocol, "handle", handle_bounding_heads


def _write_without_waiting() -> Patch:
    """9. ``protocol_send`` took the send lock and called ``send_all`` for every write
    (two trips through the scheduler per chunk). With the lock free (no write in
    progress or waiting) on plain TCP, the bytes go out at once with a non-blocking
    ``os.write``, no await between check and write, so order is kept. What the
    socket does not take (a slow client), and every error, go Hypercorn's way,
    shielded, under the lock: slow clients, hang-ups, closed sockets as before. Also
    what keeps a response that closes its connection whole: Hypercorn's own write
    yields to the scheduler, and the close that follows can run first and discard
    the response (the request-smuggling test in ``tests/test_front_clients.py``)."""
    from hypercorn.events import RawData
    from hypercorn.trio.tcp_server import TCPServer

    protocol_send = TCPServer.protocol_send

    async def protocol_send_at_once(self: Any, event: Any) -> None:
        if type(event) is RawData and not self.send_lock.locked():
            stream = self.stream
            if type(stream) is trio.SocketStream:  # TLS streams go the usual way
                data = event.data
                try:
                    written = os.write(stream.socket.fileno(), data)
                except OSError:  # would block, reset, closed: Hypercorn's way decides
                    written = 0
                if written == len(data):
                    WRITES.direct += 1
                    return
                if written:
                    event = RawData(data=data[written:])
        WRITES.waited += 1
        await protocol_send(self, event)

    return TCPServer, "protocol_send", protocol_send_at_once


GUARDS: dict[str, Callable[[], Patch]] = {
    "end_idle_wait_on_eof": _end_idle_wait_on_eof,
    "contain_connection_errors": _contain_connection_errors,
    "cap_connections": _cap_connections,
    "keep_alive_without_a_task_per_request": _keep_alive_without_a_task_per_request,
    "accept_what_is_queued": _accept_what_is_queued,
    "frame_plain_responses_here": _frame_plain_responses_here,
    "write_chunks_from_the_reader": _write_chunks_from_the_reader,
    "bound_request_heads": _bound_request_heads,
    "write_without_waiting": _write_without_waiting,
}
