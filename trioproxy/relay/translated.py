"""The relay's side of a translated answer: what the pass-through path does not do.

Rules:
- A stream is read by the reader's own loop through a
  :class:`~trioproxy.translate.TranslatingFramer` (the client's blocks out): the
  same timers, channel, slow-client and hang-up handling, failover before the
  first byte. Only whole events reach the client (never a half event), and the
  upstream's bytes are hashed for the receipt (``upstream_sha256``).
- When the upstream's body ends cleanly, the framer's ``close`` gives the
  client's final events if the upstream had given its stop reason (a server
  that writes no ``[DONE]``; Gemini, which has no final event): the reader
  sends them as it sends any.
- A whole answer (non-streaming, or an upstream's 4xx) is read whole, at most
  ``max_response_bytes``, within the request's deadline, then translated and
  sent at once (:func:`relay_translated_whole`). An upstream 5xx is the
  pass-through path's 502 (:func:`~trioproxy.relay.whole.relay_whole`).
"""

from __future__ import annotations

import hashlib
import time
from typing import Protocol

import httpx
import orjson
import trio

from ..dialects import USAGE_ONLY
from ..errors import UpstreamBroken
from ..routing.targets import Target
from ..translate import (
    StreamTranslator,
    TranslatingFramer,
    Translation,
    error_answer,
    translate_answer,
)
from ..upstream.body import AnyBody, body_of
from .exchange import Exchange, note_event
from .splice import PartialAnswer
from .sse import SSEFramer
from .whole import WholeRelay, content_type_of, passed_headers, relay_whole, whole_head
from .writer import Item, Start, Waiting

__all__ = ["framer_for", "relay_answer", "send_tail"]


def framer_for(
    ex: Exchange, max_event_bytes: int, translation: Translation | None
) -> SSEFramer | TranslatingFramer:
    """The framer a stream is read with: the client's events out of the upstream's
    when the provider speaks another dialect."""
    framer = SSEFramer(max_event_bytes)
    if translation is None:
        return framer
    ex.translated = translation.name
    translator = StreamTranslator(translation.kind, translation.dialect, int(time.time()))
    return TranslatingFramer(framer, translator)


async def relay_answer(
    reader: WholeRelay,
    response: httpx.Response,
    deadline: float,
    target: Target,
    read: tuple[AnyBody, bytes] | None = None,
) -> None:
    """A whole answer, relayed as it arrives, or translated when the provider
    speaks another dialect (:func:`relay_translated_whole`)."""
    if target.translation is None:
        await relay_whole(reader, response, deadline, target, read)
    else:
        await relay_translated_whole(reader, response, deadline, target, target.translation, read)


class StreamReader(Protocol):
    """What :func:`send_tail` uses of the upstream reader."""

    ex: Exchange
    partial: PartialAnswer | None
    waiting: Waiting
    send_ch: trio.MemorySendChannel[Item]

    async def deliver(self, item: Item) -> None: ...


async def send_tail(
    reader: StreamReader,
    blocks: list[bytes],
    response: httpx.Response,
    stream_headers: list[tuple[bytes, bytes]],
) -> None:
    """A translated stream's last events, made when the upstream's body ended
    cleanly (:meth:`~trioproxy.translate.TranslatingFramer.close`): noted and
    sent as the reader's loop notes and sends any."""
    ex, now = reader.ex, trio.current_time()
    before, kept = ex.events, []
    for block in blocks:
        flags = note_event(ex, block, now)
        if reader.partial is not None:
            reader.partial.feed(block)
        if not (ex.strip_usage and flags & USAGE_ONLY):
            kept.append(block)
    if ex.events > before:
        ex.events_read(ex.events - before, now)
    if not kept:
        return
    if not ex.committed:
        reader.waiting.now = False
        reader.send_ch.send_nowait(Start(200, [*stream_headers, *passed_headers(response)]))
        ex.committed = True
        ex.mark("committed")
    await reader.deliver(b"".join(kept))


async def relay_translated_whole(
    reader: WholeRelay,
    response: httpx.Response,
    deadline: float,
    target: Target,
    translation: Translation,
    read: tuple[AnyBody, bytes] | None = None,
) -> None:
    """A whole answer from a provider of another dialect, in the client's."""
    ex, status = reader.ex, response.status_code
    if status >= 500:
        await relay_whole(reader, response, deadline, target, read)
        return
    content_type_of(response)  # one a client could not be sent: an upstream error
    limit = reader.config.max_response_bytes
    body = body_of(response) if read is None else read[0]
    parts = [read[1]] if read is not None else []
    size = len(parts[0]) if parts else 0
    try:
        with trio.CancelScope(deadline=deadline) as scope:
            async for chunk in body:
                size += len(chunk)
                if size > limit:
                    raise UpstreamBroken(f"upstream response exceeds {limit} bytes")
                parts.append(chunk)
    finally:
        await body.aclose()
    if scope.cancelled_caught:
        raise reader.first_timeout()
    data = b"".join(parts)
    ex.bytes_in = len(data)
    ex.translated, ex.upstream_sha256 = translation.name, hashlib.sha256(data).hexdigest()
    if status < 400:
        try:
            out, reported = translate_answer(
                translation.kind, translation.dialect, data, int(time.time())
            )
        except ValueError:  # orjson's decode error is one
            raise UpstreamBroken(
                "upstream answered with a body that is not a JSON object"
            ) from None
        ex.body_json = orjson.loads(out)
        if not reported:  # the record estimates, as for any answer without usage
            ex.body_json.pop("usage", None)
    else:
        out = error_answer(status, data, translation.dialect)
    head = whole_head(ex, response, b"application/json")
    head = [(k, v) for k, v in head if k != b"content-length"]
    head.append((b"content-length", b"%d" % len(out)))
    await reader.deliver(Start(status, head))
    ex.committed = True
    ex.mark("committed")
    await reader.deliver(out)
