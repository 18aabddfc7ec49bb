"""Guards around Hypercorn's trio worker (0.17-0.18): each found by our tests or bench.

This is the one module that touches Hypercorn's private names.

Rules:
- Each guard wraps one Hypercorn method, keeps its behaviour but for the one
  fault it names. Importing this module changes nothing: the server installs
  the guards when it starts serving (:func:`install_hypercorn_guards`, from
  :mod:`trioproxy.server.serve`), after :func:`check_hypercorn_version`
  refused a release they were not read against (``TESTED_HYPERCORN``; also
  bounded in ``pyproject.toml``). :func:`uninstall_hypercorn_guards` puts
  Hypercorn back as it was.
- Each guard has a strict-xfail test in ``tests/test_hypercorn.py`` that runs
  Hypercorn without it and shows the fault is still there: when a Hypercorn
  release fixes one, that test passes, fails as strict xfail: the guard can go.

The guards:

1. ``_end_idle_wait_on_eof``: a closed idle keep-alive connection kept its task
   and CLOSE_WAIT socket for ``keep_alive_timeout`` (found by chaos).
2. ``_contain_connection_errors``: Hypercorn #225, one connection's internal error
   stopped the whole worker (found by the HTTP fuzz test).
3. ``_coalesce_head_with_first_body``: a stream's head goes out in the same socket
   write as its first bytes, not alone (found by profiling time to first byte).
4. ``_cap_connections``: no cap on open connections; past ``max_connections``
   new ones are closed at once (found reading the trio worker for issue 11).
5. ``_write_without_waiting``: a write the socket can take is made at once, not
   through a lock and ``send_all`` (two scheduler trips; found profiling paced streams).
6. ``_keep_alive_without_a_task_per_request``: one keep-alive timer task per
   connection, not a new one at a request's end (many of them) started and stopped
   under a lock (about five task steps each; found profiling the per-request cost).
7. ``_accept_what_is_queued``: trio accepts one connection per scheduler pass, so
   a burst of N waited N passes; a new connection's task takes what else is queued
   (found timing 200 streams that arrive together).
8. ``_frame_plain_responses_here``: a response head's headers were checked five
   times (Hypercorn, then h11 four times), ~100 µs a response, and each chunk went
   through h11's state machine (found profiling one stream at a time).
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
from collections.abc import Callable
from typing import Any, cast

import h11
import trio

from .guard_stats import CONNECTIONS, HEADS, WRITES, WritePaths
from .keepalive import KeepAliveTimer
from .response_head import frame_chunk, is_chunked, plain_head

__all__ = ["CONNECTIONS", "GUARDS", "HEADS", "KeepAliveTimer", "WRITES", "WritePaths"]
__all__ += ["keep_alive_timer"]
__all__ += ["TESTED_HYPERCORN", "UnsupportedHypercorn", "check_hypercorn_version"]
__all__ += ["install_hypercorn_guards", "uninstall_hypercorn_guards"]

log = logging.getLogger("trioproxy")
_Patch = tuple[type, str, Any]  # (class, method name, replacement)

TESTED_HYPERCORN = ("0.17", "0.18")  # major.minor releases the guards were read against


class UnsupportedHypercorn(RuntimeError):
    """The installed Hypercorn is not a release the guards were read against."""


def check_hypercorn_version(version: str | None = None) -> None:
    """Refuse a Hypercorn release the guards were not read against (one clear line)."""
    version = version or importlib.metadata.version("hypercorn")
    if ".".join(version.split(".")[:2]) not in TESTED_HYPERCORN:
        raise UnsupportedHypercorn(
            f"Hypercorn {version} is not supported: trioproxy's guards were read against "
            f"{', '.join(TESTED_HYPERCORN)} (pip install 'hypercorn>=0.17,<0.19')"
        )


def _end_idle_wait_on_eof() -> _Patch:
    """Guard against a Hypercorn trio-worker linger (0.18): when a client closes
    an idle keep-alive connection, ``TCPServer.run`` leaves its read loop but its
    task group still waits for the keep-alive idle task, so the connection's task
    and its CLOSE_WAIT socket stay for ``keep_alive_timeout``. Found by ``trioproxy
    chaos`` (invariant ``no_orphan_tasks``). Stopping the idle task once the read
    loop has ended lets the connection close at once."""
    from hypercorn.trio.tcp_server import TCPServer

    read_data = TCPServer._read_data

    async def _read_data(self: Any) -> None:
        await read_data(self)
        idle = self.idle_task
        if isinstance(idle, KeepAliveTimer):  # guard 6's timer: stop is "busy", end is the end
            idle.end()
        else:
            await idle.stop()

    return TCPServer, "_read_data", _read_data


def _contain_connection_errors() -> _Patch:
    """Guard against Hypercorn issue #225 (an unexpected error in one connection
    ends the whole worker). Found by ``tests/test_fuzz.py``: a malformed chunked
    body arriving while the app's response closes the connection makes
    Hypercorn's error response race its own ``send_eof`` on the socket
    (``trio.BusyResourceError``), which escaped ``serve_listeners`` and stopped
    the server. Here such an error ends that connection only, and is logged."""
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


def _coalesce_head_with_first_body() -> _Patch:
    """One socket write for a response's head and its first body bytes.

    Hypercorn's h11 protocol turns ``http.response.start`` into a socket write
    at once, and the first ``http.response.body`` into another: two sends, two
    trips through its write lock, for every response. The relay only ever sends
    a head together with the first bytes (a ``Start`` is queued with them), so
    the head is held here until the connection's next h11 event (body, end of
    message) and written with it. Error handling: as Hypercorn's own, a
    ``LocalProtocolError`` after the peer's error state sends nothing more than
    the held head.
    """
    from hypercorn.events import RawData
    from hypercorn.protocol.h11 import H11Protocol

    send_event = H11Protocol._send_h11_event

    async def _send_h11_event(self: Any, event: Any) -> None:
        head: bytes | None = getattr(self, "_trioproxy_head", None)
        if isinstance(event, h11.Response) and head is None:
            try:
                self._trioproxy_head = self.connection.send(event)
            except h11.LocalProtocolError:
                if self.connection.their_state != h11.ERROR:
                    raise
            return
        if head is None:
            await send_event(self, event)
            return
        self._trioproxy_head = None
        try:
            data = self.connection.send(event) or b""
        except h11.LocalProtocolError:
            if self.connection.their_state != h11.ERROR:
                raise
            data = b""
        await self.send(RawData(data=head + data))

    return H11Protocol, "_send_h11_event", _send_h11_event


def _cap_connections() -> _Patch:
    """4. ``_cap_connections``: Hypercorn's trio worker accepts connections without
    bound (its ``backlog`` only queues them), so a flood of idle or trickling
    connections costs a task and buffers each. Past ``max_connections`` a new
    connection is closed at once, counted, and logged (at most once a second)."""
    from hypercorn.trio.tcp_server import TCPServer

    run = TCPServer.run

    async def capped_run(self: Any) -> None:
        cap = CONNECTIONS
        if cap.open >= cap.limit:
            cap.refused += 1
            now = trio.current_time()
            if now - cap._logged_at >= 1.0:
                cap._logged_at = now
                log.warning(
                    "max_connections (%d) reached: closing new connections (%d so far)",
                    cap.limit, cap.refused,
                )  # fmt: skip
            with trio.move_on_after(1, shield=True):
                await self.stream.aclose()
            return
        cap.open += 1
        try:
            await run(self)
        finally:
            cap.open -= 1

    return TCPServer, "run", capped_run


def _write_without_waiting() -> _Patch:
    """5. ``_write_without_waiting``: Hypercorn's ``protocol_send`` takes the
    connection's send lock (a checkpoint) and calls ``send_all`` (another) for
    every write: two trips through the scheduler, per chunk of every stream.
    When no write is in progress on the connection (the lock is free, so no one
    waits for it either) and it is plain TCP, the bytes go to the socket at once
    with a non-blocking ``os.write`` on its descriptor, with no await between the
    check and the write, so order is kept. Whatever the socket does not take (a
    full send buffer: a client that reads slowly) and every error go the way
    Hypercorn goes, shielded, under the lock, so slow clients, hang-ups and
    closed sockets behave exactly as before."""
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


def keep_alive_timer(server: Any) -> KeepAliveTimer:
    """Guard 6's timer for a Hypercorn ``TCPServer`` (what it reads of the server)."""
    return KeepAliveTimer(
        server.config.keep_alive_timeout,
        server.context.terminated,
        server._initiate_server_close,
        lambda task_group, run: task_group._nursery.start_soon(run, name="keep-alive-timer"),
    )


