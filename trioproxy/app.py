"""The ASGI application: lifespan, dispatch, and the end of every request.

Request order: read and bound the body → validate (routes) → take a stream slot
(limits) → relay (upstream → channel → client) → record the outcome exactly once
→ hand the record to detached work (service nursery).

Resource handling: the lifespan task owns the two long-lived resources of a
worker: the upstream ``httpx.AsyncClient`` and the service nursery. On shutdown
(after Hypercorn has let in-flight requests finish within ``graceful_timeout``),
pending detached work is drained before the client closes.

Error handling: every error a client can cause or meet is rendered in the
route's dialect (:mod:`trioproxy.errors`); an unexpected exception in a
handler is logged, answered with a 500 if nothing was sent yet, and never
reaches Hypercorn's worker.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import trio

from .asgi import already_disconnected, read_body, request_id, send_json, send_raw_json
from .auth import ApiKey, KeyRing, parse_keys
from .config import Config
from .debug import debug_state
from .detached import DetachedStatistics, DetachedWork, open_detached_work
from .downstream import Receive, Send, send_error
from .errors import (
    Dialect,
    GatewayError,
    GatewayShutdown,
    MethodNotAllowed,
    NotFound,
    render_json,
    render_sse,
)
from .failover import UpstreamRequest
from .limits import LimiterStatistics, StreamLimiter
from .metrics import CONTENT_TYPE, Metrics
from .pools import Router
from .receipt_store import ReceiptStore, open_store
from .receipts import KeyError_, ReceiptService, Signer
from .records import CompletionRecord, Exchange
from .relay import relay
from .routes import (
    ROUTES,
    ParsedBody,
    Route,
    dialect_for_path,
    forward_headers,
    session_key,
    validate,
)
from .upstream import open_upstream_client

__all__ = ["CompletionHook", "Gateway", "GatewayStatistics"]

log = logging.getLogger("trioproxy")
access_log = logging.getLogger("trioproxy.access")

CompletionHook = Callable[[CompletionRecord], Awaitable[None]]
_RECENT_RECORDS = 20_000
_SHUTDOWN_SEND_TIMEOUT = 1.0  # s: bound on the shielded error event at shutdown
# Options a running gateway takes from a re-read config (SIGHUP); the rest need a restart.
_RELOADABLE = (
    "providers", "openai_upstreams", "anthropic_upstreams", "routing_strategy", "max_attempts",
    "eject_after", "cooldown", "sticky_header", "sticky_user_field",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class GatewayStatistics:
    ready: bool
    active_requests: int
    requests_total: int
    outcomes: dict[str, int]
    limiter: LimiterStatistics
    detached: DetachedStatistics | None


class Gateway:
    """The trioproxy ASGI app. ``hooks`` run as detached work after each request."""

    def __init__(self, config: Config, hooks: Sequence[CompletionHook] = ()) -> None:
        self.config = config
        self.hooks = tuple(hooks)
        self.limiter = StreamLimiter(config.max_streams, config.queue_timeout)
        self.keyring = KeyRing(parse_keys(config.keys))
        self.router = Router(config.provider_specs(), config.routing_strategy)
        self._sticky_header = config.sticky_header.lower().encode("latin-1")
        self.client: httpx.AsyncClient | None = None
        self.detached: DetachedWork | None = None
        self.receipts: ReceiptService | None = None
        self.ready = False
        self.active: set[Exchange] = set()
        # Recent records for /debug/records (chaos reads outcomes from it); bounded.
        self.recent: collections.deque[CompletionRecord] | None = (
            collections.deque(maxlen=_RECENT_RECORDS) if config.debug_endpoints else None
        )
        self._total = 0
        self._outcomes: dict[str, int] = {}
        self.metrics = Metrics(self) if config.metrics else None  # last: it reads the rest

    def reload(self, new: Config) -> list[str]:
        """Apply a re-read config's providers and routing options (SIGHUP).

        In-flight requests finish on the providers they planned with; new ones
        use the new pools. Providers whose table is unchanged keep their health.
        Returns the other options that changed: they need a restart.

        Error handling: raises :class:`~trioproxy.config.ConfigError` (a bad
        table, a missing credential) and then changes nothing.
        """
        router = Router(new.provider_specs(), new.routing_strategy, previous=self.router)
        changes = {name: getattr(new, name) for name in _RELOADABLE}
        self.router = router
        self._sticky_header = new.sticky_header.lower().encode("latin-1")
        old, self.config = self.config, self.config.replace(**changes)
        return [
            name
            for name in old.__dataclass_fields__
            if name not in _RELOADABLE and getattr(old, name) != getattr(new, name)
        ]

    def statistics(self) -> GatewayStatistics:
        return GatewayStatistics(
            ready=self.ready,
            active_requests=len(self.active),
            requests_total=self._total,
            outcomes=dict(self._outcomes),
            limiter=self.limiter.statistics(),
            detached=self.detached.statistics() if self.detached else None,
        )

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        else:  # websocket: not served
            await send({"type": "websocket.close", "code": 1003})

    # -- lifespan -------------------------------------------------------------
    async def _lifespan(self, receive: Receive, send: Send) -> None:
        message = await receive()
        assert message["type"] == "lifespan.startup"
        cfg = self.config
        store = None
        try:
            signer, store = await self._open_receipts()
        except (KeyError_, OSError, sqlite3.Error) as exc:
            log.error("cannot start: %s", exc)
            await send({"type": "lifespan.startup.failed", "message": str(exc)})
            return
        try:
            async with (
                open_upstream_client(cfg) as client,
                trio.open_nursery() as background,  # long-running chores, cancelled at the end
            ):
                async with open_detached_work(
                    cfg.max_pending_detached, cfg.detached_concurrency, cfg.drain_timeout
                ) as detached:
                    if signer is not None and store is not None:
                        self.receipts = ReceiptService(
                            signer, store, detached, cfg.max_pending_receipts, cfg.sign_truncated
                        )
                        background.start_soon(
                            self.receipts.prune_forever, cfg.receipt_ttl_days, name="receipt-pruner"
                        )
                    self.client, self.detached, self.ready = client, detached, True
                    await send({"type": "lifespan.startup.complete"})
                    message = await receive()
                    self.ready = False
                # Detached work (receipts included) is drained by now.
                background.cancel_scope.cancel()
        finally:
            self.client = None
            if store is not None:
                with trio.CancelScope(shield=True):
                    await store.aclose()
        await send({"type": "lifespan.shutdown.complete"})

    async def _open_receipts(self) -> tuple[Signer | None, ReceiptStore | None]:
        cfg = self.config
        if not cfg.receipts:
            return None, None
        data_dir = Path(cfg.data_dir)
        key_path = Path(cfg.signing_key_path) if cfg.signing_key_path else data_dir / "signing.key"
        signer = await trio.to_thread.run_sync(Signer.load_or_create, key_path)
        return signer, await open_store(cfg.receipt_store, data_dir)

    # -- requests -------------------------------------------------------------
    async def _http(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        if path == "/healthz":
            return await send_json(send, 200, {"status": "ok"})
        if path == "/readyz":
            return await self._readyz(send)
        if path.startswith(("/v1/signature/", "/v1/attestation/")) and scope["method"] == "GET":
            if self.keyring and path.startswith("/v1/signature/"):
                try:
                    self.keyring.authenticate(scope["headers"])
                except GatewayError as err:
                    body = orjson.loads(render_json(err, Dialect.OPENAI))
                    return await send_json(send, err.status, body)
            return await self._receipt_endpoint(path, send)
        if path == "/metrics" and self.metrics is not None:
            body = self.metrics.render()
            headers = [(b"content-type", CONTENT_TYPE), (b"content-length", b"%d" % len(body))]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            return await send({"type": "http.response.body", "body": body})
        if path.startswith("/debug/") and self.config.debug_endpoints:
            if path == "/debug/state":
                return await send_json(send, 200, debug_state(self))
            if path == "/debug/records" and self.recent is not None:
                return await send_json(send, 200, list(self.recent))
        route = ROUTES.get(path)
        dialect = route.dialect if route else dialect_for_path(path)
        ex = Exchange(
            request_id=request_id(scope),
            route=route.name if route else "unknown",
            method=scope["method"],
            started=trio.current_time(),
        )
        extra = [(b"x-trioproxy-request-id", ex.request_id.encode())]
        self.active.add(ex)
        try:
            try:
                if route is None:
                    raise NotFound(f"unknown route {scope['method']} {path}")
                if scope["method"] != route.method:
                    raise MethodNotAllowed(f"{path} accepts {route.method} only")
                key = self.keyring.authenticate(scope["headers"]) if self.keyring else None
                ex.key = key.name if key else None
                if route.name == "models" and await self._list_models(send, key, extra, ex):
                    return
                body = await read_body(scope, receive, self.config.max_body_bytes, ex)
                if body is None:
                    return  # the client left before sending its whole body
                parsed = validate(route, body)
                ex.request_sha256 = hashlib.sha256(body).hexdigest()
                ex.response_hash = hashlib.sha256()
                ex.model, ex.stream = parsed.model, parsed.stream
                if key is not None:
                    self.keyring.authorize(key, parsed.model)
                    self.keyring.admit(key)
                    key_limiter = self.keyring.limiter(key)
                    if key_limiter is not None:
                        await key_limiter.acquire(ex)
                        ex.held.append(key_limiter)
                upstream = self._upstream_request(route, scope, body, parsed, ex.request_id)
                assert self.client is not None
                await self.limiter.acquire(ex)
                ex.held.append(self.limiter)
            except GatewayError as err:
                ex.error, ex.outcome, ex.status = err, err.outcome, err.status
                await send_error(send, err, dialect, extra, ex)
                return
            if already_disconnected(receive):  # never start upstream work for a gone client
                ex.settle("client_disconnect")
                ex.disconnected_at = trio.current_time()
                return
            await relay(self.client, self.config, upstream, ex, send, receive, extra)
        except BaseException as exc:
            await self._abort(exc, ex, dialect, send, extra)
            if not isinstance(exc, Exception):
                raise
        finally:
            ex.release_slots()  # no-op unless the relay never started
            self.active.discard(ex)
            self._finish(ex, dialect)

    async def _receipt_endpoint(self, path: str, send: Send) -> None:
        receipts = self.receipts
        if receipts is None:
            err = NotFound("receipts are disabled on this gateway")
            return await send_json(send, 404, orjson.loads(render_json(err, Dialect.OPENAI)))
        if path == "/v1/attestation/key":
            return await send_json(send, 200, receipts.signer.public_key_document())
        key = path.removeprefix("/v1/signature/")
        status, document = await receipts.lookup(key)
        if status == 200 and document is not None:
            return await send_raw_json(send, 200, document)
        if status == 202:
            body = {"status": "pending", "message": f"receipt {key} is being signed"}
            return await send_json(send, 202, body, [(b"retry-after", b"1")])
        err = NotFound(f"no receipt for {key}")
        return await send_json(send, 404, orjson.loads(render_json(err, Dialect.OPENAI)))

    async def _list_models(
        self, send: Send, key: ApiKey | None, extra: list[tuple[bytes, bytes]], ex: Exchange
    ) -> bool:
        """GET /v1/models from the config when every provider names its models
        (aliases included, filtered by the key); False: ask an upstream."""
        names = self.router.listed_models("openai" if self.router.has("openai") else "anthropic")
        if names is None:
            return False
        data = [
            {"id": name, "object": "model", "created": 0, "owned_by": "trioproxy"}
            for name in names
            if key is None or self.keyring.allows(key, name)
        ]
        ex.status, ex.outcome = 200, "done"
        await send_json(send, 200, {"object": "list", "data": data}, extra)
        return True

    async def _readyz(self, send: Send) -> None:
        """Ready to serve, and which declared model pools have no healthy provider."""
        now = trio.current_time()
        ok = self.ready and self.client is not None
        unhealthy, declared = self.router.unhealthy_pools(now)
        providers = {s.name: s.state for s in self.router.statistics(now)}
        if unhealthy and len(unhealthy) == declared:
            ok = False  # nothing at all could be served
        body = {"ready": ok, "unhealthy_pools": unhealthy, "providers": providers}
        await send_json(send, 200 if ok else 503, body)

    def _upstream_request(
        self, route: Route, scope: dict[str, Any], body: bytes, parsed: ParsedBody, rid: str
    ) -> UpstreamRequest:
        kind = route.upstream_kind
        if kind == "any":
            kind = "openai" if self.router.has("openai") else "anthropic"
        pool = self.router.pool(kind, parsed.model)
        path = route.upstream_path
        if route.upstream_kind == "any" and kind == "anthropic":
            path = "/v1" + path  # Anthropic base URLs stop before /v1
        return UpstreamRequest(
            method=route.method,
            path=path,
            headers=forward_headers(scope["headers"], parsed.stream, request_id=rid),
            body=body,
            body_json=parsed.json,
            plan=pool.plan(session_key(scope["headers"], self._sticky_header, parsed, self.config)),
            dialect=route.dialect,
            parse_body=route.parse_response,
        )

    async def _abort(
        self,
        exc: BaseException,
        ex: Exchange,
        dialect: Dialect,
        send: Send,
        extra: list[tuple[bytes, bytes]],
    ) -> None:
        """The handler was cancelled (graceful shutdown) or hit a bug: tell the
        client in its dialect if anyone is listening, within a bounded shield."""
        if ex.outcome is not None:
            return
        shutdown = not isinstance(exc, Exception)
        if not shutdown:
            log.exception("unexpected error in request %s", ex.request_id, exc_info=exc)
        err = (
            GatewayShutdown("gateway is shutting down")
            if shutdown
            else GatewayError("internal gateway error")
        )
        ex.error, ex.outcome = err, err.outcome
        with trio.move_on_after(_SHUTDOWN_SEND_TIMEOUT, shield=True):
            if ex.status and ex.stream:  # response started: end it with an error event
                event = render_sse(err, dialect)
                ex.sent(event)
                await send({"type": "http.response.body", "body": event})
            elif not ex.status:
                ex.status = err.status
                await send_error(send, err, dialect, extra, ex)

    def _finish(self, ex: Exchange, dialect: Dialect) -> None:
        """Record the outcome exactly once, log one access line, hand off."""
        ex.ended = trio.current_time()
        if ex.outcome is None:  # cannot happen; recorded rather than lost
            ex.outcome = ex.upstream_outcome or "unknown"
        record = CompletionRecord.from_exchange(ex, dialect is Dialect.ANTHROPIC)
        self._total += 1
        self._outcomes[record.outcome] = self._outcomes.get(record.outcome, 0) + 1
        if self.recent is not None:
            self.recent.append(record)
        if self.config.access_log:
            access_log.info("%s", record.to_json().decode())
        if self.metrics is not None:
            self.metrics.observe(record, ex)
        if self.receipts is not None:
            self.receipts.submit(record)
        if self.detached is not None:
            for hook in self.hooks:
                self.detached.submit(hook, record, name="completion-hook")
