"""A naive relay, for showing what the chaos lab catches: Hypercorn + httpx, 40 lines.

It streams the upstream's bytes to the client and nothing more: no watcher of
the client's ``http.disconnect`` (Hypercorn never cancels the app, and its
``send()`` after a hang-up does nothing), so after a client leaves it reads the
upstream to the end, and the model server keeps generating for nobody. Its
only timeout is httpx's read timeout (``READ_TIMEOUT``), so a stalled upstream
ends its stream with a cut, not an error event.

``python -m trioproxy.testing.naive_relay UPSTREAM_BASE_URL PORT``
"""

from __future__ import annotations

import functools
import sys
from typing import Any

import httpx
import trio

__all__ = ["NaiveRelay", "serve_naive_relay", "whole_body"]

READ_TIMEOUT = 2.0


async def whole_body(receive: Any) -> bytes:
    """The request's body, every ``http.request`` message of it (no limit: a test tool)."""
    body = b""
    while True:
        message = await receive()
        body += bytes(message.get("body", b""))
        if not message.get("more_body"):
            return body


class NaiveRelay:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                kind = message["type"].removeprefix("lifespan.")
                await send({"type": f"lifespan.{kind}.complete"})
                if kind == "shutdown":
                    return
        if scope["type"] != "http":
            return
        body = await whole_body(receive)
        headers = {"content-type": "application/json"}
        timeout = httpx.Timeout(10.0, read=READ_TIMEOUT)
        async with httpx.AsyncClient(timeout=timeout) as client:
            url = self.upstream + scope["path"]
            async with client.stream(scope["method"], url, content=body, headers=headers) as r:
                out = [(b"content-type", r.headers.get("content-type", "").encode())]
                await send({"type": "http.response.start", "status": r.status_code, "headers": out})
                try:
                    async for chunk in r.aiter_raw():
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                except httpx.HTTPError:
                    pass
                await send({"type": "http.response.body", "body": b""})


async def serve_naive_relay(
    upstream: str, port: int = 0, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve the relay on Hypercorn's trio worker until cancelled; ``nursery.start``
    returns its URL."""
    import hypercorn.config
    import hypercorn.trio

    config = hypercorn.config.Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.read_timeout = None
    config.graceful_timeout = 0.5
    app: Any = NaiveRelay(upstream)
    serve = functools.partial(hypercorn.trio.serve, app, config)
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(serve)
        task_status.started(binds[0])


if __name__ == "__main__":
    trio.run(serve_naive_relay, sys.argv[1], int(sys.argv[2]))
