"""Where signed receipts live: a small interface, an in-memory store and SQLite.

Rules:
- A receipt is stored under the id the gateway made for it (128 random bits,
  never derived from client input), insert-only: a second row with the same id
  is an error (:class:`ReceiptExists`), never a replacement.
- A receipt is found by its own id, or by the upstream's completion id (the
  newest such receipt the caller may read).
- Reads are scoped: ``owner`` is the id of the API key asking (``ApiKey.id``), and a row made
  for another key is not found, exactly like an unknown id (no existence
  oracle); ``owner=None`` reads any row (an admin key, or a gateway without
  keys).

The interface is what a store for several gateway hosts must offer: ``put_many``,
``get``, ``prune`` of receipts older than a time, and ``aclose``.

SQLite (the default) runs in WAL mode; every blocking call goes through
``trio.to_thread.run_sync`` under one lock, so there is one writer and the trio
thread never blocks on disk. The database file is created 0600 (SQLite gives
its ``-wal`` and ``-shm`` files the same mode) in a 0700 directory.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import trio

__all__ = ["MemoryStore", "ReceiptExists", "ReceiptStore", "Row", "SQLiteStore", "open_store"]


class ReceiptExists(Exception):
    """A receipt with this id is stored already (insert-only)."""


@dataclass(frozen=True, slots=True)
class Row:
    receipt_id: str
    completion_id: str | None  # the upstream's id, if it gave one
    owner: str | None  # the API key's id (never its name), None in open mode
    created: float
    document: bytes  # the signed receipt document (JSON)


def _readable(row_owner: str | None, owner: str | None) -> bool:
    return owner is None or row_owner == owner


class ReceiptStore(Protocol):
    async def put_many(self, rows: list[Row]) -> None: ...

    async def get(self, ref: str, owner: str | None) -> bytes | None: ...

    async def prune(self, older_than: float) -> int: ...

    async def aclose(self) -> None: ...


class MemoryStore:
    """For tests and for gateways that need no persistence."""

    def __init__(self) -> None:
        self.rows: dict[str, Row] = {}

    async def put_many(self, rows: list[Row]) -> None:
        for row in rows:
            if row.receipt_id in self.rows:
                raise ReceiptExists(row.receipt_id)
            self.rows[row.receipt_id] = row

    async def get(self, ref: str, owner: str | None) -> bytes | None:
        row = self.rows.get(ref)
        if row is not None:
            return row.document if _readable(row.owner, owner) else None
        found = [
            r for r in self.rows.values() if r.completion_id == ref and _readable(r.owner, owner)
        ]
        return max(found, key=lambda r: r.created).document if found else None

    async def prune(self, older_than: float) -> int:
        old = [k for k, row in self.rows.items() if row.created < older_than]
        for k in old:
            del self.rows[k]
        return len(old)

    async def aclose(self) -> None:
        pass


_SCHEMA = """
CREATE TABLE IF NOT EXISTS receipts_v2 (
    id TEXT PRIMARY KEY,
    completion_id TEXT,
    owner TEXT,
    created REAL NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS receipts_v2_completion ON receipts_v2 (completion_id, created);
CREATE INDEX IF NOT EXISTS receipts_v2_created ON receipts_v2 (created);
"""


class SQLiteStore:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self._lock = trio.Lock()

    @classmethod
    async def open(cls, path: Path) -> SQLiteStore:
        def connect() -> sqlite3.Connection:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
            db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            return db

        return cls(await trio.to_thread.run_sync(connect))

    async def put_many(self, rows: list[Row]) -> None:
        """One transaction, one thread hop for the whole batch; insert-only."""

        def write() -> None:
            try:
                with self._db:
                    self._db.execute("BEGIN")
                    self._db.executemany(
                        "INSERT INTO receipts_v2 (id, completion_id, owner, created, body) "
                        "VALUES (?,?,?,?,?)",
                        [
                            (r.receipt_id, r.completion_id, r.owner, r.created, r.document)
                            for r in rows
                        ],
                    )
            except sqlite3.IntegrityError as exc:
                raise ReceiptExists(str(exc)) from None

        async with self._lock:
            await trio.to_thread.run_sync(write)

    async def get(self, ref: str, owner: str | None) -> bytes | None:
        def query() -> bytes | None:
            found = self._db.execute(
                "SELECT body, owner FROM receipts_v2 WHERE id = ?", (ref,)
            ).fetchone()
            if found is not None:
                return bytes(found[0]) if _readable(found[1], owner) else None
            if owner is None:
                found = self._db.execute(
                    "SELECT body FROM receipts_v2 WHERE completion_id = ? "
                    "ORDER BY created DESC LIMIT 1",
                    (ref,),
                ).fetchone()
            else:
                found = self._db.execute(
                    "SELECT body FROM receipts_v2 WHERE completion_id = ? AND owner = ? "
                    "ORDER BY created DESC LIMIT 1",
                    (ref, owner),
                ).fetchone()
            return bytes(found[0]) if found else None

        async with self._lock:
            return await trio.to_thread.run_sync(query)

    async def prune(self, older_than: float) -> int:
        async with self._lock:
            cursor = await trio.to_thread.run_sync(
                self._db.execute, "DELETE FROM receipts_v2 WHERE created < ?", (older_than,)
            )
            return int(cursor.rowcount)

    async def oldest(self, limit: int) -> list[Row]:
        """Up to ``limit`` rows, oldest first (the Redis spool's copier)."""

        def query() -> list[Row]:
            found = self._db.execute(
                "SELECT id, completion_id, owner, created, body FROM receipts_v2 "
                "ORDER BY created LIMIT ?",
                (limit,),
            ).fetchall()
            return [Row(r[0], r[1], r[2], r[3], bytes(r[4])) for r in found]

        async with self._lock:
            return await trio.to_thread.run_sync(query)

    async def delete(self, ids: list[str]) -> None:
        def write() -> None:
            with self._db:
                self._db.execute("BEGIN")
                self._db.executemany("DELETE FROM receipts_v2 WHERE id = ?", [(i,) for i in ids])

        async with self._lock:
            await trio.to_thread.run_sync(write)

    async def aclose(self) -> None:
        async with self._lock:
            await trio.to_thread.run_sync(self._db.close)


async def open_store(kind: str, data_dir: Path) -> ReceiptStore:
    """``memory`` or ``sqlite``; ``redis`` opens the SQLite file as its spool
    (the server wraps it, :mod:`trioproxy.shared.receipts`)."""
    if kind == "memory":
        return MemoryStore()
    if kind == "redis":
        return await SQLiteStore.open(data_dir / "receipts-spool.sqlite3")
    return await SQLiteStore.open(data_dir / "receipts.sqlite3")
