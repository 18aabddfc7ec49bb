"""What one attempt sends: the request as the client made it, and per provider its target.

Rules:
- :func:`upstream_request` is built once per request, after admission: the
  allow-listed client headers, the body, the plan of providers. A route that
  translates (:mod:`trioproxy.translate`) translates the body here for every
  other kind in its pool, so a field that cannot be translated is a 400 before
  any attempt.
- :func:`target_for` is built per attempt: the dialect's default headers, then
  the allow-listed client headers (which never include the client's own
  credentials), the provider's extra headers and its credential
  (:mod:`trioproxy.dialects`); an aliased model name is written into the body
  (the only case where a body of the route's own kind is re-encoded); a
  provider of another kind gets the translated body, its kind's path, and the
  :class:`~trioproxy.translate.Translation` the relay reads its answer with.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from .. import dialects, translate
from ..admission.routes import (
    BILLING_HEADERS,
    ParsedBody,
    Route,
    forward_headers,
    usage_requested,
)
from ..dialects import Dialect
from .pools import Member, Plan, Router
from .providers import KINDS

__all__ = ["Target", "UpstreamRequest", "target_for", "upstream_request"]


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
    kinds: tuple[str, ...]  # the providers' kinds the route reaches, its own first
    model: str | None  # the client's model
    session: bytes | None = None  # the sticky key
    strip_usage: bool = False  # the body asks for usage the client did not: withhold it
    usage_json: dict[str, Any] | None = None  # the body asking for usage, for drain providers
    fallbacks: tuple[str, ...] = ()  # models to try, in order, once the model's plan is spent
    context_fallback: str | None = None  # the model for a request too long for this one
    stream: bool = False
    # A route that translates (trioproxy.translate): the client's body for each
    # other kind in its pools, and whether an OpenAI client asked for usage.
    translated: dict[str, dict[str, Any]] = field(default_factory=dict)
    usage_asked: bool = True


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
    """A validated request and its plan of providers (``session``: the sticky key).

    Error handling: :class:`~trioproxy.errors.BadRequest` when the request goes
    to a provider of another kind and a field of it cannot be translated."""
    kind = route.upstream_kind
    if kind == "any":
        kind = "openai" if router.has("openai") else "anthropic"
    dialect = translate.ROUTES.get(route.name)
    kinds = (kind,) if dialect is None else (kind, *(k for k in KINDS if k != kind))
    pool = router.pool(kinds, parsed.model)
    translated: dict[str, dict[str, Any]] = {}
    if dialect is not None and parsed.json is not None:
        others = {m.provider.spec.kind for m in pool.members} - {kind}
        translated = {k: translate.request_for(k, dialect, parsed.json) for k in sorted(others)}
    options = (parsed.json or {}).get("stream_options")
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
        kinds=kinds,
        model=parsed.model,
        session=session,
        strip_usage=strip_usage,
        usage_json=usage_requested(route, parsed) if drains else None,
        fallbacks=fallbacks,
        context_fallback=context_fallback,
        stream=parsed.stream,
        translated=translated,
        usage_asked=isinstance(options, dict) and options.get("include_usage") is True,
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
    translation: translate.Translation | None = None  # the provider speaks another dialect


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
    if spec.on_client_disconnect == "drain":
        drain = (spec.drain_max_seconds, spec.drain_max_bytes)
    if spec.kind != request.kinds[0]:
        return _translated(request, member, headers, retry_429, drain, deadline, context_fallback)
    if request.body_json is not None and model is not None and model != request.body_json["model"]:
        body = orjson.dumps({**request.body_json, "model": model})
    if (
        drain is not None and request.usage_json is not None
    ):  # an OpenAI stream whose client did not ask
        asked = {**request.usage_json, "model": model or request.usage_json["model"]}
        body, strip = orjson.dumps(asked), True
    url = spec.base_url + dialects.upstream_path(spec.kind, request.path)
    return Target(
        spec.name, url, headers, body, retry_429, strip, drain, deadline, context_fallback
    )


_PATHS = {"openai": "/chat/completions", "anthropic": "/v1/messages"}


def _translated(
    request: UpstreamRequest,
    member: Member,
    headers: dict[str, str],
    retry_429: bool,
    drain: tuple[float, int] | None,
    deadline: float,
    context_fallback: bool,
) -> Target:
    """An attempt on a provider of another kind: the translated body, the kind's path."""
    spec, model = member.provider.spec, member.upstream_model or request.model or ""
    dialect, translated = request.dialect.value, request.translated
    if spec.kind not in translated:  # a fallback model's pool brought a new kind
        translated[spec.kind] = translate.request_for(
            spec.kind, dialect, orjson.loads(request.body)
        )
    if spec.kind == "gemini":
        body = orjson.dumps(translated[spec.kind])
        url = spec.base_url + translate.gemini_path(model, request.stream)
    else:
        body = orjson.dumps({**translated[spec.kind], "model": model})
        url = spec.base_url + dialects.upstream_path(spec.kind, _PATHS[spec.kind])
    strip = dialect == "openai" and request.stream and not request.usage_asked
    return Target(
        spec.name, url, headers, body, retry_429, strip, drain, deadline, context_fallback,
        translate.Translation(spec.kind, dialect),
    )  # fmt: skip
