"""What the gateway remembers about one exchange, and the record it hands off.

Rules:
- :class:`Exchange` is the per-request state. Its lifecycle is data
  (:class:`Phase`, :data:`TRANSITIONS`): received -> admitted -> relaying ->
  settled -> recorded, and from any phase before it, settled. The outcome is
  decided by :meth:`Exchange.settle` only; the first decision stands (a hang-up
  noticed by the watcher is not overwritten by a writer that ran on). A move
  the table does not allow (an outcome after the record was made, a relay
  started twice) raises :class:`IllegalTransition` when ``Exchange.strict`` is
  set (the tests set it) and is logged and ignored otherwise.
- Who writes what: the handler the request fields and the key; the upstream reader the
  routing fields, the upstream timeline and counters; the client writer ``status``,
  ``first_byte_at`` and ``bytes_out``; the watcher ``disconnected_at``.
- Per-stream metrics accumulators live apart, in :class:`StreamMetrics`, and
  only when ``/metrics`` is on (``Exchange.metrics`` is None otherwise: no
  per-chunk work for a metric nobody serves).
- When the request ends the handler freezes the exchange into a
  :class:`CompletionRecord`, exactly once: the access line, metrics, receipts
  and hooks all read that record. Two events of a stream are JSON-parsed
  then: the first and the last one that carries usage (in mid-stream, only
  events not in compact JSON are parsed, by :func:`trioproxy.dialects.classify`).
- An event stream is complete (not ``truncated``) when its final event came,
  or when its last event had a finish reason and the upstream then ended it
  cleanly (servers that send no ``[DONE]``).
- Token usage of every exchange that reached an upstream: ``usage_source`` is
  ``upstream`` when the upstream reported both counts for a stream it finished,
  else ``estimated``: the completion is the content events relayed (about one
  token each, :func:`trioproxy.dialects.classify`), the prompt what the
  upstream said or the request body's bytes / 4.
"""

from __future__ import annotations

import bisect
import collections
import enum
import logging
import time
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Protocol

import orjson
import trio

from .. import dialects
from ..admission.early import EarlyAdmission
from ..dialects import Dialect
from ..errors import GatewayError, Outcome
from .sse import parse_event
from .timeline import Timeline, TraceIds

__all__ = [
    "ADDED_BUCKETS",
    "GAP_BUCKETS",
    "TRANSITIONS",
    "CompletionRecord",
    "Exchange",
    "IllegalTransition",
    "Outcome",
    "Phase",
    "StreamMetrics",
]

log = logging.getLogger("trioproxy")

# Gateway-added latency per upstream read (arrived -> handed to the client), seconds.
ADDED_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
# Gap between two upstream events of a stream (inter-token latency), seconds.
GAP_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Phase(enum.Enum):
    RECEIVED = "received"  # the handler has it: body, validation, auth, slots
    ADMITTED = "admitted"  # slots held, the upstream request is built
    RELAYING = "relaying"  # the relay's tasks run
    SETTLED = "settled"  # the outcome is decided
    RECORDED = "recorded"  # frozen into a CompletionRecord


TRANSITIONS: dict[Phase, frozenset[Phase]] = {
    Phase.RECEIVED: frozenset({Phase.ADMITTED, Phase.SETTLED}),
    Phase.ADMITTED: frozenset({Phase.RELAYING, Phase.SETTLED}),
    Phase.RELAYING: frozenset({Phase.SETTLED}),
    Phase.SETTLED: frozenset({Phase.RECORDED}),
    Phase.RECORDED: frozenset(),
}


class IllegalTransition(RuntimeError):
    """An exchange was moved along an edge :data:`TRANSITIONS` does not have."""


class Slot(Protocol):
    def release(self, borrower: object) -> None: ...