def _keep_alive_without_a_task_per_request() -> _Patch:
    """6. ``_keep_alive_without_a_task_per_request``: Hypercorn keeps a
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


ACCEPT_BATCH = 64  # connections a new connection's task takes from the queue, at most


async def _run_handler(server: Any) -> None:
    """A connection taken by guard 7, run as trio's listener runs one (same task name)."""
    try:
        await server.run()
    finally:
        await trio.aclose_forcefully(server.stream)


def _accept_what_is_queued() -> _Patch:
    """7. ``_accept_what_is_queued``: trio's listener accept checkpoints after each
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
                cast(trio.Nursery, nursery).start_soon(_run_handler, server)
        await run(self)

    return TCPServer, "run", run_after_taking_the_queue


def _frame_plain_responses_here() -> _Patch:
    """8. ``_frame_plain_responses_here``: for a response h11 would frame as it
    does any plain one (:mod:`trioproxy.server.response_head` has the rules),
    the head's headers are checked once and h11 is told of the head without
    them; it is held for the first body bytes as guard 3 holds one. A chunked
    body's pieces are then framed here, not through h11 (nothing of its state
    changes for them). ``HEAD`` requests, HTTP/1.0, WebSocket streams, the
    ``connection: close`` of a connection's last request, and every head the
    rules leave out go Hypercorn's way."""
    from hypercorn.events import RawData
    from hypercorn.protocol.events import Body, Response
    from hypercorn.protocol.h11 import H11Protocol
    from hypercorn.protocol.http_stream import HTTPStream

    stream_send = H11Protocol.stream_send

    async def send_framed_here(self: Any, event: Any) -> None:
        if type(event) is Body and self.__dict__.get("_trioproxy_chunked") and event.data:
            if self.connection.our_state is h11.SEND_BODY:
                data, head = frame_chunk(event.data), self._trioproxy_head
                if head is not None:
                    self._trioproxy_head, data = None, head + data
                HEADS.chunks += 1
                await self.send(RawData(data=data))
                return
        elif type(event) is Response and event.status_code >= 200:
            self._trioproxy_chunked = False
            stream = self.stream
            if (
                type(stream) is HTTPStream
                and stream.scope["method"] != "HEAD"
                and type(self.connection) is h11.Connection
                and self.keep_alive_requests < self.config.keep_alive_max_requests
                and self.__dict__.get("_trioproxy_head") is None
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
                    self._trioproxy_head, self._trioproxy_chunked = head, is_chunked(head)
                    if "coalesce_head_with_first_body" not in _installed:
                        await self.send(RawData(data=head))  # no guard 3 to hold it
                        self._trioproxy_head = None
                    return
            HEADS.h11 += 1
        await stream_send(self, event)

    return H11Protocol, "stream_send", send_framed_here


GUARDS: dict[str, Callable[[], _Patch]] = {
    "end_idle_wait_on_eof": _end_idle_wait_on_eof,
    "contain_connection_errors": _contain_connection_errors,
    "coalesce_head_with_first_body": _coalesce_head_with_first_body,
    "cap_connections": _cap_connections,
    "write_without_waiting": _write_without_waiting,
    "keep_alive_without_a_task_per_request": _keep_alive_without_a_task_per_request,
    "accept_what_is_queued": _accept_what_is_queued,
    "frame_plain_responses_here": _frame_plain_responses_here,
}
_installed: dict[str, tuple[type, str, Any]] = {}  # guard -> (class, name, original)


def install_hypercorn_guards(
    names: tuple[str, ...] = tuple(GUARDS), max_connections: int | None = None
) -> None:
    """Install the named guards (all by default), once each per process;
    ``max_connections`` sets the cap of guard 4.

    Error handling: raises :class:`UnsupportedHypercorn` for an untested release.
    """
    check_hypercorn_version()
    if max_connections is not None:
        CONNECTIONS.limit = max_connections
    for name in names:
        if name in _installed:
            continue
        owner, attr, replacement = GUARDS[name]()
        _installed[name] = (owner, attr, owner.__dict__[attr])
        setattr(owner, attr, replacement)


def uninstall_hypercorn_guards() -> tuple[str, ...]:
    """Put Hypercorn back as it was; returns the guards that were installed."""
    names = tuple(_installed)
    for name in reversed(names):
        owner, attr, original = _installed.pop(name)
        setattr(owner, attr, original)
    return names
