"""The ASGI application: dispatch, admission, and the end of every request.

Request order (the tree reads the same way): the gateway's own endpoints
(:mod:`.endpoints`) → admission (:mod:`trioproxy.admission`: route, key, body,
limits) → routing (:mod:`trioproxy.routing`: the request's plan of providers)
→ the relay (:mod:`trioproxy.relay`: upstream → channel → client) → the
record, made exactly once → receipts, metrics and hooks
(:mod:`trioproxy.receipts`, :mod:`trioproxy.observe`).

Resource handling: the long-lived resources of a worker (the upstream client,
the service nursery) belong to the lifespan (:mod:`.lifespan`). Per request:
the exchange's slots are released however the request ends, and its record is
made exactly once, in :meth:`Gateway.finish` (by a drain, when one reads the
upstream on after a hang-up: :mod:`trioproxy.relay.drain`).

Error handling: every error a client can cause or meet is rendered in the
route's dialect (:mod:`trioproxy.dialects`); an unexpected exception in a
handler is logged, answered with a 500 if nothing was sent yet, and never
reaches Hypercorn's worker.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import logging
import math
import os
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import trio

from ..admission.auth import ApiKey, KeyRing
from ..admission.bodies import BodyReads
from ..admission.browser import Hygiene
from ..admission.forwarded import ForwardedClients
from ..admission.limits import LimiterStatistics, StreamLimiter
from ..admission.routes import (
    ROUTES,
    ParsedBody,
    Route,
    output_limit,
    session_key,
    usage_requested,
    validate,
)
from ..asgi import Receive, Scope, Send, already_disconnected, read_body, request_id, take_queued
from ..config import Config, parse_bind
from ..dialects import dialect_for_path
from ..errors import (
    GatewayError,
    MethodNotAllowed,
    NotFound,
    Outcome,
    RequestTimeout,
)
from ..observe.debug import debug_state, find_trace
from ..observe.metrics import Gauges, Metrics
from ..observe.tracing import Tracing
from ..receipts.detached import DetachedStatistics, DetachedWork
from ..receipts.service import ReceiptService
from ..relay.drain import Drains
from ..relay.exchange import Exchange, Phase, StreamMetrics
from ..relay.record import CompletionRecord
from ..relay.run import Relay
from ..relay.timeline import traceparent_of
from ..relay.writer import send_abort, send_error
from ..routing.pools import Router
from ..routing.targets import UpstreamRequest, upstream_request
from ..upstream.client import Upstream
from . import endpoints
from .accounts import Accounts
from .lifespan import lifespan

__all__ = ["CompletionHook", "Gateway", "GatewayStatistics"]

log = logging.getLogger("trioproxy")
access_log = logging.getLogger("trioproxy.access")

CompletionHook = Callable[[CompletionRecord], Awaitable[None]]
_RECENT_RECORDS = 20_000
# Options a running gateway takes from a re-read config (SIGHUP); the rest need a restart.
_RELOADABLE = (
    "providers", "openai_upstreams", "anthropic_upstreams", "routing_strategy", "max_attempts",
    "eject_after", "cooldown", "sticky_header", "sticky_user_field", "keys", "cors_origins",
    "first_byte_deadline", "fallbacks", "context_window_fallbacks",
)  # fmt: skip
_DEBUG_CONFIG = (
    "ttft_timeout", "idle_timeout", "client_stall_timeout", "max_streams", "channel_size",
    "heartbeat_resets_idle", "max_attempts",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class GatewayStatistics:
    ready: bool
    active_requests: int
    requests_total: int
    outcomes: dict[str, int]
    limiter: LimiterStatistics
    detached: DetachedStatistics | None
    drains: DetachedStatistics | None  # upstreams read on after a hang-up


class Gateway:
    """The trioproxy ASGI app. ``hooks`` run as detached work after each request."""

    def __init__(
        self,
        config: Config,
        hooks: Sequence[CompletionHook] = (),
        clock: Callable[[], float] = trio.current_time,
        sleep: Callable[[float], Awaitable[None]] = trio.sleep,
    ) -> None:
        """``clock``: the time provider health and per-key rpm are judged by
        (trio's; tests pass one they can move), ``sleep`` the waits between
        retries on that clock."""
        self.config = config
        self.clock, self.sleep = clock, sleep
        self.hooks = tuple(hooks)
        self.limiter = StreamLimiter(config.max_streams, config.queue_timeout)
        self.keyring = KeyRing(config.api_keys)
        self.accounts = Accounts(config, clock)  # each key's limits and usage
        self.router = Router(
            config.provider_specs, config.routing_strategy, clock=clock, sleep=sleep
        )
        self._sticky_header = config.sticky_header.lower().encode("latin-1")
        self.upstream: Upstream | None = None
        self.detached: DetachedWork | None = None
        self.drains: Drains | None = None  # upstreams read on after a hang-up (relay/drain.py)
        self.drain_work: DetachedWork | None = None  # the drains' service nursery
        self.receipts: ReceiptService | None = None
        self.ready = False
        self.active: dict[Exchange, Relay | None] = {}  # a relay once admitted
        # Recent records for /debug/records (chaos reads outcomes from it); bounded.
        self.recent: collections.deque[CompletionRecord] | None = (
            collections.deque(maxlen=_RECENT_RECORDS) if config.debug_endpoints else None
        )
        self._total = 0
        self._outcomes: dict[str, int] = {}
        self.metrics = (
            Metrics(self._gauges, lambda: self.router.statistics(self.clock()))
            if config.metrics
            else None
        )
        self.own = endpoints.OwnEndpoints(self)
        self.body_reads = BodyReads(config.max_body_reads, config.max_body_reads_per_key)
        # A trusted proxy's clients, by X-Forwarded-For: max_connections_per_ip requests each.
        self.forwarded = ForwardedClients(config.max_connections_per_ip, config.trusted_proxies)
        endpoint = config.otlp_endpoint or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "")
        self.tracing = Tracing(endpoint) if endpoint else None
        # Nurseries in this trio run that are not the gateway's (the built-in mock):
        # /debug/state does not count their tasks.
        self.foreign_nurseries: list[trio.Nursery] = []
        self.hygiene = Hygiene(
            open_mode=not config.api_keys,
            bind_host=parse_bind(config.bind)[0],
            cors_origins=config.cors_origins,
        )

    def reload(self, new: Config) -> list[str]:
        """Apply a re-read config's providers, routing options and keys (SIGHUP).

        In-flight requests finish on the providers they planned with; new ones
        use the new pools. Providers whose table is unchanged keep their health.
        Returns the other options that changed: they need a restart.

        Error handling: raises :class:`~trioproxy.config.ConfigError` (a bad
        table, a missing credential) and then changes nothing.
        """
        router = Router(
            new.provider_specs, new.routing_strategy, previous=self.router, clock=self.clock,
            sleep=self.sleep,
        )  # fmt: skip
        changes = {name: getattr(new, name) for name in _RELOADABLE}
        self.router = router
        self.keyring = KeyRing(new.api_keys)
        self.accounts.reload(new)
        self.hygiene = Hygiene(not new.api_keys, parse_bind(self.config.bind)[0], new.cors_origins)
        self._sticky_header = new.sticky_header.lower().encode("latin-1")
        old, self.config = self.config, self.config.replace(**changes)
        changed = old.options().items()
        return [n for n, v in changed if n not in _RELOADABLE and v != getattr(new, n)]

    def statistics(self) -> GatewayStatistics:
        return GatewayStatistics(
            ready=self.ready,
            active_requests=len(self.active),
            requests_total=self._total,
            outcomes=dict(self._outcomes),
            limiter=self.limiter.statistics(),
            detached=self.detached.statistics() if self.detached else None,
            drains=self.drain_work.statistics() if self.drain_work else None,
        )

    def _gauges(self) -> Gauges:
        stats = self.statistics()
        return Gauges(
            active_requests=stats.active_requests,
            limiter_in_use=stats.limiter.borrowed_tokens,
            limiter_waiting=stats.limiter.tasks_waiting,
            detached_pending=stats.detached.pending if stats.detached else 0,
            receipts_pending=self.receipts.statistics().pending if self.receipts else 0,
            **self.accounts.gauges(),
        )

    def debug_state(self) -> dict[str, Any]:
        providers = self.router.providers
        return debug_state(
            self.statistics(),
            [r.channel_statistics() for r in self.active.values() if r is not None],
            self.router.statistics(self.clock()),
            {
                kind: [p.spec.base_url for p in providers if p.spec.kind == kind]
                for kind in ("openai", "anthropic")
            },
            len(self.recent) if self.recent is not None else 0,
            {name: getattr(self.config, name) for name in _DEBUG_CONFIG},
            self.foreign_nurseries,
        )

    def trace(self, request_id: str) -> dict[str, Any] | None:
        """The timeline of a request in flight, or of a recent one (debug endpoints)."""
        stored = self.receipts.stored_at if self.receipts is not None else None
        return find_trace(request_id, self.active, self.recent or (), stored)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await lifespan(self, receive, send)
        else:  # websocket: not served
            await send({"type": "websocket.close", "code": 1003})

    # -- requests -------------------------------------------------------------
    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        verdict = self.hygiene.check(scope["method"], scope["headers"])
        clean = verdict.error is None and not verdict.preflight
        if clean and endpoints.is_own(path) and await self.own.handle(scope, path, send):
            return
        route = ROUTES.get(path)
        ex = Exchange(
            request_id=request_id(scope),
            route=route.name if route else "unknown",
            method=scope["method"],
            started=trio.current_time(),
            dialect=route.dialect if route else dialect_for_path(path),
            metrics=StreamMetrics() if self.metrics is not None else None,
        )
        extra = [(b"x-trioproxy-request-id", ex.request_id.encode()), *verdict.headers]
        self.active[ex] = None
        client = None  # a trusted proxy's client, counted while the request lasts
        try:
            try:
                if verdict.error is not None:
                    raise verdict.error
                client = self.forwarded.take(scope.get("client"), scope["headers"])
                if verdict.preflight:  # CORS preflight of a listed origin
                    await send({"type": "http.response.start", "status": 204, "headers": extra})
                    await send({"type": "http.response.body", "body": b""})
                    ex.status = 204
                    ex.settle(Outcome.DONE)
                    return
                relay = await self._admit(ex, route, scope, receive, send, extra)
            except GatewayError as err:
                ex.status = err.status
                ex.fail(err)
                await send_error(send, err, extra, ex)
                return
            if relay is None:
                return  # answered already, or the client left
            if already_disconnected(receive):  # never start upstream work for a gone client
                ex.hung_up(trio.current_time())
                return
            self.active[ex] = relay
            await relay.run(send, receive)
        except BaseException as exc:
            await send_abort(exc, ex, send, extra)
            if not isinstance(exc, Exception):
                raise
        finally:
            if client is not None:
                self.forwarded.give_back(client)
            ex.release_slots()  # no-op unless the relay never started
            del self.active[ex]
            if ex.drained is None:  # else a drain took the upstream over: it records when it ends
                self.finish(ex)

    async def _admit(
        self,
        ex: Exchange,
        route: Route | None,
        scope: Scope,
        receive: Receive,
        send: Send,
        extra: list[tuple[bytes, bytes]],
    ) -> Relay | None:
        """Route, key, body, limits, plan: the relay to run, or None when the
        request was answered here (or its client left). Raises GatewayError."""
        path = scope["path"]
        if route is None:
            raise NotFound(f"unknown route {scope['method']} {path}")
        if scope["method"] != route.method:
            raise MethodNotAllowed(f"{path} accepts {route.method} only")
        key = self.keyring.authenticate(scope["headers"]) if self.keyring else None
        ex.key, ex.key_id = (key.name, key.id) if key else (None, None)
        if route.name == "models" and await endpoints.list_models(
            send, self.router, self.keyring, key, extra
        ):
            ex.status = 200
            ex.settle(Outcome.DONE)
            return None
        # A key over a limit now holds no body-read slot; bodies are read and parsed
        # a bounded number at a time (a bounded share per key), the wait for a slot
        # and the read within body_timeout.
        self.accounts.precheck(key)
        read, body, parsed = False, None, None
        with trio.move_on_after(self.config.body_timeout or math.inf):
            async with self.body_reads.open(key.name if key is not None else None):
                body = await read_body(
                    scope, receive, self.config.max_body_bytes, lambda: take_queued(receive)
                )
                read = True
                if body is not None:
                    ex.mark("body_read")
                    parsed = validate(route, body)
        if not read:
            self.accounts.timed_out(key)
            raise RequestTimeout(f"request body not complete in {self.config.body_timeout} s")
        if body is None or parsed is None:  # the client left before sending its whole body
            ex.hung_up(trio.current_time())
            return None
        ex.request_sha256 = hashlib.sha256(body).hexdigest()
        ex.response_hash = hashlib.sha256()
        if self.config.receipts:
            ex.receipt_id = "rcpt_" + secrets.token_hex(16)  # 128 random bits
        ex.model, ex.stream = parsed.model, parsed.stream
        if key is not None:
            self.keyring.authorize(key, parsed.model)
        output = output_limit(parsed) or self.config.default_reserved_tokens
        await self.accounts.admit(key, ex, len(body) // 4, output)
        upstream = self._upstream_request(route, scope, body, parsed, ex, key)
        assert self.upstream is not None
        await self.limiter.acquire(ex)
        ex.held.append(self.limiter)
        ex.move(Phase.ADMITTED)
        ex.mark("admitted")
        if self.tracing is not None:
            ex.trace = traceparent_of(scope["headers"])
        return Relay(self.upstream, self.config, upstream, ex, extra, self.drains)

    def _upstream_request(
        self, route: Route, scope: Scope, body: bytes, parsed: ParsedBody, ex: Exchange,
        key: ApiKey | None,
    ) -> UpstreamRequest:  # fmt: skip
        strip = False
        if self.config.request_usage and (asked := usage_requested(route, parsed)) is not None:
            parsed = dataclasses.replace(parsed, json=asked)
            body, strip = orjson.dumps(asked), True
        headers = scope["headers"]
        session = session_key(headers, self._sticky_header, parsed, self.config.sticky_user_field)
        allows = functools.partial(self.keyring.allows, key) if key is not None else None
        fallbacks, larger = self.config.fallback_models.for_request(parsed.model, headers, allows)
        return upstream_request(
            self.router, route, headers, body, parsed, ex.request_id, session, strip, fallbacks,
            larger,
        )  # fmt: skip

    def finish(self, ex: Exchange) -> None:
        """Record the outcome exactly once, log one access line, hand off."""
        ex.ended = trio.current_time()
        if ex.outcome is None:  # a bug: recorded rather than lost
            log.error("request %s ended without an outcome", ex.request_id)
            ex.settle(ex.upstream_outcome or Outcome.UNKNOWN)
        record = CompletionRecord.from_exchange(ex)
        self.accounts.settle(ex, record)
        self._total += 1
        outcome = record.outcome.value
        self._outcomes[outcome] = self._outcomes.get(outcome, 0) + 1
        if self.recent is not None:
            self.recent.append(record)
        if self.config.access_log:
            access_log.info("%s", record.to_json().decode())
        if self.metrics is not None:
            self.metrics.observe(record, ex.metrics)
        if self.receipts is not None:
            self.receipts.submit(record)
        if self.tracing is not None and ex.trace is not None:
            self.tracing.export(record, ex.trace, ex.dialect.value, f"{ex.method} {ex.route}")
        if self.detached is not None:
            for hook in self.hooks:
                self.detached.submit(hook, record, name="completion-hook")
