"""Upstream side: the process's one httpx client (providers and pools: :mod:`trioproxy.routing`).

Rules:
- One ``httpx.AsyncClient`` per worker process, opened inside ``trio.run`` by the
  lifespan (:func:`open_upstream_client`).
- The transport is ours (:mod:`trioproxy.upstream.transport`): HTTP/1.1 only (a cancelled
  HTTP/2 stream never sends RST_STREAM, httpcore #943, so the model server would
  keep generating; closing an HTTP/1.1 connection is understood by every
  server), an O(1) keep-alive pool, and no pool queue at all: every upstream
  request holds a stream-limiter slot first, so httpcore #1093 (a pool slot
  leaked by cancelling a queued request) has nothing to bite.
- No read timeout in httpx: the relay owns the TTFT and idle timers, so it can
  tell them apart and ignore heartbeats.
- ``Accept-Encoding: identity``: the body must be the bytes the client gets,
  not a compressed stream.
- No cookies, ever: the client's jar refuses every cookie and the transport
  neither sends ``Cookie`` nor passes ``Set-Cookie`` on, so one tenant's
  upstream cookie can never ride on another tenant's request.
- httpx is used through its public API only: the transport
  (:mod:`trioproxy.upstream.transport`) hands the relay its body iterator in the
  response's ``extensions`` (:func:`trioproxy.upstream.body.body_of`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http.cookiejar import CookieJar, DefaultCookiePolicy

import httpx

from ..config import Config
from .transport import UpstreamTransport

__all__ = ["open_upstream_client"]


@asynccontextmanager
async def open_upstream_client(config: Config) -> AsyncIterator[httpx.AsyncClient]:
    transport = UpstreamTransport(
        connect_timeout=config.connect_timeout,
        keepalive_expiry=30.0,
        max_idle_per_origin=config.max_streams,
    )
    async with httpx.AsyncClient(
        transport=transport,
        timeout=None,
        trust_env=False,
        follow_redirects=False,
        headers={"accept-encoding": "identity", "user-agent": "trioproxy"},
        cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),  # stores nothing
    ) as client:
        yield client
