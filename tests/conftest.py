"""Shared test helpers: a gateway + mock upstream on loopback, and a raw client.

Streaming and cancellation are tested over real sockets: the gateway is served
by Hypercorn's trio worker on port 0, the mock upstream is a raw trio server,
and :class:`RawClient` speaks HTTP/1.1 through h11 so a test controls exactly
when it reads and when it hangs up.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import h11
import orjson
import pytest
import trio

from trioproxy.config import Config
from trioproxy.records import CompletionRecord
from trioproxy.server import RunningGateway, open_gateway


def make_config(**overrides: Any) -> Config:
    values: dict[str, Any] = {"bind": "127.0.0.1:0", "access_log": False, "graceful_timeout": 5.0}
    values.update(overrides)
    return Config(**values)


@dataclass
class Recorder:
    """A completion hook that keeps every record (runs as detached work)."""

    records: list[CompletionRecord] = field(default_factory=list)
    event: trio.Event = field(default_factory=trio.Event)

    async def __call__(self, record: CompletionRecord) -> None:
        self.records.append(record)
        self.event.set()
        self.event = trio.Event()

    async def wait_for(self, count: int) -> list[CompletionRecord]:
        with trio.fail_after(10):
            while len(self.records) < count:
                await self.event.wait()
        return self.records


@asynccontextmanager
async def running(**overrides: Any) -> AsyncIterator[tuple[RunningGateway, Recorder]]:
    recorder = Recorder()
    async with open_gateway(make_config(**overrides), [recorder]) as gw:
        yield gw, recorder


@pytest.fixture
async def gw() -> AsyncIterator[tuple[RunningGateway, Recorder]]:
    async with running() as pair:
        yield pair


@dataclass
class Response:
    status: int
    headers: dict[bytes, bytes]
    chunks: list[tuple[float, bytes]]  # (arrival time, bytes) per socket read

    @property
    def body(self) -> bytes:
        return b"".join(c for _, c in self.chunks)

    def json(self) -> Any:
        return orjson.loads(self.body)


class RawClient:
    """One HTTP/1.1 connection; the test decides when to read and when to close."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)
        self.closed_at: float | None = None

    @classmethod
    async def connect(cls, url: str) -> RawClient:
        parts = urlsplit(url)
        assert parts.hostname and parts.port
        return cls(await trio.open_tcp_stream(parts.hostname, parts.port))

    async def send_request(
        self, method: str, path: str, body: Any = None, headers: Sequence[tuple[str, str]] = ()
    ) -> None:
        data = body if isinstance(body, bytes) or body is None else orjson.dumps(body)
        hdrs = [("host", "gateway"), *headers]
        if data is not None:
            hdrs += [("content-type", "application/json"), ("content-length", str(len(data)))]
        out = self.conn.send(h11.Request(method=method, target=path, headers=hdrs))
        if data:
            out += self.conn.send(h11.Data(data=data))
        out += self.conn.send(h11.EndOfMessage())
        await self.stream.send_all(out)

    async def next_event(self) -> Any:
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            data = await self.stream.receive_some(65536)
            self.conn.receive_data(data)

    async def response_head(self) -> tuple[int, dict[bytes, bytes]]:
        event = await self.next_event()
        assert isinstance(event, h11.Response), event
        return event.status_code, dict(event.headers)

    async def body_chunks(self) -> AsyncIterator[tuple[float, bytes]]:
        while True:
            event = await self.next_event()
            if isinstance(event, h11.Data):
                yield trio.current_time(), bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return

    async def read_response(self) -> Response:
        status, headers = await self.response_head()
        chunks = [c async for c in self.body_chunks()]
        return Response(status, headers, chunks)

    async def close(self) -> None:
        self.closed_at = trio.current_time()
        await self.stream.aclose()


async def request(
    url: str, method: str, path: str, body: Any = None, headers: Sequence[tuple[str, str]] = ()
) -> Response:
    client = await RawClient.connect(url)
    try:
        await client.send_request(method, path, body, headers)
        with trio.fail_after(15):
            return await client.read_response()
    finally:
        await client.close()


def chat(model: str, stream: bool = True, **extra: Any) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": "hi"}],
        "stream": stream,
        **extra,
    }


def events_of(body: bytes) -> list[bytes]:
    return [e for e in body.split(b"\n\n") if e]