@dataclass(slots=True)
class StreamMetrics:
    """Per-stream accumulators for ``/metrics``, merged into histograms once."""

    # Arrival times of chunks in the channel (reader appends, writer pops; <= channel_size + 1).
    arrivals: collections.deque[float] = field(default_factory=collections.deque)
    added_counts: list[int] = field(default_factory=lambda: [0] * (len(ADDED_BUCKETS) + 1))
    added_sum: float = 0.0
    gap_counts: list[int] = field(default_factory=lambda: [0] * (len(GAP_BUCKETS) + 1))
    gap_sum: float = 0.0

    def delivered(self, chunks: int, now: float) -> None:
        """``chunks`` chunks from the channel went out in one send that ended ``now``."""
        arrivals, counts = self.arrivals, self.added_counts
        for _ in range(min(chunks, len(arrivals))):
            added = now - arrivals.popleft()
            counts[bisect.bisect_left(ADDED_BUCKETS, added)] += 1
            self.added_sum += added

    def gap(self, events: int, gap: float | None) -> None:
        """``events`` arrived in one read, ``gap`` after the previous read with
        events (None: the first). Events read together are 0 s apart."""
        counts = self.gap_counts
        counts[0] += events - 1
        if gap is not None:
            counts[bisect.bisect_left(GAP_BUCKETS, gap)] += 1
            self.gap_sum += gap


@dataclass(slots=True, eq=False)
class Exchange:
    strict: ClassVar[bool] = False  # illegal transitions raise (tests) or are logged

    request_id: str
    route: str
    method: str
    started: float  # trio clock
    dialect: Dialect = Dialect.OPENAI
    started_wall: float = field(default_factory=time.time)
    phase: Phase = Phase.RECEIVED
    # -- the request (handler) --------------------------------------------------
    model: str | None = None
    key: str | None = None  # the API key's name (never the key)
    stream: bool = False
    request_sha256: str | None = None
    receipt_id: str | None = None  # made by the gateway when receipts are on
    held: list[Slot] = field(default_factory=list)  # limiters holding a slot for it
    admission: EarlyAdmission | None = None  # counted while the upstream request is on its way
    # -- routing (upstream reader) -----------------------------------------------
    upstream: str | None = None  # URL of the (last) upstream request
    provider: str | None = None  # name of the (last) provider tried
    sent_model: str | None = None  # the model name sent upstream (an alias resolved)
    attempts: int = 0  # providers tried
    failovers: list[tuple[str, str]] = field(default_factory=list)  # (provider, error code)
    committed: bool = False  # the response head is in the channel: no more failover
    retry_after: int | None = None  # an upstream 429's Retry-After (seconds)
    upstream_status: int = 0
    # -- timeline (trio clock) --------------------------------------------------------
    upstream_sent_at: float | None = None  # the first upstream request was started
    first_chunk_at: float | None = None  # first upstream body bytes arrived
    first_event_at: float | None = None
    last_event_at: float | None = None
    first_byte_at: float | None = None  # first body bytes handed to the client (writer)
    disconnected_at: float | None = None  # the client's hang-up was seen (watcher)
    upstream_closed_at: float | None = None
    ended: float | None = None
    max_gap: float = 0.0  # largest gap between upstream events (seconds)
    # -- counters and content ----------------------------------------------------------
    status: int = 0  # the status the client got (writer)
    bytes_in: int = 0
    bytes_out: int = 0
    chunks: int = 0
    events: int = 0
    final_event: bool = False
    finished: bool = False  # the last event so far has a finish reason
    content_events: int = 0  # events with generated text (the estimate of a cut stream)
    prompt_estimate: int = 0  # request body bytes / 4, counted against tpm at admission
    strip_usage: bool = False  # request_usage added include_usage: the usage chunk is withheld
    event_stream: bool = False  # the upstream answered an event stream
    partial_event: bool = False  # the stream ended inside an event
    first_block: bytes | None = None
    usage_block: bytes | None = None
    body_json: Any = None  # non-streaming response, parsed once
    response_hash: Any = None  # hashlib.sha256 over every byte sent to the client
    # -- the end --------------------------------------------------------------------------
    upstream_outcome: Outcome | None = None  # how the upstream side ended (reader)
    outcome: Outcome | None = None  # how the exchange ended: written by settle() only
    error: GatewayError | None = None
    metrics: StreamMetrics | None = None  # only with /metrics on
    trace: TraceIds | None = None  # span ids, only with OpenTelemetry export on
    timeline: Timeline = field(init=False)

    def __post_init__(self) -> None:
        self.timeline = Timeline(self.started)

    def mark(self, event: str) -> None:
        """A moment of this request's life (:mod:`trioproxy.relay.timeline`)."""
        self.timeline.moments.append((event, trio.current_time()))

    def move(self, phase: Phase) -> bool:
        """Move along :data:`TRANSITIONS`; False if the move was illegal (ignored)."""
        if phase not in TRANSITIONS[self.phase]:
            message = f"exchange {self.request_id}: {self.phase.value} -> {phase.value}"
            if Exchange.strict:
                raise IllegalTransition(message)
            log.error("illegal transition ignored: %s", message)
            return False
        self.phase = phase
        return True

    def settle(self, outcome: Outcome | None) -> None:
        """Decide the outcome; the first decision stands."""
        if outcome is None or self.phase is Phase.SETTLED:
            return
        if self.move(Phase.SETTLED):
            self.outcome = outcome
            self.mark(f"outcome {outcome.value}")

    def fail(self, err: GatewayError) -> None:
        """The handler's own error answer (before any relay): error and outcome."""
        self.error = err
        self.settle(err.outcome)

    def hung_up(self, now: float) -> None:
        """The watcher (or the handler, before the relay) saw the client leave."""
        if self.outcome is None:  # after the outcome, an end of connection is no news
            self.mark("client_hangup")
            self.disconnected_at = now
            self.settle(Outcome.CLIENT_DISCONNECT)

    def events_read(self, events: int, now: float) -> None:
        """``events`` upstream events arrived in one read at ``now`` (the reader,
        once per read with events)."""
        last, self.last_event_at = self.last_event_at, now
        gap = None if last is None else now - last
        if gap is not None and gap > self.max_gap:
            self.max_gap = gap
        if self.metrics is not None:
            self.metrics.gap(events, gap)

    def sent(self, body: bytes) -> None:
        """Account for bytes handed to the client (one call per ASGI send)."""
        self.bytes_out += len(body)
        if self.response_hash is not None:
            self.response_hash.update(body)

    def release_slots(self) -> None:
        """Give back every concurrency slot taken for this exchange (idempotent)."""
        held, self.held = self.held, []
        for limiter in held:
            limiter.release(self)
        if held:
            self.mark("slots_released")


