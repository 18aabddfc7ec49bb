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
- *Early admission*: a key whose last reply (less than ``VIEW_MAX_AGE`` old,
  plus this worker's admissions still unanswered) is under half of each of
  its limits is admitted at once; the same ``ADMIT`` counts it while its
  upstream request is on its way (:mod:`trioproxy.admission.early`). Near a
  limit (from half of it on), on a key's first request, after a refusal,
  while Redis is down and always with ``redis_failure = "closed"`` (no
  request passes before Redis said yes), every decision waits for Redis, so
  a limit is exact there. This host's early admissions whose count is still
  on its way are part of each of its exact decisions (sent in the ``ADMIT``
  call), and a call that times out falls back on what Redis said last plus
  this host's admissions since (:meth:`SharedQuotas._refuse_past_known`), so
  one host alone never overruns. A key can overrun a limit only when other hosts
  take it from under half to full between two replies to this worker; each
  overrun is counted in Redis (the next decisions see it), in ``/metrics``
  and in the log. ``early_admission = false`` turns early admission off.
- An admission that timed out may still have run in Redis: its lease is
  given back when the exchange ends (or, Redis still away, expires within
  ``lease_ttl``); its rpm entry stays for a minute (the request did run).
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from ..admission.auth import ApiKey
from ..admission.early import EarlyAdmission
from ..admission.quotas import Grant, LocalQuotas, TokenCount, UsageTotals, over_limit
from ..errors import GatewayError, SharedStateUnavailable
from .redis import RedisUnavailable, SharedRedis
from .scripts import ADMIT, REFRESH, SETTLE, USAGE, key_prefix

__all__ = ["SharedQuotas"]

log = logging.getLogger("trioproxy.redis")


VIEW_MAX_AGE = 10.0  # s: an older reply is not trusted for an early admission


@dataclass(frozen=True, slots=True)
class _View:
    """A key's counts after its last admitted request, as Redis said."""

    at: float  # the gateway's clock
    requests: int  # in the rpm window
    tokens: int  # in the tpm window
    streams: int  # leases held


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
        self.leases: dict[str, str] = {}  # live lease id -> key id
        self.fallbacks = 0  # admissions decided by this process because Redis was down
        self.early_admission = not fail_closed  # config: early_admission (never fail-closed)
        self.early = 0  # admitted at once, counted while the upstream request was on its way
        self.early_overruns = 0  # ... counted over a limit another host had filled
        # Per key name (bounded by [[keys]]): what the last admission reply said,
        # and admissions asked and not answered yet (count, tokens).
        self._views: dict[str, _View] = {}
        self._pending: dict[str, tuple[int, int]] = {}
        self._unsent: dict[str, tuple[int, int]] = {}  # early, their count not asked yet
        # What Redis said last, kept through timeouts, with the fallbacks since: a
        # burst that meets a slow Redis is still held to the limits it last saw.
        self._known: dict[str, _View] = {}

    def replace_local(self, local: LocalQuotas) -> None:
        self.local = local

    async def admit(
        self,
        key: ApiKey | None,
        estimate: int,
        borrower: object,
        hold: Callable[[Grant], None],
        mark: Callable[[str], None],
    ) -> Grant:
        """Raises :class:`~trioproxy.errors.Overloaded` (429) or, Redis down and
        fail-closed, :class:`~trioproxy.errors.SharedStateUnavailable` (503).
        A key far from its limits is admitted at once, its grant's ``early``
        count still to make (the relay runs it); ``hold``: how such a grant,
        counted by the local fallback, holds this process's stream slot;
        ``mark``: the exchange's timeline."""
        now = self.local.clock()
        if key is None or not (key.rpm or key.tpm or key.max_streams):
            return Grant(key, estimate, now, shared=True)
        if not self._far_from_limits(key, estimate, now):
            return await self._decide(key, estimate, borrower)
        self.early += 1
        grant = Grant(key, estimate, now, shared=True)
        self._count_pending(key.name, 1, estimate, unsent=True)  # until its own call is made

        async def count() -> None:
            # Unsent until Redis has it: an exact decision meanwhile leaves it room.
            try:
                final = await self._decide(key, estimate, borrower, early=True)
            except GatewayError:  # the local fallback's counters are full
                return  # it runs already: nothing to take back
            finally:
                self._count_pending(key.name, -1, -estimate, unsent=True)
            grant.shared, grant.lease, grant.limiter = final.shared, final.lease, final.limiter
            if final.limiter is not None:
                hold(grant)

        grant.early = EarlyAdmission(count, mark)
        return grant

    def _far_from_limits(self, key: ApiKey, estimate: int, now: float) -> bool:
        """What Redis said last, with the admissions still on their way, is under
        half of every limit of the key: decide while the upstream request leaves."""
        view = self._views.get(key.name)
        if view is None or not self.early_admission or not self.redis.up:
            return False
        if now - view.at > VIEW_MAX_AGE:
            return False
        n, tokens = self._pending.get(key.name, (0, 0))
        return (
            (not key.rpm or view.requests + n + 1 <= key.rpm // 2)
            and (not key.tpm or view.tokens + tokens + estimate <= key.tpm // 2)
            and (not key.max_streams or view.streams + n + 1 <= key.max_streams // 2)
        )

    def _refuse_past_known(self, key: ApiKey, estimate: int, now: float) -> None:
        """A fallback decision: 429 when this host would take a limit past what it
        knows. rpm and tpm: the counts Redis said last (at most ``VIEW_MAX_AGE``
        old) with this host's admissions since and on their way; max_streams:
        this host's own live streams, shared and fallen back, and those on their
        way (other hosts' are Redis's to know)."""
        n, tokens = self._pending.get(key.name, (0, 0))  # this one included
        if key.max_streams:
            local = self.local.states.get(key.name)
            fallen_back = (
                local.streams.statistics().borrowed_tokens if local and local.streams else 0
            )
            live = sum(1 for account in self.leases.values() if account == key.id)
            if live + fallen_back + n > key.max_streams:
                raise over_limit(key, "max_streams", 1)
        known = self._known.get(key.name)
        if known is None or now - known.at > VIEW_MAX_AGE:
            return
        if key.rpm and known.requests + n > key.rpm:
            raise over_limit(key, "rpm", 1)
        if key.tpm and known.tokens + tokens - estimate >= key.tpm:
            raise over_limit(key, "tpm", 1)
        self._known[key.name] = _View(
            known.at, known.requests + 1, known.tokens + estimate, known.streams
        )

    def _count_pending(self, name: str, n: int, tokens: int, unsent: bool = False) -> None:
        """Admissions of ``name`` whose count Redis has not answered yet; with
        ``unsent``, early ones whose call has not even been made."""
        for pending in (self._pending, self._unsent) if unsent else (self._pending,):
            count, reserved = pending.get(name, (0, 0))
            if count + n <= 0:
                pending.pop(name, None)
            else:
                pending[name] = (count + n, reserved + tokens)

    async def _decide(
        self, key: ApiKey, estimate: int, borrower: object, early: bool = False
    ) -> Grant:
        """The admission round trip (``ADMIT``), or the fallback. ``early``: the
        request runs already; it is counted whatever the limits say."""
        now = self.local.clock()
        prefix = key_prefix(key.id)
        lease = secrets.token_hex(12) if key.max_streams else ""
        self._count_pending(key.name, 1, estimate)
        # Early admissions of this host on their way count in an exact decision.
        unsent, unsent_tokens = (0, 0) if early else self._unsent.get(key.name, (0, 0))
        sent = self.redis.up  # down: the call fails before anything reaches Redis
        try:
            verdict, wait_ms, requests, tokens, streams = await self.redis.run(
                self._admit,
                (prefix + "rpm", prefix + "tpm", prefix + "leases"),
                (
                    key.rpm, key.tpm, key.max_streams, int(self.lease_ttl * 1000), lease,
                    estimate, secrets.token_hex(8), int(early), unsent, unsent_tokens,
                ),
                off_path=early,
            )  # fmt: skip
        except RedisUnavailable:
            self._views.pop(key.name, None)
            self.fallbacks += 1
            if self.fail_closed:
                raise SharedStateUnavailable(
                    "shared limits cannot be checked: the gateway's Redis is unavailable"
                ) from None
            if not early:  # what Redis said last, with this host's admissions since
                self._refuse_past_known(key, estimate, now)
            fallback = self.local.admit(key, estimate, borrower)
            if sent:  # the call may have run in Redis: its lease is given back at the end
                fallback.lease = lease or None
            return fallback
        finally:
            self._count_pending(key.name, -1, -estimate)
        if verdict == b"ok":
            view = self._views.get(key.name)
            if view is None or view.at <= now:  # a reply to an older call says less
                self._views[key.name] = _View(now, int(requests), int(tokens), int(streams))
            known = self._known.get(key.name)
            if known is None or known.at <= now:
                self._known[key.name] = _View(now, int(requests), int(tokens), int(streams))
        elif early:  # counted over a limit another host filled: ask first from now on
            self._views.pop(key.name, None)
            self.early_overruns += 1
            log.warning("key %s: an early admission overran %s", key.name, verdict[5:].decode())
        else:  # the name of the limit it is over, and when to come back
            self._views.pop(key.name, None)
            raise over_limit(key, verdict.decode(), -(-int(wait_ms) // 1000))
        if lease:
            self.leases[lease] = key.id
        return Grant(key, estimate, now, shared=True, lease=lease or None)

    def settle(self, grant: Grant, tokens: TokenCount | None) -> None:
        """The exchange ended (called with its record, never awaits)."""
        if grant.early is not None and not grant.early.started:
            assert grant.key is not None  # the relay never ran: nothing was counted
            self._count_pending(grant.key.name, -1, -grant.reserved, unsent=True)
            return
        if not grant.shared:
            self.local.settle(grant, tokens)
            if grant.lease is not None:  # its admission timed out but may have taken a lease
                self._submit(self._release, grant, name="lease-release")
            return
        if grant.lease is not None:
            self.leases.pop(grant.lease, None)
        if not self._submit(self._settle_in_redis, grant, tokens, name="usage-settle"):
            self.local.settle(grant, tokens)

    async def _settle_in_redis(self, grant: Grant, tokens: TokenCount | None) -> None:
        prefix = key_prefix(grant.key.id if grant.key is not None else None)
        tpm = grant.key is not None and grant.key.tpm > 0
        try:
            await self.redis.run(
                self._settle,
                (prefix + "tpm", prefix + "leases", prefix + "usage"),
                (
                    grant.lease or "", grant.tpm_delta(tokens, self.local.clock()), int(tpm),
                    *(_usage_args(tokens)),
                ),
                off_path=True,
            )  # fmt: skip
        except RedisUnavailable:
            self.local.settle(grant, tokens)  # kept here; the lease expires

    async def _release(self, grant: Grant) -> None:
        """Give back a lease whose admission answer never came (Redis down: it
        expires within ``lease_ttl`` instead)."""
        prefix = key_prefix(grant.key.id if grant.key is not None else None)
        args = (grant.lease, 0, 0, 0, 0, 0, 0)
        with contextlib.suppress(RedisUnavailable):
            keys = (prefix + "tpm", prefix + "leases", prefix + "usage")
            await self.redis.run(self._settle, keys, args, off_path=True)

    async def refresh_forever(self) -> None:
        """Every ``lease_ttl / 3``: one call per key with live leases."""
        while True:
            await trio.sleep(self.lease_ttl / 3)
            by_key: dict[str, list[str]] = {}
            for lease, account in self.leases.items():
                by_key.setdefault(account, []).append(lease)
            for account, leases in by_key.items():
                try:
                    await self.redis.run(
                        self._refresh,
                        (key_prefix(account) + "leases",),
                        (int(self.lease_ttl * 1000), *leases),
                        off_path=True,
                    )
                except RedisUnavailable:
                    break

    async def totals(self, account: str | None) -> dict[str, Any]:
        """The totals of the key with id ``account`` (None: open mode) on every
        host; this process's when Redis is down."""
        try:
            reply = await self.redis.run(self._usage, (key_prefix(account) + "usage",), ())
        except RedisUnavailable:
            return {**self.local.totals(account), "scope": "this process (redis unavailable)"}
        second, values = int(reply[0]), reply[1:]
        fields = {values[i].decode(): int(values[i + 1]) for i in range(0, len(values), 2)}
        current = {"m": second // 60, "d": second // 86400}
        periods: dict[str, Any] = {}
        for short, period in (("m", "minute"), ("d", "day"), ("a", "all_time")):
            live = short == "a" or fields.get(short) == current[short]
            counts = [fields.get(f"{short}.{f}", 0) if live else 0 for f in "rpce"]
            periods[period] = UsageTotals(*counts).as_dict()
        return {**periods, "scope": "all hosts"}
