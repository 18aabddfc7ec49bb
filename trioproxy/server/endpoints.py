"""The gateway's own endpoints: probes, metrics, debug views, receipts, the model list.

None of them reaches an upstream (but ``GET /v1/models`` when a provider serves a
pattern: then :mod:`trioproxy.server.app` relays it). Each takes what it shows
as arguments (statistics records, the router, the receipt service), not the
gateway. Errors are JSON in the OpenAI dialect (these are not Anthropic routes).
"""

from __future__ import annotations

from typing import Any

import orjson

from ..admission.auth import ApiKey, KeyRing
from ..asgi import Send, send_json, send_raw_json
from ..dialects import Dialect, render_json
from ..errors import GatewayError, NotFound
from ..observe.metrics import CONTENT_TYPE, Metrics
from ..receipts.service import ReceiptService
from ..routing.pools import Router

__all__ = ["list_models", "readyz", "receipt", "send_error_json", "send_metrics"]


async def send_error_json(send: Send, err: GatewayError) -> None:
    await send_json(send, err.status, orjson.loads(render_json(err, Dialect.OPENAI)))


async def readyz(send: Send, ready: bool, router: Router, now: float) -> None:
    """Ready to serve, and which declared model pools have no healthy provider."""
    unhealthy, declared = router.unhealthy_pools(now)
    providers = {s.name: s.state for s in router.statistics(now)}
    if unhealthy and len(unhealthy) == declared:
        ready = False  # nothing at all could be served
    body = {"ready": ready, "unhealthy_pools": unhealthy, "providers": providers}
    await send_json(send, 200 if ready else 503, body)


async def send_metrics(send: Send, metrics: Metrics) -> None:
    body = metrics.render()
    headers = [(b"content-type", CONTENT_TYPE), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def receipt(send: Send, path: str, receipts: ReceiptService | None) -> None:
    """``GET /v1/attestation/key`` and ``GET /v1/signature/{id}``."""
    if receipts is None:
        return await send_error_json(send, NotFound("receipts are disabled on this gateway"))
    if path == "/v1/attestation/key":
        return await send_json(send, 200, receipts.signer.public_key_document())
    key = path.removeprefix("/v1/signature/")
    status, document = await receipts.lookup(key)
    if status == 200 and document is not None:
        return await send_raw_json(send, 200, document)
    if status == 202:
        body = {"status": "pending", "message": f"receipt {key} is being signed"}
        return await send_json(send, 202, body, [(b"retry-after", b"1")])
    await send_error_json(send, NotFound(f"no receipt for {key}"))


async def list_models(
    send: Send,
    router: Router,
    keyring: KeyRing,
    key: ApiKey | None,
    extra: list[tuple[bytes, bytes]],
) -> bool:
    """GET /v1/models from the config when every provider names its models
    (aliases included, filtered by the key); False: ask an upstream."""
    names = router.listed_models("openai" if router.has("openai") else "anthropic")
    if names is None:
        return False
    data: list[dict[str, Any]] = [
        {"id": name, "object": "model", "created": 0, "owned_by": "trioproxy"}
        for name in names
        if key is None or keyring.allows(key, name)
    ]
    await send_json(send, 200, {"object": "list", "data": data}, extra)
    return True
