"""Provider config and passive health (sans-IO: time is a number here)."""

from __future__ import annotations

import pytest

from trioproxy.config import load_config
from trioproxy.errors import ConfigError
from trioproxy.routing.health import MAX_RECORDS
from trioproxy.routing.providers import Provider, ProviderSpec, parse_providers, read_credential


def _spec(**kw: object) -> ProviderSpec:
    return parse_providers([{"name": "a", "base_url": "http://a:1/v1", **kw}])[0]


def test_a_provider_table_parses_with_defaults() -> None:
    spec = _spec()
    assert (spec.kind, spec.models, spec.weight, spec.max_streams) == ("openai", ("*",), 1, 0)
    full = _spec(
        kind="anthropic",
        base_url="https://x/",
        api_key_env="X_KEY",
        models=["claude-*"],
        aliases={"fast": "claude-haiku"},
        weight=3,
        max_streams=8,
        headers={"X-Team": "a"},
    )
    assert full.base_url == "https://x" and full.headers == {"x-team": "a"}
    assert full.upstream_model("claude-opus") == "claude-opus"
    assert full.upstream_model("fast") == "claude-haiku"  # alias: the upstream's name
    assert full.upstream_model("gpt-4o") is None


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"kind": "azure"}, "kind must be openai, anthropic or gemini"),
        ({"base_url": "ftp://x"}, "base_url must start with http"),
        ({"weight": 0}, "weight must be an integer from 1 to 1000"),
        ({"weight": 10**9}, "weight must be an integer from 1 to 1000"),
        ({"max_streams": -1}, "max_streams must be an integer from 0"),
        ({"models": "gpt-4o"}, "models must be a list"),
        ({"aliases": {"a": 1}}, "aliases must be a table of strings"),
        ({"headers": {"Authorization": "Bearer x"}}, "headers may not set"),
        ({"headers": {"connection": "close"}}, "headers may not set"),
        ({"api_key": "sk-in-the-file"}, "unknown option"),
        ({"base_url": "http://"}, "is not a URL"),
        ({"base_url": "http://a b/v1"}, "is not a URL"),
        ({"headers": {"x-team": "a\r\nx-evil: 1"}}, "invalid header"),
        ({"headers": {"bad name": "v"}}, "invalid header"),
    ],
)
def test_bad_provider_tables_are_config_errors(entry: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _spec(**entry)


def test_provider_names_are_unique_across_tables_and_shorthands(tmp_path: object) -> None:
    with pytest.raises(ConfigError, match="unique"):
        parse_providers(
            [{"name": "a", "base_url": "http://a"}, {"name": "a", "base_url": "http://b"}]
        )
    config = load_config(
        None, providers=[{"name": "x", "base_url": "http://x/v1"}], openai_upstreams=["http://y/v1"]
    )
    assert [s.name for s in config.provider_specs] == ["x", "y/openai"]


def test_the_credential_comes_from_the_environment_only() -> None:
    spec = _spec(api_key_env="TP_TEST_KEY")
    assert read_credential(spec, {"TP_TEST_KEY": " sk-123 \n"}) == "sk-123"
    with pytest.raises(ConfigError, match="TP_TEST_KEY is not set"):
        read_credential(spec, {})
    assert read_credential(_spec(), {}) is None


EJECT_AFTER, COOLDOWN = 3, 10.0


def _run(p: Provider, now: float, ok: bool | None) -> bool:
    assert p.admits(now)
    p.begin(now)
    return p.end(now, ok, EJECT_AFTER, COOLDOWN)


def test_consecutive_failures_eject_for_the_cooldown_then_one_trial_recovers() -> None:
    p = Provider(_spec(), None)
    assert not _run(p, 0, False) and not _run(p, 1, True)  # a success resets the count
    assert [_run(p, t, False) for t in (2, 3, 4)] == [False, False, True]
    assert p.state(4) == "ejected" and not p.admits(13.9)
    assert p.state(14) == "trial" and p.admits(14)
    p.begin(14)  # the one trial request...
    assert not p.admits(14.5)  # ...and nobody else while it runs
    assert not p.end(15, True, EJECT_AFTER, COOLDOWN)
    assert p.state(15) == "healthy" and p.admits(15) and p.ejections == 1


def test_a_failed_trial_ejects_again_for_a_backed_off_wait_up_to_the_cooldown() -> None:
    p = Provider(_spec(), None)
    for t in range(3):
        _run(p, t, False)
    now, waits = 12.0, []
    for _ in range(6):  # half open: each failed trial waits 1, 2, 4, 8 s, then the cooldown
        assert _run(p, now, False)
        until = p.health.of(None, now).ejected_until
        assert p.state(now) == "ejected" and not p.admits(until - 0.01) and p.admits(until)
        waits.append(until - now)
        now = until
    assert waits == [1.0, 2.0, 4.0, 8.0, COOLDOWN, COOLDOWN] and p.ejections == 7
    assert not _run(p, now, True) and p.state(now) == "healthy"  # recovered: all forgotten
    for t in range(3):
        _run(p, now + t, False)
    assert p.health.of(None, now).ejected_until == now + 2 + COOLDOWN  # a full cooldown again
    assert _run(p, now + 2 + COOLDOWN, False)
    assert p.health.of(None, now).ejected_until == now + 2 + COOLDOWN + 1.0  # and 1 s again


def test_health_is_per_model_so_one_models_outage_leaves_the_others_served() -> None:
    p = Provider(_spec(), None)
    for t in range(3):
        p.begin(t, "big")
        p.end(t, False, EJECT_AFTER, COOLDOWN, "big")
    assert not p.admits(3, "big") and p.admits(3, "small") and p.admits(3)
    assert p.statistics(3).state == "ejected" and p.statistics(3).ejected_models == ("big",)


def test_a_passing_probe_ends_an_unreachable_ejection_and_hastens_a_failing_ones_trial() -> None:
    p = Provider(_spec(), None)
    for model, unreachable in (("a", True), ("b", False)):
        for t in range(3):
            p.begin(t, model)
            p.end(t, False, EJECT_AFTER, COOLDOWN, model, unreachable)
    p.probed(4)
    assert p.health.of("a", 4).state(4) == "healthy"  # the server answers again: back
    assert p.health.of("b", 4).state(4) == "trial"  # the next request finds out about b
    assert p.admits(4, "a") and p.admits(4, "b")


def test_health_records_are_bounded_and_drop_only_idle_ones() -> None:
    p = Provider(_spec(), None)
    for n in range(MAX_RECORDS + 50):  # a pattern provider: every name a client makes up
        p.begin(0, f"m{n}")
        p.end(0, n % 2 == 0 or None, EJECT_AFTER, COOLDOWN, f"m{n}")
    assert len(p.health.items()) == MAX_RECORDS + 1  # the records and the shared one
    p.begin(0, "sick")
    p.end(0, False, EJECT_AFTER, COOLDOWN, "sick")
    assert p.health.of("sick", 0).consecutive_failures == 1
    full = Provider(_spec(), None)
    for n in range(MAX_RECORDS):  # every record holds a failure: none may be dropped
        full.begin(0, f"m{n}")
        full.end(0, False, EJECT_AFTER, COOLDOWN, f"m{n}")
    assert full.health.of("new", 0) is full.health.of("newer", 0)  # the shared record
    assert all(full.health.of(f"m{n}", 0).consecutive_failures == 1 for n in range(MAX_RECORDS))


def test_a_cancelled_trial_says_nothing_about_health() -> None:
    p = Provider(_spec(), None)
    for t in range(3):
        _run(p, t, False)
    assert not _run(p, 13, None)
    assert p.state(13) == "trial" and p.admits(13)  # the next request is the trial


def test_streams_that_began_before_an_ejection_count_it_once() -> None:
    p = Provider(_spec(), None)
    for _ in range(5):
        p.begin(0)
    results = [p.end(1, False, EJECT_AFTER, COOLDOWN) for _ in range(5)]
    assert results == [False, False, True, False, False] and p.ejections == 1
    assert p.in_flight == 0


def test_max_streams_and_retry_after_make_a_healthy_provider_skip_requests() -> None:
    p = Provider(_spec(max_streams=1), None)
    p.begin(0)
    assert p.healthy(0) and not p.admits(0)
    p.end(0, True, EJECT_AFTER, COOLDOWN)
    p.rate_limited(0, 5)
    assert not p.admits(4.9) and p.admits(5.0)
    assert p.statistics(1).retry_after_s == 4.0 and p.consecutive_failures == 0
