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
  no other can be).
  At most ``max_attempts`` providers are tried; a 429 from the last one is
  relayed to the client as the upstream sent it.
- Every attempt ends with exactly one health report for its provider (see
  :mod:`trioproxy.routing.providers`), also when it is cancelled (no verdict then).

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
    GatewayError,
    Outcome,
    UpstreamBroken,
    UpstreamIdleTimeout,
    UpstreamRateLimited,
    UpstreamTTFTTimeout,
    UpstreamUnreachable,
)
from .pools import Member, Plan, Router

__all__ = [
    "upstream_request",
    "AttemptLog",
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
    body_json: dict[str, Any] | None  # the parsed body, for aliased model names
    plan: Plan
    dialect: Dialect
    parse_body: bool  # parse a non-streaming JSON body once for id/usage
    strip_usage: bool = False  # the body asks for usage the client did not: withhold it
    usage_json: dict[str, Any] | None = None  # the body asking for usage, for drain providers


def upstream_request(
    router: Router,
    route: Route,
    client_headers: list[tuple[bytes, bytes]],
    body: bytes,
    parsed: ParsedBody,
    request_id: str,
    session: bytes | None,
    strip_usage: bool = False,
) -> UpstreamRequest:
    """A validated request and its plan of providers (``session``: the sticky key)."""
    kind = route.upstream_kind
    if kind == "any":
        kind = "openai" if router.has("openai") else "anthropic"
    pool = router.pool(kind, parsed.model)
    # The parsed body is kept past admission only if a provider renames the model.
    aliased = any(m.upstream_model not in (None, parsed.model) for m in pool.members)
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
        strip_usage=strip_usage,
        usage_json=usage_requested(route, parsed) if drains else None,
    )


@dataclass(frozen=True, slots=True)
class Target:
    """One attempt: a request to one provider."""

    provider: str
    url: str
    headers: dict[str, str]
    body: bytes
    retry_429: bool  # an upstream 429 may go to another provider
    strip_usage: bool = False  # this body asks for usage the client did not
    drain: tuple[float, int] | None = None  # (seconds, bytes): read on after a hang-up


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


def target_for(request: UpstreamRequest, member: Member, retry_429: bool) -> Target:
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
    return Target(spec.name, url, headers, body, retry_429, strip, drain)


async def with_failover(
    request: UpstreamRequest,
    ex: AttemptLog,
    max_attempts: int,
    eject_after: int,
    cooldown: float,
    attempt: Callable[[Target], Awaitable[Outcome]],
) -> Outcome:
    """Run ``attempt`` on providers from ``request.plan`` until one answers.

    Error handling: ``attempt`` raises :class:`GatewayError` only (library
    errors are mapped where the I/O happens). The error of the last attempt is
    raised when no provider answered; :class:`~trioproxy.errors.Overloaded` when
    none could be tried at all (every provider at its ``max_streams``).
    """
    plan = request.plan
    now = plan.clock
    last: GatewayError | None = None
    for n in range(max_attempts):
        member = plan.take(now())
        if member is None:
            break
        if last is not None:  # moving on from the failed attempt
            ex.failovers.append((ex.provider or "", last.code))
            ex.mark(f"failover {last.code}")
        provider = member.provider
        verdict: bool | None = None
        try:  # from take() on, the provider counts this stream: end() must follow
            retry_429 = n + 1 < max_attempts and plan.has_next(now())
            target = target_for(request, member, retry_429)
            ex.provider, ex.upstream, ex.attempts = provider.name, target.url, n + 1
            ex.sent_model = member.upstream_model
            ex.mark(f"attempt {provider.name}")
            outcome = await attempt(target)
            verdict = True
            if ex.upstream_status == 429:  # relayed as is (no other provider to try)
                provider.rate_limited(now(), ex.retry_after or 1)
                verdict = None
            return outcome
        except UpstreamRateLimited as err:
            provider.rate_limited(now(), err.retry_after or 1)
            last = err
        except _UNHEALTHY as err:
            verdict = False
            if ex.committed:
                raise
            last = err
        finally:
            if provider.end(now(), verdict, eject_after, cooldown):
                log.warning(
                    "provider %s ejected for %s s after %d consecutive failures",
                    provider.name, cooldown, provider.consecutive_failures,
                )  # fmt: skip
    assert last is not None
    raise last
