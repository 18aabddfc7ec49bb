"""Gateway configuration: one frozen record, read from TOML, overridden by flags.

Every buffer and timeout of the gateway is a field here, with its unit in its
name or docstring; ``examples/trioproxy.toml`` documents each one. Unknown keys
are an error (a typo must not silently fall back to a default).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .admission.auth import ApiKey, parse_keys
from .errors import ConfigError, unknown_options
from .routing.fallbacks import Fallbacks, parse_fallbacks
from .routing.pools import STRATEGIES
from .routing.providers import ProviderSpec, legacy_specs, parse_providers

__all__ = ["Config", "ConfigFile", "RedisAddress", "load_config", "parse_bind", "parse_redis_url"]


@dataclass(frozen=True, slots=True)
class Config:
    # --- listening ---------------------------------------------------------
    bind: str = "127.0.0.1:8080"
    workers: int = 1
    backlog: int = 2048
    graceful_timeout: float = 30.0  # s: in-flight streams get this long on shutdown
    # --- providers and routing (see trioproxy.routing) -----
    providers: tuple[Mapping[str, Any], ...] = ()  # [[providers]] tables
    openai_upstreams: tuple[str, ...] = ()  # shorthand: providers serving every model
    anthropic_upstreams: tuple[str, ...] = ()  # base URLs; /v1/messages is appended
    routing_strategy: str = "round_robin"  # round_robin | least_in_flight
    max_attempts: int = 3  # providers tried per request, before the first byte only
    eject_after: int = 5  # consecutive failures that eject a provider (0 = never)
    cooldown: float = 5.0  # s an ejected provider x model is skipped before one trial request
    # s from the first attempt to the first byte: every attempt, retry and wait of a
    # request within it (0: ttft_timeout x max_attempts; request_timeout for a whole answer)
    first_byte_deadline: float = 0.0
    fallbacks: Mapping[str, Any] = field(default_factory=dict)  # model = [fallback models]
    context_window_fallbacks: Mapping[str, Any] = field(default_factory=dict)  # small = "large"
    # After a cut (reset, stall) past the first byte, ask a provider with accepts_prefill
    # for the rest of the answer, spliced into the same stream (chat and messages, text only).
    continue_on_cut: bool = False
    continue_max: int = 1  # continuations per request
    sticky_header: str = "x-session-id"  # same value -> same provider ("" = off)
    sticky_user_field: bool = False  # also stick on the OpenAI "user" field
    # --- concurrency --------------------------------------------------------
    max_streams: int = 512  # concurrent upstream requests (global limiter)
    queue_timeout: float = 0.0  # s to wait for a slot before 429
    # --- buffers ------------------------------------------------------------
    channel_size: int = 8  # chunks between upstream reader and client writer
    max_event_bytes: int = 1 << 20  # an SSE event still without its end; past it: upstream error
    max_body_bytes: int = 4 << 20  # request body; larger is 413
    max_body_reads: int = 64  # bodies read and parsed at once (memory: this x max_body_bytes x ~3)
    max_body_reads_per_key: int = 0  # of those, one key's share (0: a quarter of max_body_reads)
    max_response_bytes: int = 64 << 20  # non-streaming upstream body; larger is 502
    # --- timeouts (seconds) -------------------------------------------------
    body_timeout: float = 30.0  # a request body not complete by then is a 408
    header_timeout: float = 10.0  # a request head begun on a connection must be whole by then
    max_connections: int = 4096  # open client connections per process; more are closed at once
    max_connections_per_ip: int = 256  # of those, from one peer address (trusted_proxies exempt)
    connect_timeout: float = 10.0
    ttft_timeout: float = 60.0  # request sent -> first upstream event
    idle_timeout: float = 30.0  # between upstream events
    heartbeat_resets_idle: bool = False
    max_stream_duration: float = 0.0  # 0 = off: long generations are not killed
    request_timeout: float = 600.0  # whole non-streaming exchange
    client_stall_timeout: float = 30.0  # channel full this long -> slow_client
    # --- detached work (service nursery) --------------------------------------
    max_pending_detached: int = 1024  # hand-offs waiting or running; more are dropped
    detached_concurrency: int = 16
    drain_timeout: float = 30.0  # s to drain detached work on shutdown
    # Upstreams read on after a hang-up (providers with on_client_disconnect = "drain"),
    # at once per process; past it a hang-up closes the upstream.
    max_drains: int = 256
    # --- receipts (signed after the stream, stored off the hot path) ---------
    receipts: bool = True
    # Signing key and SQLite receipts live here. Default: ".trioproxy" beside the
    # config file, or $XDG_STATE_HOME/trioproxy (~/.local/state/trioproxy) with
    # no config file; a relative path in a config file is relative to that file.
    data_dir: str = ""
    signing_key_path: str = ""  # default: <data_dir>/signing.key (mode 0600)
    receipt_store: str = ""  # sqlite | memory | redis (default: redis with redis_url, else sqlite)
    receipt_ttl_days: float = 30.0
    max_pending_receipts: int = 1024  # more are dropped, counted and logged
    receipt_flush_delay: float = 0.02  # s the flusher waits for more records before a batch
    sign_truncated: bool = True  # receipts for streams that ended early too
    # --- API keys (see trioproxy.admission.auth)--------------------------------------
    keys: tuple[Mapping[str, Any], ...] = ()  # [[keys]] tables: name, sha256, models, ...
    allow_open_public: bool = False  # no keys on a non-loopback bind is refused unless true
    cors_origins: tuple[str, ...] = ()  # web origins allowed (CORS); others refused in open mode
    # Peer IPs of proxies in front: no per-IP connection cap; the clients they name in
    # X-Forwarded-For get max_connections_per_ip requests in flight each.
    trusted_proxies: tuple[str, ...] = ()
    # --- shared state (see trioproxy.shared): unset = this process's own state -----
    redis_url: str = ""  # redis://HOST:PORT/DB or rediss://...; no password in it
    redis_password_env: str = "TRIOPROXY_REDIS_PASSWORD"  # the variable holding the password
    redis_timeout: float = 0.05  # s: bound on every Redis call
    redis_failure: str = "open"  # open: this process's own counters | closed: 503
    lease_ttl: float = 30.0  # s: a dead host's max_streams leases expire within this
    early_admission: bool = True  # far from its limits, a key is counted while its request goes
    # --- usage ----------------------------------------------------------------
    request_usage: bool = False  # ask upstream for usage (include_usage); strip it for the client
    default_reserved_tokens: int = 1024  # reserved against tpm for a request with no max_tokens
    # --- misc ---------------------------------------------------------------
    debug_endpoints: bool = False
    metrics: bool = True  # GET /metrics (Prometheus text format)
    otlp_endpoint: str = ""  # OTLP/HTTP collector base URL: spans per request (also the env var)
    access_log: bool = True
    log_level: str = "info"
    mock_options: Mapping[str, Any] = field(default_factory=dict)
    # --- derived once, when the record is made -------------------------------
    # Every provider: the [[providers]] tables, then the URL shorthands (parsed
    # here and nowhere else).
    provider_specs: tuple[ProviderSpec, ...] = field(init=False, repr=False, compare=False)
    api_keys: tuple[ApiKey, ...] = field(init=False, repr=False, compare=False)  # [[keys]]
    fallback_models: Fallbacks = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        parse_bind(self.bind)
        positive = (
            "workers", "backlog", "max_streams", "channel_size", "max_attempts", "max_body_reads",
            "max_connections", "max_connections_per_ip",
        )  # fmt: skip
        for name in (
            *positive, "max_event_bytes", "max_body_bytes", "max_response_bytes",
            "default_reserved_tokens",
            "max_drains",
            "continue_max",
        ):  # fmt: skip
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1")
        for name in (
            "graceful_timeout",
            "body_timeout",
            "header_timeout",
            "queue_timeout",
            "connect_timeout",
            "ttft_timeout",
            "idle_timeout",
            "max_stream_duration",
            "request_timeout",
            "client_stall_timeout",
            "drain_timeout",
            "cooldown",
            "first_byte_deadline",
            "redis_timeout",
            "lease_ttl",
        ):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0 or math.isnan(value):
                raise ConfigError(f"{name} must be a number of seconds >= 0")
        host, _ = parse_bind(self.bind)
        loopback = host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")
        if not self.keys and not loopback and not self.allow_open_public:
            raise ConfigError(
                f"refusing to serve {self.bind} without API keys: add [[keys]] "
                "(trioproxy keys new --name NAME) or set allow_open_public = true"
            )
        for address in self.trusted_proxies:
            try:
                ipaddress.ip_address(address)
            except ValueError:
                raise ConfigError(f"trusted_proxies: {address!r} is not an IP address") from None
        if self.redis_url:
            parse_redis_url(self.redis_url)
        if self.max_body_reads_per_key < 0:
            raise ConfigError("max_body_reads_per_key must be at least 0")
        if not self.max_body_reads_per_key:
            object.__setattr__(self, "max_body_reads_per_key", max(1, self.max_body_reads // 4))
        if not self.receipt_store:
            object.__setattr__(self, "receipt_store", "redis" if self.redis_url else "sqlite")
        if self.receipt_store not in ("sqlite", "memory", "redis"):
            raise ConfigError("receipt_store must be sqlite, memory or redis")
        if self.receipt_store == "redis" and not self.redis_url:
            raise ConfigError("receipt_store = redis needs redis_url")
        if self.redis_failure not in ("open", "closed"):
            raise ConfigError("redis_failure must be open or closed")
        if self.redis_timeout <= 0 or self.lease_ttl < 1:
            raise ConfigError("redis_timeout must be > 0 and lease_ttl at least 1 s")
        if self.max_pending_receipts < 1 or self.receipt_ttl_days <= 0:
            raise ConfigError("max_pending_receipts and receipt_ttl_days must be positive")
        if not 0 <= self.receipt_flush_delay <= 1:
            raise ConfigError("receipt_flush_delay must be between 0 and 1 s")
        for url in self.openai_upstreams + self.anthropic_upstreams:
            if not url.startswith(("http://", "https://")):
                raise ConfigError(f"upstream URL must start with http:// or https://: {url!r}")
        if self.eject_after < 0:
            raise ConfigError("eject_after must be an integer >= 0")

        if self.routing_strategy not in STRATEGIES:
            raise ConfigError(f"routing_strategy must be one of {', '.join(STRATEGIES)}")
        specs = parse_providers(self.providers)
        specs += legacy_specs(self.openai_upstreams, self.anthropic_upstreams)
        if len({s.name for s in specs}) != len(specs):
            raise ConfigError("provider names must be unique")
        object.__setattr__(self, "provider_specs", specs)
        object.__setattr__(self, "api_keys", parse_keys(self.keys))
        fallbacks = parse_fallbacks(self.fallbacks, self.context_window_fallbacks)
        object.__setattr__(self, "fallback_models", fallbacks)
        object.__setattr__(self, "data_dir", str(_absolute(self.data_dir or _state_dir())))

    @property
    def has_upstreams(self) -> bool:
        return bool(self.providers or self.openai_upstreams or self.anthropic_upstreams)

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)

    def options(self) -> dict[str, Any]:
        """The options this record was made from (``Config(**options())`` makes it again)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.init}


