"""Guards around Hypercorn's trio worker (0.17-0.18): each found by our tests or bench.

Rules:
- Each guard wraps one Hypercorn method, keeps its behaviour but for the one
  fault it names, and is installed once per process (:func:`install_hypercorn_guards`,
  called by :mod:`trioproxy.server` on import).
- ``pyproject.toml`` bounds the Hypercorn version to the releases these were
  read against; a new release means reading them again.

The guards:

1. ``_end_idle_wait_on_eof``: a closed idle keep-alive connection kept its task
   and CLOSE_WAIT socket for ``keep_alive_timeout`` (found by chaos).
2. ``_contain_connection_errors``: Hypercorn #225, one connection's internal error
   stopped the whole worker (found by the HTTP fuzz test).
3. ``_coalesce_head_with_first_body``: Hypercorn writes the response head and
   each body part as separate socket writes; a stream's head now goes out in the
   same write as its first bytes (found by profiling time to first byte).
"""

from __future__ import annotations

import logging
from typing import Any

import h11
import trio

__all__ = ["install_hypercorn_guards"]

log = logging.getLogger("trioproxy")


def _end_idle_wait_on_eof() -> None:
    """Guard against a Hypercorn trio-worker linger (0.18): when a client closes
    an idle keep-alive connection, ``TCPServer.run`` leaves its read loop but its
    task group still waits for the keep-alive idle task, so the connection's task
    and its CLOSE_WAIT socket stay for ``keep_alive_timeout``. Found by ``trioproxy
    chaos`` (invariant ``no_orphan_tasks``). Stopping the idle task once the read
    loop has ended lets the connection close at once."""
    from hypercorn.trio.tcp_server import TCPServer

    if getattr(TCPServer, "_trioproxy_idle_guard", False):
        return
    read_data = TCPServer._read_data

    async def _read_data(self: Any) -> None:
        await read_data(self)
        await self.idle_task.stop()

    setattr(TCPServer, "_read_data", _read_data)  # noqa: B010
    setattr(TCPServer, "_trioproxy_idle_guard", True)  # noqa: B010


def _contain_connection_errors() -> None:
    """Guard against Hypercorn issue #225 (an unexpected error in one connection
    ends the whole worker). Found by ``tests/test_fuzz.py``: a malformed chunked
    body arriving while the app's response closes the connection makes
    Hypercorn's error response race its own ``send_eof`` on the socket
    (``trio.BusyResourceError``), which escaped ``serve_listeners`` and stopped
    the server. Here such an error ends that connection only, and is logged."""
    from hypercorn.trio.tcp_server import TCPServer

    if getattr(TCPServer, "_trioproxy_error_guard", False):
        return
    run = TCPServer.run

    async def guarded_run(self: Any) -> None:
        try:
            await run(self)
        except* Exception as group:  # Cancelled is not an Exception: it propagates
            log.warning("connection ended by an internal Hypercorn error: %r", group.exceptions)
            with trio.move_on_after(1, shield=True):
                await self.stream.aclose()

    setattr(TCPServer, "run", guarded_run)  # noqa: B010
    setattr(TCPServer, "_trioproxy_error_guard", True)  # noqa: B010


def _coalesce_head_with_first_body() -> None:
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

    if getattr(H11Protocol, "_trioproxy_coalesce_guard", False):
        return
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

    setattr(H11Protocol, "_send_h11_event", _send_h11_event)  # noqa: B010
    setattr(H11Protocol, "_trioproxy_coalesce_guard", True)  # noqa: B010


def install_hypercorn_guards() -> None:
    _end_idle_wait_on_eof()
    _contain_connection_errors()
    _coalesce_head_with_first_body()
