"""The error hierarchy: statuses and outcomes (rendering: test_dialects.py)."""

from __future__ import annotations

import pytest

from trioproxy import errors
from trioproxy.errors import GatewayError, Outcome


@pytest.mark.parametrize(
    ("cls", "status", "outcome"),
    [
        (errors.BadRequest, 400, Outcome.BAD_REQUEST),
        (errors.PayloadTooLarge, 413, Outcome.BAD_REQUEST),
        (errors.Unauthorized, 401, Outcome.REJECTED_AUTH),
        (errors.Forbidden, 403, Outcome.REJECTED_AUTH),
        (errors.NotFound, 404, Outcome.BAD_REQUEST),
        (errors.MethodNotAllowed, 405, Outcome.BAD_REQUEST),
        (errors.Overloaded, 429, Outcome.REJECTED_OVERLOAD),
        (errors.UpstreamUnreachable, 502, Outcome.UPSTREAM_ERROR),
        (errors.UpstreamBroken, 502, Outcome.UPSTREAM_ERROR),
        (errors.UpstreamRateLimited, 429, Outcome.UPSTREAM_ERROR),
        (errors.UpstreamTTFTTimeout, 504, Outcome.UPSTREAM_TTFT_TIMEOUT),
        (errors.UpstreamIdleTimeout, 504, Outcome.UPSTREAM_IDLE_TIMEOUT),
        (errors.StreamTooLong, 504, Outcome.MAX_DURATION),
        (errors.GatewayShutdown, 503, Outcome.GATEWAY_SHUTDOWN),
    ],
)
def test_each_error_has_its_status_and_outcome(
    cls: type[GatewayError], status: int, outcome: Outcome
) -> None:
    err = cls("x")
    assert (err.status, err.outcome, err.message) == (status, outcome, "x")


def test_outcomes_are_their_record_strings() -> None:
    assert Outcome.CLIENT_DISCONNECT == "client_disconnect"
    assert {o.value for o in Outcome} >= {"done", "slow_client", "unknown"}
