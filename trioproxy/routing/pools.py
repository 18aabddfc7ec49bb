"""Routing a model to a pool of providers, and choosing the order to try them.

Rules:
- A (kinds, model) pair resolves to a :class:`Pool`: every provider of those
  kinds whose ``models``/``aliases`` serve the name, with the name it knows it
  by (a route that translates reaches every kind: :mod:`trioproxy.translate`).
  Resolutions are cached (bounded: clients choose model names); an empty pool is
  a 404 in the route's dialect.
- Priority tiers: a provider's ``priority`` (default 0) is its tier; a plan
  holds the lowest tier's providers first, then the next tier's, and so on.
  Weights, strategies and sticky sessions order the providers within a tier.
  So a lower tier is tried only once every provider above it has failed this
  request or does not admit one (ejected, inside a 429's Retry-After window,
  at its ``max_streams``).
- :meth:`Pool.plan` gives the order of providers to try for one request. It is
  computed once per request and costs O(pool size):
  ``round_robin`` (default) walks a smooth weighted rotation (nginx's) in each
  tier; ``least_in_flight`` prefers the provider with the fewest streams per
  weight.
- Sticky routing: a request with a session key (the ``x-session-id`` header, or
  the OpenAI ``user`` field when ``sticky_user_field`` is on) is planned by
  rendezvous hashing (highest weighted random score of key and provider name):
  the same key picks the same provider while it is healthy, and adding or
  removing another provider moves no session that was not on it.
- Providers that are ejected, full, or inside a 429's Retry-After window are
  skipped when a candidate is taken (:meth:`Plan.take`), not when the plan is
  made: health can change between two attempts of one request. A pool whose
  providers are all ejected or rate limited still serves (panic), and then from
  its first tier, see :meth:`Plan.take`.
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import math
import random
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass

import trio

from ..errors import ConfigError, NotFound, Overloaded
from .providers import Provider, ProviderSpec, ProviderStatistics, read_credential

__all__ = ["STRATEGIES", "Member", "Plan", "Pool", "Router"]

STRATEGIES = ("round_robin", "least_in_flight")
MAX_CACHED_POOLS = 1024


@dataclass(frozen=True, slots=True)
class Member:
    provider: Provider
    upstream_model: str | None  # None: the request names no model (GET /v1/models)


@functools.lru_cache(maxsize=64)  # pools of many model names share their providers
def _smooth_rotation(weights: tuple[int, ...]) -> tuple[int, ...]:
    """nginx's smooth weighted round robin, unrolled into one period of indices."""
    current = [0] * len(weights)
    total = sum(weights)
    order = []
    for _ in range(total):
        for i, w in enumerate(weights):
            current[i] += w
        best = max(range(len(weights)), key=current.__getitem__)
        current[best] -= total
        order.append(best)
    return tuple(order)


def _score(session: bytes, member: Member) -> float:
    """Weighted rendezvous score: -w / ln(u), u uniform in (0, 1) from the hash."""
    digest = hashlib.blake2b(session + b"\0" + member.provider.name.encode(), digest_size=8)
    u = (int.from_bytes(digest.digest(), "big") + 1) / (2**64 + 2)
    return -member.provider.spec.weight / math.log(u)


class _Tier:
    """The providers of one priority in a pool, and its round-robin turn."""

    __slots__ = ("members", "rotation", "turn")

    def __init__(self, members: list[Member]) -> None:
        self.members = members
        weights = tuple(m.provider.spec.weight for m in members)
        self.rotation = _smooth_rotation(weights) if len(members) > 1 else (0,)
        self.turn = 0

    def order(self, strategy: str, session: bytes | None) -> list[Member]:
        members = self.members
        if len(members) == 1:
            return members
        if session is not None:
            return sorted(members, key=lambda m: _score(session, m), reverse=True)
        start = self.rotation[self.turn % len(self.rotation)]
        self.turn += 1
        rotated = members[start:] + members[:start]
        if strategy == "least_in_flight":
            rotated.sort(key=lambda m: m.provider.in_flight / m.provider.spec.weight)
        return rotated


class Pool:
    def __init__(
        self,
        kinds: tuple[str, ...],
        model: str | None,
        members: list[Member],
        strategy: str,
        clock: Callable[[], float],
    ) -> None:
        self.clock = clock
        self.kinds = kinds
        self.model = model
        self.members = members
        self.strategy = strategy
        priorities = sorted({m.provider.spec.priority for m in members})
        self._tiers = [
            _Tier([m for m in members if m.provider.spec.priority == p]) for p in priorities
        ]

    def plan(self, session: bytes | None = None) -> Plan:
        tiers = self._tiers
        if len(tiers) == 1:
            return Plan(self, tiers[0].order(self.strategy, session))
        return Plan(self, [m for tier in tiers for m in tier.order(self.strategy, session)])


