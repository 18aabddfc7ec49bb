"""Guard 7: a chunk that arrives while the writer waits goes out from the reader's step.

Over real loopback sockets, through the gateway and its mock upstream: the bytes
are the upstream's, in order; the writer task does not run once per chunk; what
a socket did not take of a chunk the reader wrote is sent by the writer, first.
(A client that stops reading: ``tests/test_relay.py``'s slow-client test; the writer,
the bounded channel and ``client_stall_timeout`` still meet it.)
"""

from __future__ import annotations

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