@dataclass(frozen=True, slots=True)
class CompletionRecord:
    request_id: str
    route: str
    model: str | None
    key: str | None
    upstream: str | None
    provider: str | None
    attempts: int
    failovers: tuple[tuple[str, str], ...]  # (provider, error code) of each failed attempt
    stream: bool
    status: int
    upstream_status: int
    outcome: Outcome
    error: str | None
    completion_id: str | None
    usage: dict[str, Any] | None
    created: float  # wall clock, request start
    ttft_ms: float | None  # request start -> first upstream event
    duration_ms: float
    bytes_in: int
    bytes_out: int
    chunks: int
    events: int
    final_event: bool
    max_gap_ms: float | None
    overhead_ms: float | None  # time to first byte the gateway added
    cancel_latency_ms: float | None  # client disconnect -> upstream connection closed
    request_sha256: str | None = None
    response_sha256: str | None = None
    receipt_id: str | None = None  # only for exchanges that reached an upstream
    upstream_model: str | None = None  # the model that answered (as the upstream says)
    truncated: bool = False  # an event stream that ended before its final event
    timeline: tuple[tuple[str, float], ...] = ()  # (event, ms since received): not logged
    prompt_tokens: int = 0
    completion_tokens: int = 0
    usage_source: str | None = None  # upstream | estimated; None: no upstream was reached

    @classmethod
    def from_exchange(cls, ex: Exchange) -> CompletionRecord:
        """Freeze a settled exchange (moves it to ``recorded``)."""
        ex.move(Phase.RECORDED)
        assert ex.outcome is not None and ex.ended is not None
        completion_id: str | None = None
        usage: dict[str, Any] | None = None
        answered: str | None = None
        if isinstance(ex.body_json, dict):
            completion_id = dialects.completion_id(ex.body_json)
            usage = dialects.usage(None, ex.body_json, ex.dialect)
            answered = dialects.response_model(ex.body_json)
        if ex.first_block is not None:
            first = _load_data(ex.first_block)
            last = _load_data(ex.usage_block) if ex.usage_block is not None else None
            if first is not None:
                completion_id = completion_id or dialects.completion_id(first)
                usage = dialects.usage(first, last, ex.dialect)
                answered = answered or dialects.response_model(first)
        if completion_id is not None:
            completion_id = completion_id[:256]
        if ex.event_stream:
            # Complete: its final event, or a finish reason last and a clean end.
            clean = ex.finished and ex.outcome is Outcome.DONE and ex.error is None
            truncated = not (ex.final_event or clean)
        else:
            truncated = ex.outcome not in (Outcome.DONE, Outcome.UPSTREAM_ERROR)
        prompt, completion, source = _tokens(ex, usage, truncated)
        cancel = None
        if ex.disconnected_at is not None and ex.upstream_closed_at is not None:
            cancel = round(max(0.0, ex.upstream_closed_at - ex.disconnected_at) * 1000, 3)
        return cls(
            request_id=ex.request_id,
            route=ex.route,
            model=ex.model,
            key=ex.key,
            upstream=ex.upstream,
            provider=ex.provider,
            attempts=ex.attempts,
            failovers=tuple(ex.failovers),
            stream=ex.stream,
            status=ex.status,
            upstream_status=ex.upstream_status,
            outcome=ex.outcome,
            error=ex.error.message if ex.error is not None else None,
            completion_id=completion_id,
            usage=usage,
            created=ex.started_wall,
            ttft_ms=_ms(ex.first_event_at, ex.started),
            duration_ms=round((ex.ended - ex.started) * 1000, 3),
            bytes_in=ex.bytes_in,
            bytes_out=ex.bytes_out,
            chunks=ex.chunks,
            events=ex.events,
            final_event=ex.final_event,
            max_gap_ms=round(ex.max_gap * 1000, 3) if ex.last_event_at is not None else None,
            overhead_ms=_overhead_ms(ex),
            cancel_latency_ms=cancel,
            request_sha256=ex.request_sha256,
            response_sha256=ex.response_hash.hexdigest() if ex.response_hash is not None else None,
            receipt_id=ex.receipt_id if ex.upstream_sent_at is not None else None,
            upstream_model=answered or ex.sent_model,
            truncated=truncated,
            timeline=tuple(ex.timeline.rows()),
            prompt_tokens=prompt,
            completion_tokens=completion,
            usage_source=source,
        )

    def to_json(self) -> bytes:
        """The access line: every field but the timeline (served by /debug/trace);
        a shallow dict (``asdict``'s deep copy cost 79 µs a line against 4)."""
        return orjson.dumps({name: getattr(self, name) for name in _LOGGED})


