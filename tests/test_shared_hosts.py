"""Two gateway processes, one Redis: limits, receipts and usage hold across hosts.

Each gateway is a real ``trioproxy serve`` process on its own port with its own
built-in mock upstream; the only thing they share is the ``redis_server``.
"""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from tests.conftest import chat, eventually, wait_ready, within
from tests.redis_server import RedisServer
from trioproxy.admission.auth import new_key
from trioproxy.testing.rawclient import RawClient, request

pytestmark = pytest.mark.slow  # subprocesses

ALICE, ALICE_BLOCK = new_key("alice")  # max_streams = 2
BOB, BOB_BLOCK = new_key("bob")  # rpm = 3
CAROL, CAROL_BLOCK = new_key("carol")  # tpm = 40
LEASE_TTL = 3.0
CHAT = "/v1/chat/completions"


def _auth(key: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {key}")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _config(tmp_path: pathlib.Path, redis: RedisServer) -> pathlib.Path:
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'redis_url = "{redis.url}"\nlease_ttl = {LEASE_TTL}\naccess_log = false\n'
        + ALICE_BLOCK.replace("max_streams = 0", "max_streams = 2")
        + BOB_BLOCK.replace("rpm = 0", "rpm = 3")
        + CAROL_BLOCK.replace("tpm = 0", "tpm = 40")
    )
    return config


@asynccontextmanager
async def _host(
    config: pathlib.Path, name: str
) -> AsyncIterator[tuple[str, subprocess.Popen[bytes]]]:
    """``trioproxy serve`` with its own data dir (its own SQLite spool and key)."""
    port = _free_port()
    state = config.parent / name
    state.mkdir()
    with open(state / "serve.log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "trioproxy", "serve", "--config", str(config),
             "--bind", f"127.0.0.1:{port}"],
            stdout=log, stderr=log, cwd=state, env={**os.environ, "XDG_STATE_HOME": str(state)},
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_ready(url)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


async def _try_stream(url: str, key: str) -> RawClient | None:
    """A long stream (20 s), its head read: it holds a lease. None: refused."""
    client = await RawClient.connect(url)
    await client.send_request("POST", CHAT, chat("mock-t1000-i20"), _auth(key))
    status, _ = await client.response_head()
    if status == 200:
        return client
    await client.close()
    return None


async def _stream(url: str, key: str) -> RawClient:
    client = await _try_stream(url, key)
    assert client is not None
    return client


async def _status(url: str, key: str, model: str = "mock-t2-i0") -> int:
    return (await request(url, "POST", CHAT, chat(model), _auth(key))).status


async def test_two_hosts_share_limits_receipts_and_usage(
    tmp_path: pathlib.Path, redis_server: RedisServer
) -> None:
    config = _config(tmp_path, redis_server)
    async with _host(config, "a") as (a, _), _host(config, "b") as (b, _):
        # max_streams = 2 across both: one stream on each, the third is a 429 on either.
        streams = [await _stream(a, ALICE), await _stream(b, ALICE)]
        for url in (a, b):
            third = await request(url, "POST", CHAT, chat("mock-t2-i0"), _auth(ALICE))
            assert third.status == 429, url
            assert "2 concurrent streams" in third.json()["error"]["message"]
            assert int(third.headers[b"retry-after"]) >= 1
        for client in streams:
            await client.close()
        # rpm = 3 across both.
        assert [await _status(u, BOB) for u in (a, b, a)] == [200, 200, 200]
        assert await _status(b, BOB) == 429 and await _status(a, BOB) == 429
        # tpm = 40: one 40-token answer on A uses the minute up, for B too.
        assert await _status(a, CAROL, "mock-t40-i0") == 200

        async def carol_counted() -> bool:
            usage = (await request(b, "GET", "/v1/usage", None, _auth(CAROL))).json()
            return bool(usage["minute"]["requests"] == 1)

        await eventually(carol_counted)
        over = await request(b, "POST", CHAT, chat("mock-t2-i0"), _auth(CAROL))
        assert over.status == 429 and "tokens per minute" in over.json()["error"]["message"]
        # A receipt made on A is read on B (and only with the key that made it).
        made = await request(a, "POST", CHAT, chat("mock-t3-i0"), _auth(ALICE))
        receipt_id = made.headers[b"x-trioproxy-receipt-id"].decode()

        async def readable_on_b() -> bool:
            r = await request(b, "GET", f"/v1/signature/{receipt_id}", None, _auth(ALICE))
            return r.status == 200

        await eventually(readable_on_b)
        other = await request(b, "GET", f"/v1/signature/{receipt_id}", None, _auth(BOB))
        assert other.status == 404
        # Usage on either host is the sum of both: bob made 3 requests, 2 on A, 1 on B.
        for url in (a, b):
            usage = (await request(url, "GET", "/v1/usage", None, _auth(BOB))).json()
            assert usage["scope"] == "all hosts"
            assert usage["minute"]["requests"] == usage["all_time"]["requests"] == 3
            assert usage["all_time"]["completion_tokens"] == 6  # 2 tokens each


async def test_a_killed_host_gives_its_leases_back_within_lease_ttl(
    tmp_path: pathlib.Path, redis_server: RedisServer
) -> None:
    config = _config(tmp_path, redis_server)
    async with _host(config, "a") as (a, proc_a), _host(config, "b") as (b, _):
        held = [await _stream(a, ALICE), await _stream(a, ALICE)]
        assert await _status(b, ALICE) == 429  # both of alice's leases are on A
        proc_a.send_signal(signal.SIGKILL)  # no shutdown, no release: the leases stay
        killed = trio.current_time()
        opened: list[RawClient] = []

        async def two_streams_on_b() -> bool:
            client = await _try_stream(b, ALICE)  # None: A's leases have not expired yet
            if client is not None:
                opened.append(client)
            return len(opened) == 2

        await eventually(two_streams_on_b, timeout=LEASE_TTL + 5, poll=0.1)
        assert trio.current_time() - killed <= LEASE_TTL + within(1.0)
        for client in held + opened:
            await client.close()
