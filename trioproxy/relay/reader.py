"""The upstream reader: one task per exchange, failover over attempts, bytes into the channel.

Rules:
- Bytes are passed through: the client gets exactly the upstream's bytes. The
  sans-IO framer (:mod:`trioproxy.relay.sse`) only finds event boundaries
  (first event, usage, final event, content events counted). The one
  exception, opt-in (``request_usage``): when the gateway itself asked for
  usage, the client gets the framed events less the usage-only chunk.
- Before the first byte is handed to the client, a failure moves on to the
  next provider of the request's plan (:mod:`trioproxy.routing.failover`); when
  none is left the writer answers an HTTP error. The reader sets
  ``Exchange.committed`` as it puts the response head in the channel, together
  with the first body bytes: the point of no return. After it, one SSE error
  event in the route's dialect ends the stream.
- Timers (``ttft_timeout``, ``idle_timeout``, ``max_stream_duration``, and
  ``request_timeout`` for a whole response) wrap the upstream read only, one
  cancel scope whose deadline follows the last event. Over a plain socket it
  follows lazily: an event only notes its time, and a deadline that passes with
  events since it was set is an early wake, not a timeout: the read goes on
  (:attr:`~trioproxy.upstream.body.UpstreamBody.resumable`) under the deadline
  the last event gives. So the timer still fires at its exact second, with no
  deadline set per event (trio's setter was a tenth of a paced token's CPU).
  Waiting for room in the channel is not upstream idle time: the deadline is
  lifted meanwhile. A channel full for ``client_stall_timeout`` is a slow client.
- A chunk that arrives while the writer waits with nothing in hand (no item
  queued, the writer parked on the channel) is written from here through the
  server's ``DirectWriter``, which never waits; the reader accounts for it as the
  writer would (bytes, hash, metrics) and hands the writer what the socket did
  not take (:class:`~trioproxy.relay.writer.Rest`). Every other chunk goes
  through the channel, so none passes one the writer holds.
- A key admitted early (:mod:`trioproxy.admission.early`): the reader says
  when the upstream request is written, and the admission is counted then.
- Outcomes: the reader decides how the upstream side ended
  (``Exchange.upstream_outcome``); the writer makes it the exchange's outcome.

Resource handling: the upstream body is closed however the read ends (its
``aclose`` never awaits: it runs in a cancelled scope too) and the connection
with it; the exchange's slots are released in the reader's ``finally``, the
moment the upstream side is over, whatever the client is doing.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import trio

from ..asgi import DirectWriter
from ..config import Config
from ..dialects import USAGE_ONLY, context_too_long
from ..errors import (
    ContextWindowExceeded,
    GatewayError,
    Outcome,
    SlowClient,
    StreamTooLong,
    UpstreamBroken,
    UpstreamIdleTimeout,
    UpstreamRateLimited,
    UpstreamTTFTTimeout,
)
from ..routing.failover import FailoverLimits, with_failover
from ..routing.targets import Target, UpstreamRequest
from ..translate import TranslatingFramer, Translation
from ..upstream.body import UpstreamBody, body_of
from ..upstream.client import Upstream
from ..upstream.http11 import parse_retry_after
from .continuation import continue_answer, partial_for
from .drain import Drains
from .exchange import Exchange, note_event
from .sse import SSEFramer, SSEFramingError, is_heartbeat
from .timeline import TRACE_EXTENSION
from .translated import framer_for, relay_answer, send_tail
from .whole import passed_headers, read_error
from .writer import Item, Rest, Start, Waiting

__all__ = ["IDLE_TIMER", "UpstreamReader"]

_STREAM_HEADERS = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


@dataclass
class IdleTimerPaths:
    """Lazy idle deadlines of this process: passed with events since, the read went on."""

    early_wakes: int = 0


IDLE_TIMER = IdleTimerPaths()


class UpstreamReader:
    """Reads one exchange's upstream side into ``send_ch`` (the relay's channel)."""

    def __init__(
        self,
        upstream: Upstream,
        config: Config,
        request: UpstreamRequest,
        ex: Exchange,
        send_ch: trio.MemorySendChannel[Item],
        waiting: Waiting,
    ) -> None:
        self.upstream = upstream
        self.config = config
        self.request = request
        self.ex = ex
        self.send_ch = send_ch
        self.waiting = waiting  # cleared with every item handed to the writer
        self.direct: DirectWriter | None = None  # the relay sets it: chunks written from here
        self.idle_from = -math.inf  # the last event's time, while the idle deadline is lazy
        # on_client_disconnect = "drain" (relay/drain.py): the relay sets ``drains``;
        # after a hang-up the upstream body goes to a drain instead of being closed.
        self.drains: Drains | None = None
        self.drain: tuple[float, int] | None = None  # this attempt's provider drains
        self.draining = False  # the client left: hand the upstream to a drain
        self.handed_off = False  # a drain owns the upstream body now
        self._wake: trio.CancelScope | None = None  # the read scope, while reading events
        self._resumable = False  # a read cut short can be made again (a plain socket)
        self._delivering: trio.CancelScope | None = None  # a wait for room in the channel
        # continue_on_cut: the answer so far, for a continuation (relay/continuation.py)
        self.partial = partial_for(config, ex, request)

    def can_drain(self) -> bool:
        """Would a hang-up now hand the upstream to a drain? (An event stream is
        being read from a provider with ``on_client_disconnect = "drain"``.)"""
        return self.drains is not None and self.drain is not None and self._wake is not None

    def start_drain(self) -> None:
        """The client left (the watcher): stop relaying, hand the upstream on at
        the next event boundary: at once over a plain socket (the read is cut
        short, nothing consumed), at the next chunk over TLS."""
        self.draining = True
        if self._delivering is not None:
            self._delivering.cancel()
        if self._wake is not None and self._resumable:
            self._wake.cancel()

    async def run(self, relay_scope: trio.CancelScope) -> None:
        """The task: every attempt, then close the channel and release the slots.

        Error handling: a :class:`GatewayError` is recorded in the exchange (the
        writer renders it); ``Cancelled`` propagates.
        """
        ex, config = self.ex, self.config
        try:
            try:
                each = config.ttft_timeout if ex.stream else config.request_timeout
                limits = FailoverLimits(
                    config.max_attempts, config.eject_after, config.cooldown,
                    config.first_byte_deadline or each * config.max_attempts or math.inf,
                )  # fmt: skip
                try:
                    ex.upstream_outcome = await with_failover(
                        self.request, ex, limits, self._attempt
                    )
                except (UpstreamBroken, UpstreamIdleTimeout) as cut:
                    if self.partial is None or not ex.committed:
                        raise
                    ex.upstream_outcome = await continue_answer(self, cut)
            except GatewayError as err:
                ex.error = err
                ex.upstream_outcome = err.outcome
            finally:
                if ex.admission is not None:  # no request written: count it all the same
                    ex.admission.go()
                if not self.handed_off:  # else the drain closes it, and says when
                    ex.upstream_closed_at = trio.current_time()
                    ex.mark("upstream_closed")
                ex.release_slots()
            if isinstance(ex.error, SlowClient):
                # The writer is stuck in a send to a client that does not read
                # (Hypercorn shields socket writes): end the exchange without it.
                ex.settle(ex.upstream_outcome)
                relay_scope.cancel()
        finally:
            self.send_ch.close()  # no checkpoint: the writer sees the end at once

    async def _attempt(self, target: Target) -> Outcome:
        """One provider's attempt: ``DONE``, or ``UPSTREAM_ERROR`` for an upstream
        HTTP error relayed as is; raises for everything else. The TTFT (or
        whole-request) timer starts with each attempt."""
        ex, config = self.ex, self.config
        now = trio.current_time()
        timeout = config.ttft_timeout if ex.stream else config.request_timeout
        # the first-byte deadline is on the router's clock: here, in trio's
        by = now + (target.deadline - self.request.router.clock())
        first_deadline = min(now + (timeout or math.inf), by)
        if ex.upstream_sent_at is None:  # the first attempt: time the gateway added
            ex.upstream_sent_at = now
        request = self.request
        headers = target.headers
        ex.strip_usage, self.drain = target.strip_usage, target.drain
        translation = target.translation
        if ex.trace is not None:  # OpenTelemetry on: this attempt's span is the parent
            headers = {**headers, "traceparent": ex.trace.next_attempt()}
        with trio.CancelScope(deadline=first_deadline) as head_scope:
            response = await self.upstream.send(
                request.method, target.url, headers, target.body, {TRACE_EXTENSION: self._mark}
            )
        if head_scope.cancelled_caught:
            raise self.first_timeout()
        try:  # entered: the response is closed however this ends
            ex.upstream_status = response.status_code
            content_type = response.headers.get("content-type", "")
            if response.status_code == 200 and content_type.startswith("text/event-stream"):
                await self._relay_events(response, first_deadline, translation)
                # The upstream's own error event reached the client: nothing to add.
                return Outcome.UPSTREAM_ERROR if ex.upstream_error else Outcome.DONE
            if response.status_code == 429:
                ex.retry_after = parse_retry_after(response.headers.get("retry-after", ""))
                if target.retry_429:
                    raise UpstreamRateLimited(
                        f"provider {target.provider} answered 429", ex.retry_after
                    )
            read = None
            if response.status_code in (400, 413) and target.context_fallback:
                read = await read_error(response, first_deadline)
                if context_too_long(response.status_code, read[1]):
                    await read[0].aclose()
                    raise ContextWindowExceeded(
                        f"the request is longer than the context window of {ex.sent_model!r}"
                    )
            await relay_answer(self, response, first_deadline, target, read)
            return Outcome.DONE if response.status_code < 400 else Outcome.UPSTREAM_ERROR
        finally:  # the body's aclose never awaits: this runs in a cancelled scope too
            if not self.handed_off:
                await response.aclose()

    def _mark(self, event: str) -> None:
        """The transport's moments; the request written starts a pending admission."""
        self.ex.mark(event)
        if event == "request_written" and self.ex.admission is not None:
            self.ex.admission.go()

    def first_timeout(self) -> GatewayError:
        if self.ex.stream:
            return UpstreamTTFTTimeout("upstream sent no event within ttft_timeout")
        return UpstreamTTFTTimeout("upstream did not answer within request_timeout")

    async def _deliver_when_room(self, item: Item) -> None:
        """The channel is full: the client is slower than the upstream. Wait for
        room at most ``client_stall_timeout`` (this wait is not upstream idle time)."""
        stall = self.config.client_stall_timeout
        self.waiting.now = False
        with trio.move_on_after(stall or math.inf) as cs:
            self._delivering = cs
            await self.send_ch.send(item)
        self._delivering = None
        if cs.cancelled_caught and not self.draining:
            raise SlowClient(f"client read nothing for {stall} s")

    async def deliver(self, item: Item) -> None:
        try:
            self.waiting.now = False
            self.send_ch.send_nowait(item)
        except trio.WouldBlock:
            await self._deliver_when_room(item)

    async def _relay_events(
        self, response: httpx.Response, first_deadline: float, translation: Translation | None
    ) -> None:
        ex, config = self.ex, self.config
        ex.event_stream = True
        framer = framer_for(ex, config.max_event_bytes, translation)
        end_by = ex.started + config.max_stream_duration if config.max_stream_duration else math.inf
        idle = config.idle_timeout or math.inf
        body = body_of(response)
        lazy = type(body) is UpstreamBody and body.resumable
        self._resumable = lazy
        deadline = min(first_deadline, end_by)
        try:
            while True:  # one scope for the read loop, and one more per early wake
                read_scope = trio.CancelScope(deadline=deadline)
                with read_scope:
                    self._wake = read_scope
                    await self._read_events(body, read_scope, end_by, framer, response, lazy)
                if self.draining:  # the client left: the upstream goes on to a drain
                    assert self.drains is not None and self.drain is not None
                    self.handed_off = self.drains.submit(ex, body, framer, self.drain)
                    return
                if not (lazy and read_scope.cancelled_caught and ex.first_event_at is not None):
                    if isinstance(framer, TranslatingFramer) and not read_scope.cancelled_caught:
                        await send_tail(self, framer.close(), response, _STREAM_HEADERS)
                    break
                deadline = min(self.idle_from + idle, end_by)
                if deadline <= trio.current_time():
                    break  # no event since: the timer fired, at its second
                IDLE_TIMER.early_wakes += 1
        except SSEFramingError as exc:
            raise UpstreamBroken(f"upstream sent a malformed event stream: {exc}") from None
        finally:
            self._wake = None
            if not self.handed_off:
                await body.aclose()  # no checkpoint: runs in a cancelled scope too
            # A half event reaches the client only when bytes pass as they come.
            ex.partial_event = framer.buffered > 0 and not ex.strip_usage and not translation
            if isinstance(framer, TranslatingFramer):
                ex.upstream_sha256 = framer.digest.hexdigest()
                ex.translated_usage = framer.usage_reported
        if read_scope.cancelled_caught:
            if trio.current_time() >= end_by:
                raise StreamTooLong("stream exceeded max_stream_duration")
            if ex.first_event_at is None:
                raise UpstreamTTFTTimeout("upstream sent no event within ttft_timeout")
            raise UpstreamIdleTimeout(f"upstream sent no event for {config.idle_timeout} s")
        if not ex.chunks:
            raise UpstreamBroken("upstream ended the event stream without sending anything")

    async def _read_events(
        self,
        body: AsyncIterator[bytes],
        read_scope: trio.CancelScope,
        end_by: float,
        framer: SSEFramer | TranslatingFramer,
        response: httpx.Response,
        lazy: bool,
    ) -> None:
        """The read loop, entered again after an early wake (``lazy``: the idle
        deadline is set at the first event, then each event notes ``idle_from``)."""
        ex, send_ch, waiting = self.ex, self.send_ch, self.waiting
        idle = self.config.idle_timeout or math.inf
        hb_progress = self.config.heartbeat_resets_idle
        arrivals = ex.metrics.arrivals if ex.metrics is not None else None
        strip, partial = ex.strip_usage, self.partial
        whole_events = strip or type(framer) is TranslatingFramer  # the client gets framed events
        started, direct = ex.committed, self.direct
        armed = lazy and ex.first_event_at is not None  # the idle deadline is set
        async for chunk in body:
            now = trio.current_time()
            if arrivals is not None:
                arrivals.append(now)
            ex.bytes_in += len(chunk)
            if not ex.chunks:
                ex.first_chunk_at = now
            ex.chunks += 1
            blocks = framer.feed(chunk)
            kept: list[bytes] | None = [] if whole_events else None  # what the client gets
            if blocks:
                progress = False
                before = ex.events
                for block in blocks:
                    if is_heartbeat(block):
                        progress = progress or hb_progress
                        if kept is not None:
                            kept.append(block)
                        continue
                    progress = True
                    flags = note_event(ex, block, now)
                    if kept is not None and not (strip and flags & USAGE_ONLY):
                        kept.append(block)
                    if partial is not None:
                        partial.feed(block)
                if ex.events > before:
                    ex.events_read(ex.events - before, now)
                if progress and ex.first_event_at is not None:
                    if armed:
                        self.idle_from = now
                    else:
                        read_scope.deadline = min(now + idle, end_by)
                        self.idle_from, armed = now, lazy
            if self.draining:  # the client left: nothing more is relayed
                return
            if kept is not None:  # the client gets the complete events, less the usage chunk
                chunk = b"".join(kept)
                if not chunk:
                    continue
            if not started:
                started = True
                headers = [*_STREAM_HEADERS, *passed_headers(response)]
                waiting.now = False
                send_ch.send_nowait(Start(200, headers))  # the channel is empty
                ex.committed = True  # from here on, no failover
                ex.mark("committed")
            elif direct is not None and waiting.now:  # the writer waits with nothing in hand
                rest = direct.write_now(chunk)
                if rest is not None:
                    ex.sent(chunk)
                    if ex.metrics is not None:
                        ex.metrics.delivered(1, now)
                    if rest:  # the waiting writer takes it at once: nothing is queued
                        waiting.now = False
                        send_ch.send_nowait(Rest(rest, direct.write_rest))
                    continue
            try:  # no coroutine and no checkpoint per chunk while there is room
                waiting.now = False
                send_ch.send_nowait(chunk)
            except trio.WouldBlock:
                # Waiting for the client is not upstream idle time: lift the
                # deadline, then give the upstream at least a full idle window.
                deadline, read_scope.deadline = read_scope.deadline, math.inf
                await self._deliver_when_room(chunk)
                read_scope.deadline = max(deadline, min(trio.current_time() + idle, end_by))
