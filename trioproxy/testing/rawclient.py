"""A minimal HTTP/1.1 client over one trio socket, speaking through h11.

For tools that must control a connection exactly (``trioproxy chaos``, the
end-to-end tests): when to read, how much, and when to hang up. It records when
each read arrived and when the connection was closed (``time.monotonic`` is
comparable across processes; trio's clock is not).
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import h11
import orjson
import trio

__all__ = ["RawClient", "RawResponse", "request"]


@dataclass
class RawResponse:
    status: int
    headers: dict[bytes, bytes]
    chunks: list[tuple[float, bytes]]  # (trio time of the read, bytes) per socket read

    @property
    def body(self) -> bytes:
        return b"".join(c for _, c in self.chunks)

    def json(self) -> Any:
        return orjson.loads(self.body)


class RawClient:
    """One HTTP/1.1 connection; the caller decides when to read and when to close."""

    def __init__(
        self, stream: trio.SocketStream, read_size: int = 65536, host: str = "localhost"
    ) -> None:
        self.stream = stream
        self.host = host  # the Host header, unless a request names its own
        self.conn = h11.Connection(h11.CLIENT)
        self.read_size = read_size
        self.closed_at: float | None = None  # trio clock
        self.closed_mono: float | None = None  # time.monotonic()

    @classmethod
    async def connect(cls, url: str, read_size: int = 65536) -> RawClient:
        parts = urlsplit(url)
        assert parts.hostname and parts.port, url
        stream = await trio.open_tcp_stream(parts.hostname, parts.port)
        return cls(stream, read_size, host=parts.netloc)

    async def send_request(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: Sequence[tuple[str, str]] = (),
        http10: bool = False,
        body_pieces: int = 1,
        piece_gap: float = 0.0,
    ) -> None:
        """``http10``: the request line says HTTP/1.0 (h11 sends only HTTP/1.1,
        so those bytes are written here; h11 still reads the answer, whose body
        ends when the server closes). ``body_pieces``: the body goes out in that
        many writes, ``piece_gap`` s apart (a slow upload)."""
        data = body if isinstance(body, bytes) or body is None else orjson.dumps(body)
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()  # the next request on this keep-alive connection
        own_host = any(name.lower() == "host" for name, _ in headers)
        hdrs = [*([] if own_host else [("host", self.host)]), *headers]
        if data is not None:
            if not any(name.lower() == "content-type" for name, _ in headers):
                hdrs.append(("content-type", "application/json"))
            hdrs.append(("content-length", str(len(data))))
        if http10:
            hdrs.append(("connection", "close"))
        out = self.conn.send(h11.Request(method=method, target=path, headers=hdrs)) or b""
        if http10:
            line, _, rest = out.partition(b"\r\n")
            out = (
                line.replace(b" HTTP/1.1", b" HTTP/1.0")
                + b"\r\n"
                + rest.replace(b"connection: close\r\n", b"")
            )
        head = len(out)
        if data:
            out += self.conn.send(h11.Data(data=data)) or b""
        out += self.conn.send(h11.EndOfMessage()) or b""
        if body_pieces <= 1 or not data:
            await self.stream.send_all(out)
            return
        await self.stream.send_all(out[:head])
        step = -(-(len(out) - head) // body_pieces)
        for start in range(head, len(out), step):
            await trio.sleep(piece_gap)
            await self.stream.send_all(out[start : start + step])

    async def next_event(self) -> Any:
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            self.conn.receive_data(await self.stream.receive_some(self.read_size))

    async def response_head(self) -> tuple[int, dict[bytes, bytes]]:
        event = await self.next_event()
        if not isinstance(event, h11.Response):
            raise h11.RemoteProtocolError(f"expected a response, got {event!r}")
        return event.status_code, dict(event.headers)

    async def body_chunks(self) -> AsyncGenerator[tuple[float, bytes], None]:
        while True:
            event = await self.next_event()
            if isinstance(event, h11.Data):
                yield trio.current_time(), bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return
            elif isinstance(event, h11.ConnectionClosed):
                raise h11.RemoteProtocolError("connection closed mid-body")

    async def read_response(self) -> RawResponse:
        status, headers = await self.response_head()
        chunks = [c async for c in self.body_chunks()]
        return RawResponse(status, headers, chunks)

    async def close(self) -> None:
        self.closed_at = trio.current_time()
        self.closed_mono = time.monotonic()
        await self.stream.aclose()


async def request(
    url: str,
    method: str,
    path: str,
    body: Any = None,
    headers: Sequence[tuple[str, str]] = (),
) -> RawResponse:
    """One request on a fresh connection, read whole (at most 15 s), closed."""
    client = await RawClient.connect(url)
    try:
        await client.send_request(method, path, body, headers)
        with trio.fail_after(15):
            return await client.read_response()
    finally:
        await client.close()
