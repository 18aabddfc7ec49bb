"""Redis down, slow or misconfigured: the gateway keeps its promises.

Two in-process gateways share one real ``redis-server`` (each with its own
local state and data dir); Redis is killed, paused and restarted under them.
"""

from __future__ import annotations

import hashlib
import logging
import tomllib

import coredis
import pytest
import trio

from tests.conftest import chat, eventually, running
from tests.redis_server import RedisServer
from tests.scripted_upstream import scripted_upstream
from trioproxy.admission.auth import new_key
from trioproxy.config import load_config
from trioproxy.errors import ConfigError
from trioproxy.shared.receipts import SpooledStore
from trioproxy.shared.scripts import ADMIT, SETTLE, USAGE
from trioproxy.testing.rawclient import request

ALICE, ALICE_BLOCK = new_key("alice")
ROOT, ROOT_BLOCK = new_key("root")
FREE, FREE_BLOCK = new_key("free")  # no limits: needs no admission round trip
NEAR, NEAR_BLOCK = new_key("near")  # max_streams = 1: every admission waits for Redis
CHAT = "/v1/chat/completions"


def _keys() -> tuple[dict[str, object], ...]:
    alice = ALICE_BLOCK.replace("rpm = 0", "rpm = 100000").replace(
        "max_streams = 0", "max_streams = 64"
    )
    root = ROOT_BLOCK + "admin = true\n"
    near = NEAR_BLOCK.replace("max_streams = 0", "max_streams = 1")
    return tuple(tomllib.loads(alice + root + FREE_BLOCK + near)["keys"])


