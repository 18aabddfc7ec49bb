"""Per-key limits and usage shared by every worker and host, through Redis.

Rules (those of :mod:`trioproxy.admission.quotas`, run in Redis by the scripts
of :mod:`trioproxy.shared.scripts`):

- One round trip per admission decision (``ADMIT``: rpm, tpm and a stream
  lease at once) and one per completion (``SETTLE``: the lease back, the tokens
  counted against tpm and into the usage totals). A key without limits costs
  no admission round trip.
- ``max_streams`` holds *leases*, not a counter: a lease expires ``lease_ttl``
  after its last refresh. This worker refreshes its live leases every
  ``lease_ttl / 3``, so a host that dies gives its leases back within
  ``lease_ttl``, never later, and a live stream never loses its lease.
- The completion call runs as detached work after the record is made; a
  stream's lease is returned then (or expires, if that call cannot be made).
- Redis unavailable (:class:`~trioproxy.shared.redis.RedisUnavailable`):
  ``redis_failure = "open"`` admits by this process's own counters (counted as
  a fallback); ``"closed"`` refuses with a 503 in the route's dialect. Usage of
  an exchange whose completion call failed is kept in this process.
- An admission that timed out may still have run in Redis: its lease is never
  refreshed and expires within ``lease_ttl``; its rpm entry stays for a minute.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from typing import Any

import trio

from ..admission.auth import ApiKey
from ..admission.quotas import Grant, LocalQuotas, TokenCount, UsageTotals, over_limit
from ..errors import SharedStateUnavailable
from .redis import RedisUnavailable, SharedRedis
from .scripts import ADMIT, REFRESH, SETTLE, USAGE, key_prefix

__all__ = ["SharedQuotas"]

log = logging.getLogger("trioproxy.redis")


def _usage_args(tokens: TokenCount | None) -> tuple[int, int, int, int]:
    """(counted, prompt, completion, estimated tokens) for ``SETTLE``."""
    if tokens is None:
        return 0, 0, 0, 0
    return 1, tokens.prompt, tokens.completion, tokens.total if tokens.estimated else 0


class SharedQuotas:
    def __init__(
        self,
        redis: SharedRedis,
        local: LocalQuotas,
        fail_closed: bool,
        lease_ttl: float,
        submit: Callable[..., bool],
    ) -> None:
        """``local``: the fallback (and the clock); ``submit``: detached work's
        ``submit`` (the completion call runs there)."""
        self.redis = redis
        self.local = local
        self.fail_closed = fail_closed
        self.lease_ttl = lease_ttl
        self._submit = submit
        self._admit = redis.script(ADMIT)
        self._settle = redis.script(SETTLE)
        self._refresh = redis.script(REFRESH)
        self._usage = redis.script(USAGE)
        self.leases: dict[str, str] = {}  # live lease id -> key name
        self.fallbacks = 0  # admissions decided by this process because Redis was down

    def replace_local(self, local: LocalQuotas) -> None:
        self.local = local

    async def admit(self, key: ApiKey | None, estimate: int, borrower: object) -> Grant:
        """Raises :class:`~trioproxy.errors.Overloaded` (429) or, Redis down and
        fail-closed, :class:`~trioproxy.errors.SharedStateUnavailable` (503)."""
        now = self.local.clock()
        if key is None or not (key.rpm or key.tpm or key.max_streams):
            return Grant(key, estimate, now, shared=True)
        prefix = key_prefix(key.name)
        lease = secrets.token_hex(12) if key.max_streams else ""
        try:
            verdict, wait_ms = await self.redis.run(
                self._admit,
                (prefix + "rpm", prefix + "tpm", prefix + "leases"),
                (
                    key.rpm, key.tpm, key.max_streams, int(self.lease_ttl * 1000), lease,
                    estimate, secrets.token_hex(8),
                ),
            )  # fmt: skip
        except RedisUnavailable:
            self.fallbacks += 1
            if self.fail_closed:
                raise SharedStateUnavailable(
                    "shared limits cannot be checked: the gateway's Redis is unavailable"
                ) from None
            return self.local.admit(key, estimate, borrower)
        if verdict != b"ok":  # the name of the limit it is over, and when to come back
            raise over_limit(key, verdict.decode(), -(-int(wait_ms) // 1000))
        if lease:
            self.leases[lease] = key.name
        return Grant(key, estimate, now, shared=True, lease=lease or None)

    def settle(self, grant: Grant, tokens: TokenCount | None) -> None:
        """The exchange ended (called with its record, never awaits)."""
        if not grant.shared:
            self.local.settle(grant, tokens)
            return
        if grant.lease is not None:
            self.leases.pop(grant.lease, None)
        if not self._submit(self._settle_in_redis, grant, tokens, name="usage-settle"):
            self.local.settle(grant, tokens)

    async def _settle_in_redis(self, grant: Grant, tokens: TokenCount | None) -> None:
        prefix = key_prefix(grant.key.name if grant.key is not None else None)
        tpm = grant.key is not None and grant.key.tpm > 0
        try:
            await self.redis.run(
                self._settle,
                (prefix + "tpm", prefix + "leases", prefix + "usage"),
                (
                    grant.lease or "", grant.tpm_delta(tokens, self.local.clock()), int(tpm),
                    *(_usage_args(tokens)),
                ),
            )  # fmt: skip
        except RedisUnavailable:
            self.local.settle(grant, tokens)  # kept here; the lease expires

    async def refresh_forever(self) -> None:
        """Every ``lease_ttl / 3``: one call per key with live leases."""
        while True:
            await trio.sleep(self.lease_ttl / 3)
            by_key: dict[str, list[str]] = {}
            for lease, name in self.leases.items():
                by_key.setdefault(name, []).append(lease)
            for name, leases in by_key.items():
                try:
                    await self.redis.run(
                        self._refresh,
                        (key_prefix(name) + "leases",),
                        (int(self.lease_ttl * 1000), *leases),
                    )
                except RedisUnavailable:
                    break

    async def totals(self, name: str | None) -> dict[str, Any]:
        """The key's totals of every host; this process's when Redis is down."""
        try:
            reply = await self.redis.run(self._usage, (key_prefix(name) + "usage",), ())
        except RedisUnavailable:
            return {**self.local.totals(name), "scope": "this process (redis unavailable)"}
        second, values = int(reply[0]), reply[1:]
        fields = {values[i].decode(): int(values[i + 1]) for i in range(0, len(values), 2)}
        current = {"m": second // 60, "d": second // 86400}
        periods: dict[str, Any] = {}
        for short, period in (("m", "minute"), ("d", "day"), ("a", "all_time")):
            live = short == "a" or fields.get(short) == current[short]
            counts = [fields.get(f"{short}.{f}", 0) if live else 0 for f in "rpce"]
            periods[period] = UsageTotals(*counts).as_dict()
        return {**periods, "scope": "all hosts"}
