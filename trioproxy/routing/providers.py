"""Providers: the upstream model servers, their credentials and their health.

Rules:
- A provider is one ``[[providers]]`` table: ``name``, ``kind`` (``openai`` |
  ``anthropic`` | ``gemini``: the API it speaks; a route of another dialect
  reaches it translated, :mod:`trioproxy.translate`), ``base_url``, ``api_key_env`` (the credential is read from
  that environment variable at start-up, never from the file), ``models``
  (names or ``*`` patterns), ``aliases`` (``client_name = "upstream_name"``),
  ``weight``, ``priority`` (the tier: lower first), ``max_streams``, extra
  ``headers`` and ``forward_headers``: the
  client headers that choose what the credential is billed for
  (``anthropic-beta``, ``openai-organization``, ``openai-project``), which
  reach this provider only when listed there; ``on_client_disconnect``
  (``cancel``, or ``drain`` with ``drain_max_seconds`` and ``drain_max_bytes``:
  :mod:`trioproxy.relay.drain`). The legacy
  ``openai_upstreams`` / ``anthropic_upstreams`` lists become providers that
  serve every model (``*``).
- Same-provider retries (:mod:`trioproxy.routing.retries`): ``retries``
  (default 0), ``retry_backoff`` (s, default 0.25), ``max_retry_wait`` (s,
  default 10).
- Health is kept per provider x model, learnt from real requests
  (:mod:`trioproxy.routing.health`: ejection, half-open trials, 429 windows),
  and optionally from an active probe: ``health_check = { interval = 5,
  path = "/models" }``, or ``request = true`` for a one-token request per
  ejected model (:mod:`trioproxy.server.probes`).
- ``max_streams`` bounds the streams in flight to one provider (0 = only the
  global limit); a full provider is skipped, not waited for.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..admission.routes import BILLING_HEADERS
from ..errors import ConfigError, config_table
from .health import HealthRecords

__all__ = [
    "HealthCheck",
    "Provider",
    "ProviderSpec",
    "ProviderStatistics",
    "legacy_specs",
    "parse_providers",
]

KINDS = ("openai", "anthropic", "gemini")
MAX_WEIGHT = 1000  # round robin unrolls one period of sum(weights) turns per pool
MAX_PRIORITY = 100
MAX_RETRIES = 10
_OPTIONS = frozenset(
    {"name", "kind", "base_url", "api_key_env", "models", "aliases", "weight", "priority",
     "max_streams", "headers", "forward_headers", "on_client_disconnect", "drain_max_seconds",
     "drain_max_bytes", "retries", "retry_backoff", "max_retry_wait", "health_check",
     "accepts_prefill"}
)  # fmt: skip
DISCONNECT_POLICIES = ("cancel", "drain")
# Headers a provider's config may not set: hop-by-hop ones and those the gateway owns.
_RESERVED_HEADERS = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "host",
     "content-length", "content-type", "authorization", "x-api-key", "proxy-authorization"}
)  # fmt: skip


_URL = re.compile(r"https?://[^\s/?#@]+(/[^\s?#]*)?")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 field name


def _bad_value(value: str) -> bool:
    return any(c in value for c in "\r\n\0") or value != value.strip()


@dataclass(frozen=True, slots=True)
class ProviderSpec:
    name: str
    kind: str
    base_url: str
    api_key_env: str = ""
    models: tuple[str, ...] = ("*",)
    aliases: Mapping[str, str] = field(default_factory=dict)
    weight: int = 1
    priority: int = 0  # the tier: a pool tries lower numbers first
    max_streams: int = 0
    headers: Mapping[str, str] = field(default_factory=dict)
    forward_headers: frozenset[str] = frozenset()  # billing headers the client may set
    on_client_disconnect: str = "cancel"  # cancel | drain (read on for the usage, detached)
    drain_max_seconds: float = 30.0
    drain_max_bytes: int = 1 << 20
    retries: int = 0  # more attempts on this provider after a retryable failure
    retry_backoff: float = 0.25  # s: full jitter over retry_backoff x 2^n
    max_retry_wait: float = 10.0  # s: a longer Retry-After moves on to the next provider
    health_check: HealthCheck | None = None  # an active probe while a model is ejected
    accepts_prefill: bool = False  # continues a final assistant turn (relay/continuation.py)

    def upstream_model(self, model: str) -> str | None:
        """The name this provider knows ``model`` by, or None if it does not serve it."""
        alias = self.aliases.get(model)
        if alias is not None:
            return alias
        if any(fnmatch.fnmatchcase(model, pattern) for pattern in self.models):
            return model
        return None


def _strings(name: str, key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{name}: {key} must be a list of non-empty strings")
    return tuple(value)


def _table(name: str, key: str, value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and k and v for k, v in value.items()
    ):
        raise ConfigError(f"{name}: {key} must be a table of strings")
    return dict(value)


def _positive_int(name: str, key: str, value: Any, minimum: int, maximum: int = 1 << 20) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise ConfigError(f"{name}: {key} must be an integer from {minimum} to {maximum}")
    return value


def _seconds(name: str, key: str, value: Any, maximum: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= maximum:
        raise ConfigError(f"{name}: {key} must be a number of seconds above 0, at most {maximum}")
    return float(value)


def _flag(name: str, key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{name}: {key} must be true or false")
    return value


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """``health_check = { interval = 5, path = "/models" }``, or ``request = true``:
    a one-token request for each ejected model instead of the path's GET."""

    interval: float = 5.0
    path: str = "/models"
    request: bool = False


