"""Drains: after a client hangs up, read the upstream on to its usage, then close it.

Rules:
- A provider with ``on_client_disconnect = "drain"`` (default ``cancel``:
  the upstream is closed the moment the client leaves). Model servers bill
  what they generate; a cut stream's usage is otherwise an estimate.
- When such a client hangs up, the exchange is settled ``client_disconnect``
  at once, its writer stops, its slots are released and its request ends (the
  client's connection is closed by the server): nothing of the client side
  waits for the drain. The reader hands the upstream body, with its SSE framer,
  to a drain here, at an event boundary (at once over a plain socket, at the
  next chunk over TLS, see :meth:`~trioproxy.relay.reader.UpstreamReader.start_drain`).
- The drain is detached work (its own service nursery, separate from
  receipts and hooks: :class:`~trioproxy.receipts.detached.DetachedWork`): it reads without relaying, noting each
  event as the reader does (:func:`~trioproxy.relay.exchange.note_event`),
  until the stream's final event or its end, at most ``drain_max_seconds``
  and ``drain_max_bytes``; then it closes the upstream and records the
  exchange (access line, usage, receipt): its usage is the upstream's when the
  drain reached the stream's end. How it ended is the record's ``drained``:
  ``final``, ``ended`` (a clean end), ``time``, ``bytes``, ``broken`` or
  ``shutdown``.
- Asking for the usage: a drain provider of an OpenAI stream is sent
  ``stream_options.include_usage`` when the client did not set it, and the
  usage chunk is withheld from that client (as with ``request_usage``).

Resource handling: at most ``max_drains`` drains at once per process; when
that many run, a hang-up closes the upstream as ``cancel`` does. Each holds one
upstream connection and one partial event (``max_event_bytes``) for at most
``drain_max_seconds``. A graceful shutdown cancels drains still running (they
close and record, ``shutdown``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import trio

from ..errors import GatewayError
from ..translate import TranslatingFramer
from .exchange import Exchange, note_event
from .sse import SSEFramer, SSEFramingError, is_heartbeat

__all__ = ["Drains"]

_CLOSE_TIMEOUT = 1.0  # s: bound on closing the upstream at the end of a drain


class _Body(Protocol):
    def __aiter__(self) -> _Body: ...
    async def __anext__(self) -> bytes: ...
    async def aclose(self) -> None: ...


class _Work(Protocol):  # trioproxy.receipts.detached.DetachedWork
    def submit(self, fn: Callable[..., Awaitable[Any]], *args: Any, name: str = ...) -> bool: ...


class Drains:
    """Where readers hand the upstream of a client that left; ``finish``
    records the exchange once its drain is over."""

    def __init__(self, work: _Work, finish: Callable[[Exchange], None]) -> None:
        self.work = work
        self._finish = finish

    def submit(
        self,
        ex: Exchange,
        body: _Body,
        framer: SSEFramer | TranslatingFramer,
        bounds: tuple[float, int],
    ) -> bool:
        """Take over ``body`` (never awaits); False when ``max_drains`` run already."""
        ex.drained = "running"
        if self.work.submit(self._drain, ex, body, framer, bounds, name="drain"):
            ex.mark("drain")
            return True
        ex.drained = None
        return False

    async def _drain(
        self,
        ex: Exchange,
        body: _Body,
        framer: SSEFramer | TranslatingFramer,
        bounds: tuple[float, int],
    ) -> None:
        seconds, max_bytes = bounds
        how = "shutdown"  # unless the drain ends before the worker does
        try:
            with trio.move_on_after(seconds) as scope:
                how = await _read_on(ex, body, framer, max_bytes)
            if scope.cancelled_caught:
                how = "time"
        except (GatewayError, SSEFramingError):
            how = "broken"
        finally:
            with trio.move_on_after(_CLOSE_TIMEOUT, shield=True):
                await body.aclose()  # ours never awaits; another transport's may
            ex.upstream_closed_at = trio.current_time()
            ex.mark("upstream_closed")
            ex.drained = how
            if isinstance(framer, TranslatingFramer):  # the upstream's bytes, to the last read
                ex.upstream_sha256 = framer.digest.hexdigest()
                ex.translated_usage = framer.usage_reported
            self._finish(ex)


async def _read_on(
    ex: Exchange, body: _Body, framer: SSEFramer | TranslatingFramer, max_bytes: int
) -> str:
    """Read to the final event, the end, or ``max_bytes``: which one it was."""
    read = 0
    async for chunk in body:
        now = trio.current_time()
        read += len(chunk)
        ex.bytes_in += len(chunk)
        for block in framer.feed(chunk):
            if not is_heartbeat(block):
                note_event(ex, block, now)
        if ex.final_event:
            return "final"
        if read >= max_bytes:
            return "bytes"
    if isinstance(framer, TranslatingFramer):  # the final events a clean end makes
        for block in framer.close():
            note_event(ex, block, trio.current_time())
    return "ended"
