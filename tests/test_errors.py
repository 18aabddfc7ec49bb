"""The error hierarchy's contract with what is recorded.

Each error's HTTP status is proved where a client sees it, not restated here:
400/404/405/413 in test_app.py, 401/403 in test_auth.py, 429 and 502/504 in
test_relay.py and test_failover.py, 503 in test_failover.py and test_server.py;
each dialect's rendering in test_dialects.py.
"""

from __future__ import annotations

from trioproxy import errors
from trioproxy.errors import GatewayError, Outcome


def _concrete(cls: type[GatewayError]) -> list[type[GatewayError]]:
    return [c for sub in cls.__subclasses__() for c in (sub, *_concrete(sub))]


def test_outcomes_are_their_record_strings() -> None:
    """Access lines, metrics labels and the chaos report read these strings."""
    assert Outcome.CLIENT_DISCONNECT == "client_disconnect"
    assert {o.value for o in Outcome} >= {"done", "slow_client", "unknown"}


def test_every_error_is_an_http_error_with_an_outcome_of_its_own_kind() -> None:
    """A client error is a 4xx and is never recorded as the upstream's fault; an
    upstream's failure is a 5xx (or its 429) recorded as an upstream outcome."""
    upstream = {
        Outcome.UPSTREAM_ERROR,
        Outcome.UPSTREAM_TTFT_TIMEOUT,
        Outcome.UPSTREAM_IDLE_TIMEOUT,
    }
    classes = _concrete(GatewayError)
    assert errors.UpstreamBroken in classes and errors.BadRequest in classes
    for cls in classes:
        err = cls("x")
        assert 400 <= err.status < 600 and err.message == "x", cls
        if cls.__name__.startswith("Upstream"):
            assert err.outcome in upstream and (err.status >= 500 or err.status == 429), cls
        elif err.status < 500:
            assert err.outcome not in upstream, cls