def _state_dir() -> Path:
    state = os.environ.get("XDG_STATE_HOME", "").strip()
    base = Path(state) if state else Path.home() / ".local" / "state"
    return base / "trioproxy"


def _absolute(path: str | Path) -> Path:
    return Path(os.path.abspath(Path(path).expanduser()))


_FIELD_TYPES = {f.name: f.type for f in fields(Config) if f.init}


def parse_bind(bind: str) -> tuple[str, int]:
    host, sep, port = bind.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"bind must be HOST:PORT, got {bind!r}")
    return host.strip("[]"), int(port)


@dataclass(frozen=True, slots=True)
class RedisAddress:
    host: str
    port: int
    db: int
    tls: bool
    username: str | None


def parse_redis_url(url: str) -> RedisAddress:
    """``redis://[USER@]HOST[:PORT][/DB]`` or ``rediss://`` (TLS). A password in
    the URL is refused: config files get copied and logged; the password comes
    from the environment variable named by ``redis_password_env``."""
    try:
        parts = urlsplit(url)
        port = parts.port or 6379
    except ValueError as exc:
        raise ConfigError(f"redis_url is not a URL: {exc}") from None
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise ConfigError("redis_url must be redis://HOST:PORT/DB or rediss://HOST:PORT/DB")
    if parts.password is not None:
        raise ConfigError(
            "redis_url must not hold a password: set it in the environment "
            "variable named by redis_password_env (default TRIOPROXY_REDIS_PASSWORD)"
        )
    db = parts.path.strip("/") or "0"
    if not db.isdigit() or parts.query or parts.fragment:
        raise ConfigError("redis_url: the path must be a database number (/0)")
    return RedisAddress(parts.hostname, port, int(db), parts.scheme == "rediss", parts.username)


