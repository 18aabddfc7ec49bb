"""The ASGI lifespan of one worker: the resources that outlive requests.

Resource handling: the lifespan task owns the upstream sender (:class:`~trioproxy.upstream.client.Upstream`),
the Redis client when ``redis_url`` is set (:mod:`trioproxy.shared`), the
service nursery (detached work: receipts, hooks, usage) and a background
nursery (the receipt pruner; with Redis, the lease refresher, the Redis probe
and the receipt spool's copier; providers' health probes when one has a ``health_check``). On shutdown, after Hypercorn has let in-flight requests
finish within ``graceful_timeout``, pending detached work is drained (bounded
by ``drain_timeout``) before the upstream pool and the receipt store close.

Error handling: a signing key or store that cannot be used fails the start-up
(``lifespan.startup.failed``, one line in the log); the CLI checks the key
first, so ``serve`` reports it as one line on stderr.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import AsyncIterator
from typing import Protocol

import trio

from ..asgi import Receive, Send
from ..config import Config
from ..observe.tracing import Tracing
from ..receipts.detached import DetachedWork, open_detached_work
from ..receipts.service import KeyError_, ReceiptService, open_signer_and_store
from ..receipts.store import ReceiptStore, SQLiteStore
from ..relay.drain import Drains
from ..relay.exchange import Exchange
from ..routing.pools import Router
from ..shared.receipts import RedisReceiptStore, SpooledStore
from ..shared.redis import SharedRedis, open_shared_redis
from ..upstream.client import Upstream, open_upstream
from .accounts import Accounts
from .probes import probe_forever

__all__ = ["lifespan"]

log = logging.getLogger("trioproxy")


class Served(Protocol):
    """What the lifespan sets up on the gateway."""

    config: Config
    upstream: Upstream | None
    detached: DetachedWork | None
    drains: Drains | None
    drain_work: DetachedWork | None
    receipts: ReceiptService | None
    ready: bool
    tracing: Tracing | None
    accounts: Accounts
    router: Router

    def finish(self, ex: Exchange) -> None: ...


@contextlib.asynccontextmanager
async def _maybe_redis(config: Config) -> AsyncIterator[SharedRedis | None]:
    if not config.redis_url:
        yield None
        return
    async with open_shared_redis(config) as redis:
        yield redis


async def lifespan(gw: Served, receive: Receive, send: Send) -> None:
    message = await receive()
    assert message["type"] == "lifespan.startup"
    cfg = gw.config
    store = None
    try:
        signer, store = await open_signer_and_store(gw.config)
    except (KeyError_, OSError, sqlite3.Error) as exc:
        log.error("cannot start: %s", exc)
        await send({"type": "lifespan.startup.failed", "message": str(exc)})
        return
    try:
        async with (
            open_upstream(cfg) as upstream,
            _maybe_redis(cfg) as redis,
            trio.open_nursery() as background,  # long-running chores, cancelled at the end
        ):
            async with open_detached_work(
                cfg.max_pending_detached, cfg.detached_concurrency, cfg.drain_timeout
            ) as detached:
                if redis is not None:
                    shared = gw.accounts.share(redis, detached.submit)
                    background.start_soon(shared.refresh_forever, name="lease-refresher")
                if signer is not None and store is not None:
                    store = _receipt_store(cfg, store, redis, background)
                    gw.receipts = ReceiptService(
                        signer, store, detached, cfg.max_pending_receipts, cfg.sign_truncated,
                        cfg.receipt_flush_delay,
                    )  # fmt: skip
                    background.start_soon(
                        gw.receipts.prune_forever, cfg.receipt_ttl_days, name="receipt-pruner"
                    )
                if any(s.health_check for s in cfg.provider_specs):
                    background.start_soon(
                        probe_forever, lambda: gw.router, upstream, name="health-probes"
                    )
                if redis is not None:  # every script registered by now
                    await redis.load_scripts()
                async with open_detached_work(
                    cfg.max_drains, cfg.max_drains, cfg.drain_timeout
                ) as drains:  # records of drains go to the receipts' work: closed first
                    gw.drains, gw.drain_work = Drains(drains, gw.finish), drains
                    gw.upstream, gw.detached, gw.ready = upstream, detached, True
                    await send({"type": "lifespan.startup.complete"})
                    message = await receive()
                    gw.ready = False
            # Detached work (receipts and usage included) is drained by now.
            background.cancel_scope.cancel()
            gw.accounts.unshare()
    finally:
        gw.upstream = None
        if gw.tracing is not None:  # flush the spans (the exporter's thread joins)
            with trio.move_on_after(5, shield=True):
                await trio.to_thread.run_sync(gw.tracing.shutdown, abandon_on_cancel=True)
        if store is not None:
            with trio.CancelScope(shield=True):
                await store.aclose()
    await send({"type": "lifespan.shutdown.complete"})


def _receipt_store(
    cfg: Config, store: ReceiptStore, redis: SharedRedis | None, background: trio.Nursery
) -> ReceiptStore:
    """``receipt_store = "redis"``: Redis, with the SQLite file as its spool."""
    if cfg.receipt_store != "redis" or redis is None or not isinstance(store, SQLiteStore):
        return store
    spooled = SpooledStore(RedisReceiptStore(redis, cfg.receipt_ttl_days), store)
    background.start_soon(spooled.copy_forever, name="receipt-spool-copier")
    return spooled
