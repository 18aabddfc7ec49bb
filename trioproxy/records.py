"""What the gateway remembers about one exchange, and the record it hands off.

:class:`Exchange` is the mutable per-request state the relay's tasks write
(each field has one writer). When the request ends, the handler freezes it into
a :class:`CompletionRecord` exactly once: that record is logged as the access
line and handed to detached work (receipts, metrics sinks).

Only two events of a stream are JSON-parsed: the first (completion id, and
Anthropic's input token count) and the last one that mentions ``"usage"``,
parsed once after the stream ended.
"""

from __future__ import annotations

import bisect
import collections
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

from .errors import GatewayError
from .sse import parse_event

__all__ = [
    "ADDED_BUCKETS",
    "GAP_BUCKETS",
    "CompletionRecord",
    "Exchange",
    "extract_first",
    "extract_usage",
]

# Gateway-added latency per upstream read (arrived -> handed to the client), seconds.
ADDED_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
# Gap between two upstream events of a stream (inter-token latency), seconds.
GAP_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10, 30)


@dataclass(slots=True, eq=False)
class Exchange:
    request_id: str
    route: str
    method: str
    started: float  # trio clock
    started_wall: float = field(default_factory=time.time)
    model: str | None = None
    key: str | None = None  # the API key's name (never the key)
    stream: bool = False
    upstream: str | None = None  # URL of the (last) upstream request
    provider: str | None = None  # name of the (last) provider tried
    attempts: int = 0  # providers tried
    failovers: list[tuple[str, str]] = field(default_factory=list)  # (provider, error code)
    committed: bool = False  # the response head is in the channel: no more failover
    retry_after: int | None = None  # an upstream 429's Retry-After (seconds)
    status: int = 0  # the status the client got (writer)
    upstream_status: int = 0  # the status the upstream answered (reader)
    upstream_sent_at: float | None = None  # the upstream request was started
    first_chunk_at: float | None = None  # first upstream body bytes arrived
    first_event_at: float | None = None
    last_event_at: float | None = None
    max_gap: float = 0.0  # largest gap between upstream events (seconds)
    first_byte_at: float | None = None  # first body bytes handed to the client
    disconnected_at: float | None = None
    upstream_closed_at: float | None = None
    ended: float | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    chunks: int = 0
    events: int = 0
    final_event: bool = False
    partial_event: bool = False
    completion_id: str | None = None
    first_block: bytes | None = None
    usage_block: bytes | None = None
    body_json: Any = None  # non-streaming response, parsed once
    upstream_outcome: str | None = None  # how the upstream side ended
    outcome: str | None = None  # how the exchange ended (final)
    error: GatewayError | None = None
    channel: Any = None  # the relay's memory channel, for /debug/state
    held: list[Any] = field(default_factory=list)  # limiters holding a slot for this exchange
    request_sha256: str | None = None
    response_hash: Any = None  # hashlib.sha256 over every byte sent to the client
    # Arrival times of chunks in the channel (reader appends, writer pops: at most
    # channel_size + 1), and the per-event added latency aggregated per stream.
    arrivals: collections.deque[float] = field(default_factory=collections.deque)
    added_counts: list[int] = field(default_factory=lambda: [0] * (len(ADDED_BUCKETS) + 1))
    added_sum: float = 0.0
    gap_counts: list[int] = field(default_factory=lambda: [0] * (len(GAP_BUCKETS) + 1))
    gap_sum: float = 0.0

    def events_read(self, events: int, now: float) -> None:
        """``events`` upstream events arrived in one read at ``now`` (the reader,
        once per read with events): their gaps, counted per stream. Events read
        together are 0 s apart; the first event of a stream has no gap."""
        counts = self.gap_counts
        counts[0] += events - 1
        last, self.last_event_at = self.last_event_at, now
        if last is None:
            return
        gap = now - last
        counts[bisect.bisect_left(GAP_BUCKETS, gap)] += 1
        self.gap_sum += gap
        if gap > self.max_gap:
            self.max_gap = gap

    def delivered(self, chunks: int, now: float) -> None:
        """``chunks`` chunks from the channel went out in one send that ended ``now``."""
        arrivals, counts = self.arrivals, self.added_counts
        for _ in range(min(chunks, len(arrivals))):
            added = now - arrivals.popleft()
            counts[bisect.bisect_left(ADDED_BUCKETS, added)] += 1
            self.added_sum += added

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

    def settle(self, outcome: str | None) -> None:
        """Decide the outcome; the first decision stands (a hang-up noticed by
        the watcher must not be overwritten by a writer that ran on)."""
        if self.outcome is None:
            self.outcome = outcome


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
    outcome: str
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

    @classmethod
    def from_exchange(cls, ex: Exchange, dialect_anthropic: bool) -> CompletionRecord:
        assert ex.outcome is not None and ex.ended is not None
        first = extract_first(ex.first_block) if ex.first_block else None
        completion_id = ex.completion_id
        usage: dict[str, Any] | None = None
        if ex.body_json is not None and isinstance(ex.body_json, dict):
            completion_id = completion_id or _str(ex.body_json.get("id"))
            usage = _dict(ex.body_json.get("usage"))
        if first is not None:
            completion_id = completion_id or _first_id(first)
            usage = extract_usage(first, ex.usage_block, dialect_anthropic)
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
        )

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))


def _overhead_ms(ex: Exchange) -> float | None:
    """Before the upstream request, plus first upstream bytes -> first bytes to the client."""
    if ex.upstream_sent_at is None or ex.first_chunk_at is None or ex.first_byte_at is None:
        return None
    added = (ex.upstream_sent_at - ex.started) + (ex.first_byte_at - ex.first_chunk_at)
    return round(max(0.0, added) * 1000, 3)


def _ms(t: float | None, start: float) -> float | None:
    return None if t is None else round((t - start) * 1000, 3)


def _str(v: Any) -> str | None:
    return v if isinstance(v, str) else None


def _dict(v: Any) -> dict[str, Any] | None:
    return v if isinstance(v, dict) else None


def _load_data(block: bytes) -> Any:
    data = parse_event(block).data
    if data is None:
        return None
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None


def extract_first(block: bytes) -> dict[str, Any] | None:
    return _dict(_load_data(block))


def _first_id(first: dict[str, Any]) -> str | None:
    # OpenAI chat/completions: {"id"}; Anthropic: {"message": {"id"}};
    # Responses: {"response": {"id"}}.
    for holder in (first, _dict(first.get("message")), _dict(first.get("response"))):
        if holder is not None and isinstance(holder.get("id"), str):
            return str(holder["id"])
    return None


def extract_usage(
    first: dict[str, Any], usage_block: bytes | None, anthropic: bool
) -> dict[str, Any] | None:
    usage: dict[str, Any] = {}
    if anthropic:
        message = _dict(first.get("message"))
        start_usage = _dict(message.get("usage")) if message else None
        if start_usage:
            usage.update(start_usage)
    if usage_block is not None:
        last = _dict(_load_data(usage_block))
        if last is not None:
            found = _dict(last.get("usage"))
            if found is None:  # Responses API: {"response": {"usage": ...}}
                response = _dict(last.get("response"))
                found = _dict(response.get("usage")) if response else None
            if found:
                usage.update(found)
    return usage or None