def _health_check(name: str, value: Any) -> HealthCheck | None:
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) - {"interval", "path", "request"}:
        raise ConfigError(f"{name}: health_check is a table of interval, path and request")
    interval = _seconds(name, "health_check.interval", value.get("interval", 5.0), 3600.0)
    path = value.get("path", "/models")
    if not isinstance(path, str) or not re.fullmatch(r"/[!-~]*", path):
        raise ConfigError(f"{name}: health_check.path must be a path starting with /")
    request = _flag(name, "health_check.request", value.get("request", False))
    return HealthCheck(interval, path, request)


def parse_providers(raw: Iterable[Mapping[str, Any]]) -> tuple[ProviderSpec, ...]:
    specs = []
    for n, entry in enumerate(raw, 1):
        label = config_table("providers", n, entry, _OPTIONS)
        name = entry["name"]
        kind = entry.get("kind", "openai")
        if kind not in KINDS:
            raise ConfigError(f"{label}: kind must be openai, anthropic or gemini")
        base_url = entry.get("base_url")
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"{label}: base_url must start with http(s)://")
        key_env = entry.get("api_key_env", "")
        if not isinstance(key_env, str):
            raise ConfigError(f"{label}: api_key_env must be a variable name")
        if not _URL.fullmatch(base_url):
            raise ConfigError(f"{label}: base_url {base_url!r} is not a URL")
        headers = _table(label, "headers", entry.get("headers", {}))
        reserved = sorted(h for h in headers if h.lower() in _RESERVED_HEADERS)
        if reserved:
            raise ConfigError(f"{label}: headers may not set {reserved}")
        bad = sorted(k for k, v in headers.items() if not _TOKEN.fullmatch(k) or _bad_value(v))
        if bad:
            raise ConfigError(f"{label}: invalid header name or value: {bad}")
        forwarded = {
            h.lower() for h in _strings(label, "forward_headers", entry.get("forward_headers", []))
        }
        if not forwarded <= BILLING_HEADERS:
            raise ConfigError(
                f"{label}: forward_headers may list {sorted(BILLING_HEADERS)} only, "
                f"not {sorted(forwarded - BILLING_HEADERS)}"
            )
        policy = entry.get("on_client_disconnect", "cancel")
        if policy not in DISCONNECT_POLICIES:
            raise ConfigError(f"{label}: on_client_disconnect must be cancel or drain")
        specs.append(
            ProviderSpec(
                name=name,
                kind=kind,
                base_url=base_url.rstrip("/"),
                api_key_env=key_env,
                models=_strings(label, "models", entry.get("models", ["*"])),
                aliases=_table(label, "aliases", entry.get("aliases", {})),
                weight=_positive_int(label, "weight", entry.get("weight", 1), 1, MAX_WEIGHT),
                priority=_positive_int(
                    label, "priority", entry.get("priority", 0), 0, MAX_PRIORITY
                ),
                max_streams=_positive_int(label, "max_streams", entry.get("max_streams", 0), 0),
                headers={k.lower(): v for k, v in headers.items()},
                forward_headers=frozenset(forwarded),
                on_client_disconnect=policy,
                drain_max_seconds=_seconds(
                    label, "drain_max_seconds", entry.get("drain_max_seconds", 30.0), 3600.0
                ),
                drain_max_bytes=_positive_int(
                    label, "drain_max_bytes", entry.get("drain_max_bytes", 1 << 20), 1, 1 << 30
                ),
                retries=_positive_int(label, "retries", entry.get("retries", 0), 0, MAX_RETRIES),
                retry_backoff=_seconds(
                    label, "retry_backoff", entry.get("retry_backoff", 0.25), 60.0
                ),
                max_retry_wait=_seconds(
                    label, "max_retry_wait", entry.get("max_retry_wait", 10.0), 3600.0
                ),
                health_check=_health_check(label, entry.get("health_check")),
                accepts_prefill=_flag(
                    label, "accepts_prefill", entry.get("accepts_prefill", False)
                ),
            )
        )
    if len({s.name for s in specs}) != len(specs):
        raise ConfigError("[[providers]] names must be unique")
    return tuple(specs)


