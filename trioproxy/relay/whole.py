"""Whole (non-SSE) answers: relayed as they arrive, in bounded memory.

Rules:
- A whole answer (a non-streaming call's, an upstream's 4xx) is relayed to the
  client as it arrives: its head with its first bytes, then each read, at most
  ``max_response_bytes`` in all, within the request's deadline. Memory per
  answer: the relay's channel and, for the record, :class:`WholeAnswer`.
- An upstream 5xx is never quoted to the client (its page may echo what the
  gateway sent it): the client gets a 502 naming the status, the operator's
  log the start of the body, the provider's credential masked.
- A ``Content-Type`` of bytes a client could not be sent is an upstream error.
- :class:`WholeAnswer` (sans-IO: chunks in, one JSON object out) keeps only
  what the record reads of an answer: the completion id, the model that answered and the
  usage. An answer of at most ``whole`` bytes (a chat completion, almost
  always) is kept whole and parsed once at its end, exactly.
- A larger one (embeddings of many inputs, a long completion) keeps its first
  and last ``edge`` bytes only. Its ``id`` and ``model`` are the first of each
  in the head (OpenAI and Anthropic write them before the content) or, for the
  model, the last in the tail (embeddings write it after the data); its usage
  is the last ``"usage"`` object in the tail, parsed as JSON. An answer whose
  tail holds no usage object has none (the record then estimates).

Memory per answer: at most ``whole`` bytes, or ``2 x edge`` past that.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import AsyncIterator
from typing import Any, Protocol

import httpx
import orjson
import trio

from ..config import Config
from ..errors import GatewayError, UpstreamBroken, UpstreamServerError
from ..routing.targets import Target, UpstreamRequest
from ..upstream.body import AnyBody, body_of
from ..upstream.http11 import parse_retry_after
from .exchange import Exchange
from .writer import Item, Start

__all__ = [
    "WholeAnswer",
    "WholeRelay",
    "passed_headers",
    "read_error",
    "relay_whole",
    "whole_head",
    "content_type_of",
]

ERROR_READ_BYTES = 64 << 10  # of a 400, read to see whether it says the context is too long

log = logging.getLogger("trioproxy")
_PASSED_RESPONSE_HEADERS = frozenset({b"retry-after", b"x-request-id", b"openai-processing-ms"})


class WholeRelay(Protocol):
    """What :func:`relay_whole` uses of the upstream reader."""

    ex: Exchange
    config: Config
    request: UpstreamRequest

    async def deliver(self, item: Item) -> None: ...

    def first_timeout(self) -> GatewayError: ...


async def relay_whole(
    reader: WholeRelay,
    response: httpx.Response,
    deadline: float,
    target: Target,
    read: tuple[AnyBody, bytes] | None = None,
) -> None:
    """A non-SSE response (non-streaming call, or an upstream error): relayed
    as it arrives (at most ``max_response_bytes``), within ``deadline``; what
    the record needs of it is kept in bounded memory. An upstream 5xx is read
    (bounded) for the log, never quoted to the client. ``read``: the body and
    what was already read of it (:func:`read_error`), relayed first."""
    ex, config = reader.ex, reader.config
    status = response.status_code
    content_type = content_type_of(response)
    body: AsyncIterator[bytes]
    if read is None:
        body = closing = body_of(response)
    else:
        closing, body = read[0], _Prefixed(read[1], read[0])
    if status >= 500:
        try:
            raise await _upstream_failed(ex, response, body, deadline, target)
        finally:
            await closing.aclose()
    answer = (
        WholeAnswer()
        if status < 400 and reader.request.parse_body and content_type.startswith(b"application/json")
        else None
    )  # fmt: skip
    limit = config.max_response_bytes
    size = 0
    started = ex.committed
    try:
        with trio.CancelScope(deadline=deadline) as scope:
            async for chunk in body:
                size += len(chunk)
                ex.bytes_in = size
                if size > limit:
                    raise UpstreamBroken(f"upstream response exceeds {limit} bytes")
                if answer is not None:
                    answer.feed(chunk)
                if not started:
                    started = True
                    await reader.deliver(Start(status, whole_head(ex, response, content_type)))
                    ex.committed = True
                    ex.mark("committed")
                await reader.deliver(chunk)
    finally:
        await closing.aclose()
    if scope.cancelled_caught:
        raise reader.first_timeout()
    if answer is not None:
        ex.body_json = answer.summary()
    if not started:  # an empty body
        await reader.deliver(Start(status, whole_head(ex, response, content_type)))
        ex.committed = True
        ex.mark("committed")


async def read_error(
    response: httpx.Response, deadline: float, limit: int = ERROR_READ_BYTES
) -> tuple[AnyBody, bytes]:
    """The start of an error answer (at most ``limit`` bytes, or what came by
    ``deadline``), to judge before it is relayed; the body with it."""
    body = body_of(response)
    kept = b""
    with trio.CancelScope(deadline=deadline):
        async for chunk in body:
            kept += chunk
            if len(kept) >= limit:
                break
    return body, kept


class _Prefixed:
    """A body whose first bytes were already read: those, then the rest (no
    generator: nothing is left suspended when the read stops early)."""

    __slots__ = ("_body", "_first")

    def __init__(self, first: bytes, body: AsyncIterator[bytes]) -> None:
        self._first, self._body = first, body

    def __aiter__(self) -> _Prefixed:
        return self

    async def __anext__(self) -> bytes:
        if self._first:
            first, self._first = self._first, b""
            return first
        return await self._body.__anext__()


def whole_head(
    ex: Exchange, response: httpx.Response, content_type: bytes
) -> list[tuple[bytes, bytes]]:
    """A whole answer's head, made as its first bytes arrived and sent with them:
    the time the gateway added is what it took before the upstream request."""
    now = trio.current_time()
    ex.first_chunk_at = now
    if ex.metrics is not None:
        ex.metrics.arrivals.append(now)
    added = (ex.upstream_sent_at or ex.started) - ex.started
    headers = [
        (b"content-type", content_type),
        (b"x-trioproxy-overhead-ms", b"%.3f" % (added * 1000)),
        *passed_headers(response),
    ]
    length = response.headers.get("content-length")
    if length is not None:  # the same bytes: the same length (checked by the parser)
        headers.append((b"content-length", length.encode("ascii")))
    return headers


async def _upstream_failed(
    ex: Exchange,
    response: httpx.Response,
    body: AsyncIterator[bytes],
    deadline: float,
    target: Target,
) -> UpstreamServerError:
    """An upstream 5xx: the operator's log gets the start of its body (which
    may echo what the gateway sent it: the credential is masked there); the
    client a 502 naming the status, never the body."""
    status = response.status_code
    wait_hint = parse_retry_after(response.headers.get("retry-after", ""))
    kept = b""
    with trio.move_on_after(0.5), trio.CancelScope(deadline=deadline):
        async for chunk in body:
            kept += chunk[: 500 - len(kept)]
            if len(kept) >= 500:
                break
    kept = kept[:500]
    for name in ("authorization", "x-api-key"):
        credential = target.headers.get(name, "").rsplit(" ", 1)[-1].encode("latin-1")
        if len(credential) >= 8:
            kept = kept.replace(credential, b"[credential]")
    log.warning(
        "request %s: provider %s answered HTTP %d: %r",
        ex.request_id, target.provider, status, kept,
    )  # fmt: skip
    return UpstreamServerError(f"upstream returned HTTP {status}", status, wait_hint)


def content_type_of(response: httpx.Response) -> bytes:
    """The upstream's Content-Type as it sent it; one of bytes a client could
    not be sent (anything but visible ASCII) is an upstream error."""
    for name, value in response.headers.raw:
        if name.lower() == b"content-type":
            if not _VISIBLE.issuperset(value):
                raise UpstreamBroken("upstream sent a Content-Type that is not visible ASCII")
            return value
    return b"application/json"


_VISIBLE = frozenset(range(0x20, 0x7F))


def passed_headers(response: httpx.Response) -> list[tuple[bytes, bytes]]:
    return [
        (name.lower(), value)
        for name, value in response.headers.raw
        if name.lower() in _PASSED_RESPONSE_HEADERS
    ]


_ID = re.compile(rb'"id"\s*:\s*"([^"\\]{1,256})"')
_MODEL = re.compile(rb'"model"\s*:\s*"([^"\\]{1,256})"')
# A usage object: flat, or with one level of *_details objects inside.
_USAGE = re.compile(rb'"usage"\s*:\s*(\{[^{}]*(?:\{[^{}]*\}[^{}]*)*\})')


class WholeAnswer:
    """Feed every chunk of a whole answer; :meth:`summary` at its end."""

    __slots__ = ("_head", "_parts", "_size", "_tail", "edge", "whole")

    def __init__(self, whole: int = 1 << 20, edge: int = 64 << 10) -> None:
        self.whole, self.edge = whole, edge
        self._parts: list[bytes] | None = []  # the whole answer, while it fits
        self._head = b""
        self._tail = b""
        self._size = 0

    def feed(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._parts is not None:
            self._parts.append(chunk)
            if self._size <= self.whole:
                return
            data = b"".join(self._parts)
            self._parts = None
            self._head, self._tail = data[: self.edge], data[-self.edge :]
            return
        self._tail = (self._tail + chunk)[-self.edge :]

    def summary(self) -> dict[str, Any] | None:
        """The answer's JSON object (whole), or the fields the record reads of a
        large one (``id``, ``model``, ``usage``); None when there is none."""
        if self._parts is not None:
            try:
                obj = orjson.loads(b"".join(self._parts))
            except orjson.JSONDecodeError:
                return None
            return obj if isinstance(obj, dict) else None
        found: dict[str, Any] = {}
        if (m := _ID.search(self._head)) is not None:
            found["id"] = m.group(1).decode("utf-8", "replace")
        model = _MODEL.search(self._head) or _last(_MODEL, self._tail)
        if model is not None:
            found["model"] = model.group(1).decode("utf-8", "replace")
        usage = _last(_USAGE, self._tail)
        if usage is not None:
            with contextlib.suppress(orjson.JSONDecodeError):
                found["usage"] = orjson.loads(usage.group(1))
        return found or None


def _last(pattern: re.Pattern[bytes], data: bytes) -> re.Match[bytes] | None:
    last = None
    for last in pattern.finditer(data):  # noqa: B007 - the last match is wanted
        pass
    return last
