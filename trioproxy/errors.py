"""One exception hierarchy for the gateway, mapped from library errors at the edge,
rendered in the route's API dialect in one place.

    GatewayError
    ├── BadRequest              400  bad_request
    │   └── PayloadTooLarge     413  bad_request
    ├── Unauthorized            401  rejected_auth       (missing / unknown API key)
    ├── Forbidden               403  rejected_auth       (model not allowed for the key)
    ├── NotFound                404  bad_request
    ├── MethodNotAllowed        405  bad_request
    ├── Overloaded              429  rejected_overload   (carries Retry-After)
    ├── UpstreamError           502  upstream_error
    │   ├── UpstreamUnreachable 502  upstream_error      (connect refused / DNS / connect timeout)
    │   ├── UpstreamBroken      502  upstream_error      (reset, truncated, malformed stream)
    │   ├── UpstreamRateLimited 429  upstream_error      (upstream 429; Retry-After passed on)
    │   ├── UpstreamTTFTTimeout 504  upstream_ttft_timeout
    │   ├── UpstreamIdleTimeout 504  upstream_idle_timeout
    │   └── StreamTooLong       504  max_duration
    ├── SlowClient              ---  slow_client         (the client is not reading)
    └── GatewayShutdown         503  gateway_shutdown

Before the first byte reaches the client an error is an HTTP response
(:func:`render_json`); after it, one SSE error event (:func:`render_sse`).
:func:`from_upstream_exception` is the mapping table from httpx/trio errors.
"""

from __future__ import annotations

import enum

import httpx
import orjson
import trio

from .sse import SSEFramingError

__all__ = [
    "BadRequest",
    "Dialect",
    "Forbidden",
    "GatewayError",
    "GatewayShutdown",
    "MethodNotAllowed",
    "NotFound",
    "Overloaded",
    "PayloadTooLarge",
    "SlowClient",
    "StreamTooLong",
    "Unauthorized",
    "UpstreamBroken",
    "UpstreamError",
    "UpstreamIdleTimeout",
    "UpstreamRateLimited",
    "UpstreamTTFTTimeout",
    "UpstreamUnreachable",
    "from_upstream_exception",
    "render_json",
    "render_sse",
]


class Dialect(enum.Enum):
    OPENAI = "openai"
    ANTHROPIC = "anthropic"


class GatewayError(Exception):
    status = 500
    outcome = "upstream_error"
    openai_type = "server_error"
    anthropic_type = "api_error"
    code = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(GatewayError):
    status = 400
    outcome = "bad_request"
    openai_type = "invalid_request_error"
    anthropic_type = "invalid_request_error"
    code = "invalid_request"


class PayloadTooLarge(BadRequest):
    status = 413
    anthropic_type = "request_too_large"
    code = "request_too_large"


class Unauthorized(GatewayError):
    status = 401
    outcome = "rejected_auth"
    openai_type = "invalid_request_error"
    anthropic_type = "authentication_error"
    code = "invalid_api_key"


class Forbidden(GatewayError):
    status = 403
    outcome = "rejected_auth"
    openai_type = "invalid_request_error"
    anthropic_type = "permission_error"
    code = "model_not_allowed"


class NotFound(GatewayError):
    status = 404
    outcome = "bad_request"
    openai_type = "invalid_request_error"
    anthropic_type = "not_found_error"
    code = "not_found"


class MethodNotAllowed(NotFound):
    status = 405
    anthropic_type = "invalid_request_error"
    code = "method_not_allowed"


class Overloaded(GatewayError):
    status = 429
    outcome = "rejected_overload"
    openai_type = "rate_limit_error"
    anthropic_type = "rate_limit_error"
    code = "gateway_overloaded"

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class UpstreamError(GatewayError):
    status = 502
    outcome = "upstream_error"
    openai_type = "server_error"
    anthropic_type = "api_error"
    code = "upstream_error"


