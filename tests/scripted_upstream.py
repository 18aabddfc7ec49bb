"""An upstream that writes given SSE events, one HTTP/1.1 chunk each, then ends
as told: cleanly (the terminating chunk), or by resetting the connection."""

from __future__ import annotations

import contextlib
import functools
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager

import trio

__all__ = ["Respond", "raw_upstream", "read_request", "reset", "scripted_upstream"]

Respond = Callable[[trio.SocketStream, bytes], Awaitable[None]]

HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


@asynccontextmanager
async def scripted_upstream(
    events: Sequence[bytes],
    cut_after: int | None = None,
    gap: float = 0.0,
    stall_after: int | None = None,
    peer_closed: trio.Event | None = None,
) -> AsyncIterator[str]:
    """Serve ``events`` to every request; ``cut_after``: reset the connection
    after that many events instead of ending the body; ``stall_after``: send
    nothing more after that many, until the gateway closes the connection (then
    ``peer_closed`` is set, as when the gateway closes it while events are
    written; ``len(events)``: after the last one). Yields the base URL."""

    async def serve(stream: trio.SocketStream, request: bytes) -> None:
        await stream.send_all(HEAD)
        for n, event in enumerate([*events, None]):
            if n == cut_after:
                reset(stream)
                return
            if n == stall_after:
                with contextlib.suppress(trio.BrokenResourceError):  # closed or reset
                    while await stream.receive_some(65536):
                        pass
                if peer_closed is not None:
                    peer_closed.set()
                await stream.aclose()
                return
            if event is None:
                break
            try:
                await stream.send_all(b"%x\r\n%b\r\n" % (len(event), event))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                if peer_closed is not None:  # the gateway closed it while we wrote
                    peer_closed.set()
                return
            if gap:
                await trio.sleep(gap)
        await stream.send_all(b"0\r\n\r\n")
        await stream.aclose()

    async with raw_upstream(serve) as url:
        yield url


def reset(stream: trio.SocketStream) -> None:
    """Close the connection with a TCP reset."""
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    stream.socket.close()


async def read_request(stream: trio.SocketStream) -> bytes:
    """One whole request (a head and its Content-Length body), as sent."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += await stream.receive_some(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (int(line.split(b":")[1]) for line in head.lower().split(b"\r\n")
         if line.startswith(b"content-length:")),
        0,
    )  # fmt: skip
    while len(body) < length:
        body += await stream.receive_some(65536)
    return data


@asynccontextmanager
async def raw_upstream(respond: Respond) -> AsyncIterator[str]:
    """An upstream whose every answer ``respond`` writes, given the request's
    bytes. Yields the base URL."""

    async def serve(stream: trio.SocketStream) -> None:
        await respond(stream, await read_request(stream))

    async with trio.open_nursery() as nursery:
        (listener,) = await nursery.start(
            functools.partial(trio.serve_tcp, host="127.0.0.1"), serve, 0
        )
        yield f"http://127.0.0.1:{listener.socket.getsockname()[1]}/v1"
        nursery.cancel_scope.cancel()
