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

The target of an attempt (URL, headers, body) is built per provider: the
dialect's default headers, then the allow-listed client headers (which never
include the client's own credentials), the provider's extra headers and its
credential (:mod:`trioproxy.dialects`); an aliased model name is written into
the body (the only case where the body is re-encoded).

What failover writes about its attempts goes through :class:`AttemptLog` (the
relay's exchange implements it): this module does not know the exchange.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from .. import dialects
from ..admission.routes import (
    BILLING_HEADERS,
    ParsedBody,
    Route,
    forward_headers,
    usage_requested,
)
from ..dialects import Dialect
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
from .pools import Member, Plan, Router
from .retries import retry_wait

__all__ = [
    "upstream_request",
    "AttemptLog",
    "FailoverLimits",
    "Target",
    "UpstreamRequest",
    "target_for",
    "with_failover",
]

log = logging.getLogger("trioproxy.routing")

# Errors that say the provider is unwell (counted towards ejection).
_UNHEALTHY = (UpstreamUnreachable, UpstreamBroken, UpstreamTTFTTimeout, UpstreamIdleTimeout)


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    """What the client asked for, before a provider is chosen."""

    method: str
    path: str  # the route's upstream path (the dialect adds a kind's prefix)
    headers: Mapping[str, str]  # allow-listed client headers (never credentials)
    body: bytes
    body_json: dict[str, Any] | None  # the parsed body, for aliased and fallback model names
    plan: Plan
    dialect: Dialect
    parse_body: bool  # parse a non-streaming JSON body once for id/usage
    router: Router
    kind: str  # the providers' kind (openai | anthropic)
    model: str | None  # the client's model
    session: bytes | None = None  # the sticky key
    strip_usage: bool = False  # the body asks for usage the client did not: withhold it
    usage_json: dict[str, Any] | None = None  # the body asking for usage, for drain providers
    fallbacks: tuple[str, ...] = ()  # models to try, in order, once the model's plan is spent
    context_fallback: str | None = None  # the model for a request too long for this one


def upstream_request(
    router: Router,
    route: Route,
    client_headers: list[tuple[bytes, bytes]],
    body: bytes,
    parsed: ParsedBody,
    request_id: str,
    session: bytes | None,
    strip_usage: bool = False,
    fallbacks: tuple[str, ...] = (),
    context_fallback: str | None = None,
) -> UpstreamRequest:
    """A validated request and its plan of providers (``session``: the sticky key)."""
    kind = route.upstream_kind
    if kind == "any":
        kind = "openai" if router.has("openai") else "anthropic"
    pool = router.pool(kind, parsed.model)
    # The parsed body is kept past admission only if a provider or a fallback renames the model.
    aliased = (
        any(m.upstream_model not in (None, parsed.model) for m in pool.members)
        or bool(fallbacks) or context_fallback is not None
    )  # fmt: skip
    # A provider that drains on a hang-up reads on to the usage: ask for it.
    drains = any(m.provider.spec.on_client_disconnect == "drain" for m in pool.members)
    return UpstreamRequest(
        method=route.method,
        path=route.upstream_path,
        headers=forward_headers(client_headers, parsed.stream, request_id=request_id),
        body=body,
        body_json=parsed.json if aliased else None,
        plan=pool.plan(session),
        dialect=route.dialect,
        parse_body=route.parse_response,
        router=router,
        kind=kind,
        model=parsed.model,
        session=session,
        strip_usage=strip_usage,
        usage_json=usage_requested(route, parsed) if drains else None,
        fallbacks=fallbacks,
        context_fallback=context_fallback,
    )


@dataclass(frozen=True, slots=True)
class Target:
    """One attempt: a request to one provider."""

    provider: str
    url: str
    headers: dict[str, str]
    body: bytes
    retry_429: bool  # an upstream 429 may go on (a retry, another provider or model)
    strip_usage: bool = False  # this body asks for usage the client did not
    drain: tuple[float, int] | None = None  # (seconds, bytes): read on after a hang-up
    deadline: float = math.inf  # the first-byte deadline, on the router's clock
    context_fallback: bool = False  # a 400 saying the context is too long may go on


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


def target_for(
    request: UpstreamRequest,
    member: Member,
    retry_429: bool,
    deadline: float = math.inf,
    context_fallback: bool = False,
) -> Target:
    spec = member.provider.spec
    forwarded = request.headers
    if not spec.forward_headers.issuperset(BILLING_HEADERS.intersection(forwarded)):
        forwarded = {
            k: v for k, v in forwarded.items()
            if k not in BILLING_HEADERS or k in spec.forward_headers
        }  # fmt: skip
    headers = {
        **dialects.default_headers(spec.kind),
        **forwarded,
        **spec.headers,
        **dialects.credential_headers(spec.kind, member.provider.credential),
    }
    body, strip, drain = request.body, request.strip_usage, None
    model = member.upstream_model
    if request.body_json is not None and model is not None and model != request.body_json["model"]:
        body = orjson.dumps({**request.body_json, "model": model})
    if spec.on_client_disconnect == "drain":
        drain = (spec.drain_max_seconds, spec.drain_max_bytes)
        if request.usage_json is not None:  # an OpenAI stream whose client did not ask
            asked = {**request.usage_json, "model": model or request.usage_json["model"]}
            body, strip = orjson.dumps(asked), True
    url = spec.base_url + dialects.upstream_path(spec.kind, request.path)
    return Target(
        spec.name, url, headers, body, retry_429, strip, drain, deadline, context_fallback
    )


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
                plan = router.pool(request.kind, model).plan(request.session)
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
