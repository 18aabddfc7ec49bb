"""Guard 9: a chunk that arrives while the writer waits goes out from the reader's step.

Over real loopback sockets, through the gateway and its mock upstream: the bytes
are the upstream's, in order; the writer task does not run once per chunk; what
a socket did not take of a chunk the reader wrote is sent by the writer, first.
(A client that stops reading: guard 5's slow-client test in ``tests/test_hypercorn.py``.)
"""

from __future__ import annotations

import functools
import hashlib
import os
from types import SimpleNamespace

import pytest
import trio

from tests.conftest import chat, running
from trioproxy.server import direct_write, guard_install
from trioproxy.server import hypercorn as guards
from trioproxy.testing.rawclient import request


class _WriterSteps(trio.abc.Instrument):
    def __init__(self) -> None:
        self.steps = 0

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps += task.name == "client-writer"


async def test_chunks_that_arrive_while_the_writer_waits_go_out_from_the_readers_step() -> None:
    """Found profiling paced streams: every chunk went reader -> channel -> writer,
    a trip through the scheduler each, though the writer waited with nothing in
    hand. Now the reader writes such a chunk itself when the socket takes it."""
    guard_install.install_hypercorn_guards()
    async with running() as (gw, recorder):
        assert gw.mock is not None
        gw.mock.record = True
        steps, from_reader = _WriterSteps(), guards.WRITES.from_reader
        trio.lowlevel.add_instrument(steps)
        try:
            response = await request(gw.url, "POST", "/v1/chat/completions", chat("mock-t50-i2"))
        finally:
            trio.lowlevel.remove_instrument(steps)
        record = (await recorder.wait_for(1))[0]
    assert response.status == 200 and record.outcome == "done"
    assert record.completion_id is not None
    assert response.body == gw.mock.transcripts[record.completion_id]  # every byte, in order
    assert record.response_sha256 == hashlib.sha256(response.body).hexdigest()
    assert guards.WRITES.from_reader - from_reader >= 40  # of 53 events
    assert steps.steps <= 10  # start, head and first bytes, end: not one per chunk


async def test_what_the_socket_did_not_take_is_sent_by_the_writer_before_anything_later(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A socket that takes part of a chunk (every third write here takes half of
    it): the writer sends the rest, and the chunks behind it wait for it."""
    real_write = os.write
    calls = [0]

    def half_of_every_third(fd: int, data: bytes) -> int:
        calls[0] += 1
        return real_write(fd, data[: len(data) // 2] if calls[0] % 3 == 0 else data)

    monkeypatch.setattr(direct_write, "os", SimpleNamespace(write=half_of_every_third))
    guard_install.install_hypercorn_guards()
    async with running() as (gw, recorder):
        assert gw.mock is not None
        gw.mock.record = True
        rest = guards.WRITES.rest
        response = await request(gw.url, "POST", "/v1/chat/completions", chat("mock-t300-i1"))
        record = (await recorder.wait_for(1))[0]
    assert response.status == 200 and record.outcome == "done"
    assert record.completion_id is not None
    assert response.body == gw.mock.transcripts[record.completion_id]
    assert record.response_sha256 == hashlib.sha256(response.body).hexdigest()
    assert guards.WRITES.rest - rest >= 50  # of ~300 chunks, a third cut in half


async def test_a_chunk_never_passes_one_the_writer_holds(monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that would block (every fifth here) sends its chunk through the
    channel; the reader reads on at full speed while the writer holds that chunk,
    and what it reads meanwhile goes behind it, never past it."""
    real_write = os.write
    calls = [0]

    def every_fifth_would_block(fd: int, data: bytes) -> int:
        calls[0] += 1
        if calls[0] % 5 == 0:
            raise BlockingIOError
        return real_write(fd, data)

    monkeypatch.setattr(direct_write, "os", SimpleNamespace(write=every_fifth_would_block))
    guard_install.install_hypercorn_guards()
    async with running() as (gw, recorder):
        assert gw.mock is not None
        gw.mock.record = True
        for model in ("mock-t3000-i0", "mock-t300-i1"):
            response = await request(gw.url, "POST", "/v1/chat/completions", chat(model))
            record = (await recorder.wait_for(len(recorder.records) + 1))[-1]
            assert record.completion_id is not None
            assert response.body == gw.mock.transcripts[record.completion_id], model
    assert calls[0] >= 100


async def test_a_last_chunk_that_came_with_the_bodys_end_goes_out_with_the_end() -> None:
    """Found counting a paced stream's system calls: the last events and the
    upstream's end arrive in one read, and the reader wrote the events itself,
    then the writer wrote ``0\\r\\n\\r\\n`` alone. Now such a last chunk goes to the
    writer, and out with the end in one write (guard 10); earlier chunks still
    go out from the reader's step."""
    client_got = [trio.Event(), trio.Event()]
    head = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    first, last = b'data: {"id":"c1","choices":[]}\n\n', b"data: [DONE]\n\n"

    def chunk(data: bytes) -> bytes:
        return b"%x\r\n%b\r\n" % (len(data), data)

    async def upstream(stream: trio.SocketStream) -> None:
        data = b""
        while b"\r\n\r\n" not in data or not data.endswith(b"}"):
            data += await stream.receive_some(65536)
        await stream.send_all(head + chunk(first))
        await client_got[0].wait()
        await stream.send_all(chunk(b"data: 2\n\n"))
        await client_got[1].wait()
        await stream.send_all(chunk(last) + b"0\r\n\r\n")  # one read: the last and the end
        await stream.receive_some(65536)  # until the gateway closes or reuses it

    writes: list[bytes] = []
    real_write = os.write

    def recording(fd: int, data: bytes) -> int:
        writes.append(bytes(data))
        return real_write(fd, data)

    guard_install.install_hypercorn_guards()
    with pytest.MonkeyPatch.context() as patch:
        for module in (guards, direct_write):
            patch.setattr(module, "os", SimpleNamespace(write=recording))
        async with trio.open_nursery() as nursery:
            (listener,) = await nursery.start(
                functools.partial(trio.serve_tcp, host="127.0.0.1"), upstream, 0
            )
            url = f"http://127.0.0.1:{listener.socket.getsockname()[1]}/v1"
            async with running(openai_upstreams=(url,)) as (gw, _):
                ends, from_reader = guards.HEADS.ends, guards.WRITES.from_reader
                host, port = gw.url.removeprefix("http://").split(":")
                body = b'{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true}'
                async with await trio.open_tcp_stream(host, int(port)) as client:
                    await client.send_all(
                        b"POST /v1/chat/completions HTTP/1.1\r\nhost: %b\r\n"
                        b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%b"
                        % (gw.url.removeprefix("http://").encode(), len(body), body)
                    )
                    got = b""
                    with trio.fail_after(5):
                        for seen, wanted in zip(client_got, (first, b"data: 2"), strict=True):
                            while wanted not in got:
                                got += await client.receive_some(65536)
                            seen.set()
                        while not got.endswith(b"0\r\n\r\n"):
                            got += await client.receive_some(65536)
            nursery.cancel_scope.cancel()
    assert got.count(b"data: ") == 3 and chunk(last) + b"0\r\n\r\n" in got
    assert writes[-1] == chunk(last) + b"0\r\n\r\n"  # before: the end alone
    assert guards.WRITES.from_reader == from_reader + 1  # "data: 2", from the reader
    assert guards.HEADS.ends == ends + 1
