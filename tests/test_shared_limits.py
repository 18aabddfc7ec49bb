"""SharedQuotas' fallback over a fake Redis connection (no sockets; MockClock).

A timed-out admission may have taken a stream lease in Redis: its fallback
grant carries the lease so that it is given back at the end. An admission
refused at once because Redis is known to be down never reached Redis: its
grant carries none, and its end costs no Redis call.
"""

from __future__ import annotations

from typing import Any

import trio

from trioproxy.admission.auth import ApiKey
from trioproxy.admission.quotas import LocalQuotas
from trioproxy.shared.limits import SharedQuotas
from trioproxy.shared.redis import SharedRedis

KEY = ApiKey(name="near", sha256="0" * 64, max_streams=1)


class _HungScripts:
    """A coredis client stand-in whose scripts never answer."""

    def register_script(self, source: str) -> Any:
        async def call(**_: Any) -> Any:
            await trio.sleep_forever()

        return call


def _quotas(submitted: list[str]) -> SharedQuotas:
    redis = SharedRedis(_HungScripts(), timeout=0.05, where="fake")  # type: ignore[arg-type]

    def submit(fn: Any, *args: Any, name: str) -> bool:
        submitted.append(name)
        return True

    local = LocalQuotas((KEY,), trio.current_time)
    return SharedQuotas(redis, local, fail_closed=False, lease_ttl=30.0, submit=submit)


async def test_a_timed_out_admission_gives_its_possible_lease_back(autojump_clock: Any) -> None:
    submitted: list[str] = []
    quotas = _quotas(submitted)
    grant = await quotas.admit(KEY, 10, object(), lambda g: None, lambda m: None)
    assert not grant.shared and grant.lease is not None  # decided here, lease maybe in Redis
    quotas.settle(grant, None)
    assert submitted == ["lease-release"]


async def test_an_admission_while_redis_is_down_sends_nothing_at_its_end(
    autojump_clock: Any,
) -> None:
    submitted: list[str] = []
    quotas = _quotas(submitted)
    quotas.redis.down(trio.TooSlowError())
    calls = quotas.redis.statistics().calls
    grant = await quotas.admit(KEY, 10, object(), lambda g: None, lambda m: None)
    assert not grant.shared and grant.lease is None
    quotas.settle(grant, None)
    assert submitted == []
    assert quotas.redis.statistics().calls == calls + 1  # the admission's own, refused at once
