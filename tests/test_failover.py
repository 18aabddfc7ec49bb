"""Failover before the first byte, health and routing, end to end over loopback.

Providers here are mock upstreams; an alias turns the client's model name into
a mock fault spec per provider (``m`` on provider a is ``mock-e500``, on b a
healthy stream), so one request meets one fault and then a healthy provider.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest
import trio

from tests.conftest import MovableClock, chat, events_of, eventually, open_mocks, provider, running
from trioproxy.errors import ConfigError
from trioproxy.routing.providers import parse_providers
from trioproxy.testing.mock_scripts import Fault
from trioproxy.testing.rawclient import RawClient, request

HEALTHY = "mock-t3-i0"


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"  # nothing listens there now


def _pair(mock: Any, fault_model: str, **a_extra: Any) -> tuple[dict[str, Any], ...]:
    return (
        provider("a", mock, aliases={"m": fault_model}, **a_extra),
        provider("b", mock, aliases={"m": HEALTHY}),
    )


_TRIGGERS = [
    ("mock-t3", {"base_url": "CLOSED"}, "upstream_unreachable"),
    ("mock-e500", {}, "upstream_broken"),
    ("mock-e503", {}, "upstream_broken"),
    ("mock-e429", {}, "upstream_rate_limited"),
]
_STREAM_ONLY = [  # request_timeout applies to non-streaming calls; the mock drops streams only
    ("mock-drop0", {}, "upstream_broken"),  # reset after the head, before any event
    ("mock-f5000", {}, "upstream_ttft_timeout"),  # head at once, no event in time
]


@pytest.mark.parametrize(
    ("fault", "a_extra", "code", "stream"),
    [(*t, True) for t in _TRIGGERS + _STREAM_ONLY] + [(*t, False) for t in _TRIGGERS],
)
async def test_each_trigger_before_the_first_byte_fails_over(
    fault: str, a_extra: dict[str, Any], code: str, stream: bool
) -> None:
    if a_extra.get("base_url") == "CLOSED":
        a_extra = {"base_url": _closed_port_url()}
    async with open_mocks(Fault()) as (mock,):
        overrides = {"providers": _pair(mock, fault, **a_extra), "ttft_timeout": 0.5}
        async with running(**overrides) as (gw, recorder):
            response = await request(gw.url, "POST", "/v1/chat/completions", chat("m", stream))
            assert response.status == 200, response.body
            if stream:
                assert events_of(response.body)[-1] == b"data: [DONE]"
            else:
                assert response.json()["model"] == HEALTHY
            (record,) = await recorder.wait_for(1)
            assert (record.provider, record.attempts, record.outcome) == ("b", 2, "done")
            assert record.failovers == (("a", code),)


async def test_no_failover_once_a_byte_reached_the_client() -> None:
    async with (
        open_mocks(Fault()) as (mock,),
        running(providers=_pair(mock, "mock-t5-i0-drop2")) as (gw, recorder),
    ):
        response = await request(gw.url, "POST", "/v1/chat/completions", chat("m"))
        assert response.status == 200
        events = events_of(response.body)
        assert b'"code":"upstream_broken"' in events[-1]  # the error event path
        assert sum(b"chat.completion.chunk" in e for e in events) >= 2
        (record,) = await recorder.wait_for(1)
        assert (record.provider, record.attempts, record.failovers) == ("a", 1, ())
        assert mock.statistics().requests_total == 1  # b was never asked


async def test_retry_after_keeps_a_rate_limited_provider_out_of_plans() -> None:
    async with (
        open_mocks(Fault()) as (mock,),
        running(providers=_pair(mock, "mock-e429")) as (gw, _),
    ):
        for _ in range(4):
            ok = await request(gw.url, "POST", "/v1/chat/completions", chat("m"))
            assert ok.status == 200
        a, b = gw.app.router.providers
        assert (a.requests, b.requests) == (1, 4)  # a's Retry-After: 1 s not over
        assert a.consecutive_failures == 0  # a 429 is not ill health


async def test_max_attempts_bounds_the_providers_tried() -> None:
    async with open_mocks(Fault(error_status=500)) as (mock,):
        providers = tuple(provider(n, mock) for n in "abc")
        async with running(providers=providers, max_attempts=2) as (gw, recorder):
            response = await request(gw.url, "POST", "/v1/chat/completions", chat("x"))
            assert response.status == 502
            assert "HTTP 500" in response.json()["error"]["message"]
            records = await recorder.wait_for(1)
            assert records[-1].attempts == 2 and len(records[-1].failovers) == 1
            assert mock.statistics().requests_total == 2


def _messages(model: str) -> dict[str, Any]:
    return {"model": model, "max_tokens": 8, "messages": [], "stream": True}


async def test_ejection_then_recovery_after_the_cooldown() -> None:
    clock = MovableClock()
    async with open_mocks(Fault(error_status=500), Fault(tokens=3)) as (sick, well):
        overrides = {
            "providers": (provider("sick", sick), provider("well", well)),
            "eject_after": 2,
            "cooldown": 30.0,
            "debug_endpoints": True,
        }
        async with running(clock, **overrides) as (gw, _):
            for _ in range(6):
                ok = await request(gw.url, "POST", "/v1/chat/completions", chat("m"))
                assert ok.status == 200  # every request served: failover hides the sick one
            assert sick.statistics().requests_total == 2  # then it was skipped
            ready = (await request(gw.url, "GET", "/readyz")).json()
            assert ready["providers"] == {"sick": "ejected", "well": "healthy"}
            assert ready["unhealthy_pools"] == [] and ready["ready"] is True
            metrics = (await request(gw.url, "GET", "/metrics")).body
            assert b'trioproxy_provider_ejections_total{provider="sick"} 1.0' in metrics
            assert (
                b'trioproxy_failovers_total{provider="sick",reason="upstream_broken"} 2.0'
                in metrics
            )
            sick.defaults = Fault(tokens=3)  # the sick provider recovers
            clock.advance(29.9)  # inside the cooldown: still skipped
            for _ in range(2):
                ok = await request(gw.url, "POST", "/v1/chat/completions", chat("m"))
                assert ok.status == 200
            assert sick.statistics().requests_total == 2
            clock.advance(0.2)  # the cooldown has passed
            for _ in range(2):  # round robin: one of two plans starts at "sick" (the trial)
                ok = await request(gw.url, "POST", "/v1/chat/completions", chat("m"))
                assert ok.status == 200
            assert sick.statistics().requests_total == 3
            assert gw.app.router.providers[0].state(clock()) == "healthy"


async def test_every_provider_ejected_still_serves_and_readyz_names_the_pool() -> None:
    async with open_mocks(Fault(error_status=500)) as (mock,):
        named = provider("only", mock, models=["gpt-x"])
        overrides = {"providers": (named,), "eject_after": 1}
        async with running(**overrides) as (gw, _):
            for _ in range(3):
                response = await request(gw.url, "POST", "/v1/chat/completions", chat("gpt-x"))
                assert response.status == 502  # the upstream's failure, never a made-up 503
            assert mock.statistics().requests_total == 3  # panic: still tried
            ready = await request(gw.url, "GET", "/readyz")
            assert ready.status == 503  # nothing at all can be served
            assert ready.json()["unhealthy_pools"] == ["openai:gpt-x"]
    unreachable = {"name": "only", "base_url": _closed_port_url(), "models": ["gpt-*"]}
    async with running(providers=(unreachable,), eject_after=1) as (gw, _):
        response = await request(gw.url, "POST", "/v1/chat/completions", chat("gpt-y"))
        assert response.status == 502
        ready = await request(gw.url, "GET", "/readyz")
        assert ready.status == 503 and ready.json()["unhealthy_pools"] == ["openai:gpt-*"]


async def test_a_client_inventing_failing_models_cannot_make_the_gateway_unready() -> None:
    """The attack: under a pattern, names the upstream answers with 5xx, until
    they are ejected. Requests for them fail; the gateway stays ready for a load
    balancer, and the other models under the pattern are still served."""
    async with open_mocks(Fault()) as (mock,):
        overrides = {"providers": (provider("only", mock, models=["mock-*"]),), "eject_after": 1}
        async with running(**overrides) as (gw, _):
            for n in range(5):
                bad = chat(f"mock-e500-x{n}")
                assert (await request(gw.url, "POST", "/v1/chat/completions", bad)).status == 502
            ready = await request(gw.url, "GET", "/readyz")
            assert ready.status == 200 and ready.json()["unhealthy_pools"] == []
            ok = await request(gw.url, "POST", "/v1/chat/completions", chat(HEALTHY))
            assert ok.status == 200


async def test_header_hygiene_and_provider_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TP_TEST_OPENAI_KEY", "sk-provider-openai")
    monkeypatch.setenv("TP_TEST_ANTHROPIC_KEY", "sk-provider-anthropic")
    async with open_mocks(Fault(), Fault()) as (oai, ant):
        providers = (
            provider(
                "o",
                oai,
                api_key_env="TP_TEST_OPENAI_KEY",
                headers={"x-tenant": "t1"},
                forward_headers=["OpenAI-Organization"],
            ),
            provider("c", ant, kind="anthropic", api_key_env="TP_TEST_ANTHROPIC_KEY"),
        )
        client_headers = [
            ("authorization", "Bearer client-secret-1"),
            ("x-api-key", "client-secret-2"),
            ("cookie", "session=client-secret-3"),
            ("te", "trailers"),
            ("x-request-id", "rid-123"),
            ("openai-organization", "org-1"),
            ("x-request-id", "rid-dup"),  # duplicates: the upstream must get one of each
            ("authorization", "Bearer client-secret-4"),
        ]
        async with running(providers=providers) as (gw, _):
            r = await request(gw.url, "POST", "/v1/chat/completions", chat(HEALTHY), client_headers)
            assert r.status == 200
            seen = oai.last_headers
            assert seen[b"authorization"] == b"Bearer sk-provider-openai"
            assert seen[b"x-tenant"] == b"t1" and seen[b"openai-organization"] == b"org-1"
            assert seen[b"x-request-id"] == b"rid-123"
            assert b"x-api-key" not in seen and b"cookie" not in seen and b"te" not in seen
            names = [name for name, _ in oai.last_header_list]  # every line, as sent
            assert len(names) == len(set(names)), names
            assert (b"authorization", b"Bearer sk-provider-openai") in oai.last_header_list
            r = await request(gw.url, "POST", "/v1/messages", _messages(HEALTHY), client_headers)
            assert r.status == 200
            seen = ant.last_headers
            assert seen[b"x-api-key"] == b"sk-provider-anthropic"
            assert seen[b"anthropic-version"] == b"2023-06-01"
            assert b"authorization" not in seen and b"cookie" not in seen
            for sent in (oai.last_header_list, ant.last_header_list):
                assert not any(b"client-secret" in v for _, v in sent)
                assert len({n for n, _ in sent}) == len(sent), sent  # no name twice


async def test_a_tenant_cannot_choose_what_the_operators_credential_is_billed_for() -> None:
    """The attack: a tenant names an organisation, a project and a priced beta
    feature next to the operator's credential. Only a provider whose
    ``forward_headers`` lists one gets it."""
    billing = [
        ("openai-organization", "org-victim"),
        ("openai-project", "proj-victim"),
        ("anthropic-beta", "priced-feature-2026"),
    ]
    async with open_mocks(Fault(), Fault(), Fault()) as (oai, ant, opted):
        providers = (
            provider("o", oai, models=["mock-*"]),
            provider("c", ant, kind="anthropic"),
            provider("p", opted, models=["opted-*"], forward_headers=["openai-project"]),
        )
        async with running(providers=providers) as (gw, _):
            for path, body, mock in (
                ("/v1/chat/completions", chat(HEALTHY), oai),
                ("/v1/messages", _messages(HEALTHY), ant),
            ):
                assert (await request(gw.url, "POST", path, body, billing)).status == 200
                assert not {b"openai-organization", b"openai-project", b"anthropic-beta"} & set(
                    mock.last_headers
                )
            body = chat("opted-t2-i0")
            assert (
                await request(gw.url, "POST", "/v1/chat/completions", body, billing)
            ).status == 200
            assert opted.last_headers[b"openai-project"] == b"proj-victim"
            assert b"openai-organization" not in opted.last_headers
    with pytest.raises(ConfigError, match="forward_headers may list"):
        parse_providers(
            [{"name": "x", "base_url": "http://h", "forward_headers": ["authorization"]}]
        )


async def test_an_alias_is_sent_upstream_under_the_providers_name() -> None:
    async with open_mocks(Fault()) as (mock,):
        providers = (provider("a", mock, models=[], aliases={"fast": HEALTHY}),)
        async with running(providers=providers) as (gw, recorder):
            r = await request(gw.url, "POST", "/v1/chat/completions", chat("fast"))
            assert r.status == 200 and f'"model":"{HEALTHY}"'.encode() in r.body
            r = await request(gw.url, "POST", "/v1/chat/completions", chat(HEALTHY))
            assert r.status == 404 and "not served" in r.json()["error"]["message"]
            records = await recorder.wait_for(2)
            assert records[0].model == "fast"  # records keep the client's name


async def test_round_robin_spreads_and_sticky_sessions_stay() -> None:
    async with open_mocks(Fault(tokens=2), Fault(tokens=2)) as (m1, m2):
        providers = (provider("one", m1), provider("two", m2))
        async with running(providers=providers, sticky_user_field=True) as (gw, _):
            for _ in range(6):
                await request(gw.url, "POST", "/v1/chat/completions", chat("m"))
            assert (m1.statistics().requests_total, m2.statistics().requests_total) == (3, 3)
            homes = set()
            for session in ("alpha", "beta", "gamma", "delta", "epsilon", "zeta"):
                for sticky in ({"headers": [("x-session-id", session)]}, {"user": session}):
                    before = (m1.statistics().requests_total, m2.statistics().requests_total)
                    for _ in range(3):
                        body = chat("m", user=sticky["user"]) if "user" in sticky else chat("m")
                        hdrs = sticky.get("headers", [])
                        await request(gw.url, "POST", "/v1/chat/completions", body, hdrs)  # type: ignore[arg-type]
                    after = (m1.statistics().requests_total, m2.statistics().requests_total)
                    delta = [a - b for a, b in zip(after, before, strict=True)]
                    assert sorted(delta) == [0, 3]  # all three on one provider
                    homes.add(delta.index(3))
            assert homes == {0, 1}  # and sessions are spread over both


async def test_a_backup_tier_serves_only_what_the_primary_cannot() -> None:
    """primary (priority 0) and backup (priority 1, weight 1000): every request
    goes to the primary; one it fails moves to the backup within the request."""
    async with open_mocks(Fault(tokens=2), Fault(tokens=2)) as (m1, m2):
        providers = (
            provider("primary", m1, aliases={"m": HEALTHY, "bad": "mock-e500"}),
            provider("backup", m2, priority=1, weight=1000, aliases={"m": HEALTHY, "bad": HEALTHY}),
        )
        async with running(providers=providers, eject_after=100) as (gw, recorder):
            for _ in range(20):
                ok = await request(gw.url, "POST", "/v1/chat/completions", chat("m"))
                assert ok.status == 200
            assert (m1.statistics().requests_total, m2.statistics().requests_total) == (20, 0)
            moved = await request(gw.url, "POST", "/v1/chat/completions", chat("bad"))
            assert moved.status == 200 and events_of(moved.body)[-1] == b"data: [DONE]"
            record = (await recorder.wait_for(21))[-1]
            assert record.provider == "backup" and record.failovers == (
                ("primary", "upstream_broken"),
            )


async def test_a_lone_providers_429_is_relayed_and_never_made_up_for_others() -> None:
    """A 429 may concern one model or one key: the next request still reaches the provider."""
    async with (
        open_mocks(Fault()) as (mock,),
        running(providers=(provider("only", mock),)) as (gw, _),
    ):
        limited = await request(gw.url, "POST", "/v1/chat/completions", chat("mock-e429"))
        assert limited.status == 429 and limited.headers[b"retry-after"] == b"1"
        assert limited.json()["error"]["message"] == "mock error 429"  # the upstream's own body
        (only,) = gw.app.router.providers
        assert only.statistics(trio.current_time()).retry_after_s > 0  # remembered...
        ok = await request(gw.url, "POST", "/v1/chat/completions", chat(HEALTHY))
        assert ok.status == 200  # ...but no made-up 429 for another request


async def test_models_are_listed_from_the_config_when_every_provider_names_them() -> None:
    async with open_mocks(Fault()) as (mock,):
        named = (
            provider("a", mock, models=["gpt-x"], aliases={"fast": HEALTHY}),
            provider("b", mock, models=["gpt-y", "gpt-x"]),
        )
        async with running(providers=named) as (gw, _):
            listed = await request(gw.url, "GET", "/v1/models")
            assert [m["id"] for m in listed.json()["data"]] == ["fast", "gpt-x", "gpt-y"]
            assert mock.statistics().requests_total == 0  # answered by the gateway
        async with running(providers=(*named, provider("c", mock, models=["llama-*"]))) as (gw, _):
            listed = await request(gw.url, "GET", "/v1/models")
            assert listed.status == 200 and listed.json()["data"][0]["id"] == "mock"  # upstream's


async def test_a_full_provider_is_skipped_and_a_hang_up_gives_its_stream_back() -> None:
    async with open_mocks(Fault(), Fault()) as (first, second):
        providers = (provider("a", first, max_streams=1), provider("b", second))
        async with running(providers=providers) as (gw, _):
            a, b = gw.app.router.providers
            client = await RawClient.connect(gw.url)
            await client.send_request("POST", "/v1/chat/completions", chat("mock-t1000-i20"))
            assert (await client.response_head())[0] == 200
            assert (a.in_flight, b.in_flight) == (1, 0)  # round robin started at a
            for _ in range(3):  # a is full: every plan goes to b, nothing fails over
                ok = await request(gw.url, "POST", "/v1/chat/completions", chat(HEALTHY))
                assert ok.status == 200
            assert second.statistics().requests_total == 3 and a.failures == 0
            await client.close()
            with trio.fail_after(5):
                await first.wait_peer_close()  # the upstream stream was cancelled...
            await eventually(lambda: not a.in_flight)
            assert a.consecutive_failures == 0  # ...and a hang-up says nothing about health


async def test_least_in_flight_sends_new_requests_past_a_busy_provider() -> None:
    async with open_mocks(Fault(), Fault()) as (first, second):
        providers = (provider("one", first), provider("two", second))
        async with running(providers=providers, routing_strategy="least_in_flight") as (gw, _):
            client = await RawClient.connect(gw.url)
            await client.send_request("POST", "/v1/chat/completions", chat("mock-t1000-i20"))
            assert (await client.response_head())[0] == 200
            busy = first if first.statistics().streams_active else second
            idle = second if busy is first else first
            for _ in range(4):  # round robin would alternate; least_in_flight avoids the busy one
                ok = await request(gw.url, "POST", "/v1/chat/completions", chat(HEALTHY))
                assert ok.status == 200
            assert (busy.statistics().requests_total, idle.statistics().requests_total) == (1, 4)
            await client.close()
