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
  :class:`~trioproxy.relay.record.CompletionRecord`, exactly once
  (:mod:`trioproxy.relay.record` says how).
"""

from __future__ import annotations

import bisect
import collections
import enum
import logging
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import trio

from .. import dialects
from ..admission.early import EarlyAdmission
from ..dialects import CONTENT, ERROR, FINISH, USAGE, Dialect, classify
from ..errors import GatewayError, Outcome
from .timeline import Timeline, TraceIds

__all__ = [
    "note_event",
    "ADDED_BUCKETS",
    "GAP_BUCKETS",
    "TRANSITIONS",
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
    key_id: str | None = None  # the key's id (its hash's prefix): what it owns is stored under it
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
    # A continued answer (relay/continuation.py): (provider, sha256 of its events) of
    # every attempt that wrote to the client, in order.
    continued: list[tuple[str, str]] = field(default_factory=list)
    committed: bool = False  # the response head is in the channel: no more failover
    translated: str | None = None  # "anthropic->openai": the answer was translated (translate/)
    upstream_sha256: str | None = None  # of the upstream's bytes, when translated
    translated_usage: bool = False  # a translated stream's upstream reported usage
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
    upstream_error: str | None = None  # the type of the upstream's own error event, if it sent one
    content_events: int = 0  # events with generated text (the estimate of a cut stream)
    prompt_estimate: int = 0  # request body bytes / 4, counted against tpm at admission
    strip_usage: bool = False  # this attempt asked for usage the client did not: withheld
    drained: str | None = None  # after a hang-up the upstream was read on: how that ended
    event_stream: bool = False  # the upstream answered an event stream
    partial_event: bool = False  # the stream ended inside an event
    first_block: bytes | None = None
    second_block: bytes | None = None  # the id and model when the first event has none
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


def note_event(ex: Exchange, block: bytes, now: float) -> int:
    """One upstream event (not a heartbeat), as the reader and a drain see it:
    counted, the first two kept (ids), usage, finish, error and final noted.
    Returns its :func:`~trioproxy.dialects.classify` flags (classified once)."""
    ex.events += 1
    if ex.first_block is None:
        ex.first_block = block
        ex.first_event_at = now
        ex.mark("first_event")
    elif ex.events == 2:  # ids where the first has none (Azure's filter chunk)
        ex.second_block = block
    flags = classify(block)
    if flags & CONTENT:
        ex.content_events += 1
    if flags & USAGE:
        ex.usage_block = block
    # The last event with a finish reason: complete if the stream ends here.
    ex.finished = bool(flags & FINISH) or (ex.finished and not flags & CONTENT)
    if flags & ERROR:
        ex.upstream_error, ex.finished = dialects.error_type(block), False
    if dialects.is_final(block):
        ex.final_event = True
    return flags
