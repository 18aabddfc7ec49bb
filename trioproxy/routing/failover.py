"""Failover before the first byte: try the next provider while the client has nothing.

Rules:
- An attempt may be retried on another provider only while nothing has been
  handed to the client (``Exchange.committed`` is False: the reader puts the
  response head in the channel together with the first body bytes). After that,
  a failure ends the stream with one SSE error event: a retry would show the
  client the start of a second, different answer.
- Triggers: cannot connect, connection reset or an empty stream, upstream 5xx,
  the TTFT timeout (each attempt gets its own ``ttft_timeout``), and upstream
  429 (until its ``Retry-After`` has passed, the provider is chosen only when
  no other can be). A provider with ``retries`` is asked again first
  (:mod:`trioproxy.routing.retries`).
- Order: the providers of the request's model (its plan, tiers first), at most
  ``max_attempts`` of them; then the same for each of its fallback models
  (:mod:`trioproxy.routing.fallbacks`), the body's model rewritten. A 400 that
  says the context window was exceeded goes to the model's
  ``context_window_fallbacks`` entry, and only there; any other 4xx is the
  client's answer, relayed as is. So is a 429 when nothing is left to try.
- ``first_byte_deadline`` bounds every attempt and every wait of a request:
  no attempt begins after it, and each attempt's TTFT timer ends by it.
- Every attempt ends with exactly one health report for its provider and
  model (:mod:`trioproxy.routing.health`), also when it is cancelled (no
  verdict then). Every attempt is in the exchange: ``attempts``, the
  ``failovers`` it moved on from (provider, error code), and a timeline mark.

The target of an attempt (URL, headers, body) is built per provider
(:mod:`trioproxy.routing.targets`).

What failover writes about its attempts goes through :class:`AttemptLog` (the
relay's exchange implements it): this module does not know the exchange.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from ..errors import (
    ContextWindowExceeded,
    GatewayError,
    NotFound,
    Outcome,
    Overloaded,
    UpstreamBroken,
    UpstreamIdleTimeout,
    UpstreamRateLimited,
    UpstreamTTFTTimeout,
    UpstreamUnreachable,
)
from .pools import Member, Plan
from .retries import retry_wait
from .targets import Target, UpstreamRequest, target_for

__all__ = ["AttemptLog", "FailoverLimits", "with_failover"]

log = logging.getLogger("trioproxy.routing")

# Errors that say the provider is unwell (counted towards ejection).
_UNHEALTHY = (UpstreamUnreachable, UpstreamBroken, UpstreamTTFTTimeout, UpstreamIdleTimeout)


class AttemptLog(Protocol):
    """What failover reads and writes of the exchange it serves."""

    committed: bool  # bytes reached the client: no more failover
    provider: str | None
    upstream: str | None
    sent_model: str | None
    attempts: int
    failovers: list[tuple[str, str]]
    upstream_status: int
    retry_after: int | None

    def mark(self, event: str) -> None: ...


@dataclass(frozen=True, slots=True)
class FailoverLimits:
    """The request-wide bounds of :func:`with_failover` (from the config)."""

    max_attempts: int  # providers tried per model
    eject_after: int
    cooldown: float
    first_byte_deadline: float  # s from the first attempt: every attempt and wait within it


async def with_failover(
    request: UpstreamRequest,
    ex: AttemptLog,
    limits: FailoverLimits,
    attempt: Callable[[Target], Awaitable[Outcome]],
) -> Outcome:
    """Run ``attempt`` on providers from ``request.plan`` until one answers;
    then on the plans of the request's fallback models, in order.

    Error handling: ``attempt`` raises :class:`GatewayError` only (library
    errors are mapped where the I/O happens). The error of the last attempt is
    raised when no provider answered; :class:`~trioproxy.errors.Overloaded` when
    none could be tried at all (every provider at its ``max_streams``).
    """
    router = request.router
    deadline = router.clock() + limits.first_byte_deadline
    models = [request.model, *request.fallbacks]
    larger, grown = request.context_fallback, False
    last: GatewayError | None = None
    for n, model in enumerate(models):  # the list grows by a context window fallback
        plan = request.plan
        if n:
            if router.clock() >= deadline:
                break
            try:
                plan = router.pool(request.kinds, model).plan(request.session)
            except NotFound:
                log.warning("fallback model %r is served by no provider", model)
                continue
            ex.mark(f"fallback {model}")
        left = models[n + 1 :]
        grow = larger is not None and not grown and model != larger
        way = _Way(deadline, bool(left), grow)
        try:
            return await _through_plan(request, plan, ex, limits, way, last, attempt)
        except ContextWindowExceeded as err:
            if not grow:
                raise
            assert larger is not None
            models[n + 1 :] = [larger]  # only the larger window is worth a try now
            grown, last = True, err
        except Overloaded as err:  # every provider of this model at its max_streams
            last = last or err
        except GatewayError as err:
            if ex.committed or not left or router.clock() >= deadline:
                raise
            last = err
    if last is None:
        raise NotFound(f"model {request.model!r} is not served by this gateway")
    raise last


@dataclass(frozen=True, slots=True)
class _Way:
    """What lies ahead of one model's plan."""

    deadline: float  # the first-byte deadline (router clock)
    more_models: bool  # fallback models follow this one
    grow: bool  # a 400 saying the context is too long may go to a larger window


