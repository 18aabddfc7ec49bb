"""Early admission: a key far from its shared limits does not wait for Redis.

Against a real ``redis-server``: the request is counted in Redis all the same
(rpm log, stream lease), a limit is exact from half of it on, an overrun
needs another host to fill the limit unseen and is counted and refused after,
and a hung Redis costs such a key nothing.
"""

from __future__ import annotations

import hashlib
import tomllib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import coredis
import trio

from tests.conftest import chat, eventually, running
from tests.redis_server import RedisServer
from trioproxy.admission.auth import new_key
from trioproxy.testing.rawclient import RawClient, request

KEY, BLOCK = new_key("early")
ROOT, ROOT_BLOCK = new_key("root")
CHAT = "/v1/chat/completions"
AUTH = [("authorization", f"Bearer {KEY}")]
# The key's state in Redis lives under its id (its hash's prefix), not its name.
PREFIX = "tp:{" + hashlib.sha256(KEY.encode()).hexdigest()[:16] + "}:"


def _keys(rpm: int = 0, max_streams: int = 0) -> tuple[dict[str, object], ...]:
    block = BLOCK.replace("rpm = 0", f"rpm = {rpm}")
    block = block.replace("max_streams = 0", f"max_streams = {max_streams}")
    return tuple(tomllib.loads(block + ROOT_BLOCK + "admin = true\n")["keys"])


@asynccontextmanager
async def _redis(server: RedisServer) -> AsyncIterator[coredis.Redis[bytes]]:
    client: coredis.Redis[bytes] = coredis.Redis("127.0.0.1", server.port)
    async with client:
        yield client


async def _metric(url: str, name: str) -> float:
    body = (await request(url, "GET", "/metrics", None, [("authorization", f"Bearer {ROOT}")])).body
    for line in body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


async def _status(url: str) -> int:
    return (await request(url, "POST", CHAT, chat("mock-t2-i0"), AUTH)).status


async def test_an_early_admission_is_counted_in_redis_and_holds_its_lease(
    redis_server: RedisServer,
) -> None:
    keys = _keys(rpm=1000, max_streams=64)
    async with running(redis_url=redis_server.url, keys=keys) as (gw, _), _redis(redis_server) as r:
        for _ in range(5):
            assert await _status(gw.url) == 200
        # The first waited for Redis (nothing known of the key); the others did not.
        assert await _metric(gw.url, "trioproxy_limit_early_admissions_total") == 4
        assert await r.zcard(PREFIX + "rpm") == 5  # every one counted
        client = await RawClient.connect(gw.url)
        await client.send_request("POST", CHAT, chat("mock-t40-i25"), AUTH)
        status, _ = await client.response_head()
        assert status == 200
        chunks = client.body_chunks()
        await chunks.__anext__()  # streaming: its lease is held in Redis
        assert await _metric(gw.url, "trioproxy_limit_early_admissions_total") == 5
        assert await r.zcard(PREFIX + "leases") == 1
        async for _ in chunks:
            pass
        await client.close()

        async def lease_back() -> bool:
            return await r.zcard(PREFIX + "leases") == 0

        await eventually(lease_back)


async def test_from_half_a_limit_on_every_decision_waits_for_redis(
    redis_server: RedisServer,
) -> None:
    async with running(redis_url=redis_server.url, keys=_keys(rpm=4)) as (gw, _):
        assert [await _status(gw.url) for _ in range(5)] == [200, 200, 200, 200, 429]
        # 1: nothing known; 2: 1 + 1 <= 4 // 2, early; 3 and 4: half used, asked first.
        assert await _metric(gw.url, "trioproxy_limit_early_admissions_total") == 1
        assert await _metric(gw.url, "trioproxy_limit_early_overruns_total") == 0


async def test_early_admission_false_makes_every_admission_wait(
    redis_server: RedisServer,
) -> None:
    config = {"redis_url": redis_server.url, "keys": _keys(rpm=1000), "early_admission": False}
    async with running(**config) as (gw, _):
        assert [await _status(gw.url) for _ in range(3)] == [200, 200, 200]
        assert await _metric(gw.url, "trioproxy_limit_early_admissions_total") == 0