class UpstreamUnreachable(UpstreamError):
    code = "upstream_unreachable"


class UpstreamBroken(UpstreamError):
    code = "upstream_broken"


class UpstreamRateLimited(UpstreamError):
    """The upstream answered 429 and no other provider could take the request."""

    status = 429
    openai_type = "rate_limit_error"
    anthropic_type = "rate_limit_error"
    code = "upstream_rate_limited"

    def __init__(self, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class UpstreamTTFTTimeout(UpstreamError):
    status = 504
    outcome = "upstream_ttft_timeout"
    anthropic_type = "timeout_error"
    code = "upstream_ttft_timeout"


class UpstreamIdleTimeout(UpstreamError):
    status = 504
    outcome = "upstream_idle_timeout"
    anthropic_type = "timeout_error"
    code = "upstream_idle_timeout"


class StreamTooLong(UpstreamError):
    status = 504
    outcome = "max_duration"
    anthropic_type = "timeout_error"
    code = "max_stream_duration"


class SlowClient(GatewayError):
    status = 500
    outcome = "slow_client"
    code = "slow_client"


class GatewayShutdown(GatewayError):
    status = 503
    outcome = "gateway_shutdown"
    anthropic_type = "overloaded_error"
    code = "gateway_shutdown"


# The mapping table, applied once where upstream I/O happens. Lookup walks the
# exception's MRO, so the most specific entry wins.
_UPSTREAM_ERRORS: dict[type[BaseException], tuple[type[UpstreamError], str]] = {
    httpx.ConnectError: (UpstreamUnreachable, "cannot connect to upstream"),
    httpx.ConnectTimeout: (UpstreamUnreachable, "timed out connecting to upstream"),
    httpx.PoolTimeout: (UpstreamUnreachable, "no upstream connection available"),
    httpx.UnsupportedProtocol: (UpstreamUnreachable, "unsupported upstream URL"),
    httpx.WriteError: (UpstreamBroken, "upstream connection failed while sending"),
    httpx.ReadError: (UpstreamBroken, "upstream connection reset"),
    httpx.RemoteProtocolError: (UpstreamBroken, "upstream closed the connection mid-response"),
    httpx.DecodingError: (UpstreamBroken, "upstream response could not be decoded"),
    httpx.TransportError: (UpstreamBroken, "upstream transport error"),
    trio.BrokenResourceError: (UpstreamBroken, "upstream connection reset"),
    OSError: (UpstreamUnreachable, "upstream network error"),
    SSEFramingError: (UpstreamBroken, "upstream sent a malformed event stream"),
}


def from_upstream_exception(exc: BaseException) -> UpstreamError:
    """Map an exception raised by upstream I/O to the gateway's hierarchy."""
    if isinstance(exc, UpstreamError):
        return exc
    for klass in type(exc).__mro__:
        entry = _UPSTREAM_ERRORS.get(klass)
        if entry is not None:
            cls, message = entry
            detail = str(exc)
            return cls(f"{message}: {detail}" if detail else message)
    return UpstreamBroken(f"upstream failed: {type(exc).__name__}")


def _body(err: GatewayError, dialect: Dialect) -> dict[str, object]:
    if dialect is Dialect.ANTHROPIC:
        return {"type": "error", "error": {"type": err.anthropic_type, "message": err.message}}
    return {
        "error": {"message": err.message, "type": err.openai_type, "param": None, "code": err.code}
    }


def render_json(err: GatewayError, dialect: Dialect) -> bytes:
    """The body of an HTTP error response."""
    return orjson.dumps(_body(err, dialect))


def render_sse(err: GatewayError, dialect: Dialect) -> bytes:
    """One complete SSE error event: the last thing a broken stream sends."""
    payload = orjson.dumps(_body(err, dialect))
    if dialect is Dialect.ANTHROPIC:
        return b"event: error\ndata: " + payload + b"\n\n"
    return b"data: " + payload + b"\n\n"