class Plan:
    """The providers one request may try, in order; each taken at most once."""

    def __init__(self, pool: Pool, order: list[Member]) -> None:
        self.pool = pool
        self.clock = pool.clock  # health time: trio's, or a test's
        self._order = order
        self._tried: set[str] = set()

    def has_next(self, now: float) -> bool:
        """Another untried provider would admit a request now."""
        return any(
            m.provider.name not in self._tried and m.provider.admits(now, m.upstream_model)
            for m in self._order
        )

    def take(self, now: float) -> Member | None:
        """The next provider that admits a request, marked busy (``begin``);
        None once a provider was tried and no other admits one (the caller
        reports the last failure).

        When nothing was tried yet and no provider admits a request because all
        are ejected (panic, Envoy's rule) or inside a 429's Retry-After window,
        the first with room is used anyway: a failure pattern a client can
        provoke must not become an outage, and the gateway never makes up a 429
        that the upstream did not send.

        Error handling: raises :class:`Overloaded` (429) when every provider is
        at its ``max_streams``.
        """
        untried = [m for m in self._order if m.provider.name not in self._tried]
        chosen = next((m for m in untried if m.provider.admits(now, m.upstream_model)), None)
        if chosen is None and not self._tried:
            chosen = next((m for m in untried if m.provider.has_room()), None)
        if chosen is not None:
            self._tried.add(chosen.provider.name)
            chosen.provider.begin(now, chosen.upstream_model)
            return chosen
        if self._tried:
            return None
        what = f"model {self.pool.model!r}" if self.pool.model else f"{self.pool.kinds[0]} requests"
        raise Overloaded(f"every provider for {what} is at its max_streams", retry_after=1)


class Router:
    """Every provider of the process, and the model -> pool resolution cache."""

    def __init__(
        self,
        specs: Iterable[ProviderSpec],
        strategy: str = "round_robin",
        environ: Mapping[str, str] | None = None,
        previous: Router | None = None,
        clock: Callable[[], float] = trio.current_time,
        sleep: Callable[[float], Awaitable[None]] = trio.sleep,
        random: Callable[[], float] = random.random,
    ) -> None:
        """``previous``: a router this one replaces (config reload). A provider
        whose table did not change keeps its state: health, streams in flight.
        ``clock``: the time health is judged by (cooldowns, Retry-After windows),
        ``sleep`` the waits between retries, ``random`` their jitter: tests pass
        ones they can move and read."""
        self.clock, self.sleep, self.random = clock, sleep, random
        if strategy not in STRATEGIES:
            raise ConfigError(f"routing_strategy must be one of {', '.join(STRATEGIES)}")
        self.strategy = strategy
        kept = {p.name: p for p in previous.providers} if previous is not None else {}
        self.providers: list[Provider] = []
        for spec in specs:
            credential = (
                read_credential(spec) if environ is None else read_credential(spec, environ)
            )
            old = kept.get(spec.name)
            if old is not None and old.spec == spec and old.credential == credential:
                self.providers.append(old)
            else:
                self.providers.append(Provider(spec, credential))
        self._pools: dict[tuple[tuple[str, ...], str | None], Pool] = {}

    def has(self, kind: str) -> bool:
        return any(p.spec.kind == kind for p in self.providers)

    def pool(self, kinds: tuple[str, ...], model: str | None) -> Pool:
        """The providers of ``kinds`` (the route's own kind first) that serve
        ``model``, in the config's order. A provider of another kind serves it
        when it names it (in ``models`` or ``aliases``); by a pattern only when
        no provider of the route's own kind serves it: a catch-all of each kind
        keeps each route on its own."""
        key = (kinds, model)
        pool = self._pools.get(key)
        if pool is not None:
            return pool
        members, by_pattern, own = [], [], False
        for provider in self.providers:
            spec = provider.spec
            if spec.kind not in kinds:
                continue
            upstream = model if model is None else spec.upstream_model(model)
            if model is None or upstream is not None:
                if spec.kind == kinds[0]:
                    own = True
                elif model not in spec.aliases and model not in spec.models:
                    by_pattern.append(provider)
                members.append(Member(provider, upstream))
        if own and by_pattern:
            members = [m for m in members if m.provider not in by_pattern]
        if not members:
            if not any(self.has(kind) for kind in kinds):
                raise NotFound(f"no {kinds[0]} provider is configured on this gateway")
            raise NotFound(f"model {model!r} is not served by this gateway")
        pool = Pool(kinds, model, members, self.strategy, self.clock)
        if len(self._pools) >= MAX_CACHED_POOLS:
            self._pools.pop(next(iter(self._pools)))  # oldest first
        self._pools[key] = pool
        return pool

    def listed_models(self) -> list[str] | None:
        """Every model name the providers declare, aliases included, sorted
        (the chat and messages routes reach every kind); None if one of them
        serves a pattern (only it knows its models)."""
        names: set[str] = set()
        for provider in self.providers:
            spec = provider.spec
            if any(any(c in m for c in "*?[") for m in spec.models):
                return None
            names.update(spec.models, spec.aliases)
        return sorted(names)

    def unhealthy_pools(self, now: float) -> tuple[list[str], int]:
        """For ``/readyz``: the declared pools (one per model name or pattern in
        the config, per kind) with no healthy provider, and how many there are.
        A provider is unhealthy for a model it names when that model is ejected
        there; for a pattern only when a model it matches was ejected because
        the server could not be reached: under a pattern, any model name may be
        a client's invention, and its failures must not make the gateway look
        unready to a load balancer."""
        pools: dict[str, list[bool]] = {}
        for provider in self.providers:
            spec = provider.spec
            names = [(name, name) for name in spec.models]
            names += [(name, upstream) for name, upstream in spec.aliases.items()]
            records = provider.health.items()
            for name, upstream in names:
                pattern = any(c in upstream for c in "*?[")
                healthy = all(
                    h.healthy(now) or (pattern and not h.unreachable) for m, h in records
                    if m is not None and fnmatch.fnmatchcase(m, upstream)
                )  # fmt: skip
                pools.setdefault(f"{spec.kind}:{name}", []).append(healthy)
        unhealthy = [n for n, members in pools.items() if not any(members)]
        return unhealthy, len(pools)

    def statistics(self, now: float) -> list[ProviderStatistics]:
        return [p.statistics(now) for p in self.providers]
