"""Receipts in Redis, readable from every host, never lost while Redis is away.

Rules:
- The rules of :mod:`trioproxy.receipts.store` hold: insert-only under the
  gateway's own id, found by receipt id or completion id, reads scoped to the
  owning key (another key's receipt is not found, exactly like an unknown id).
  Each receipt expires ``receipt_ttl_days`` after it was stored.
- A reference from a client becomes part of a Redis key name only when it is
  1-256 visible ASCII bytes; anything else is not found.
- Redis unavailable: the batch goes to the local spool (the SQLite store in the
  data dir) and a copier moves spooled rows to Redis once it answers again
  (a row already there is not an error: a copy may have been interrupted).
  Reads ask Redis, then the spool: a receipt is readable on the host that
  spooled it meanwhile, and on every host once copied.
"""

from __future__ import annotations

import logging

import trio

from ..receipts.store import ReceiptExists, Row, SQLiteStore
from .redis import RedisUnavailable, SharedRedis
from .scripts import GET_RECEIPT, PUT_RECEIPT

__all__ = ["RedisReceiptStore", "SpooledStore"]

log = logging.getLogger("trioproxy.receipts")
COPY_BATCH = 200  # spooled rows copied to Redis per round
INDEX_KEEP = 64  # receipts a completion-id index keeps (the newest; per owner and in all)


def _ref_ok(ref: str) -> bool:
    return 0 < len(ref) <= 256 and ref.isascii() and ref.isprintable() and " " not in ref


def _indexes(completion_id: str, owner: str | None) -> tuple[str, ...]:
    """The completion-id index of every owner, then the owner's own (owner ids
    are hex, the completion id bounded by :func:`_ref_ok`)."""
    every = "tp:cid:" + completion_id
    return (every,) if not owner else (every, "tp:ocid:" + owner + ":" + completion_id)


class RedisReceiptStore:
    def __init__(self, redis: SharedRedis, ttl_days: float) -> None:
        self.redis = redis
        self.ttl = max(1, int(ttl_days * 86400))
        self._put = redis.script(PUT_RECEIPT)
        self._get = redis.script(GET_RECEIPT)

    async def put(self, row: Row) -> bool:
        """True if stored, False if a receipt with that id is there already."""
        stored = await self.redis.run(
            self._put,
            (
                "tp:rcpt:" + row.receipt_id,
                *_indexes(row.completion_id or row.receipt_id, row.owner),
            ),
            (
                row.document,
                row.owner or "",
                repr(row.created),
                row.completion_id or "",
                self.ttl,
                INDEX_KEEP,
            ),
            off_path=True,  # detached: the spool takes it if this fails
        )
        return bool(stored)

    async def get(self, ref: str, owner: str | None) -> bytes | None:
        if not _ref_ok(ref):
            return None
        found = await self.redis.run(
            self._get,
            ("tp:rcpt:" + ref, _indexes(ref, owner)[-1]),
            (owner or "", "1" if owner is None else "0"),
        )
        return bytes(found) if found else None


class SpooledStore:
    """A :class:`~trioproxy.receipts.store.ReceiptStore`: Redis first, the spool
    when Redis cannot be asked."""

    def __init__(self, redis: RedisReceiptStore, spool: SQLiteStore) -> None:
        self.redis = redis
        self.spool = spool
        self.spooled = 0  # rows written to the spool
        self.copied = 0  # spooled rows copied to Redis

    async def put_many(self, rows: list[Row]) -> None:
        for i, row in enumerate(rows):
            try:
                stored = await self.redis.put(row)
            except RedisUnavailable:
                await self.spool.put_many(rows[i:])
                self.spooled += len(rows) - i
                return
            if not stored:
                raise ReceiptExists(row.receipt_id)

    async def get(self, ref: str, owner: str | None) -> bytes | None:
        try:
            found = await self.redis.get(ref, owner)
        except RedisUnavailable:
            found = None
        return found if found is not None else await self.spool.get(ref, owner)

    async def prune(self, older_than: float) -> int:
        return await self.spool.prune(older_than)  # Redis expires its own

    async def aclose(self) -> None:
        await self.spool.aclose()

    async def copy_forever(self, every: float = 1.0) -> None:
        """Move spooled rows to Redis whenever it answers (the spool's rows,
        oldest first, a batch at a time)."""
        while True:
            await self.redis.redis.wait_up()
            rows = await self.spool.oldest(COPY_BATCH)
            copied: list[str] = []
            try:
                for row in rows:
                    await self.redis.put(row)  # False: copied before, fine
                    copied.append(row.receipt_id)
            except RedisUnavailable:
                pass
            if copied:
                await self.spool.delete(copied)
                self.copied += len(copied)
                log.info("copied %d spooled receipts to redis", len(copied))
            if len(copied) < COPY_BATCH:
                await trio.sleep(every)
