"""Recovery: a provider that comes back is used again soon, with or without traffic.

The flapping primary runs on the gateway's movable clock: one request per
clock second, the clock moved by the test, the upstreams real sockets.
"""

from __future__ import annotations

import functools
import socket

import orjson
import trio

from tests.conftest import MovableClock, chat, eventually, open_mocks, provider, running
from trioproxy.routing.providers import Provider
from trioproxy.testing.mock_scripts import Fault
from trioproxy.testing.mock_upstream import serve_mock
from trioproxy.testing.rawclient import request

SICK, WELL = Fault(error_status=500), Fault(tokens=3)


async def test_a_recovered_primary_serves_again_within_10_s_at_one_request_a_second() -> None:
    """The field's "primary flapping" scenario, with every default: the primary
    fails for 30 s, recovers for 20, fails for 10 more, recovers; every request is
    served (by the backup meanwhile) and the primary is back within 10 s each time."""
    clock = MovableClock()
    async with open_mocks(SICK, WELL) as (primary, backup):
        providers = (provider("primary", primary), provider("backup", backup, priority=1))
        async with running(clock, providers=providers) as (gw, recorder):
            served: list[str] = []
            sick_periods = [(0, 30), (50, 60)]
            for second in range(80):
                sick = any(a <= second < b for a, b in sick_periods)
                primary.defaults = SICK if sick else WELL
                ok = await request(gw.url, "POST", "/v1/chat/completions", chat("m"))
                assert ok.status == 200, (second, ok.body)
                record = (await recorder.wait_for(second + 1))[-1]
                served.append(record.provider or "")
                clock.advance(1.0)
            for _, recovered in sick_periods:
                back = served.index("primary", recovered)
                assert back - recovered < 10, served
            asked_while_sick = primary.statistics().requests_total - served.count("primary")
            # 5 failures eject it; then one trial after each wait of 1, 2, 4, 5, 5 s...:
            # 5 + 6 in the first 30 s, 5 + 1 in the next 10 (recovered at the second trial)
            assert asked_while_sick <= 17


async def test_one_models_outage_on_a_shared_server_leaves_its_other_models_there() -> None:
    async with open_mocks(WELL, WELL) as (shared, spare):
        providers = (
            provider("shared", shared, aliases={"big": "mock-e500", "small": "mock-t3"}),
            provider("spare", spare, priority=1, aliases={"big": "mock-t3", "small": "mock-t3"}),
        )
        async with running(providers=providers, eject_after=2) as (gw, recorder):
            for _ in range(4):
                big = await request(gw.url, "POST", "/v1/chat/completions", chat("big"))
                assert big.status == 200
            small = await request(gw.url, "POST", "/v1/chat/completions", chat("small"))
            assert small.status == 200
            records = await recorder.wait_for(5)
            assert [r.provider for r in records] == ["spare"] * 4 + ["shared"]
            assert shared.statistics().requests_total == 3  # big ejected after 2, small served


def _healthy(p: Provider) -> bool:
    return p.state(trio.current_time()) == "healthy"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_a_health_check_brings_an_unreachable_provider_back_without_traffic() -> None:
    port = _free_port()  # nothing listens there yet: the provider is unreachable
    down = {"name": "a", "base_url": f"http://127.0.0.1:{port}/v1"}
    probed = {**down, "health_check": {"interval": 0.05, "path": "/models"}}
    async with open_mocks(WELL) as (other,):
        for table, comes_back in ((probed, True), (down, False)):  # with and without the probe
            providers = (table, provider("b", other, priority=1))
            overrides = {"providers": providers, "eject_after": 1, "cooldown": 3600.0}
            async with running(**overrides) as (gw, recorder), trio.open_nursery() as nursery:
                ok = await request(gw.url, "POST", "/v1/chat/completions", chat("m"))
                assert ok.status == 200  # served by b; a is ejected for an hour
                (a, _b) = gw.app.router.providers
                assert a.state(trio.current_time()) == "ejected"
                mock = await nursery.start(serve_mock, "127.0.0.1", port, WELL)
                if comes_back:
                    await eventually(functools.partial(_healthy, a))
                    assert mock.statistics().requests_total >= 1  # the probe, no client
                    again = await request(gw.url, "POST", "/v1/chat/completions", chat("m"))
                    assert again.status == 200
                    assert (await recorder.wait_for(2))[-1].provider == "a"
                else:
                    await trio.sleep(0.3)  # the stimulus: time that would see six probes
                    assert a.state(trio.current_time()) == "ejected"
                    assert mock.statistics().requests_total == 0
                nursery.cancel_scope.cancel()


async def test_a_one_token_probe_brings_a_failing_model_back_without_traffic() -> None:
    """``request = true``: the ejected model itself is asked (one token); its answer
    ends the ejection. A path probe only makes the next request the model's trial."""
    for check, after in (({"request": True}, "healthy"), ({"path": "/models"}, "trial")):
        async with open_mocks(WELL, WELL) as (sick, other):
            fails_twice = f"mock-e500-n2-t3-x{len(after)}"
            a = provider("a", sick, models=[], aliases={"m": fails_twice},
                         health_check={"interval": 0.05, **check})  # fmt: skip
            b = provider("b", other, priority=1, aliases={"m": "mock-t3"})
            overrides = {"providers": (a, b), "eject_after": 2, "cooldown": 3600.0}
            async with running(**overrides) as (gw, recorder):
                for _ in range(2):
                    ok = await request(gw.url, "POST", "/v1/chat/completions", chat("m"))
                    assert ok.status == 200  # a's 500, then b
                first, _ = gw.app.router.providers
                assert first.state(trio.current_time()) == "ejected"
                await eventually(functools.partial(_state_is, first, after))
                probe = sick.last_body or b""
                if after == "healthy":
                    assert sick.statistics().requests_total == 3  # two attempts and the probe
                    assert orjson.loads(probe)["max_tokens"] == 1  # the model, one token
                    served = await request(gw.url, "POST", "/v1/chat/completions", chat("m"))
                    assert served.status == 200
                    assert (await recorder.wait_for(3))[-1].provider == "a"
                else:
                    assert probe == b""  # a GET of the path: the model itself was not asked


def _state_is(p: Provider, state: str) -> bool:
    return p.state(trio.current_time()) == state
