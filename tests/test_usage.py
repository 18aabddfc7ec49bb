"""Token usage of every exchange, tpm, and GET /v1/usage (this process; Redis: test_shared_*)."""

from __future__ import annotations

import hashlib
import pathlib
import tomllib
from contextlib import aclosing

import orjson
import pytest
import trio

from tests.conftest import chat, eventually, running
from tests.redis_server import RedisServer
from trioproxy.admission.auth import new_key, parse_keys
from trioproxy.admission.quotas import LocalQuotas, TokenCount
from trioproxy.config import load_config
from trioproxy.errors import Overloaded
from trioproxy.testing.rawclient import RawClient, request

ALICE, ALICE_BLOCK = new_key("alice")
BOB, BOB_BLOCK = new_key("bob")
ROOT, ROOT_BLOCK = new_key("root")
CHAT = "/v1/chat/completions"


def _auth(key: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {key}")]


def test_tpm_counts_the_prompt_at_admission_and_the_rest_at_the_end() -> None:
    (carol,) = parse_keys([{"name": "carol", "sha256": "0" * 64, "tpm": 100, "rpm": 50}])
    now = [1000.0]
    quotas = LocalQuotas((carol,), clock=lambda: now[0], wall=lambda: 1_800_000_000.0)
    big = quotas.admit(carol, 120, object())  # a 120-token prompt: the minute is used up
    with pytest.raises(Overloaded, match="100 tokens per minute") as over:
        quotas.admit(carol, 1, object())  # refused while the first is still running
    assert over.value.retry_after == 60
    quotas.settle(big, TokenCount(prompt=90, completion=20, estimated=False))
    now[0] += 59.0
    with pytest.raises(Overloaded):
        quotas.admit(carol, 1, object())
    now[0] += 1.0  # the first request's tokens leave the window
    quotas.admit(carol, 1, object())
    # A refused request counted nowhere: 2 admissions in the rpm window, not 4.
    assert len(quotas.states["carol"].requests or ()) == 2
    totals = quotas.totals(carol.id)["all_time"]
    assert totals == {
        "requests": 1, "prompt_tokens": 90, "completion_tokens": 20,
        "estimated_tokens": 0, "estimated_share": 0.0,
    }  # fmt: skip


async def test_usage_is_upstream_when_reported_and_estimated_otherwise() -> None:
    async with running() as (gw, recorder):
        asked = chat("mock-t12-i0", stream_options={"include_usage": True})
        assert (await request(gw.url, "POST", CHAT, asked)).status == 200
        plain = chat("mock-t12-i0")
        assert (await request(gw.url, "POST", CHAT, plain)).status == 200
        # A stream cut after a few tokens: what was generated so far is counted.
        client = await RawClient.connect(gw.url)
        await client.send_request("POST", CHAT, chat("mock-t1000-i20"))
        assert (await client.response_head())[0] == 200
        seen = b""
        async with aclosing(client.body_chunks()) as chunks:
            async for _, chunk in chunks:
                seen += chunk
                if seen.count(b'"content":"') >= 5:
                    break
        await client.close()
        records = await recorder.wait_for(3)
    reported, estimated, cut = records
    assert (reported.usage_source, reported.prompt_tokens, reported.completion_tokens) == (
        "upstream", 8, 12,
    )  # fmt: skip
    assert estimated.usage_source == "estimated" and estimated.completion_tokens == 12
    assert estimated.prompt_tokens == len(orjson.dumps(plain)) // 4
    assert cut.outcome == "client_disconnect" and cut.usage_source == "estimated"
    assert 4 <= cut.completion_tokens < 1000


async def test_request_usage_asks_upstream_and_strips_only_that_chunk() -> None:
    async with running(request_usage=True) as (gw, recorder):
        response = await request(gw.url, "POST", CHAT, chat("mock-t6-i0"))
        assert response.status == 200 and response.body.endswith(b"data: [DONE]\n\n")
        assert b'"choices":[]' not in response.body and b'"usage"' not in response.body
        assert response.body.count(b'"content":"') == 7  # the role chunk and six tokens
        # A client that asked for usage gets it, byte for byte as the upstream sent it.
        asked = chat("mock-t6-i0", stream_options={"include_usage": True})
        kept = await request(gw.url, "POST", CHAT, asked)
        assert b'"choices":[],"usage"' in kept.body
        first, second = await recorder.wait_for(2)
    assert (first.usage_source, first.completion_tokens) == ("upstream", 6)
    # The receipt hashes what the client received, not what the upstream sent.
    assert first.response_sha256 == hashlib.sha256(response.body).hexdigest()
    assert second.response_sha256 == hashlib.sha256(kept.body).hexdigest()


async def test_get_usage_is_the_callers_own_unless_an_admin_asks() -> None:
    blocks = ALICE_BLOCK + BOB_BLOCK + ROOT_BLOCK + "admin = true\n"
    keys = tuple(tomllib.loads(blocks)["keys"])
    async with running(keys=keys) as (gw, _):
        for _ in range(2):
            assert (
                await request(gw.url, "POST", CHAT, chat("mock-t3-i0"), _auth(ALICE))
            ).status == 200
        assert (await request(gw.url, "POST", CHAT, chat("mock-t3-i0"), _auth(BOB))).status == 200

        async def counted() -> bool:
            usage = (await request(gw.url, "GET", "/v1/usage", None, _auth(ALICE))).json()
            return bool(usage["all_time"]["requests"] == 2)

        await eventually(counted)
        mine = (await request(gw.url, "GET", "/v1/usage", None, _auth(ALICE))).json()
        assert mine["key"] == "alice" and mine["scope"] == "this process"
        assert mine["minute"]["completion_tokens"] == mine["day"]["completion_tokens"] == 6
        # The attack: alice reads bob's usage.
        theirs = await request(gw.url, "GET", "/v1/usage?key=bob", None, _auth(ALICE))
        assert theirs.status == 403 and theirs.json()["error"]["code"] == "admin_key_required"
        assert (await request(gw.url, "GET", "/v1/usage")).status == 401
        admin = await request(gw.url, "GET", "/v1/usage?key=bob", None, _auth(ROOT))
        assert admin.json()["key"] == "bob" and admin.json()["all_time"]["requests"] == 1
        unknown = await request(gw.url, "GET", "/v1/usage?key=nobody", None, _auth(ROOT))
        assert unknown.status == 404


async def test_usage_reaches_metrics_by_key_and_source() -> None:
    keys = tuple(tomllib.loads(ROOT_BLOCK + "admin = true\n")["keys"])
    async with running(keys=keys) as (gw, recorder):
        assert (await request(gw.url, "POST", CHAT, chat("mock-t5-i0"), _auth(ROOT))).status == 200
        await recorder.wait_for(1)
        body = (await request(gw.url, "GET", "/metrics", None, _auth(ROOT))).body
    line = b'trioproxy_tokens_total{key="root",kind="completion",source="estimated"} 5.0'
    assert line in body


def _tpm_key(tmp_path: pathlib.Path, tpm: int) -> tuple[object, ...]:
    (tmp_path / "keys.toml").write_text(ALICE_BLOCK.replace("tpm = 0", f"tpm = {tpm}"))
    return load_config(tmp_path / "keys.toml").keys


async def _burst(url: str, body: dict[str, object], n: int) -> list[int]:
    statuses: list[int] = []

    async def one() -> None:
        statuses.append((await request(url, "POST", CHAT, body, _auth(ALICE))).status)

    async with trio.open_nursery() as nursery:
        for _ in range(n):
            nursery.start_soon(one)
    return statuses


async def test_a_burst_overruns_tpm_by_at_most_one_requests_reservation(
    tmp_path: pathlib.Path,
) -> None:
    """The attack: tpm = 100, 20 streams of 1,000 tokens at once. Before, only
    the prompts were counted at admission: 8 were admitted, 8,112 tokens that
    minute. Now each reserves its max_tokens: one is admitted."""
    async with running(keys=_tpm_key(tmp_path, 100)) as (gw, recorder):
        body = chat("mock-t1000-i0", max_tokens=1000)
        statuses = await _burst(gw.url, body, 20)
        assert sorted(statuses) == [200] + [429] * 19
        (record,) = [r for r in await recorder.wait_for(20) if r.status == 200]
    used = record.prompt_tokens + record.completion_tokens
    assert used <= 100 + 1000 + len(orjson.dumps(body)) // 4


async def test_without_max_tokens_the_default_is_reserved_and_usage_replaces_it(
    tmp_path: pathlib.Path,
) -> None:
    async with running(keys=_tpm_key(tmp_path, 2000)) as (gw, recorder):
        for _ in range(5):  # each ends before the next: its usage replaced its reservation
            ok = await request(gw.url, "POST", CHAT, chat("mock-t12-i0"), _auth(ALICE))
            assert ok.status == 200
        # Together, 1024 (default_reserved_tokens) + the prompt each: two fit in 2000.
        statuses = await _burst(gw.url, chat("mock-t200-i5"), 5)
        assert sorted(statuses) == [200, 200, 429, 429, 429]
        await recorder.wait_for(10)


async def test_the_reservation_holds_through_a_shared_redis(
    tmp_path: pathlib.Path, redis_server: RedisServer
) -> None:
    config = {"keys": _tpm_key(tmp_path, 100), "redis_url": redis_server.url}
    async with running(**config) as (gw, recorder):
        statuses = await _burst(gw.url, chat("mock-t1000-i0", max_tokens=1000), 20)
        assert sorted(statuses) == [200] + [429] * 19
        await recorder.wait_for(20)