async def _through_plan(
    request: UpstreamRequest,
    plan: Plan,
    ex: AttemptLog,
    limits: FailoverLimits,
    way: _Way,
    last: GatewayError | None,
    attempt: Callable[[Target], Awaitable[Outcome]],
) -> Outcome:
    """One model's plan: each provider in turn, each with its retries.
    ``last``: the failure that led here (the previous model's)."""
    router = request.router
    now = router.clock
    deadline = way.deadline
    for n in range(limits.max_attempts):
        if last is not None and now() >= deadline:
            break
        member = plan.take(now())
        if member is None:
            break
        retries = 0
        while True:
            if last is not None:  # moving on from the failed attempt (or retrying it)
                ex.failovers.append((ex.provider or "", last.code))
                ex.mark(f"failover {last.code}")
            try:
                more = (
                    retries < member.provider.spec.retries or way.more_models
                    or (n + 1 < limits.max_attempts and plan.has_next(now()))
                )  # fmt: skip
                return await _one_attempt(request, member, ex, limits, way, more, attempt)
            except (UpstreamRateLimited, *_UNHEALTHY) as err:
                if ex.committed:
                    raise
                last = err
            wait = retry_wait(member.provider.spec, retries, last, deadline - now(), router.random)
            if wait is None:
                break
            ex.mark(f"retry {member.provider.name} in {wait:.3f} s")
            await router.sleep(wait)
            if not member.provider.has_room() or not member.provider.healthy(
                now(), member.upstream_model
            ):
                break
            member.provider.begin(now(), member.upstream_model)
            retries += 1
    if last is None:
        raise Overloaded("no provider could take the request", retry_after=1)
    raise last


async def _one_attempt(
    request: UpstreamRequest,
    member: Member,
    ex: AttemptLog,
    limits: FailoverLimits,
    way: _Way,
    more: bool,
    attempt: Callable[[Target], Awaitable[Outcome]],
) -> Outcome:
    """One request to ``member`` (already counted by ``begin``): exactly one
    health report for it follows, also when it is cancelled (no verdict then)."""
    provider, model = member.provider, member.upstream_model
    now = request.router.clock
    verdict: bool | None = None
    unreachable = False
    try:
        target = target_for(request, member, more, way.deadline, way.grow)
        ex.provider, ex.upstream, ex.attempts = provider.name, target.url, ex.attempts + 1
        ex.sent_model = model
        ex.mark(f"attempt {provider.name}")
        outcome = await attempt(target)
        verdict = True
        if ex.upstream_status == 429:  # relayed as is (nothing else to try)
            provider.rate_limited(now(), ex.retry_after or 1, model)
            verdict = None
        return outcome
    except UpstreamRateLimited as err:
        provider.rate_limited(now(), err.retry_after or 1, model)
        raise
    except ContextWindowExceeded:
        verdict = True  # the provider is well: the request is too long for the model
        raise
    except _UNHEALTHY as err:
        verdict, unreachable = False, isinstance(err, UpstreamUnreachable)
        raise
    finally:
        ejected = provider.end(
            now(), verdict, limits.eject_after, limits.cooldown, model, unreachable
        )
        if ejected:
            log.warning(
                "provider %s ejected for model %s after %d consecutive failures",
                provider.name, model, provider.health.of(model, now()).consecutive_failures,
            )  # fmt: skip
