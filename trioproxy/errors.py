"""One exception hierarchy for the gateway, mapped from library errors at the edge,
rendered in the route's API dialect in one place.

    GatewayError
    ├── BadRequest              400  bad_request
    │   ├── PayloadTooLarge     413  bad_request
    │   ├── RequestTimeout      408  bad_request         (a body that trickles past body_timeout)
    │   ├── UnsupportedMediaType 415 bad_request         (a POST body that is not JSON)
    │   └── MisdirectedRequest  421  bad_request         (open mode: Host is not this gateway)
    ├── Unauthorized            401  rejected_auth       (missing / unknown API key)
    ├── Forbidden               403  rejected_auth       (model not allowed for the key)
    │   ├── AdminOnly           403  rejected_auth       (an ops endpoint, not an admin key)
    │   └── OriginRefused       403  rejected_auth       (open mode: a web page's request)
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

Each error names the :class:`Outcome` it gives the exchange. How an error looks
to a client (HTTP error body before the first byte, one SSE error event after)
is the dialect's business: :mod:`trioproxy.dialects`. Library errors are mapped
to this hierarchy once, where the I/O happens (:mod:`trioproxy.upstream`).
This module imports no library.
"""

from __future__ import annotations

import difflib
import enum
from collections.abc import Iterable, Mapping

__all__ = [
    "OriginRefused",
    "MisdirectedRequest",
    "UnsupportedMediaType",
    "RequestTimeout",
    "AdminOnly",
    "BadRequest",
    "ConfigError",
    "ContextWindowExceeded",
    "Outcome",
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
    "UpstreamServerError",
    "UpstreamTTFTTimeout",
    "UpstreamUnreachable",
    "config_table",
    "unknown_options",
    "SharedStateUnavailable",
]


class Outcome(enum.StrEnum):
    """How an exchange ended: one per request, the first decision stands.
    The values are the ``outcome`` of records, access lines and metrics."""

    DONE = "done"  # relayed to its end (an upstream 4xx relayed as is included)
    UPSTREAM_ERROR = "upstream_error"  # upstream unreachable, broken, 5xx, or relayed error
    BAD_REQUEST = "bad_request"
    REJECTED_AUTH = "rejected_auth"
    REJECTED_OVERLOAD = "rejected_overload"
    CLIENT_DISCONNECT = "client_disconnect"
    UPSTREAM_TTFT_TIMEOUT = "upstream_ttft_timeout"
    UPSTREAM_IDLE_TIMEOUT = "upstream_idle_timeout"
    MAX_DURATION = "max_duration"
    SLOW_CLIENT = "slow_client"
    GATEWAY_SHUTDOWN = "gateway_shutdown"
    UNKNOWN = "unknown"  # a bug: recorded rather than lost


class ConfigError(ValueError):
    """The configuration file or a flag holds a value the gateway cannot use
    (start-up and SIGHUP reload; never raised while serving a request)."""


def unknown_options(names: Iterable[str], known: Iterable[str]) -> str:
    """``unknown option 'base_ur' (did you mean 'base_url'?)``, for each name."""
    choices = sorted(known)
    parts = []
    for name in names:
        close = difflib.get_close_matches(name, choices, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        parts.append(f"unknown option {name!r}{hint}")
    return "; ".join(parts)


def config_table(kind: str, n: int, entry: Mapping[str, object], options: Iterable[str]) -> str:
    """Check the ``n``-th ``[[kind]]`` table's name and option names; its label
    (``[[providers]] #2 'local'``) for the errors about its values."""
    name = entry.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"[[{kind}]] #{n}: needs a name")
    label = f"[[{kind}]] #{n} {name!r}"
    unknown = sorted(set(entry) - set(options))
    if unknown:
        raise ConfigError(f"{label}: {unknown_options(unknown, options)}")
    return label


