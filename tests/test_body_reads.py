"""Slow request bodies: one key's trickles cannot starve the others, and a key
over its limits holds no body-read slot. Each test is the attack."""

from __future__ import annotations

import os
import pathlib

import trio

from tests.conftest import chat, eventually, running
from trioproxy.admission.auth import new_key
from trioproxy.admission.bodies import BodyReads
from trioproxy.config import load_config
from trioproxy.errors import Overloaded
from trioproxy.testing.rawclient import RawClient, request

ALICE, ALICE_BLOCK = new_key("alice")
BOB, BOB_BLOCK = new_key("bob")
CHAT = "/v1/chat/completions"


def _keys(tmp_path: pathlib.Path, alice_rpm: int = 0) -> tuple[object, ...]:
    (tmp_path / "keys.toml").write_text(
        ALICE_BLOCK.replace("rpm = 0", f"rpm = {alice_rpm}") + BOB_BLOCK
    )
    return load_config(tmp_path / "keys.toml").keys


async def _trickle(url: str, key: str, sent: bytes = b'{"model": "mock-t1-i0", "mess') -> RawClient:
    """A client of ``key`` that sends its head and part of its body, then nothing."""
    client = await RawClient.connect(url)
    head = (
        f"POST {CHAT} HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {key}\r\n"
        "content-type: application/json\r\ncontent-length: 1000\r\n\r\n"
    ).encode()
    await client.stream.send_all(head + sent)
    return client


async def test_one_keys_trickling_bodies_leave_another_key_unaffected(
    tmp_path: pathlib.Path,
) -> None:
    """80 trickling bodies from alice (more than the 64 slots): bob's request
    is served at once. Before, it waited for a slot until alice's bodies timed out."""
    async with running(keys=_keys(tmp_path), body_timeout=5) as (gw, _):
        bodies = gw.app.body_reads
        assert bodies.per_key == 16  # a quarter of max_body_reads
        trickles = [await _trickle(gw.url, ALICE) for _ in range(80)]
        await eventually(lambda: bodies.statistics().refused == 64)
        assert bodies.statistics().reading == 16
        served = await request(gw.url, "POST", CHAT, chat("mock-t3-i0"), _auth(BOB))
        assert served.status == 200
        # Served while alice's bodies are still being read: it did not wait for
        # them to time out (body_timeout).
        assert bodies.statistics().reading == 16
        refused = 0
        for client in trickles:
            with trio.fail_after(10):
                response = await client.read_response()
            refused += response.status == 429
            await client.close()
        assert refused == 64  # the rest got their 408 at body_timeout


async def test_a_key_over_its_rpm_is_refused_before_its_body_is_read(
    tmp_path: pathlib.Path,
) -> None:
    """Alice is out of requests this minute; her next request sends its head
    and no body. It is a 429 at once, not a slot held until body_timeout."""
    async with running(keys=_keys(tmp_path, alice_rpm=1), body_timeout=30) as (gw, _):
        assert (await request(gw.url, "POST", CHAT, chat("mock-t1-i0"), _auth(ALICE))).status == 200
        client = await _trickle(gw.url, ALICE, b"")
        with trio.fail_after(5):
            response = await client.read_response()
        await client.close()
        assert response.status == 429 and b"requests per minute" in response.body
        assert gw.app.body_reads.statistics().reading == 0


async def test_a_body_that_times_out_counts_in_the_keys_rpm(tmp_path: pathlib.Path) -> None:
    async with running(keys=_keys(tmp_path, alice_rpm=1), body_timeout=0.3) as (gw, _):
        client = await _trickle(gw.url, ALICE)
        with trio.fail_after(5):
            assert (await client.read_response()).status == 408
        await client.close()
        after = await request(gw.url, "POST", CHAT, chat("mock-t1-i0"), _auth(ALICE))
        assert after.status == 429
        other = await request(gw.url, "POST", CHAT, chat("mock-t1-i0"), _auth(BOB))
        assert other.status == 200


async def test_the_share_is_given_back_however_a_read_ends() -> None:
    reads = BodyReads(total=3, per_key=2)
    async with reads.open("a"), reads.open("a"):
        try:
            async with reads.open("a"):
                raise AssertionError("a third body of one key")
        except Overloaded as err:
            assert err.retry_after == 1
        async with reads.open("b"):
            assert reads.statistics().reading == 3
    try:
        async with reads.open("a"):
            raise KeyError("the read failed")
    except KeyError:
        pass
    stats = reads.statistics()
    assert (stats.reading, stats.keys, stats.refused) == (0, 0, 1)


def _auth(key: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {key}")]


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# Hypercorn queues up to max_app_queue_size (10) body reads of <= 64 KiB for a
# request the app has not read yet, one more it waits to queue, and h11's buffer;
# a read's bytes are held twice (the socket read and its h11 event): 128 KiB each.
QUEUED_PER_CONNECTION = (10 + 2) * (128 << 10)


async def test_bodies_waiting_for_a_slot_hold_a_bounded_queue_each() -> None:
    """While every body-read slot is held, 120 more clients push 4 MB bodies:
    what the server holds for them is the bound SECURITY.md states, per connection."""
    async with running(max_body_reads=1, body_timeout=30) as (gw, _):
        holder = await _trickle(gw.url, "no-key-needed")
        await eventually(lambda: gw.app.body_reads.statistics().reading == 1)
        body = b'{"model": "mock-t1-i0", "pad": "' + b"x" * (4 << 20) + b'"}'
        head = (
            f"POST {CHAT} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n\r\n"
        ).encode()
        sent = [0]
        baseline = _rss()
        streams: list[trio.SocketStream] = []
        host, port = gw.url.removeprefix("http://").split(":")

        async def push() -> None:
            stream = await trio.open_tcp_stream(host, int(port))
            streams.append(stream)
            await stream.send_all(head)
            for i in range(0, len(body), 65536):
                await stream.send_all(body[i : i + 65536])
                sent[0] += 65536

        async with trio.open_nursery() as nursery:
            for _ in range(120):
                nursery.start_soon(push)
            last = -1
            while sent[0] != last:  # until no client can push more: every queue is full
                last = sent[0]
                await trio.sleep(0.3)
            growth = _rss() - baseline
            nursery.cancel_scope.cancel()
        for stream in streams:
            await stream.aclose()
        await holder.close()
    assert growth <= 120 * QUEUED_PER_CONNECTION, f"{growth >> 20} MiB for 120 connections"
