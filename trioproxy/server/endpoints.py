"""The gateway's own endpoints: probes, metrics, debug views, receipts, the model list.

None of them reaches an upstream (but ``GET /v1/models`` when a provider serves a
pattern: then :mod:`trioproxy.server.app` relays it). Each takes what it shows
as arguments (statistics records, the router, the receipt service), not the
gateway. Errors are JSON in the OpenAI dialect (these are not Anthropic routes).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any, Protocol
from urllib.parse import parse_qs

import orjson

from ..admission.auth import ApiKey, KeyRing
from ..asgi import Scope, Send, send_json, send_raw_json
from ..config import Config
from ..dialects import Dialect, render_json
from ..errors import AdminOnly, BadRequest, GatewayError, NotFound
from ..observe.metrics import CONTENT_TYPE, Metrics
from ..receipts.service import ReceiptService
from ..relay.record import CompletionRecord
from ..routing.pools import Router
from .accounts import Accounts

__all__ = [
    "MAX_RECORDS_PAGE",
    "OwnEndpoints",
    "is_own",
    "debug_records",
    "list_models",
    "readyz",
    "usage",
    "receipt",
    "send_error_json",
    "send_metrics",
]


async def send_error_json(send: Send, err: GatewayError) -> None:
    await send_json(send, err.status, orjson.loads(render_json(err, Dialect.OPENAI)))


async def readyz(
    send: Send, ready: bool, router: Router, now: float, detailed: bool, redis: str
) -> None:
    """Ready to serve; with ``detailed`` (an admin key, or no keys configured) also
    which declared model pools have no healthy provider, each provider's state
    and Redis's (``up``, ``down``, ``off``). ``redis``: ``down-closed`` when
    Redis is down and ``redis_failure = "closed"``: then not ready (limited
    keys would get 503s)."""
    unhealthy, declared = router.unhealthy_pools(now)
    if unhealthy and len(unhealthy) == declared:
        ready = False  # nothing at all could be served
    if redis == "down-closed":
        ready = False
    body: dict[str, object] = {"ready": ready}
    if detailed:
        body["unhealthy_pools"] = unhealthy
        body["providers"] = {s.name: s.state for s in router.statistics(now)}
        body["redis"] = redis.removesuffix("-closed")
    await send_json(send, 200 if ready else 503, body)


async def send_metrics(send: Send, metrics: Metrics) -> None:
    body = metrics.render()
    headers = [(b"content-type", CONTENT_TYPE), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def receipt(
    send: Send, path: str, query: bytes, receipts: ReceiptService | None, owner: str | None
) -> None:
    """``GET /v1/attestation/key`` and ``GET /v1/signature/{id}`` (by receipt id or
    the upstream's completion id). ``owner``: the reading key's id, None for an
    admin key or a gateway without keys; another key's receipt is a 404 exactly
    like an unknown id. ``?signing_algo=ed25519`` answers the shape that
    attested-inference verifiers read: ``{text, signature, signing_address,
    signing_algo}``, ``text`` = ``<request sha256>:<response sha256>``."""
    if receipts is None:
        return await send_error_json(send, NotFound("receipts are disabled on this gateway"))
    if path == "/v1/attestation/key":
        return await send_json(send, 200, receipts.signer.public_key_document())
    ref = path.removeprefix("/v1/signature/")
    params = parse_qs(query.decode("ascii", "replace"))
    algo = params.get("signing_algo", [None])[0]
    if algo not in (None, "ed25519"):
        return await send_error_json(send, BadRequest("signing_algo must be ed25519"))
    status, document = await receipts.lookup(ref, owner)
    if status == 200 and document is not None:
        if algo is None:
            return await send_raw_json(send, 200, document)
        doc = orjson.loads(document)
        body = {
            "text": doc["text"],
            "signature": doc["text_signature"],
            "signing_address": receipts.signer.public_hex(),
            "signing_algo": "ed25519",
        }
        return await send_json(send, 200, body)
    if status == 202:
        body = {"status": "pending", "message": "the receipt is being signed"}
        return await send_json(send, 202, body, [(b"retry-after", b"1")])
    await send_error_json(send, NotFound("no such receipt"))


async def usage(scope: Scope, gw: GatewayView, key: ApiKey | None, admin: bool) -> dict[str, Any]:
    """``GET /v1/usage``: the calling key's totals; an admin key may ask for
    another key's with ``?key=NAME`` (a name that is not configured is a 404)."""
    asked = parse_qs(scope.get("query_string", b"").decode("ascii", "replace")).get("key")
    if asked and asked[0] != (key.name if key is not None else None):
        if not admin:
            raise AdminOnly("reading another key's usage needs an admin key")
        named = [k for k in gw.keyring.keys if k.name == asked[0]]
        if not named:
            raise NotFound("no such key")
        key = named[0]
    return {"key": key.name if key is not None else None, **await gw.accounts.usage(key)}


MAX_RECORDS_PAGE = 1000


async def debug_records(send: Send, query: bytes, recent: Sequence[CompletionRecord]) -> None:
    """``GET /debug/records?offset=N&limit=M``: oldest first, at most
    ``MAX_RECORDS_PAGE`` a call (default 100); ``next`` is the offset to ask
    for after this page, null at the end."""
    params = parse_qs(query.decode("ascii", "replace"))
    try:
        offset = max(0, int(params.get("offset", ["0"])[0]))
        limit = min(MAX_RECORDS_PAGE, max(1, int(params.get("limit", ["100"])[0])))
    except ValueError:
        return await send_error_json(send, BadRequest("offset and limit must be integers"))
    page = list(itertools.islice(recent, offset, offset + limit))
    end = offset + len(page)
    body = {"records": page, "total": len(recent), "next": end if end < len(recent) else None}
    await send_json(send, 200, body)


async def list_models(
    send: Send,
    router: Router,
    keyring: KeyRing,
    key: ApiKey | None,
    extra: list[tuple[bytes, bytes]],
) -> bool:
    """GET /v1/models from the config when every provider names its models
    (aliases included, filtered by the key; every kind: the chat and messages
    routes reach them all); False: ask an upstream."""
    names = router.listed_models()
    if names is None:
        return False
    data: list[dict[str, Any]] = [
        {"id": name, "object": "model", "created": 0, "owned_by": "trioproxy"}
        for name in names
        if key is None or keyring.allows(key, name)
    ]
    await send_json(send, 200, {"object": "list", "data": data}, extra)
    return True


_OWN = frozenset({"/healthz", "/readyz", "/metrics", "/v1/usage", "/v1/attestation/key"})
_OWN_PREFIXES = ("/v1/signature/", "/debug/")


def is_own(path: str) -> bool:
    return path in _OWN or path.startswith(_OWN_PREFIXES)


class GatewayView(Protocol):
    """What the gateway's own endpoints read of it (read-only)."""

    @property
    def ready(self) -> bool: ...

    @property
    def upstream(self) -> object | None: ...

    @property
    def keyring(self) -> KeyRing: ...

    @property
    def router(self) -> Router: ...

    @property
    def receipts(self) -> ReceiptService | None: ...

    @property
    def metrics(self) -> Metrics | None: ...

    @property
    def config(self) -> Config: ...

    @property
    def recent(self) -> Sequence[CompletionRecord] | None: ...

    def clock(self) -> float: ...

    @property
    def accounts(self) -> Accounts: ...

    def debug_state(self) -> dict[str, Any]: ...

    def trace(self, request_id: str) -> dict[str, Any] | None: ...


class OwnEndpoints:
    """/healthz, /readyz, /metrics, /debug/*, /v1/signature/*, /v1/attestation/key."""

    def __init__(self, gateway: GatewayView) -> None:
        self._gateway = gateway

    async def handle(self, scope: Scope, path: str, send: Send) -> bool:
        """The gateway's own endpoints; False if ``path`` is not one (then a 404).
        With keys configured, /metrics, /debug/* and /readyz's details need an
        admin key, and a receipt is read only with the key that made it (or an
        admin key); /healthz, a bare /readyz and the public key stay open."""
        try:
            return await self._handle(scope, path, send)
        except GatewayError as err:  # 401 / 403 / 400, in JSON
            await send_error_json(send, err)
            return True

    async def _handle(self, scope: Scope, path: str, send: Send) -> bool:
        gw = self._gateway
        if path == "/healthz":
            await send_json(send, 200, {"status": "ok"})
            return True
        admin, key, refused = not gw.keyring, None, None
        if gw.keyring:
            try:
                key = gw.keyring.authenticate(scope["headers"])
                admin = key.admin
            except GatewayError as err:
                refused = err
        if path == "/readyz":
            ready = gw.ready and gw.upstream is not None
            await readyz(send, ready, gw.router, gw.clock(), admin, gw.accounts.redis_state())
            return True
        if path == "/v1/usage" and scope["method"] == "GET":
            if refused is not None:
                raise refused
            await send_json(send, 200, await usage(scope, gw, key, admin))
            return True
        public_key = path == "/v1/attestation/key"
        if (public_key or path.startswith("/v1/signature/")) and scope["method"] == "GET":
            if refused is not None and not public_key:
                raise refused
            owner = None if admin or key is None else key.id
            query = scope.get("query_string", b"")
            await receipt(send, path, query, gw.receipts, owner)
            return True
        metrics = path == "/metrics" and gw.metrics is not None
        debug = path.startswith("/debug/") and gw.config.debug_endpoints
        if not (metrics or debug):
            return False
        if not admin:
            raise refused or AdminOnly(f"{path} needs an admin key")
        if gw.metrics is not None and metrics:
            await send_metrics(send, gw.metrics)
        elif path == "/debug/state":
            await send_json(send, 200, gw.debug_state())
        elif path.startswith("/debug/trace/"):
            trace = gw.trace(path.removeprefix("/debug/trace/"))
            if trace is None:
                raise NotFound("no such request among those in flight or kept")
            await send_json(send, 200, trace)
        elif path == "/debug/records" and gw.recent is not None:
            await debug_records(send, scope.get("query_string", b""), gw.recent)
        else:
            return False
        return True
