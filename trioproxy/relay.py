"""The per-request relay: one nursery, three tasks, one bounded channel.

::

    request nursery (one per request, cancelled by whichever task ends it)
    ├── upstream reader ── httpx stream, aiter_raw ──► memory channel (channel_size)
    │     TTFT / idle timers wrap only the upstream read        │
    │     holds the stream-limiter slot; releases it the        ▼
    │     moment the upstream side ends, fails or is cancelled
    ├── client writer ◄── drains greedily, one ASGI send per drain
    └── disconnect watcher ── blocked on ASGI receive(); http.disconnect cancels
                              the nursery, which closes the upstream connection

Rules:
- Bytes are passed through: the client gets exactly the upstream's bytes. The
  sans-IO framer only finds event boundaries (first event, usage, final event).
- Before the first byte is handed to the client, a failure moves on to the
  next provider of the request's plan (:mod:`trioproxy.failover`), and when none
  is left it is an HTTP error response; after it, one SSE error event in the
  route's dialect ends the stream. The reader marks ``Exchange.committed`` as it
  puts the response head in the channel: that is the point of no return.
- The idle timer never covers the channel send: a slow client is not a stalled
  upstream. A channel full for ``client_stall_timeout`` is a slow client: the
  upstream is cancelled and the slot released.
- Outcomes: the reader decides how the upstream side ended; the writer turns it
  into the exchange's outcome just before its last send; the watcher records
  ``client_disconnect`` only if nothing was decided yet. Each field has one writer.

Resource handling: the upstream connection is closed (httpcore closes it under a
shield) whenever the reader is cancelled, and the limiter slot is released in
the reader's ``finally``. Memory per stream is bounded by ``channel_size`` chunks
plus one partial event of at most ``max_event_bytes``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, aclosing, suppress

import httpx
import orjson
import trio

from .config import Config
from .downstream import Receive, Send, Start, write_client
from .errors import (
    GatewayError,
    SlowClient,
    StreamTooLong,
    UpstreamBroken,
    UpstreamIdleTimeout,
    UpstreamRateLimited,
    UpstreamTTFTTimeout,
    from_upstream_exception,
)
from .failover import Target, UpstreamRequest, with_failover
from .records import Exchange
from .sse import SSEFramer, SSEFramingError, is_heartbeat
from .transport import raw_chunks

__all__ = ["UpstreamRequest", "relay"]


_UPSTREAM_IO_ERRORS = (httpx.HTTPError, OSError, trio.BrokenResourceError, SSEFramingError)
_STREAM_HEADERS = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
_PASSED_RESPONSE_HEADERS = frozenset({"retry-after", "x-request-id", "openai-processing-ms"})


async def relay(
    client: httpx.AsyncClient,
    config: Config,
    request: UpstreamRequest,
    ex: Exchange,
    send: Send,
    receive: Receive,
    extra_headers: list[tuple[bytes, bytes]],
) -> None:
    """Run one exchange to its end. The caller has already taken the slot for ``ex``.

    Error handling: nothing escapes but ``Cancelled`` from an enclosing scope
    (graceful shutdown); every other ending is recorded in ``ex``.
    """
    send_ch, recv_ch = trio.open_memory_channel[bytes | Start](config.channel_size)
    ex.channel = send_ch
    async with trio.open_nursery() as nursery:
        scope = nursery.cancel_scope
        nursery.start_soon(_watch_disconnect, receive, ex, scope, name="disconnect-watcher")
        nursery.start_soon(
            _read_upstream, client, config, request, ex, send_ch, scope,
            name="upstream-reader",
        )  # fmt: skip
        nursery.start_soon(
            write_client, send, recv_ch, ex, request.dialect, extra_headers, scope,
            name="client-writer",
        )  # fmt: skip


async def _watch_disconnect(receive: Receive, ex: Exchange, scope: trio.CancelScope) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            if ex.outcome is None:
                ex.settle("client_disconnect")
                ex.disconnected_at = trio.current_time()
            scope.cancel()
            return


async def _read_upstream(
    client: httpx.AsyncClient,
    config: Config,
    request: UpstreamRequest,
    ex: Exchange,
    send_ch: trio.MemorySendChannel[bytes | Start],
    scope: trio.CancelScope,
) -> None:
    attempt = functools.partial(_attempt, client, config, request, ex, send_ch)
    async with send_ch:
        try:
            ex.upstream_outcome = await with_failover(
                request, ex, config.max_attempts, config.eject_after, config.cooldown, attempt
            )
        except GatewayError as err:
            ex.error = err
            ex.upstream_outcome = err.outcome
        finally:
            ex.upstream_closed_at = trio.current_time()
            ex.release_slots()
        if isinstance(ex.error, SlowClient):
            # The writer is stuck in a send to a client that does not read
            # (Hypercorn shields socket writes): end the exchange without it.
            ex.settle(ex.upstream_outcome)
            scope.cancel()


async def _attempt(
    client: httpx.AsyncClient,
    config: Config,
    request: UpstreamRequest,
    ex: Exchange,
    send_ch: trio.MemorySendChannel[bytes | Start],
    target: Target,
) -> str:
    """One provider's attempt; library errors are mapped to the gateway's."""
    try:
        return await _exchange(client, config, request, target, ex, send_ch)
    except _UPSTREAM_IO_ERRORS as exc:
        raise from_upstream_exception(exc) from None


async def _exchange(
    client: httpx.AsyncClient,
    config: Config,
    request: UpstreamRequest,
    target: Target,
    ex: Exchange,
    send_ch: trio.MemorySendChannel[bytes | Start],
) -> str:
    """Returns how the upstream side ended: ``done`` or ``upstream_error``
    (an upstream HTTP error relayed as is); raises for everything else.
    The TTFT (or whole-request) timer starts with each attempt."""
    now = trio.current_time()
    if ex.stream:
        first_deadline = now + (config.ttft_timeout or math.inf)
    else:
        first_deadline = now + (config.request_timeout or math.inf)
    async with AsyncExitStack() as stack:
        if ex.upstream_sent_at is None:  # the first attempt: time the gateway added
            ex.upstream_sent_at = now
        with trio.CancelScope(deadline=first_deadline) as head_scope:
            response = await stack.enter_async_context(
                client.stream(
                    request.method, target.url, headers=target.headers, content=target.body
                )
            )
        if head_scope.cancelled_caught:
            raise _first_timeout(ex)
        ex.upstream_status = response.status_code
        content_type = response.headers.get("content-type", "")
        if response.status_code == 200 and content_type.startswith("text/event-stream"):
            await _relay_events(response, config, ex, send_ch, first_deadline)
            return "done"
        if response.status_code == 429:
            ex.retry_after = _retry_after(response)
            if target.retry_429:
                raise UpstreamRateLimited(
                    f"provider {target.provider} answered 429", ex.retry_after
                )
        await _relay_whole(response, config, request, ex, send_ch, first_deadline)
        return "done" if response.status_code < 400 else "upstream_error"  # 4xx relayed


def _retry_after(response: httpx.Response) -> int | None:
    value = response.headers.get("retry-after", "")
    return min(int(value), 3600) if value.isdigit() else None


def _first_timeout(ex: Exchange) -> GatewayError:
    if ex.stream:
        return UpstreamTTFTTimeout("upstream sent no event within ttft_timeout")
    return UpstreamTTFTTimeout("upstream did not answer within request_timeout")


async def _deliver(
    send_ch: trio.MemorySendChannel[bytes | Start], item: bytes | Start, stall: float
) -> None:
    try:
        send_ch.send_nowait(item)
    except trio.WouldBlock:
        await _deliver_when_room(send_ch, item, stall)


async def _deliver_when_room(
    send_ch: trio.MemorySendChannel[bytes | Start], item: bytes | Start, stall: float
) -> None:
    """The channel is full: the client is slower than the upstream. Wait for
    room at most ``stall`` seconds (this wait is not upstream idle time)."""
    with trio.move_on_after(stall or math.inf) as cs:
        await send_ch.send(item)
    if cs.cancelled_caught:
        raise SlowClient(f"client read nothing for {stall} s")


async def _relay_events(
    response: httpx.Response,
    config: Config,
    ex: Exchange,
    send_ch: trio.MemorySendChannel[bytes | Start],
    first_deadline: float,
) -> None:
    framer = SSEFramer(config.max_event_bytes)
    end_by = ex.started + config.max_stream_duration if config.max_stream_duration else math.inf
    deadline = min(first_deadline, end_by)
    # One scope for the whole read loop; its deadline moves with each event.
    # While waiting for room in the channel (a slow client) it is lifted.
    read_scope = trio.CancelScope(deadline=deadline)
    try:
        # Closed here whichever way the loop ends (its cleanup never awaits, so
        # it runs even in a cancelled scope), not later by the garbage collector.
        async with aclosing(raw_chunks(response)) as chunks:
            with read_scope:
                await _read_events(
                    chunks, read_scope, end_by, framer, config, ex, send_ch, response
                )
    finally:
        ex.partial_event = framer.buffered > 0
    if read_scope.cancelled_caught:
        if trio.current_time() >= end_by:
            raise StreamTooLong("stream exceeded max_stream_duration")
        if ex.first_event_at is None:
            raise UpstreamTTFTTimeout("upstream sent no event within ttft_timeout")
        raise UpstreamIdleTimeout(f"upstream sent no event for {config.idle_timeout} s")
    if not ex.chunks:
        raise UpstreamBroken("upstream ended the event stream without sending anything")


async def _read_events(
    chunks: AsyncIterator[bytes],
    read_scope: trio.CancelScope,
    end_by: float,
    framer: SSEFramer,
    config: Config,
    ex: Exchange,
    send_ch: trio.MemorySendChannel[bytes | Start],
    response: httpx.Response,
) -> None:
    stall = config.client_stall_timeout
    idle = config.idle_timeout or math.inf
    hb_progress = config.heartbeat_resets_idle
    started = False
    arrivals = ex.arrivals if config.metrics else None  # per-event latency: for /metrics only
    async for chunk in chunks:
        now = trio.current_time()
        if arrivals is not None:
            arrivals.append(now)
        ex.bytes_in += len(chunk)
        if not ex.chunks:
            ex.first_chunk_at = now
        ex.chunks += 1
        blocks = framer.feed(chunk)
        if blocks:
            progress = False
            before = ex.events
            for block in blocks:
                if is_heartbeat(block):
                    progress = progress or hb_progress
                    continue
                progress = True
                ex.events += 1
                if ex.first_block is None:
                    ex.first_block = block
                    ex.first_event_at = now
                if b'"usage"' in block:
                    ex.usage_block = block
                if _is_final(block):
                    ex.final_event = True
            if ex.events > before:
                ex.events_read(ex.events - before, now)
            if progress and ex.first_event_at is not None:
                read_scope.deadline = min(now + idle, end_by)
        if not started:
            started = True
            headers = [*_STREAM_HEADERS, *_passed_headers(response)]
            send_ch.send_nowait(Start(200, headers))  # the channel is empty
            ex.committed = True  # from here on, no failover
        try:  # no coroutine and no checkpoint per chunk while there is room
            send_ch.send_nowait(chunk)
        except trio.WouldBlock:
            # Waiting for the client is not upstream idle time: lift the
            # deadline, then give the upstream at least a full idle window.
            deadline, read_scope.deadline = read_scope.deadline, math.inf
            await _deliver_when_room(send_ch, chunk, stall)
            read_scope.deadline = max(deadline, min(trio.current_time() + idle, end_by))


def _is_final(block: bytes) -> bool:
    # OpenAI chat/completions end with [DONE]; Anthropic with message_stop;
    # the Responses API with a terminal response.* event.
    return (
        block == b"data: [DONE]\n\n"
        or block.startswith(b"event: message_stop\n")
        or block.startswith(
            (
                b"event: response.completed\n",
                b"event: response.failed\n",
                b"event: response.incomplete\n",
            )
        )
    )


def _passed_headers(response: httpx.Response) -> list[tuple[bytes, bytes]]:
    return [
        (name.lower(), value)
        for name, value in response.headers.raw
        if name.lower().decode("latin-1") in _PASSED_RESPONSE_HEADERS
    ]


async def _relay_whole(
    response: httpx.Response,
    config: Config,
    request: UpstreamRequest,
    ex: Exchange,
    send_ch: trio.MemorySendChannel[bytes | Start],
    deadline: float,
) -> None:
    """A non-SSE response (non-streaming call, or an upstream error): read it
    whole (bounded), then relay status, content type and body at once."""
    parts: list[bytes] = []
    size = 0
    limit = config.max_response_bytes
    with trio.CancelScope(deadline=deadline) as scope:
        async with aclosing(raw_chunks(response)) as chunks:
            async for chunk in chunks:
                size += len(chunk)
                if size > limit:
                    raise UpstreamBroken(f"upstream response exceeds {limit} bytes")
                parts.append(chunk)
    if scope.cancelled_caught:
        raise _first_timeout(ex)
    body = b"".join(parts)
    ex.bytes_in = size
    if response.status_code >= 500:
        # The upstream failed: the client gets a 502 in its dialect that quotes it.
        detail = body[:500].decode("utf-8", "replace")
        raise UpstreamBroken(f"upstream returned HTTP {response.status_code}: {detail}")
    content_type = response.headers.get("content-type", "application/json")
    if (
        response.status_code < 400
        and request.parse_body
        and content_type.startswith("application/json")
    ):
        with suppress(orjson.JSONDecodeError):
            ex.body_json = orjson.loads(body)
    # Time the gateway added: before the upstream request, and after its body.
    upstream_done = trio.current_time()
    ex.first_chunk_at = upstream_done
    if config.metrics:
        ex.arrivals.append(upstream_done)
    added = (ex.upstream_sent_at or ex.started) - ex.started
    overhead_ms = b"%.3f" % ((added + trio.current_time() - upstream_done) * 1000)
    headers = [
        (b"content-type", content_type.encode("latin-1")),
        (b"content-length", str(len(body)).encode()),
        (b"x-trioproxy-overhead-ms", overhead_ms),
        *_passed_headers(response),
    ]
    ex.committed = True
    await _deliver(send_ch, Start(response.status_code, headers), config.client_stall_timeout)
    await _deliver(send_ch, body, config.client_stall_timeout)
