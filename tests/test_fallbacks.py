"""Fallback models: configured, per request, and for a context window that is too small.

The error answers are real servers' (:mod:`trioproxy.testing.shapes.errors`),
sent by the mock with ``mock-error-NAME``.
"""

from __future__ import annotations

import hashlib

import orjson
import pytest

from tests.conftest import chat, events_of, open_mocks, provider, running
from trioproxy.dialects import context_too_long
from trioproxy.errors import ConfigError
from trioproxy.routing.fallbacks import parse_fallbacks
from trioproxy.testing.mock_scripts import Fault
from trioproxy.testing.rawclient import request
from trioproxy.testing.shapes.errors import CONTEXT_LENGTH, ERRORS

HEALTHY = "mock-t3-i0"


def _key(name: str, secret: str, models: list[str]) -> dict[str, object]:
    return {"name": name, "sha256": hashlib.sha256(secret.encode()).hexdigest(), "models": models}


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_each_servers_context_length_400_is_recognised_and_nothing_else_is(name: str) -> None:
    status, body = ERRORS[name]
    assert context_too_long(status, body) is (name in CONTEXT_LENGTH)
    assert not context_too_long(500, body)  # a 400's meaning only
    assert not context_too_long(400, body[: len(body) // 2])  # half an answer: not JSON


async def test_a_model_whose_providers_all_fail_falls_back_to_the_next_model() -> None:
    async with open_mocks(Fault(), Fault()) as (first, second):
        providers = (
            provider("a", first, models=[], aliases={"m": "mock-e500"}),
            provider("b", second, models=[], aliases={"fb": HEALTHY}),
        )
        async with running(providers=providers, fallbacks={"m": ["fb"]}) as (gw, recorder):
            response = await request(gw.url, "POST", "/v1/chat/completions", chat("m"))
            assert response.status == 200 and events_of(response.body)[-1] == b"data: [DONE]"
            assert second.last_body is not None
            assert orjson.loads(second.last_body)["model"] == HEALTHY  # the body rewritten
            (record,) = await recorder.wait_for(1)
            assert (record.model, record.provider, record.upstream_model) == ("m", "b", HEALTHY)
            assert record.failovers == (("a", "upstream_broken"),)
            assert "fallback fb" in [event for event, _ in record.timeline]


async def test_a_key_never_reaches_a_fallback_model_it_may_not_use() -> None:
    keys = [_key("narrow", "sk-narrow", ["m"]), _key("wide", "sk-wide", ["*"])]
    async with open_mocks(Fault(), Fault()) as (first, second):
        providers = (
            provider("a", first, models=[], aliases={"m": "mock-e500"}),
            provider("b", second, models=[], aliases={"fb": HEALTHY, "other": HEALTHY}),
        )
        overrides = {"providers": providers, "fallbacks": {"m": ["fb"]}, "keys": keys}
        async with running(**overrides) as (gw, _):
            narrow = [("authorization", "Bearer sk-narrow")]
            refused = await request(gw.url, "POST", "/v1/chat/completions", chat("m"), narrow)
            assert refused.status == 502  # fb left out: m's own failure
            assert second.statistics().requests_total == 0
            # The attack: name the forbidden model in the header instead.
            asked = [*narrow, ("x-trioproxy-fallbacks", "fb")]
            forbidden = await request(gw.url, "POST", "/v1/chat/completions", chat("m"), asked)
            assert forbidden.status == 403 and forbidden.json()["error"]["code"] == (
                "model_not_allowed"
            )
            assert second.statistics().requests_total == 0
            wide = [("authorization", "Bearer sk-wide")]
            served = await request(gw.url, "POST", "/v1/chat/completions", chat("m"), wide)
            assert served.status == 200


async def test_the_fallbacks_header_replaces_the_configured_list_within_bounds() -> None:
    async with open_mocks(Fault(), Fault()) as (first, second):
        providers = (
            provider("a", first, models=[], aliases={"m": "mock-e500", "fb": "mock-e503"}),
            provider("b", second, models=[], aliases={"other": HEALTHY}),
        )
        async with running(providers=providers, fallbacks={"m": ["fb"]}) as (gw, recorder):
            asked = [("x-trioproxy-fallbacks", "other")]
            response = await request(gw.url, "POST", "/v1/chat/completions", chat("m"), asked)
            assert response.status == 200
            (record,) = await recorder.wait_for(1)
            assert record.provider == "b" and record.failovers == (("a", "upstream_broken"),)
            assert first.statistics().requests_total == 1  # fb (configured) was not tried
            assert b"x-trioproxy-fallbacks" not in second.last_headers  # never sent upstream
            for bad in ("a,b,c,d,e", "x" * 300, "a\tb"):
                header = [("x-trioproxy-fallbacks", bad)]
                body = orjson.dumps(chat("m"))
                r = await request(gw.url, "POST", "/v1/chat/completions", body, header)
                assert r.status == 400 and "x-trioproxy-fallbacks" in r.json()["error"]["message"]


@pytest.mark.parametrize("name", sorted(CONTEXT_LENGTH))
async def test_a_context_length_400_goes_to_the_larger_model(name: str) -> None:
    async with open_mocks(Fault(), Fault()) as (small, large):
        providers = (
            provider("s", small, models=[], aliases={"small": f"mock-error-{name}"}),
            provider("l", large, models=[], aliases={"large": HEALTHY}),
        )
        overrides = {"providers": providers, "context_window_fallbacks": {"small": "large"}}
        async with running(**overrides) as (gw, recorder):
            response = await request(gw.url, "POST", "/v1/chat/completions", chat("small"))
            assert response.status == 200 and events_of(response.body)[-1] == b"data: [DONE]"
            (record,) = await recorder.wait_for(1)
            assert record.provider == "l"
            assert record.failovers == (("s", "context_length_exceeded"),)
            (s,) = gw.app.router.providers[:1]
            assert s.consecutive_failures == 0  # a long request says nothing of s's health


@pytest.mark.parametrize(
    "name", ["openai_content_policy", "azure_content_filter", "openai_bad_param"]
)
async def test_a_content_policy_400_never_falls_back_and_reaches_the_client_as_sent(
    name: str,
) -> None:
    async with open_mocks(Fault(), Fault()) as (small, large):
        providers = (
            provider("s", small, models=[], aliases={"small": f"mock-error-{name}"}),
            provider("l", large, models=[], aliases={"large": HEALTHY}),
        )
        overrides = {
            "providers": providers,
            "context_window_fallbacks": {"small": "large"},
            "fallbacks": {"small": ["large"]},
        }
        async with running(**overrides) as (gw, _):
            response = await request(gw.url, "POST", "/v1/chat/completions", chat("small"))
            assert (response.status, response.body) == ERRORS[name]  # byte for byte
            assert large.statistics().requests_total == 0


def test_fallback_tables_are_checked_at_start_up() -> None:
    assert parse_fallbacks({"a": ["b", "b", "c"]}, {}).models == {"a": ("b", "c")}
    for models, context in (
        ({"a": "b"}, {}),
        ({"a": []}, {}),
        ({"a": ["a"]}, {}),
        ({"a": ["b"] * 5}, {}),
        ({}, {"a": ["b"]}),
        ({}, {"a": "a"}),
    ):
        with pytest.raises(ConfigError):
            parse_fallbacks(models, context)
