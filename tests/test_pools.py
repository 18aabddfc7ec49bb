"""Model -> pool resolution, strategies and sticky routing (no I/O)."""

from __future__ import annotations

import collections

import pytest

from trioproxy.errors import ConfigError, NotFound, Overloaded
from trioproxy.routing.pools import MAX_CACHED_POOLS, Router
from trioproxy.routing.providers import Provider, parse_providers


def _router(*entries: dict[str, object], strategy: str = "round_robin") -> Router:
    tables = [{"base_url": f"http://{e['name']}/v1", **e} for e in entries]
    return Router(parse_providers(tables), strategy, environ={})


def _first(router: Router, model: str, session: bytes | None = None) -> str:
    return router.pool(("openai",), model).plan(session)._order[0].provider.name


def test_a_model_resolves_to_the_providers_that_serve_it() -> None:
    router = _router(
        {"name": "a", "models": ["llama-*"]},
        {"name": "b", "models": ["gpt-4o"], "aliases": {"llama-70b": "meta/llama-70b"}},
        {"name": "c", "kind": "anthropic"},
    )
    pool = router.pool(("openai",), "llama-70b")
    assert [(m.provider.name, m.upstream_model) for m in pool.members] == [
        ("a", "llama-70b"),
        ("b", "meta/llama-70b"),
    ]
    assert router.pool(("openai",), "llama-70b") is pool  # cached
    assert [m.provider.name for m in router.pool(("anthropic",), "claude").members] == ["c"]
    with pytest.raises(NotFound, match="'mistral' is not served"):
        router.pool(("openai",), "mistral")


def test_the_pool_cache_is_bounded() -> None:
    router = _router({"name": "a"})
    for i in range(MAX_CACHED_POOLS + 10):
        router.pool(("openai",), f"m{i}")
    assert len(router._pools) == MAX_CACHED_POOLS


def test_unknown_strategy_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="routing_strategy"):
        _router({"name": "a"}, strategy="random")


def test_round_robin_follows_the_weights_and_interleaves() -> None:
    router = _router({"name": "a", "weight": 2}, {"name": "b"}, {"name": "c"})
    firsts = [_first(router, "m") for _ in range(400)]
    assert collections.Counter(firsts) == {"a": 200, "b": 100, "c": 100}
    assert firsts[:4] == ["a", "b", "c", "a"]  # smooth: never a-a in a row here
    # The rest of a plan is every other provider once: failover candidates.
    order = [m.provider.name for m in router.pool(("openai",), "m").plan()._order]
    assert sorted(order) == ["a", "b", "c"]


def test_least_in_flight_prefers_the_least_busy_per_weight() -> None:
    router = _router({"name": "a", "weight": 2}, {"name": "b"}, strategy="least_in_flight")
    a, b = router.providers
    a.in_flight, b.in_flight = 3, 1  # a: 1.5 per weight, b: 1
    assert {_first(router, "m") for _ in range(10)} == {"b"}
    a.in_flight = 1  # a: 0.5 per weight
    assert {_first(router, "m") for _ in range(10)} == {"a"}
    a.in_flight = 2  # a tie (1 vs 1): rotation decides, both get picked
    assert {_first(router, "m") for _ in range(10)} == {"a", "b"}


def test_sticky_sessions_stay_and_move_only_off_a_removed_provider() -> None:
    full = _router({"name": "a"}, {"name": "b"}, {"name": "c"}, {"name": "d"})
    sessions = [f"session-{i}".encode() for i in range(400)]
    placed = {s: _first(full, "m", s) for s in sessions}
    assert all(_first(full, "m", s) == placed[s] for s in sessions)  # stable
    assert set(collections.Counter(placed.values())) == {"a", "b", "c", "d"}  # spread
    smaller = _router({"name": "a"}, {"name": "b"}, {"name": "d"})
    for s in sessions:
        if placed[s] != "c":
            assert _first(smaller, "m", s) == placed[s]  # nobody else moved
    larger = _router(*({"name": n} for n in "abcde"))
    moved = [s for s in sessions if _first(larger, "m", s) != placed[s]]
    assert moved and all(_first(larger, "m", s) == "e" for s in moved)  # only to the newcomer


def _eject(provider: Provider, until: float, model: str = "m") -> None:
    health = provider.health.of(model, 0.0)
    health.ejected_until, health.unreachable = until, True


def test_a_sticky_session_skips_an_ejected_provider_and_comes_back() -> None:
    router = _router({"name": "a"}, {"name": "b"}, {"name": "c"})
    session = b"user-42"
    home = _first(router, "m", session)
    provider = next(p for p in router.providers if p.name == home)
    _eject(provider, 100.0)
    plan = router.pool(("openai",), "m").plan(session)
    member = plan.take(50.0)
    assert member is not None and member.provider.name != home
    member.provider.end(50.0, True, 5, 30.0)
    _eject(provider, 0.0)  # recovered
    assert router.pool(("openai",), "m").plan(session).take(101.0).provider is provider  # type: ignore[union-attr]