def _auth(key: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {key}")]


async def test_redis_killed_mid_campaign_fails_no_request_and_loses_no_receipt(
    redis_server: RedisServer,
) -> None:
    shared = {"redis_url": redis_server.url, "keys": _keys(), "receipt_store": "redis"}
    async with running(**shared) as (a, _), running(**shared) as (b, _):
        total, done, receipts, failures = 150, [0], [], []

        async def client() -> None:
            while done[0] < total:
                done[0] += 1
                r = await request(a.url, "POST", CHAT, chat("mock-t3-i0"), _auth(ALICE))
                if r.status != 200 or not r.body.endswith(b"data: [DONE]\n\n"):
                    failures.append((r.status, r.body[-200:]))
                receipts.append(r.headers[b"x-trioproxy-receipt-id"].decode())

        async def chaos() -> None:
            await eventually(lambda: done[0] >= total // 3, timeout=30)
            redis_server.stop()
            await eventually(lambda: done[0] >= 2 * total // 3, timeout=30)
            redis_server.start()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(chaos)
            for _ in range(6):
                nursery.start_soon(client)
        assert failures == []
        assert a.app.accounts.redis is not None
        stats = a.app.accounts.redis.statistics()
        assert stats.outages >= 1 and stats.failed_calls > 0
        assert a.app.accounts.shared is not None and a.app.accounts.shared.fallbacks > 0

        # Every receipt reaches Redis once it is back: B reads them all from there.
        async def all_readable_on_b() -> bool:
            for rid in receipts:
                r = await request(b.url, "GET", f"/v1/signature/{rid}", None, _auth(ALICE))
                if r.status != 200:
                    return False
            return True

        await eventually(all_readable_on_b, timeout=20, poll=0.2)
        assert len(set(receipts)) == total
        assert a.app.receipts is not None
        spool = a.app.receipts.store
        assert isinstance(spool, SpooledStore)
        assert spool.spooled > 0 and spool.copied == spool.spooled  # the outage went to disk


async def test_fail_closed_refuses_in_the_dialect_and_readyz_says_why(
    redis_server: RedisServer,
) -> None:
    config = {"redis_url": redis_server.url, "keys": _keys(), "redis_failure": "closed"}
    async with running(**config) as (gw, _):
        assert await _status(gw.url, ALICE) == 200
        redis_server.stop()
        openai = await request(gw.url, "POST", CHAT, chat("mock-t2-i0"), _auth(ALICE))
        assert openai.status == 503 and int(openai.headers[b"retry-after"]) >= 1
        assert openai.json()["error"]["code"] == "shared_state_unavailable"
        body = {"model": "mock-t2-i0", "max_tokens": 5, "messages": [], "stream": True}
        anthropic = await request(gw.url, "POST", "/v1/messages", body, [("x-api-key", ALICE)])
        assert anthropic.status == 503
        assert anthropic.json() == {
            "type": "error",
            "error": {"type": "overloaded_error", "message": anthropic.json()["error"]["message"]},
        }
        assert await _status(gw.url, FREE) == 200  # a key without limits needs no Redis
        ready = await request(gw.url, "GET", "/readyz", None, _auth(ROOT))
        assert ready.status == 503 and ready.json()["redis"] == "down"
        redis_server.start()

        async def back() -> bool:
            return (await request(gw.url, "GET", "/readyz")).status == 200

        await eventually(back, timeout=10)
        assert await _status(gw.url, ALICE) == 200


async def _status(url: str, key: str) -> int:
    return (await request(url, "POST", CHAT, chat("mock-t2-i0"), _auth(key))).status


async def test_a_hung_redis_costs_one_request_redis_timeout_then_nothing(
    redis_server: RedisServer,
) -> None:
    """A key at its limit's half or more (here max_streams = 1) asks Redis before
    every upstream request (tests/test_early_admission.py: keys far from theirs)."""
    async with running(redis_url=redis_server.url, keys=_keys(), redis_timeout=0.05) as (gw, _):
        assert await _status(gw.url, NEAR) == 200
        redis = gw.app.accounts.redis
        redis_server.pause()  # holds the connection, answers nothing
        try:
            assert await _status(gw.url, NEAR) == 200  # fail open: this process decides
            assert redis.statistics().timed_out == 1  # it waited redis_timeout once
            await eventually(lambda: not redis.statistics().up)  # the probe found it down
            waited = redis.statistics().timed_out
            for _ in range(5):
                assert await _status(gw.url, NEAR) == 200
            assert redis.statistics().timed_out == waited  # down: no more waiting per request
        finally:
            redis_server.resume()
        metrics = await request(gw.url, "GET", "/metrics", None, _auth(ROOT))
        assert b"trioproxy_limit_fallbacks_total 6.0" in metrics.body

        async def up() -> bool:
            ready = await request(gw.url, "GET", "/readyz", None, _auth(ROOT))
            return bool(ready.json()["redis"] == "up")

        await eventually(up, timeout=10)
        assert (
            b"trioproxy_redis_up 1.0"
            in (await request(gw.url, "GET", "/metrics", None, _auth(ROOT))).body
        )


def test_a_password_in_redis_url_is_refused() -> None:
    with pytest.raises(ConfigError, match="must not hold a password"):
        load_config(None, redis_url="redis://:hunter2@127.0.0.1:6379/0")
    with pytest.raises(ConfigError, match="redis_url must be"):
        load_config(None, redis_url="http://127.0.0.1:6379/0")
    with pytest.raises(ConfigError, match="database number"):
        load_config(None, redis_url="redis://127.0.0.1:6379/x")


async def test_the_redis_password_never_reaches_the_log(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A password Redis refuses: the outage is logged, the password is not, and
    requests pass on this process's counters."""
    redis_server.require_password("the-right-one")
    secret = "s3cret-" + "x" * 16
    monkeypatch.setenv("TRIOPROXY_REDIS_PASSWORD", secret)
    caplog.set_level(logging.DEBUG)
    async with running(redis_url=redis_server.url, keys=_keys()) as (gw, _):
        assert await _status(gw.url, ALICE) == 200
        metrics = await request(gw.url, "GET", "/metrics", None, _auth(ROOT))
        assert b"trioproxy_redis_up 0.0" in metrics.body
    assert any("redis at 127.0.0.1" in r.getMessage() for r in caplog.records)
    assert not [r for r in caplog.records if secret in r.getMessage() or secret in str(r.args)]


async def test_receipt_references_are_bounded_before_they_name_a_redis_key(
    redis_server: RedisServer,
) -> None:
    async with running(redis_url=redis_server.url, keys=_keys()) as (gw, _):
        made = await request(gw.url, "POST", CHAT, chat("mock-t2-i0"), _auth(ALICE))
        rid = made.headers[b"x-trioproxy-receipt-id"].decode()

        async def stored() -> bool:
            r = await request(gw.url, "GET", f"/v1/signature/{rid}", None, _auth(ALICE))
            return r.status == 200

        await eventually(stored)
        assert gw.app.accounts.redis is not None
        before = gw.app.accounts.redis.statistics().calls
        for ref in ("a" * 300, "tp:rcpt:*", "%00x", "rcpt_%20x"):
            r = await request(gw.url, "GET", f"/v1/signature/{ref}", None, _auth(ALICE))
            assert r.status == 404, ref
        # The long one never reached Redis; the others were looked up as plain names.
        assert gw.app.accounts.redis.statistics().calls - before <= 3


async def test_scripts_are_loaded_at_start_up(redis_server: RedisServer) -> None:
    """No first call pays for a missing script (NOSCRIPT, then EVAL) under load."""
    async with running(redis_url=redis_server.url, keys=_keys()) as (gw, _):
        client: coredis.Redis[bytes] = coredis.Redis("127.0.0.1", redis_server.port)
        async with client:
            shas = [hashlib.sha1(s.encode()).hexdigest() for s in (ADMIT, SETTLE, USAGE)]
            assert await client.script_exists(shas) == (True, True, True)
        assert gw.app.accounts.redis is not None
        assert gw.app.accounts.redis.statistics().up


async def test_one_slow_answer_is_not_an_outage(redis_server: RedisServer) -> None:
    """A call that times out falls back alone; Redis answering the ping that
    follows keeps the shared state up (a busy event loop is the usual cause)."""
    async with running(redis_url=redis_server.url, keys=_keys(), redis_timeout=0.05) as (gw, _):
        redis = gw.app.accounts.redis
        assert redis is not None
        assert await _status(gw.url, NEAR) == 200
        redis_server.pause()
        try:
            assert await _status(gw.url, NEAR) == 200  # its admission timed out: fell back
        finally:
            redis_server.resume()  # the ping (200 ms allowed) gets its answer
        assert redis.statistics().failed_calls >= 1
        await eventually(lambda: not redis.statistics().checking)
        assert redis.statistics().up and redis.statistics().outages == 0

        # The timed-out admission did run once Redis woke up: its lease (max_streams = 1)
        # is given back when its exchange ends, not lease_ttl (30 s) later.
        async def admitted() -> bool:
            return await _status(gw.url, NEAR) == 200

        await eventually(admitted, timeout=3)


async def test_a_completion_id_others_reuse_still_finds_the_callers_receipt(
    redis_server: RedisServer,
) -> None:
    """Servers that reuse completion ids (Ollama's ``chatcmpl-NNN``): alice's
    receipt, then 100 of free's with the same id. Before, the index of that id
    grew without bound and a lookup scanned its 64 newest entries (all free's):
    alice's was not found."""
    events = (
        b'data: {"id":"chatcmpl-123","choices":[{"index":0,"delta":{"content":"x"}}]}\n\n',
        b"data: [DONE]\n\n",
    )
    async with scripted_upstream(events) as url:
        config = {
            "redis_url": redis_server.url, "keys": _keys(), "receipt_store": "redis",
            "openai_upstreams": (url,),
        }  # fmt: skip
        async with running(**config) as (gw, recorder):
            mine = await request(gw.url, "POST", CHAT, chat("m"), _auth(ALICE))
            assert mine.status == 200
            for _ in range(100):
                assert (await request(gw.url, "POST", CHAT, chat("m"), _auth(FREE))).status == 200
            await recorder.wait_for(101)
            receipts = gw.app.receipts
            assert receipts is not None
            await eventually(lambda: receipts.statistics().stored == 101)
            found = await request(gw.url, "GET", "/v1/signature/chatcmpl-123", None, _auth(ALICE))
            assert found.status == 200, found.body
            assert found.json()["receipt"]["id"] == mine.headers[b"x-trioproxy-receipt-id"].decode()
    async with coredis.Redis("127.0.0.1", redis_server.port) as r:
        assert await r.zcard("tp:cid:chatcmpl-123") == 64  # trimmed to the newest