def legacy_specs(openai: Iterable[str], anthropic: Iterable[str]) -> tuple[ProviderSpec, ...]:
    """``openai_upstreams`` / ``anthropic_upstreams``: providers serving every model."""
    urls = [("openai", u) for u in openai] + [("anthropic", u) for u in anthropic]
    return tuple(
        ProviderSpec(name=url.split("://", 1)[-1].split("/", 1)[0] + f"/{kind}", kind=kind,
                     base_url=url)
        for kind, url in urls
    )  # fmt: skip


def read_credential(spec: ProviderSpec, environ: Mapping[str, str] = os.environ) -> str | None:
    if not spec.api_key_env:
        return None
    value = environ.get(spec.api_key_env, "").strip()
    if not value:
        raise ConfigError(
            f"provider {spec.name}: environment variable {spec.api_key_env} is not set"
        )
    return value


@dataclass(frozen=True, slots=True)
class ProviderStatistics:
    name: str
    kind: str
    state: str  # healthy | trial | ejected: the worst of its models'
    in_flight: int
    consecutive_failures: int  # the most of any of its models
    requests: int
    failures: int
    ejections: int
    retry_after_s: float  # seconds left of a 429's Retry-After window (the longest)
    ejected_models: tuple[str, ...] = ()  # models ejected here (at most 16 named)


_STATES = {"healthy": 0, "trial": 1, "ejected": 2}


class Provider:
    """One provider's runtime state: streams in flight, and its models' health
    (:mod:`trioproxy.routing.health`). ``model``: the name the provider knows
    the model by; None for requests that name none."""

    def __init__(self, spec: ProviderSpec, credential: str | None) -> None:
        self.spec = spec
        self.name = spec.name
        self.credential = credential
        self.in_flight = 0
        self.health = HealthRecords()
        self.requests = 0
        self.failures = 0
        self.ejections = 0

    def state(self, now: float) -> str:
        return max((h.state(now) for _, h in self.health.items()), key=_STATES.__getitem__)

    @property
    def consecutive_failures(self) -> int:
        return max(h.consecutive_failures for _, h in self.health.items())

    def healthy(self, now: float, model: str | None = None) -> bool:
        """Could serve ``model`` (ignoring capacity and Retry-After)."""
        return self.health.of(model, now).healthy(now)

    def has_room(self) -> bool:
        """Below ``max_streams``."""
        return not self.spec.max_streams or self.in_flight < self.spec.max_streams

    def admits(self, now: float, model: str | None = None) -> bool:
        """Healthy for ``model``, outside a 429's Retry-After window, below ``max_streams``."""
        return self.has_room() and self.health.of(model, now).admits(now)

    def begin(self, now: float, model: str | None = None) -> None:
        """Take a stream on this provider (the caller checked :meth:`admits`,
        or :meth:`has_room` when no provider admits a request)."""
        self.in_flight += 1
        self.requests += 1
        self.health.of(model, now).begin(now)

    def end(
        self,
        now: float,
        ok: bool | None,
        eject_after: int,
        cooldown: float,
        model: str | None = None,
        unreachable: bool = False,
    ) -> bool:
        """Release the stream; ``ok`` is None when the request says nothing
        about health (cancelled, 429, slow client). True if ``model`` was ejected now."""
        self.in_flight -= 1
        if ok is False:
            self.failures += 1
        ejected = self.health.of(model, now).end(now, ok, eject_after, cooldown, unreachable)
        self.ejections += ejected
        return ejected

    def rate_limited(self, now: float, retry_after: float, model: str | None = None) -> None:
        self.health.of(model, now).rate_limited(now, retry_after)

    def probed(self, now: float, model: str | None = None) -> None:
        """An active health check of this provider (or of ``model`` on it,
        answered by the model itself) succeeded."""
        if model is not None:
            self.health.of(model, now).answered(now)
            return
        for _, health in self.health.items():
            health.probed(now)

    def ejected_models(self, now: float) -> list[str]:
        return [m for m, h in self.health.items() if m and h.state(now) == "ejected"]

    def statistics(self, now: float) -> ProviderStatistics:
        records = self.health.items()
        ejected = [m or "-" for m, h in records if h.state(now) != "healthy"]
        return ProviderStatistics(
            name=self.name,
            kind=self.spec.kind,
            state=self.state(now),
            in_flight=self.in_flight,
            consecutive_failures=self.consecutive_failures,
            requests=self.requests,
            failures=self.failures,
            ejections=self.ejections,
            retry_after_s=round(max(0.0, *(h.not_before - now for _, h in records)), 3),
            ejected_models=tuple(ejected[:16]),
        )