class GatewayError(Exception):
    status = 500
    outcome = Outcome.UPSTREAM_ERROR
    openai_type = "server_error"
    anthropic_type = "api_error"
    code = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(GatewayError):
    status = 400
    outcome = Outcome.BAD_REQUEST
    openai_type = "invalid_request_error"
    anthropic_type = "invalid_request_error"
    code = "invalid_request"


class PayloadTooLarge(BadRequest):
    status = 413
    anthropic_type = "request_too_large"
    code = "request_too_large"


class RequestTimeout(BadRequest):
    status = 408
    code = "request_timeout"


class UnsupportedMediaType(BadRequest):
    status = 415
    code = "unsupported_media_type"


class MisdirectedRequest(BadRequest):
    status = 421
    code = "misdirected_request"


class Unauthorized(GatewayError):
    status = 401
    outcome = Outcome.REJECTED_AUTH
    openai_type = "invalid_request_error"
    anthropic_type = "authentication_error"
    code = "invalid_api_key"


class Forbidden(GatewayError):
    status = 403
    outcome = Outcome.REJECTED_AUTH
    openai_type = "invalid_request_error"
    anthropic_type = "permission_error"
    code = "model_not_allowed"


class AdminOnly(Forbidden):
    code = "admin_key_required"


class OriginRefused(Forbidden):
    code = "origin_not_allowed"


class NotFound(GatewayError):
    status = 404
    outcome = Outcome.BAD_REQUEST
    openai_type = "invalid_request_error"
    anthropic_type = "not_found_error"
    code = "not_found"


class MethodNotAllowed(NotFound):
    status = 405
    anthropic_type = "invalid_request_error"
    code = "method_not_allowed"


class Overloaded(GatewayError):
    status = 429
    outcome = Outcome.REJECTED_OVERLOAD
    openai_type = "rate_limit_error"
    anthropic_type = "rate_limit_error"
    code = "gateway_overloaded"

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class SharedStateUnavailable(Overloaded):
    """Redis cannot be asked and ``redis_failure = "closed"``: no request passes
    a limit nobody can check."""

    status = 503
    openai_type = "server_error"
    anthropic_type = "overloaded_error"
    code = "shared_state_unavailable"


class UpstreamError(GatewayError):
    status = 502
    outcome = Outcome.UPSTREAM_ERROR
    openai_type = "server_error"
    anthropic_type = "api_error"
    code = "upstream_error"


class UpstreamUnreachable(UpstreamError):
    code = "upstream_unreachable"


class UpstreamBroken(UpstreamError):
    code = "upstream_broken"


class UpstreamServerError(UpstreamBroken):
    """The upstream answered 5xx (its body never reaches the client)."""

    def __init__(self, message: str, status: int = 500, wait_hint: int | None = None) -> None:
        super().__init__(message)
        self.upstream_status = status
        self.wait_hint = wait_hint  # its Retry-After, if it sent one (a 503's)


class ContextWindowExceeded(BadRequest):
    """The upstream's 400 says the request is longer than the model's context
    window (recognised per server in :mod:`trioproxy.dialects`); raised only
    where a ``context_window_fallbacks`` entry can take the request."""

    code = "context_length_exceeded"


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
    outcome = Outcome.UPSTREAM_TTFT_TIMEOUT
    anthropic_type = "timeout_error"
    code = "upstream_ttft_timeout"


class UpstreamIdleTimeout(UpstreamError):
    status = 504
    outcome = Outcome.UPSTREAM_IDLE_TIMEOUT
    anthropic_type = "timeout_error"
    code = "upstream_idle_timeout"


class StreamTooLong(UpstreamError):
    status = 504
    outcome = Outcome.MAX_DURATION
    anthropic_type = "timeout_error"
    code = "max_stream_duration"


class SlowClient(GatewayError):
    status = 500
    outcome = Outcome.SLOW_CLIENT
    code = "slow_client"


class GatewayShutdown(GatewayError):
    status = 503
    outcome = Outcome.GATEWAY_SHUTDOWN
    anthropic_type = "overloaded_error"
    code = "gateway_shutdown"
