"""Routing: which API each path speaks, where it goes upstream, what a valid body is.

The route table is data. Validation parses the request body once (the only
full JSON parse of a request) and checks only what the gateway relies on; the
original bytes are forwarded unchanged to a provider of the route's own kind
(one of another kind gets the parsed body translated: :mod:`trioproxy.translate`). Errors are :class:`BadRequest` in the
route's dialect; nothing is sent upstream for a request that fails here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from ..dialects import Dialect
from ..errors import BadRequest

__all__ = [
    "MAX_MODEL_BYTES",
    "ROUTES",
    "ParsedBody",
    "Route",
    "BILLING_HEADERS",
    "forward_headers",
    "output_limit",
    "session_key",
    "usage_requested",
    "validate",
]


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    method: str
    dialect: Dialect
    upstream_kind: str  # "openai" | "anthropic" | "any"
    upstream_path: str  # appended to the upstream's base URL
    required: tuple[tuple[str, type | tuple[type, ...]], ...] = ()
    parse_response: bool = True  # parse a non-streaming response for id/usage
    has_body: bool = True


_TEXT = (str, list)
ROUTES: dict[str, Route] = {
    "/v1/chat/completions": Route(
        "chat", "POST", Dialect.OPENAI, "openai", "/chat/completions", (("messages", list),)
    ),
    "/v1/completions": Route(
        "completions", "POST", Dialect.OPENAI, "openai", "/completions", (("prompt", _TEXT),)
    ),
    "/v1/responses": Route("responses", "POST", Dialect.OPENAI, "openai", "/responses"),
    "/v1/embeddings": Route(
        "embeddings",
        "POST",
        Dialect.OPENAI,
        "openai",
        "/embeddings",
        (("input", _TEXT),),
        parse_response=False,
    ),
    "/v1/messages": Route(
        "messages",
        "POST",
        Dialect.ANTHROPIC,
        "anthropic",
        "/v1/messages",
        (("messages", list), ("max_tokens", int)),
    ),
    "/v1/models": Route(
        "models", "GET", Dialect.OPENAI, "any", "/models", parse_response=False, has_body=False
    ),
}


MAX_MODEL_BYTES = 256  # model names become labels, log fields and receipt fields


@dataclass(frozen=True, slots=True)
class ParsedBody:
    model: str | None
    stream: bool
    json: dict[str, Any] | None = None  # the whole body (aliases rewrite its model)
    user: str | None = None  # the OpenAI "user" field (sticky routing, when enabled)


_TYPE_NAMES = {str: "a string", list: "an array", int: "an integer", bool: "a boolean"}


def _type_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(_TYPE_NAMES.get(k, k.__name__) for k in kinds)


def validate(route: Route, body: bytes) -> ParsedBody:
    if not route.has_body:
        return ParsedBody(model=None, stream=False)
    if not body:
        raise BadRequest("request body is empty: expected a JSON object")
    try:
        obj: Any = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise BadRequest("request body must be a JSON object")
    model = obj.get("model")
    if isinstance(model, str) and len(model.encode()) > MAX_MODEL_BYTES:
        raise BadRequest(f"'model' is longer than {MAX_MODEL_BYTES} bytes")
    if not isinstance(model, str) or not model:
        raise BadRequest("'model' is required and must be a non-empty string")
    stream = obj.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise BadRequest("'stream' must be a boolean")
    for name, kind in route.required:
        value = obj.get(name)
        if value is None:
            raise BadRequest(f"'{name}' is required")
        if not isinstance(value, kind) or isinstance(value, bool):
            raise BadRequest(f"'{name}' must be {_type_name(kind)}")
    user = obj.get("user")
    return ParsedBody(model, stream, obj, user if isinstance(user, str) and user else None)


_OUTPUT_LIMITS = ("max_tokens", "max_completion_tokens", "max_output_tokens")


def output_limit(parsed: ParsedBody) -> int | None:
    """The most tokens the request lets the model write (``max_tokens``,
    ``max_completion_tokens`` or ``max_output_tokens``), if it says."""
    body = parsed.json or {}
    for name in _OUTPUT_LIMITS:
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


_USAGE_ROUTES = frozenset({"chat", "completions"})


def usage_requested(route: Route, parsed: ParsedBody) -> dict[str, Any] | None:
    """``request_usage = true``: the body to send when the gateway must ask for
    usage itself (an OpenAI stream whose client did not set
    ``stream_options.include_usage``), else None (send the client's bytes)."""
    if route.name not in _USAGE_ROUTES or not parsed.stream or parsed.json is None:
        return None
    options = parsed.json.get("stream_options")
    options = options if isinstance(options, dict) else {}
    if options.get("include_usage") is True:
        return None
    return {**parsed.json, "stream_options": {**options, "include_usage": True}}


# Client headers relayed upstream as they are; everything else is dropped:
# hop-by-hop headers, and the client's credentials (Authorization, x-api-key),
# which are the gateway's business. The provider's credential is added per
# attempt (trioproxy.routing.targets.target_for).
# Of those, the ones that choose what the operator's credential is billed for (an
# organisation, a project, priced beta features) reach only the providers that list
# them in their ``forward_headers`` (trioproxy.routing.targets.target_for).
BILLING_HEADERS = frozenset({"anthropic-beta", "openai-organization", "openai-project"})
_FORWARDED = frozenset(
    {b"anthropic-version", b"x-request-id", *(name.encode() for name in BILLING_HEADERS)}
)


def forward_headers(
    scope_headers: list[tuple[bytes, bytes]],
    stream: bool,
    request_id: str | None = None,
) -> dict[str, str]:
    """The allow-listed client headers for the upstream, never its credentials."""
    headers = {
        name.decode("latin-1"): value.decode("latin-1")
        for name, value in scope_headers
        if name in _FORWARDED
    }
    if request_id is not None:  # the client's, or the one the gateway made up
        headers["x-request-id"] = request_id
    headers["content-type"] = "application/json"
    headers["accept"] = "text/event-stream" if stream else "application/json"
    return headers


def session_key(
    scope_headers: list[tuple[bytes, bytes]], header: bytes, parsed: ParsedBody, user_field: bool
) -> bytes | None:
    """Sticky routing's key: the session header (``sticky_header``, lower case),
    else the OpenAI ``user`` field when ``sticky_user_field`` is on."""
    if header:
        for name, value in scope_headers:
            if name == header and value:
                return bytes(value)
    if user_field and parsed.user:
        return b"user:" + parsed.user.encode()
    return None