_LOGGED = tuple(f.name for f in fields(CompletionRecord) if f.name != "timeline")


def _tokens(
    ex: Exchange, usage: dict[str, Any] | None, truncated: bool
) -> tuple[int, int, str | None]:
    """(prompt, completion, source) of an exchange (see the module's rules)."""
    if ex.upstream_sent_at is None:
        return 0, 0, None
    prompt, completion = dialects.token_counts(usage)
    if prompt is not None and completion is not None and not truncated:
        return prompt, completion, "upstream"
    # A whole response without usage: about 4 bytes a token.
    whole = ex.bytes_in // 4 if ex.status < 400 else 0
    estimated = ex.content_events if ex.event_stream else whole
    if completion is None or truncated:
        completion = max(completion or 0, estimated)
    return (ex.prompt_estimate if prompt is None else prompt), completion, "estimated"


def _overhead_ms(ex: Exchange) -> float | None:
    """Before the upstream request, plus first upstream bytes -> first bytes to the client."""
    if ex.upstream_sent_at is None or ex.first_chunk_at is None or ex.first_byte_at is None:
        return None
    added = (ex.upstream_sent_at - ex.started) + (ex.first_byte_at - ex.first_chunk_at)
    return round(max(0.0, added) * 1000, 3)


def _ms(t: float | None, start: float) -> float | None:
    return None if t is None else round((t - start) * 1000, 3)


def _load_data(block: bytes) -> dict[str, Any] | None:
    """The JSON object in an event's ``data``, or None."""
    data = parse_event(block).data
    if data is None:
        return None
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None
