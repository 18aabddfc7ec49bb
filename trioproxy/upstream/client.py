"""Upstream side: the process's one upstream sender (providers and pools: :mod:`trioproxy.routing`).

Rules:
- One :class:`Upstream` per worker process, opened inside ``trio.run`` by the
  lifespan (:func:`open_upstream`). To our transport it hands the header list an
  ``httpx.Request`` would carry, same bytes and order, built without httpx's
  ``Headers`` (42 -> 3 µs); any other transport gets the ``httpx.Request``
  (``handle_async_request``, httpx's public transport API).
  ``httpx.AsyncClient``'s per-request stack (request building and merging, auth,
  redirects, hooks, cookie extraction) is not on the path: it cost 130 µs per
  request, ~4x the request itself, for features the gateway turns off.
- The transport is ours (:mod:`trioproxy.upstream.transport`): HTTP/1.1 only (a cancelled
  HTTP/2 stream never sends RST_STREAM, httpcore #943, so the model server would
  keep generating; closing an HTTP/1.1 connection is understood by every
  server), an O(1) keep-alive pool, and no pool queue at all: every upstream
  request holds a stream-limiter slot first, so httpcore #1093 (a pool slot
  leaked by cancelling a queued request) has nothing to bite.
- No read timeout: the relay owns the TTFT and idle timers, so it can tell them
  apart and ignore heartbeats.
- ``Accept-Encoding: identity``: the body must be the bytes the client gets,
  not a compressed stream. ``User-Agent: trioproxy``. A target's own headers
  replace these (names compared without case).
- No cookies, ever: there is no cookie jar at all, and the transport neither
  sends ``Cookie`` nor passes ``Set-Cookie`` on, so one tenant's upstream
  cookie can never ride on another tenant's request.
- The relay takes the body iterator from the response's ``extensions``
  (:func:`trioproxy.upstream.body.body_of`).

Resource handling: parsed URLs are cached per target URL (at most
``_URL_CACHE`` of them: targets come from the configured providers, never from
a client); the transport's pool is closed with the sender.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import httpx

from ..config import Config
from .transport import UpstreamTransport

__all__ = ["DEFAULT_HEADERS", "Upstream", "open_upstream", "request_headers"]

DEFAULT_HEADERS = {"accept-encoding": "identity", "user-agent": "trioproxy"}
_DEFAULT_RAW = [(k.encode(), v.encode()) for k, v in DEFAULT_HEADERS.items()]
_URL_CACHE = 1024


def request_headers(
    method: str, url: httpx.URL, headers: Mapping[str, str], content: bytes
) -> list[tuple[bytes, bytes]]:
    """The headers of ``httpx.Request(method, url, headers=DEFAULT_HEADERS updated
    by headers, content=content)``, in its order: ``Host``, the defaults no target
    header names (in any case), the target's headers, ``Content-Length`` (right
    after ``Host`` for an empty body). Names and values are ASCII, as in httpx."""
    given = [(key.encode("ascii"), value.encode("ascii")) for key, value in headers.items()]
    names = {name.lower() for name, _ in given}
    items = [pair for pair in _DEFAULT_RAW if pair[0] not in names] + given
    auto = [] if b"host" in names or not url.host else [(b"Host", url.netloc)]
    sized = not names.isdisjoint((b"content-length", b"transfer-encoding"))
    if content and b"content-length" not in names:
        items.append((b"Content-Length", str(len(content)).encode()))
    elif not content and not sized and method in ("POST", "PUT", "PATCH"):
        auto.append((b"Content-Length", b"0"))
    return auto + items


class Upstream:
    """Sends the relay's upstream requests over one transport."""

    def __init__(self, transport: httpx.AsyncBaseTransport) -> None:
        self.transport = transport
        self._urls: dict[str, httpx.URL] = {}

    def _url(self, url: str) -> httpx.URL:
        parsed = self._urls.get(url)
        if parsed is None:
            parsed = httpx.URL(url)
            if len(self._urls) >= _URL_CACHE:
                self._urls.clear()
            self._urls[url] = parsed
        return parsed

    async def send(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        content: bytes,
        extensions: dict[str, Any] | None = None,
    ) -> httpx.Response:
        """The response, its head read and its body not yet: the caller closes it
        (``await response.aclose()``) however it ends.

        Error handling: the transport's errors (the gateway's hierarchy for
        ours) pass through unchanged."""
        parsed = self._url(url)
        transport = self.transport
        if type(transport) is UpstreamTransport:
            method = method.upper()
            raw = request_headers(method, parsed, headers, content)
            return await transport.send(method.encode(), parsed, raw, content, extensions or {})
        merged = httpx.Headers(DEFAULT_HEADERS)
        merged.update(headers)
        request = httpx.Request(
            method, parsed, headers=merged, content=content, extensions=extensions
        )
        return await transport.handle_async_request(request)

    async def aclose(self) -> None:
        await self.transport.aclose()


@asynccontextmanager
async def open_upstream(config: Config) -> AsyncIterator[Upstream]:
    transport = UpstreamTransport(
        connect_timeout=config.connect_timeout,
        keepalive_expiry=30.0,
        max_idle_per_origin=config.max_streams,
    )
    upstream = Upstream(transport)
    try:
        yield upstream
    finally:
        await upstream.aclose()