def _coerce(name: str, value: Any) -> Any:
    kind = _FIELD_TYPES[name]
    if kind == "tuple[str, ...]":
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{name} must be a list of URLs")
        return tuple(v.rstrip("/") for v in value)
    if kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false")
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name} must be an integer")
        return value
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name} must be a number")
        return float(value)
    if kind == "str":
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be a string")
        return value
    if name in ("keys", "providers"):
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise ConfigError(f"{name} must be [[{name}]] tables")
        return tuple(value)
    if name in ("mock_options", "fallbacks", "context_window_fallbacks"):
        if not isinstance(value, dict):
            raise ConfigError(f"{name} must be a table")
        return dict(value)
    raise ConfigError(f"unsupported option {name}")  # pragma: no cover


def load_config(path: str | Path | None = None, **overrides: Any) -> Config:
    """Read ``path`` (TOML) if given, then apply ``overrides`` (flags; ``None`` = unset)."""
    values: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as f:
                raw = tomllib.load(f)
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
        unknown = sorted(set(raw) - set(_FIELD_TYPES))
        if unknown:
            raise ConfigError(f"{path}: {unknown_options(unknown, _FIELD_TYPES)}")
        try:
            values.update({k: _coerce(k, v) for k, v in raw.items()})
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        base = Path(path).parent  # the data dir goes beside the config file
        values["data_dir"] = str(base / values.get("data_dir", ".trioproxy"))
        if values.get("signing_key_path"):  # relative to the config file, as data_dir is
            values["signing_key_path"] = str(base / values["signing_key_path"])
    for key, value in overrides.items():
        if value is None or (isinstance(value, (list, tuple)) and not value):
            continue
        if key not in _FIELD_TYPES:
            raise ConfigError(unknown_options([key], _FIELD_TYPES))
        values[key] = _coerce(key, list(value) if isinstance(value, tuple) else value)
    try:
        return Config(**values)
    except ConfigError as exc:
        if path is None:
            raise
        raise ConfigError(f"{path}: {exc}") from None


@dataclass(frozen=True, slots=True)
class ConfigFile:
    """Where a running gateway's config came from: read again on SIGHUP (and by
    each worker process when it starts), with the same flags."""

    path: str
    flags: Mapping[str, Any]

    def load(self) -> Config:
        return load_config(self.path, **self.flags)
