"""The record of one exchange, made once when it ends: what every reader of it reads.

Rules:
- When the request ends the handler freezes the exchange into a
  :class:`CompletionRecord`, exactly once: the access line, metrics, receipts
  and hooks all read that record. Two events of a stream are JSON-parsed
  then: the first and the last one that carries usage (in mid-stream, only
  events not in compact JSON are parsed, by :func:`trioproxy.dialects.classify`).
- An event stream is complete (not ``truncated``) when its final event came,
  or when its last event had a finish reason and the upstream then ended it
  cleanly (servers that send no ``[DONE]``), unless the upstream sent its own
  error event (then the outcome is ``upstream_error``, also with a ``[DONE]`` after).
- Token usage of every exchange that reached an upstream: ``usage_source`` is
  ``upstream`` when the upstream reported both counts for a stream it finished
  (also one a drain read to its end after the client left: ``drained``),
  else ``estimated``: the completion is the content events relayed (about one
  token each, :func:`trioproxy.dialects.classify`), the prompt what the
  upstream said or the request body's bytes / 4.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import orjson

from .. import dialects
from ..errors import Outcome
from .exchange import Exchange, Phase
from .sse import parse_event

__all__ = ["CompletionRecord"]


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
    key_id: str | None = None  # the key's id: receipts and usage are owned under it
    drained: str | None = None  # read on after a hang-up (relay/drain.py): how that ended
    continued: tuple[tuple[str, str], ...] = ()  # (provider, events sha256) of a continued answer
    translated: str | None = None  # "anthropic->openai": the upstream spoke another dialect
    upstream_sha256: str | None = None  # of the bytes the upstream sent, when translated

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
            if (completion_id is None or answered is None) and ex.second_block is not None:
                second = _load_data(ex.second_block)  # Azure's first chunk: id and model ""
                if second is not None:
                    completion_id = completion_id or dialects.completion_id(second)
                    answered = answered or dialects.response_model(second)
        if ex.translated is not None and ex.event_stream and not ex.translated_usage:
            usage = None  # what the client was told is the translation's estimate, not usage
        if completion_id is not None:
            completion_id = completion_id[:256]
        error = ex.error.message if ex.error is not None else None
        if ex.event_stream:
            # Complete: its final event, or a finish reason last and a clean end;
            # never one the upstream ended with its own error event.
            clean = ex.finished and ex.outcome is Outcome.DONE and ex.error is None
            truncated = (
                not (ex.final_event or clean)
                or ex.upstream_error is not None
                or ex.drained is not None  # the client left before the end
            )
            if ex.upstream_error is not None and error is None:
                error = f"upstream ended the stream with an error event: {ex.upstream_error}"
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
            error=error,
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
            key_id=ex.key_id,
            drained=ex.drained,
            continued=tuple(ex.continued),
            translated=ex.translated,
            upstream_sha256=ex.upstream_sha256,
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
    # Usage of the whole answer: a drain read to the final event, or to a finish and a clean end.
    answered = not truncated or ex.drained == "final" or (ex.drained == "ended" and ex.finished)
    if prompt is not None and completion is not None and answered:
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
