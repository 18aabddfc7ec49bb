"""Byte fidelity: the client gets the upstream's bytes, unchanged and at once.

Scripted upstreams write event streams as servers may: LF, CRLF or CR line
ends, ``id:``/``retry:``/``event:`` fields, multi-line ``data``, comments, runs
of blank lines, spaced JSON, UTF-8 characters split across chunks; bodies framed
by chunks, by Content-Length or by the connection's end. Each piece is written
only once the client has received everything before it (lockstep), so a relay
that holds anything back (a partial event, the last chunk) fails at once, and
one that re-frames (line ends normalised, blank lines dropped) fails on bytes.
Every route; the reader's direct writes and the writer's channel path both.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import h11
import pytest
import trio

from tests.conftest import chat, running
from tests.scripted_upstream import raw_upstream
from trioproxy.server import guard_install
from trioproxy.server import hypercorn as guards
from trioproxy.testing.rawclient import RawClient


def _stream(eol: bytes, final: list[bytes]) -> bytes:
    """An event stream with every field and oddity SSE allows, ending in ``final``."""
    lines: list[list[bytes]] = [
        [b": keep-alive comment"],
        [b"id: 1", b"retry: 3000", b'data: {"choices": [{"delta": {"content": "h\xc3\xa9llo"}}]}'],
        [],  # a run of blank lines
        [],
        [
            b"event: delta",
            b'data: {"choices":[{"delta":{"content":"\xe4\xb8\x96\xe7\x95\x8c \xf0\x9f\x8e\x89"}}]}',
        ],
        [b"data: {", b'data: "multi": "line"', b"data: }"],
        [b"data:no-space-after-the-colon", b"id:2"],
        final,
    ]
    return b"".join(eol.join(event) + eol + eol if event else eol for event in lines)


ROUTES = {  # path, request body, final event lines, gateway options key
    "chat": ("/v1/chat/completions", chat("m"), [b"data: [DONE]"]),
    "completions": (
        "/v1/completions",
        {"model": "m", "prompt": "hi", "stream": True},
        [b"data: [DONE]"],
    ),
    "responses": (
        "/v1/responses",
        {"model": "m", "input": "hi", "stream": True},
        [b"event: response.completed", b'data: {"type":"response.completed"}'],
    ),
    "messages": (
        "/v1/messages",
        {**chat("m"), "max_tokens": 16},
        [b"event: message_stop", b'data: {"type": "message_stop"}'],
    ),
}
EOLS = {"lf": b"\n", "crlf": b"\r\n", "cr": b"\r"}


def _pieces(body: bytes, how: str) -> list[bytes]:
    if how == "bytes":
        return [body[i : i + 1] for i in range(len(body))]
    if how == "whole":
        return [body]
    rng = random.Random(f"{how}{len(body)}")
    cuts = sorted(rng.sample(range(1, len(body)), 12))
    return [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]


@asynccontextmanager
async def _lockstep_upstream(
    pieces: Sequence[bytes], framing: str, acks: trio.MemoryReceiveChannel[None] | None
) -> AsyncIterator[str]:
    """Writes ``pieces`` framed as told; with ``acks``, each piece only once the
    test says the client has everything before it."""
    total = sum(len(p) for p in pieces)
    head = {
        "chunked": b"transfer-encoding: chunked\r\n",
        "length": b"content-length: %d\r\n" % total,
        "eof": b"connection: close\r\n",
    }[framing]

    async def respond(stream: trio.SocketStream, request: bytes) -> None:
        await stream.send_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n" + head + b"\r\n"
        )
        for piece in pieces:
            if acks is not None:
                await acks.receive()
            out = b"%x\r\n%b\r\n" % (len(piece), piece) if framing == "chunked" else piece
            await stream.send_all(out)
        if framing == "chunked":
            await stream.send_all(b"0\r\n\r\n")
        await stream.aclose()

    async with raw_upstream(respond) as url:
        yield url


async def _relay(route: str, body: bytes, how: str, framing: str, lockstep: bool) -> bytes:
    """``body`` through the gateway, in pieces; what the client received."""
    path, request, _ = ROUTES[route]
    pieces = _pieces(body, how)
    send_ack, acks = trio.open_memory_channel[None](len(pieces))
    async with _lockstep_upstream(pieces, framing, acks if lockstep else None) as url:
        options = (
            {"anthropic_upstreams": (url.removesuffix("/v1"),)}
            if route == "messages"
            else {"openai_upstreams": (url,)}
        )
        async with running(**options) as (gw, _):
            client = await RawClient.connect(gw.url)
            try:
                await client.send_request("POST", path, request)
                got, sent = b"", 0
                with trio.fail_after(20):
                    for n, piece in enumerate(pieces):
                        sent += len(piece)
                        if lockstep:
                            send_ack.send_nowait(None)
                        if n == 0:  # the head comes with the first bytes
                            assert (await client.response_head())[0] == 200
                        while len(got) < sent and lockstep:
                            event = await client.next_event()
                            assert isinstance(event, h11.Data), f"ended after {got!r}"
                            got += event.data
                        if lockstep:  # nothing held back, nothing changed so far
                            assert got == body[:sent]
                    while not isinstance(event := await client.next_event(), h11.EndOfMessage):
                        assert isinstance(event, h11.Data)
                        got += event.data
            finally:
                await client.close()
    return got


@pytest.mark.parametrize("eol", EOLS)
@pytest.mark.parametrize("framing", ["chunked", "length", "eof"])
async def test_split_at_every_byte_the_client_gets_each_byte_as_it_comes(
    eol: str, framing: str
) -> None:
    body = _stream(EOLS[eol], ROUTES["chat"][2])
    assert await _relay("chat", body, "bytes", framing, lockstep=True) == body


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("eol", EOLS)
async def test_every_route_relays_any_split_unchanged(route: str, eol: str) -> None:
    body = _stream(EOLS[eol], ROUTES[route][2])
    for how in ("random-a", "random-b"):
        assert await _relay(route, body, how, "chunked", lockstep=True) == body


@pytest.mark.parametrize("framing", ["chunked", "length", "eof"])
async def test_a_burst_through_the_channel_is_unchanged(framing: str) -> None:
    """All pieces at once: they queue in the channel, the writer sends them."""
    body = _stream(b"\r\n", ROUTES["chat"][2]) * 20
    assert await _relay("chat", body, "random-c", framing, lockstep=False) == body


async def test_lockstep_pieces_go_out_from_the_readers_step() -> None:
    """The direct-write path (the reader writes while the writer waits) keeps
    every byte: the lockstep pieces above are written that way."""
    guard_install.install_hypercorn_guards()
    before = guards.WRITES.from_reader
    body = _stream(b"\r\n", ROUTES["chat"][2])
    assert await _relay("chat", body, "random-d", "chunked", lockstep=True) == body
    assert guards.WRITES.from_reader - before >= 6  # of 13 pieces
