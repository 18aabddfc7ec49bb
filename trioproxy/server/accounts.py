"""Each key's limits and usage for the app: this process's, or every host's through Redis.

Rules:
- Without ``redis_url`` the key's limits and totals are this process's
  (:class:`~trioproxy.admission.quotas.LocalQuotas`); with it, the lifespan
  hands over the Redis connection and the limits and totals are shared
  (:class:`~trioproxy.shared.limits.SharedQuotas`, which falls back on the
  local ones when Redis is down and ``redis_failure = "open"``).
- Before a body is read, :meth:`Accounts.precheck` refuses a key over one
  of this process's limits; shared limits are decided after the body.
- tpm holds within one request's reservation: an admission reserves the
  prompt's estimate and the most the request may generate; when the exchange
  ends its real usage replaces the reservation.
- Every admitted exchange holds a :class:`~trioproxy.admission.quotas.Grant`
  until its record is made; then its tokens are counted, once: the record's
  usage (``upstream`` or ``estimated``), or nothing if no upstream was reached.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..admission.auth import ApiKey
from ..admission.quotas import Grant, LocalQuotas, TokenCount
from ..config import Config
from ..relay.exchange import Exchange
from ..relay.record import CompletionRecord
from ..shared.limits import SharedQuotas
from ..shared.redis import SharedRedis

__all__ = ["Accounts"]


class Accounts:
    def __init__(self, config: Config, clock: Callable[[], float]) -> None:
        self.config = config
        self.local = LocalQuotas(config.api_keys, clock)
        self.redis: SharedRedis | None = None  # with redis_url, set by the lifespan
        self.shared: SharedQuotas | None = None
        self.grants: dict[Exchange, Grant] = {}  # admitted and not recorded yet

    def share(self, redis: SharedRedis, submit: Callable[..., bool]) -> SharedQuotas:
        """From now on limits and totals are kept in ``redis`` (the lifespan)."""
        fail_closed = self.config.redis_failure == "closed"
        self.redis = redis
        self.shared = SharedQuotas(redis, self.local, fail_closed, self.config.lease_ttl, submit)
        self.shared.early_admission = self.config.early_admission and not fail_closed
        return self.shared

    def unshare(self) -> None:
        self.shared = None

    def reload(self, config: Config) -> None:
        """New [[keys]] (SIGHUP): unchanged keys keep their windows and slots."""
        self.local = LocalQuotas(config.api_keys, self.local.clock, previous=self.local)
        if self.shared is not None:
            self.shared.replace_local(self.local)

    def precheck(self, key: ApiKey | None) -> None:
        """Before the body is read: a 429 for a key over one of this process's
        limits now. Shared limits are decided in Redis with the request's token
        estimate, after its body (a key's trickles are bounded there by its
        body-read share)."""
        if self.shared is None:
            self.local.precheck(key)

    def timed_out(self, key: ApiKey | None) -> None:
        """A body of ``key`` did not arrive within ``body_timeout``: it counts in
        the key's rpm window in this process."""
        self.local.count_request(key)

    async def admit(self, key: ApiKey | None, ex: Exchange, prompt: int, output: int) -> None:
        """The key's limits (rpm, tpm, max_streams); raises 429, or 503 when they
        cannot be checked and fail closed. ``prompt``: the prompt's estimate;
        ``output``: the most the request may generate (its ``max_tokens``, else
        ``default_reserved_tokens``): both are reserved against tpm until the
        exchange ends and its real usage replaces them."""
        ex.prompt_estimate = prompt
        reserved = prompt + output
        if self.shared is not None:
            grant = await self.shared.admit(key, reserved, ex, ex.held.append, ex.mark)
            ex.admission = grant.early
        else:
            grant = self.local.admit(key, reserved, ex)
        self.grants[ex] = grant
        if grant.limiter is not None:
            ex.held.append(grant)

    def settle(self, ex: Exchange, record: CompletionRecord) -> None:
        grant = self.grants.pop(ex, None)
        if grant is None:
            return
        tokens = None
        if record.usage_source is not None:
            estimated = record.usage_source == "estimated"
            tokens = TokenCount(record.prompt_tokens, record.completion_tokens, estimated)
        if self.shared is not None:
            self.shared.settle(grant, tokens)
        else:
            self.local.settle(grant, tokens)

    async def usage(self, key: ApiKey | None) -> dict[str, Any]:
        """``GET /v1/usage``: a key's totals (kept under its id), of every host
        when Redis is shared."""
        account = key.id if key is not None else None
        if self.shared is not None:
            return await self.shared.totals(account)
        return {**self.local.totals(account), "scope": "this process"}

    def redis_state(self) -> str:
        """off | up | down | down-closed (down, and limits fail closed)."""
        if self.redis is None:
            return "off"
        if self.redis.up:
            return "up"
        return "down-closed" if self.config.redis_failure == "closed" else "down"

    def gauges(self) -> dict[str, int]:
        """The Redis fields of :class:`~trioproxy.observe.metrics.Gauges`."""
        if self.redis is None:
            return {}
        stats = self.redis.statistics()
        return {
            "redis_up": int(stats.up),
            "redis_outages": stats.outages,
            "redis_failed_calls": stats.failed_calls,
            "limit_fallbacks": self.shared.fallbacks if self.shared is not None else 0,
            "limit_early": self.shared.early if self.shared is not None else 0,
            "limit_early_overruns": self.shared.early_overruns if self.shared is not None else 0,
        }