def test_take_skips_full_providers_and_panics_when_none_admits() -> None:
    router = _router({"name": "a", "max_streams": 1}, {"name": "b", "max_streams": 1})
    a, b = router.providers
    pool = router.pool(("openai",), "m")
    first = pool.plan().take(0)
    second = pool.plan().take(0)
    assert first is not None and second is not None
    assert {first.provider.name, second.provider.name} == {"a", "b"}
    with pytest.raises(Overloaded):
        pool.plan().take(0)
    a.end(0, None, 5, 30.0)
    b.end(0, None, 5, 30.0)
    _eject(a, 60.0)
    _eject(b, 60.0)
    panic = pool.plan().take(1)
    assert panic is not None  # every provider ejected: serve anyway, no outage
    assert router.unhealthy_pools(1) == (["openai:*"], 1)
    panic.provider.end(1, None, 5, 30.0)
    _eject(a, 0.0)
    _eject(b, 0.0)
    a.rate_limited(1, 7, "m")
    b.rate_limited(1, 9, "m")
    assert not pool.plan().has_next(1)  # nobody admits a request...
    chosen = pool.plan().take(1)  # ...but the gateway never makes up a 429: ask anyway
    assert chosen is not None
    chosen.provider.end(1, None, 5, 30.0)
    after_a = pool.plan().take(8)  # a's window is over, b's is not: a admits
    assert after_a is not None and after_a.provider is a


def test_a_plan_tries_each_provider_once() -> None:
    router = _router({"name": "a"}, {"name": "b"})
    plan = router.pool(("openai",), "m").plan()
    taken = [plan.take(0), plan.take(0)]
    assert {m.provider.name for m in taken if m} == {"a", "b"}
    assert not plan.has_next(0) and plan.take(0) is None


def test_a_reload_keeps_the_state_of_unchanged_providers_only() -> None:
    old = _router({"name": "a"}, {"name": "b"})
    a, b = old.providers
    a.ejections = b.ejections = 1
    tables = [
        {"name": "a", "base_url": "http://a/v1"},  # unchanged: the same object, health kept
        {"name": "b", "base_url": "http://b2/v1"},  # changed: starts afresh
        {"name": "c", "base_url": "http://c/v1"},
    ]
    new = Router(parse_providers(tables), "round_robin", environ={}, previous=old)
    assert new.providers[0] is a
    assert new.providers[1] is not b and new.providers[1].ejections == 0
    assert [p.name for p in new.providers] == ["a", "b", "c"]


def test_a_lower_tier_is_planned_only_after_every_provider_above_it() -> None:
    """Two primaries share tier 0 by weight; the backup (priority 1) comes last in
    every plan, whatever its weight: never first, as weights 1000:1 once were."""
    router = _router(
        {"name": "p1", "weight": 2},
        {"name": "p2"},
        {"name": "backup", "priority": 1, "weight": 999},
    )
    plans = [
        [m.provider.name for m in router.pool(("openai",), "m").plan()._order] for _ in range(300)
    ]
    assert collections.Counter(p[0] for p in plans) == {"p1": 200, "p2": 100}
    assert all(p[2] == "backup" for p in plans)
    sticky = [m.provider.name for m in router.pool(("openai",), "m").plan(b"user-7")._order]
    assert sticky[2] == "backup"  # sessions stick within a tier too


def test_the_backup_tier_serves_when_the_primaries_fail_or_are_ejected() -> None:
    router = _router({"name": "p1"}, {"name": "p2"}, {"name": "backup", "priority": 1})
    p1, p2, backup = router.providers
    plan = router.pool(("openai",), "m").plan()
    tried = [plan.take(0), plan.take(0), plan.take(0)]  # each fails in turn
    names = [m.provider.name for m in tried if m is not None]
    assert sorted(names[:2]) == ["p1", "p2"] and names[2] == "backup"
    for m in tried:
        assert m is not None
        m.provider.end(0, None, 5, 30.0)
    _eject(p1, 60.0)
    _eject(p2, 60.0)
    first = router.pool(("openai",), "m").plan().take(1)
    assert first is not None and first.provider is backup  # not a panic: a tier still admits
    first.provider.end(1, None, 5, 30.0)
    _eject(backup, 60.0)
    panic = router.pool(("openai",), "m").plan().take(2)
    assert panic is not None and panic.provider.spec.priority == 0  # panic: the first tier


def test_priority_is_an_integer_from_0_to_100() -> None:
    for bad in (-1, 101, 1.5, "1", True):
        with pytest.raises(ConfigError, match="priority must be an integer from 0 to 100"):
            _router({"name": "a", "priority": bad})
