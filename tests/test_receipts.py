"""Signed receipts: verified end to end, never on the hot path, drained on shutdown."""

from __future__ import annotations

import hashlib
import os
import pathlib
from contextlib import aclosing
from typing import Any

import h11
import orjson
import pytest
import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.conftest import chat, eventually, running, signed_receipt, streaming_bodies
from trioproxy.cli import main as cli
from trioproxy.receipts.service import KeyError_, Signer
from trioproxy.receipts.store import MemoryStore, Row, SQLiteStore
from trioproxy.testing.rawclient import RawClient, request

_receipt = signed_receipt
BODIES = streaming_bodies("mock-t12-i0")


async def test_streamed_receipts_verify_against_the_bytes_received(tmp_path: pathlib.Path) -> None:
    async with running() as (gw, _):
        key_doc = (await request(gw.url, "GET", "/v1/attestation/key")).json()
        key_file = tmp_path / "key.json"
        key_file.write_bytes(orjson.dumps(key_doc))
        for path, body in BODIES.items():
            raw_request = orjson.dumps(body)
            response = await request(gw.url, "POST", path, raw_request)
            assert response.status == 200
            receipt_id = response.headers[b"x-trioproxy-receipt-id"].decode()
            document = await _receipt(gw.url, receipt_id)
            receipt = document["receipt"]
            assert receipt["id"] == receipt_id and receipt["completion_id"]
            assert receipt["status"] == 200 and receipt["upstream_model"] == "mock-t12-i0"
            assert receipt["route"] and receipt["usage"] and receipt["truncated"] is False
            assert document["signing_algo"] == "ed25519"
            assert document["key_id"] == key_doc["key_id"]
            files = {"receipt": document, "request": raw_request, "response": response.body}
            for name, content in files.items():
                data = content if isinstance(content, bytes) else orjson.dumps(content)
                (tmp_path / name).write_bytes(data)
            args = ["verify", "--receipt", str(tmp_path / "receipt"), "--request",
                    str(tmp_path / "request"), "--response", str(tmp_path / "response")]  # fmt: skip
            assert cli([*args, "--key", str(key_file)]) == 0, path
            # (a thread: the CLI blocks, and the gateway must serve it the key)
            assert await trio.to_thread.run_sync(cli, [*args, "--gateway", gw.url]) == 0
            # One flipped byte in what the client received: invalid.
            flipped = bytearray(response.body)
            flipped[len(flipped) // 2] ^= 1
            (tmp_path / "response").write_bytes(bytes(flipped))
            assert cli([*args, "--key", str(key_file)]) == 1
        # A different key: invalid.
        other = Ed25519PrivateKey.generate().public_key()
        pem = other.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        (tmp_path / "other.pem").write_bytes(pem)
        assert (
            cli(
                [
                    "verify",
                    "--receipt",
                    str(tmp_path / "receipt"),
                    "--key",
                    str(tmp_path / "other.pem"),
                ]
            )
            == 1
        )


class SlowStore(MemoryStore):
    def __init__(self, delay: float, fail_for: str = "") -> None:
        super().__init__()
        self.delay = delay
        self.fail_for = fail_for

    async def put_many(self, rows: list[Row]) -> None:
        await trio.sleep(self.delay)
        if any(self.fail_for and self.fail_for in row.document.decode() for row in rows):
            raise OSError("disk full")
        await super().put_many(rows)


async def test_a_stuck_store_never_delays_the_stream() -> None:
    async with running() as (gw, _):
        assert gw.app.receipts is not None
        store = GatedStore()  # every write waits until the test opens it
        gw.app.receipts.store = store
        response = await request(gw.url, "POST", "/v1/chat/completions", chat("mock-t10-i0"))
        assert response.body.endswith(b"data: [DONE]\n\n")  # whole, with the store stuck
        receipt_id = response.headers[b"x-trioproxy-receipt-id"].decode()
        pending = await request(gw.url, "GET", f"/v1/signature/{receipt_id}")
        assert pending.status == 202 and pending.headers[b"retry-after"] == b"1"
        store.open.set()
        assert (await _receipt(gw.url, receipt_id))["receipt"]["outcome"] == "done"
        missing = await request(gw.url, "GET", "/v1/signature/nope")
        assert missing.status == 404


async def test_client_disconnect_gets_a_truncated_receipt_over_the_delivered_bytes() -> None:
    """The client hangs up by closing its sending side, then reads on: it gets
    every byte the gateway wrote before closing, and the receipt must cover
    exactly those (a gateway counting bytes it never wrote fails here)."""
    async with running() as (gw, recorder):
        client = await RawClient.connect(gw.url)
        await client.send_request("POST", "/v1/chat/completions", chat("mock-t500-i10"))
        _status, headers = await client.response_head()
        delivered = b""
        async with aclosing(client.body_chunks()) as chunks:
            delivered += (await chunks.__anext__())[1]
            await client.stream.send_eof()  # the hang-up the gateway sees
            with pytest.raises(h11.RemoteProtocolError):  # closed mid-body
                async for _, chunk in chunks:
                    delivered += chunk
        await client.close()
        record = (await recorder.wait_for(1))[0]
        assert record.outcome == "client_disconnect"
        document = await _receipt(gw.url, headers[b"x-trioproxy-receipt-id"].decode())
        receipt = document["receipt"]
        assert receipt["truncated"] is True and receipt["outcome"] == "client_disconnect"
        assert record.bytes_out == len(delivered)
        assert receipt["response_sha256"] == hashlib.sha256(delivered).hexdigest()


async def test_store_errors_are_counted_and_other_receipts_unaffected() -> None:
    async with running() as (gw, _):
        assert gw.app.receipts is not None
        gw.app.receipts.store = SlowStore(0.0, fail_for="mock-t3-i0-x666")
        bad = await request(gw.url, "POST", "/v1/chat/completions", chat("mock-t3-i0-x666"))
        good = await request(gw.url, "POST", "/v1/chat/completions", chat("mock-t3-i0"))
        assert (bad.status, good.status) == (200, 200)
        document = await _receipt(gw.url, good.headers[b"x-trioproxy-receipt-id"].decode())
        assert document["receipt"]["outcome"] == "done"
        await eventually(lambda: gw.app.receipts.statistics().failed >= 1, timeout=5)
        stats = gw.app.receipts.statistics()
        assert (stats.failed, stats.stored, stats.pending) == (1, 1, 0)


class _Spawned(trio.abc.Instrument):
    def __init__(self) -> None:
        self.names: list[str] = []

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        self.names.append(task.name)


class GatedStore(MemoryStore):
    """A store whose writes wait for ``open``; it counts its batches."""

    def __init__(self) -> None:
        super().__init__()
        self.open = trio.Event()
        self.batches: list[int] = []

    async def put_many(self, rows: list[Row]) -> None:
        await self.open.wait()
        self.batches.append(len(rows))
        await super().put_many(rows)


async def test_receipts_that_end_together_are_signed_and_stored_in_one_batch() -> None:
    """Per-request cost: a request only queues its record; one flusher signs and
    stores what has queued. 40 streams ending while the store is busy cost two
    batches (the first receipt's, then the other 39), not 40 jobs."""
    async with running() as (gw, _):
        assert gw.app.receipts is not None and gw.app.detached is not None
        store = GatedStore()
        gw.app.receipts.store = store
        spawned = _Spawned()
        trio.lowlevel.add_instrument(spawned)
        responses: list[Any] = []
        async with trio.open_nursery() as nursery:
            for _ in range(40):

                async def one() -> None:
                    body = chat("mock-t3-i0")
                    responses.append(await request(gw.url, "POST", "/v1/chat/completions", body))

                nursery.start_soon(one)
        await eventually(lambda: gw.app.receipts.statistics().pending == 40)  # none stored yet
        store.open.set()
        await eventually(lambda: gw.app.receipts.statistics().stored == 40)
        assert sum(store.batches) == 40 and len(store.batches) <= 2, store.batches
        trio.lowlevel.remove_instrument(spawned)
        assert 1 <= spawned.names.count("detached:receipts") <= 2  # one job per batch
        for response in responses:
            document = await _receipt(gw.url, response.headers[b"x-trioproxy-receipt-id"].decode())
            assert document["receipt"]["outcome"] == "done"
        assert gw.app.receipts.statistics().pending == 0


class CountingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []

    async def put_many(self, rows: list[Row]) -> None:
        self.batches.append(len(rows))
        await super().put_many(rows)


async def _five_in_a_row(gw: Any, each_stored: bool) -> CountingStore:
    """Five streams one after another on one keep-alive connection (``each_stored``:
    each next one once the receipts so far are stored)."""
    store = CountingStore()
    gw.app.receipts.store = store
    client = await RawClient.connect(gw.url)
    for _ in range(5):
        await client.send_request("POST", "/v1/chat/completions", chat("mock-t3-i0"))
        assert (await client.read_response()).status == 200
        if each_stored:
            await eventually(lambda: gw.app.receipts.statistics().pending == 0)
    await client.close()
    return store


async def test_receipts_of_streams_ending_one_after_another_share_a_batch(
    mock_clock: trio.testing.MockClock,
) -> None:
    """A keep-alive client sends its next request as a stream ends: the flusher
    waits ``receipt_flush_delay`` first, so five streams in a row cost one
    batch (one thread hop), not five. The delay is made an hour on a clock
    that runs at real speed: the five requests end inside it however slow the
    machine, and the test then jumps the clock past it."""
    mock_clock.rate = 1.0
    async with running(receipt_flush_delay=1.0) as (gw, _):
        assert gw.app.receipts is not None
        gw.app.receipts._flush_delay = 3600.0  # longer than a config may set
        store = await _five_in_a_row(gw, each_stored=False)
        await eventually(lambda: gw.app.receipts.statistics().pending == 5)
        assert store.batches == []  # the flusher is still waiting
        mock_clock.jump(3600.0)
        await eventually(lambda: gw.app.receipts.statistics().stored == 5)
        assert store.batches == [5]


async def test_without_a_flush_delay_each_receipt_is_stored_alone() -> None:
    async with running(receipt_flush_delay=0.0) as (gw, _):
        store = await _five_in_a_row(gw, each_stored=True)
        await eventually(lambda: gw.app.receipts.statistics().stored == 5)
        assert store.batches == [1, 1, 1, 1, 1]


async def test_receipts_still_pending_when_the_drain_times_out_are_given_up_and_counted() -> None:
    async with running(drain_timeout=0.2) as (gw, _):
        assert gw.app.receipts is not None
        gw.app.receipts.store = GatedStore()  # never opens: the flusher is cancelled mid-batch
        for _ in range(3):
            await request(gw.url, "POST", "/v1/chat/completions", chat("mock-t3-i0"))
        await eventually(lambda: gw.app.receipts.statistics().pending == 3)
    stats = gw.app.receipts.statistics()
    assert (stats.pending, stats.stored) == (0, 0) and not gw.app.receipts.pending


@pytest.mark.slow
async def test_shutdown_drains_100_pending_receipts_into_sqlite(tmp_path: pathlib.Path) -> None:
    ids: list[str] = []
    async with running(receipt_store="sqlite", data_dir=str(tmp_path)) as (gw, _):
        assert gw.app.receipts is not None
        real_put_many = gw.app.receipts.store.put_many
        shutting_down = trio.Event()

        async def held_put_many(rows: Any) -> None:
            await shutting_down.wait()  # a stuck disk until shutdown begins
            await real_put_many(rows)

        gw.app.receipts.store.put_many = held_put_many  # type: ignore[method-assign]
        real_drain = gw.app.detached.drain
        pending_at_shutdown: list[int] = []

        async def drain() -> None:
            pending_at_shutdown.append(gw.app.receipts.statistics().pending)
            shutting_down.set()
            await real_drain()

        gw.app.detached.drain = drain  # type: ignore[method-assign]
        async with trio.open_nursery() as nursery:
            for _ in range(100):

                async def one() -> None:
                    r = await request(gw.url, "POST", "/v1/messages", BODIES["/v1/messages"])
                    ids.append(r.headers[b"x-trioproxy-receipt-id"].decode())

                nursery.start_soon(one)
        await eventually(lambda: gw.app.receipts.statistics().pending == 100)
    assert pending_at_shutdown == [100]  # shutting down with every receipt pending
    store = await SQLiteStore.open(tmp_path / "receipts.sqlite3")
    try:
        assert all([await store.get(i, None) is not None for i in ids])
    finally:
        await store.aclose()
    async with running(receipt_store="sqlite", data_dir=str(tmp_path)) as (gw, _):
        assert (await _receipt(gw.url, ids[0]))["receipt"]["id"] == ids[0]


async def test_signing_key_is_private_and_persists(tmp_path: pathlib.Path) -> None:
    async with running(data_dir=str(tmp_path)) as (gw, _):
        first = (await request(gw.url, "GET", "/v1/attestation/key")).json()
    key = tmp_path / "signing.key"
    assert os.stat(key).st_mode & 0o777 == 0o600
    async with running(data_dir=str(tmp_path)) as (gw, _):
        assert (await request(gw.url, "GET", "/v1/attestation/key")).json() == first
    key.chmod(0o644)
    with pytest.raises(KeyError_, match="readable by others"):
        Signer.load_or_create(key)
    with pytest.raises(BaseException) as refused:  # the gateway refuses to start
        async with running(data_dir=str(tmp_path)):
            pass
    assert "readable by others" in _messages(refused.value)


def _messages(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        return " ".join(_messages(e) for e in exc.exceptions)
    return str(exc)


def test_an_encrypted_or_foreign_signing_key_is_refused_in_one_line(tmp_path: pathlib.Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    encrypted.chmod(0o600)
    with pytest.raises(KeyError_, match="is encrypted"):  # was an uncaught TypeError
        Signer.load_or_create(encrypted)
    foreign = tmp_path / "ec.key"
    foreign.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    foreign.chmod(0o600)
    with pytest.raises(KeyError_, match="not an Ed25519 key"):
        Signer.load_or_create(foreign)


async def test_the_data_dir_and_its_files_are_private(tmp_path: pathlib.Path) -> None:
    data = tmp_path / "data"
    async with running(receipt_store="sqlite", data_dir=str(data)) as (gw, _):
        response = await request(gw.url, "POST", "/v1/messages", BODIES["/v1/messages"])
        await _receipt(gw.url, response.headers[b"x-trioproxy-receipt-id"].decode())
        files = {p.name: p.stat().st_mode & 0o777 for p in data.iterdir()}
    assert data.stat().st_mode & 0o777 == 0o700
    assert files["signing.key"] == files["receipts.sqlite3"] == 0o600
    assert all(mode == 0o600 for name, mode in files.items() if name.startswith("receipts"))