async def test_another_host_filling_the_limit_unseen_costs_one_overrun_then_429(
    redis_server: RedisServer,
) -> None:
    """The attack: other hosts take the key from 1 to full between two replies
    to this one. One request passes (counted over the limit in Redis, in
    /metrics), then every decision waits for Redis and is refused."""
    async with (
        running(redis_url=redis_server.url, keys=_keys(rpm=10)) as (gw, _),
        _redis(redis_server) as r,
    ):
        assert await _status(gw.url) == 200  # this host's view: 1 of 10
        now_ms = int((await r.time()).timestamp() * 1000)  # Redis's clock, as the script's
        await r.zadd(PREFIX + "rpm", {f"other-host-{i}": now_ms for i in range(9)})
        assert await _status(gw.url) == 200  # early: it left before Redis answered

        async def overrun_counted() -> bool:
            return await _metric(gw.url, "trioproxy_limit_early_overruns_total") == 1

        await eventually(overrun_counted)
        assert await r.zcard(PREFIX + "rpm") == 11  # counted, so every host sees it
        refused = await request(gw.url, "POST", CHAT, chat("mock-t2-i0"), AUTH)
        assert refused.status == 429 and int(refused.headers[b"retry-after"]) >= 1
        assert refused.json()["error"]["type"] == "rate_limit_error"
        assert await r.zcard(PREFIX + "rpm") == 11  # a refusal counts nothing


async def test_a_hung_redis_costs_a_key_far_from_its_limits_nothing(
    redis_server: RedisServer,
) -> None:
    config = {"redis_url": redis_server.url, "keys": _keys(rpm=1000), "redis_timeout": 0.05}
    async with running(**config) as (gw, _):
        assert await _status(gw.url) == 200
        redis_server.pause()
        try:
            with trio.fail_after(5):
                assert await _status(gw.url) == 200  # left at once, counted later
            assert gw.app.accounts.shared is not None
            assert gw.app.accounts.shared.early == 1

            async def fell_back() -> bool:
                return await _metric(gw.url, "trioproxy_limit_fallbacks_total") == 1

            await eventually(fell_back)  # its count timed out: this process counted it

            async def down() -> bool:  # the ping after the timeout had no answer either
                return await _metric(gw.url, "trioproxy_redis_up") == 0

            await eventually(down)
            assert await _status(gw.url) == 200  # down: decided here, no early admission
            assert gw.app.accounts.shared.early == 1
        finally:
            redis_server.resume()


async def test_one_host_alone_never_overruns_a_limit(redis_server: RedisServer) -> None:
    """The burst: rpm 20, one request, then 40 at once on one host. Before, the
    early admissions on their way were unknown to the host's exact decisions
    (27 admitted, 7 of them overruns), and a call that met the busy loop past
    redis_timeout fell back on this process's empty counters."""
    async with running(redis_url=redis_server.url, keys=_keys(rpm=20)) as (gw, _):
        assert await _status(gw.url) == 200
        statuses: list[int] = []

        async def one() -> None:
            statuses.append(await _status(gw.url))

        async with trio.open_nursery() as nursery:
            for _ in range(40):
                nursery.start_soon(one)
        # 20 in the minute, the first included: all of them when Redis answers each
        # call in time; fewer when a call meets the busy loop past redis_timeout and
        # falls back on what Redis said last (conservative: never more).
        assert 5 <= statuses.count(200) <= 19, statuses
        assert await _metric(gw.url, "trioproxy_limit_early_overruns_total") == 0


async def test_one_host_alone_never_overruns_max_streams(redis_server: RedisServer) -> None:
    async with running(redis_url=redis_server.url, keys=_keys(max_streams=10)) as (gw, _):
        assert await _status(gw.url) == 200
        clients: list[RawClient] = []
        statuses: list[int] = []

        async def one() -> None:
            client = await RawClient.connect(gw.url)
            clients.append(client)
            await client.send_request("POST", CHAT, chat("mock-t400-i25"), AUTH)
            statuses.append((await client.response_head())[0])

        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(one)
        assert 3 <= statuses.count(200) <= 10, statuses  # (as above)
        assert await _metric(gw.url, "trioproxy_limit_early_overruns_total") == 0
        for client in clients:
            await client.close()
