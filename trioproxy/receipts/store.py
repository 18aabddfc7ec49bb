"""Where signed receipts live: a small interface, an in-memory store and SQLite.

The interface is what a store for several gateway hosts (Redis, later) must
offer: ``put`` (idempotent on the receipt id), ``get`` by receipt id or gateway
request id, ``prune`` of receipts older than a time, and ``aclose``.

SQLite (the default) runs in WAL mode; every blocking call goes through
``trio.to_thread.run_sync`` under one lock, so there is one writer and the trio
thread never blocks on disk.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Protocol

import trio

__all__ = ["MemoryStore", "ReceiptStore", "Row", "SQLiteStore", "open_store"]


Row = tuple[str, str, float, bytes]  # receipt id, request id, created, signed document


class ReceiptStore(Protocol):
    async def put(self, receipt_id: str, request_id: str, created: float, body: bytes) -> None: ...

    async def put_many(self, rows: list[Row]) -> None: ...

    async def get(self, key: str) -> bytes | None: ...

    async def prune(self, older_than: float) -> int: ...

    async def aclose(self) -> None: ...


class MemoryStore:
    """For tests and for gateways that need no persistence."""

    def __init__(self) -> None:
        self.rows: dict[str, tuple[str, float, bytes]] = {}
        self._by_request: dict[str, str] = {}

    async def put(self, receipt_id: str, request_id: str, created: float, body: bytes) -> None:
        self.rows[receipt_id] = (request_id, created, body)
        self._by_request[request_id] = receipt_id

    async def put_many(self, rows: list[Row]) -> None:
        for row in rows:
            await self.put(*row)

    async def get(self, key: str) -> bytes | None:
        row = self.rows.get(key) or self.rows.get(self._by_request.get(key, ""))
        return row[2] if row else None

    async def prune(self, older_than: float) -> int:
        old = [k for k, (_, created, _) in self.rows.items() if created < older_than]
        for k in old:
            self._by_request.pop(self.rows.pop(k)[0], None)
        return len(old)

    async def aclose(self) -> None:
        pass


_SCHEMA = """
CREATE TABLE IF NOT EXISTS receipts (
    id TEXT PRIMARY KEY,
    request_id TEXT NOT NULL,
    created REAL NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS receipts_request_id ON receipts (request_id);
CREATE INDEX IF NOT EXISTS receipts_created ON receipts (created);
"""


class SQLiteStore:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self._lock = trio.Lock()

    @classmethod
    async def open(cls, path: Path) -> SQLiteStore:
        def connect() -> sqlite3.Connection:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            # Created 0600 here: SQLite gives its -wal and -shm files the same mode.
            os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
            db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            return db

        return cls(await trio.to_thread.run_sync(connect))

    async def put(self, receipt_id: str, request_id: str, created: float, body: bytes) -> None:
        async with self._lock:
            await trio.to_thread.run_sync(
                self._db.execute,
                "INSERT OR REPLACE INTO receipts (id, request_id, created, body) VALUES (?,?,?,?)",
                (receipt_id, request_id, created, body),
            )

    async def put_many(self, rows: list[Row]) -> None:
        """One transaction, one thread hop for the whole batch."""

        def write() -> None:
            with self._db:
                self._db.execute("BEGIN")
                self._db.executemany(
                    "INSERT OR REPLACE INTO receipts (id, request_id, created, body) "
                    "VALUES (?,?,?,?)",
                    rows,
                )

        async with self._lock:
            await trio.to_thread.run_sync(write)

    async def get(self, key: str) -> bytes | None:
        def query() -> bytes | None:
            row = self._db.execute(
                "SELECT body FROM receipts WHERE id = ? OR request_id = ? LIMIT 1", (key, key)
            ).fetchone()
            return bytes(row[0]) if row else None

        async with self._lock:
            return await trio.to_thread.run_sync(query)

    async def prune(self, older_than: float) -> int:
        async with self._lock:
            cursor = await trio.to_thread.run_sync(
                self._db.execute, "DELETE FROM receipts WHERE created < ?", (older_than,)
            )
            return int(cursor.rowcount)

    async def aclose(self) -> None:
        async with self._lock:
            await trio.to_thread.run_sync(self._db.close)


async def open_store(kind: str, data_dir: Path) -> ReceiptStore:
    if kind == "memory":
        return MemoryStore()
    return await SQLiteStore.open(data_dir / "receipts.sqlite3")
