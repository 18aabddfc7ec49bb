"""The client side of the relay: the writer task and HTTP error responses.

The writer is the only task that calls the ASGI ``send`` of a relayed request.
It drains the channel greedily: whatever has already arrived goes out in one
``send`` (it never waits to batch), and the last data shares its ``send`` with
the end of the body. The head (:class:`Start`) is sent when the reader commits
to a response, i.e. together with the first body bytes. While the writer waits
with nothing in hand, the reader may write a chunk itself, through the server's
``DirectWriter`` (never the ASGI ``send``, never waiting); a :class:`Rest` is
what the socket did not take of one, which the writer sends before anything
later.

Error handling: if the channel closes before a head, the upstream side failed
before any byte reached the client: the writer answers an HTTP error in the
route's dialect. If it closes after, the writer appends one SSE error event (and
first ends an event the upstream left unfinished, so the client's parser stays
in sync); a whole (non-SSE) answer is left without its end, so the server
closes the connection short of it and the client sees an incomplete body. A
request whose handler was cancelled (shutdown) or hit a bug is answered by
:func:`send_abort`, in its dialect, within a bounded shield.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from ..asgi import Send
from ..dialects import render_json, render_sse
from ..errors import GatewayError, GatewayShutdown, UpstreamBroken
from .exchange import Exchange

log = logging.getLogger("trioproxy")

__all__ = [
    "Item", "Rest", "Start", "Waiting", "receipt_header", "send_abort", "send_error",
    "write_client",
]  # fmt: skip


@dataclass(frozen=True, slots=True)
class Start:
    """The response head, sent by the reader just before the first body bytes."""

    status: int
    headers: list[tuple[bytes, bytes]]


@dataclass(frozen=True, slots=True)
class Rest:
    """What the socket did not take of a chunk the reader wrote itself (it
    accounted for the chunk): the writer sends it, before anything later."""

    data: bytes
    write: Callable[[bytes], Awaitable[None]]


Item = bytes | Start | Rest  # what the channel carries


class Waiting:
    """Whether the writer waits on an empty channel with nothing handed to it yet.

    The writer sets it as it parks and clears it when it wakes; the reader clears
    it with every item it hands over, so a writer woken with an item but not yet
    run never counts as waiting (the reader must not write past what it holds).
    What ``send_ch.statistics().tasks_waiting_receive`` tells, without building a
    statistics record per chunk."""

    __slots__ = ("now",)

    def __init__(self) -> None:
        self.now = False


async def write_client(
    send: Send,
    recv_ch: trio.MemoryReceiveChannel[Item],
    ex: Exchange,
    extra_headers: list[tuple[bytes, bytes]],
    scope: trio.CancelScope,
    waiting: Waiting,
) -> None:
    """The task: the head, then the body as it arrives, then the end (or an error)."""
    try:
        try:
            head = await _next(recv_ch, waiting)
        except trio.EndOfChannel:
            # The upstream side failed before any byte: an HTTP error response.
            err = ex.error or UpstreamBroken("upstream ended without a response")
            ex.status = err.status
            ex.settle(ex.upstream_outcome)
            await send_error(send, err, extra_headers, ex)
            scope.cancel()
            return
        assert isinstance(head, Start)
        ex.status = head.status
        headers = head.headers + extra_headers + receipt_header(ex)
        await send({"type": "http.response.start", "status": head.status, "headers": headers})
        closed = False
        while not closed:
            try:
                body = await _next(recv_ch, waiting)
            except trio.EndOfChannel:
                break
            if type(body) is Rest:  # handed to a waiting writer, never queued behind bytes
                await body.write(body.data)
                continue
            assert isinstance(body, bytes)
            if ex.first_byte_at is None:
                ex.first_byte_at = trio.current_time()
            more: list[bytes] = []
            try:  # drain greedily: what has already arrived goes out in one send
                while True:
                    more.append(recv_ch.receive_nowait())  # type: ignore[arg-type]
            except trio.WouldBlock:
                pass
            except trio.EndOfChannel:
                closed = True
            if more:
                body = b"".join([body, *more])
            try:
                if closed:
                    await _finish(send, ex, body)
                    scope.cancel()
                    return
                ex.sent(body)
                await send({"type": "http.response.body", "body": body, "more_body": True})
            finally:  # also when a hang-up cancels the send: the bytes were handed over
                if ex.metrics is not None:
                    ex.metrics.delivered(1 + len(more), trio.current_time())
        await _finish(send, ex, b"")
        scope.cancel()
    finally:
        recv_ch.close()


async def _next(recv_ch: trio.MemoryReceiveChannel[Item], waiting: Waiting) -> Item:
    """The next item: at once when it has arrived (no trip through the scheduler),
    else the wait, marked in ``waiting``. Raises ``EndOfChannel`` after the last."""
    try:
        return recv_ch.receive_nowait()
    except trio.WouldBlock:
        pass
    waiting.now = True  # no checkpoint between this and parking in receive()
    try:
        return await recv_ch.receive()
    finally:
        waiting.now = False


async def _finish(send: Send, ex: Exchange, body: bytes) -> None:
    """The last send of a started response; appends the error event if any."""
    if ex.upstream_outcome is None:
        # The reader was cancelled (a hang-up or shutdown) and closed the channel:
        # never end such a response as if it were complete. Let Cancelled out.
        await trio.lowlevel.checkpoint()
        return
    if ex.error is not None and not ex.event_stream:
        # A whole answer broke after its head: its body must not look complete.
        # Returning without its end makes the server close the connection short.
        ex.settle(ex.upstream_outcome)
        if body:
            ex.sent(body)
            await send({"type": "http.response.body", "body": body, "more_body": True})
        return
    if ex.error is not None:
        tail = render_sse(ex.error, ex.dialect)
        if ex.partial_event:
            tail = b"\n\n" + tail  # end the upstream's unfinished event first
        body += tail
    ex.settle(ex.upstream_outcome)
    ex.sent(body)
    await send({"type": "http.response.body", "body": body, "more_body": False})


def receipt_header(ex: Exchange) -> list[tuple[bytes, bytes]]:
    """``x-trioproxy-receipt-id`` on a response that will get a receipt: one whose
    exchange reached an upstream (the gateway's own 4xx answers get none)."""
    if ex.receipt_id is None or ex.upstream_sent_at is None:
        return []
    return [(b"x-trioproxy-receipt-id", ex.receipt_id.encode())]


async def send_error(
    send: Send, err: GatewayError, extra_headers: list[tuple[bytes, bytes]], ex: Exchange
) -> None:
    """An HTTP error response in the exchange's dialect."""
    body = render_json(err, ex.dialect)
    ex.sent(body)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *extra_headers,
        *receipt_header(ex),
    ]
    retry_after = getattr(err, "retry_after", None)
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


_ABORT_SEND_TIMEOUT = 1.0  # s: bound on the shielded error answer of an aborted request


async def send_abort(
    exc: BaseException, ex: Exchange, send: Send, extra_headers: list[tuple[bytes, bytes]]
) -> None:
    """The request's handler was cancelled (graceful shutdown) or hit a bug:
    tell the client in its dialect if anyone is listening, within a bounded
    shield. An exchange already settled is left as it is."""
    if ex.outcome is not None:
        return
    shutdown = not isinstance(exc, Exception)
    if not shutdown:
        log.exception("unexpected error in request %s", ex.request_id, exc_info=exc)
    err = (
        GatewayShutdown("gateway is shutting down")
        if shutdown
        else GatewayError("internal gateway error")
    )
    ex.fail(err)
    with trio.move_on_after(_ABORT_SEND_TIMEOUT, shield=True):
        if ex.status and ex.stream:  # response started: end it with an error event
            event = render_sse(err, ex.dialect)
            ex.sent(event)
            await send({"type": "http.response.body", "body": event})
        elif not ex.status:
            ex.status = err.status
            await send_error(send, err, extra_headers, ex)
