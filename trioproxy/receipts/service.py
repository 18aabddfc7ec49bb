"""Signed receipts of exchanges: built after the stream, signed and stored off the hot path.

What a receipt proves: that this gateway (the holder of the Ed25519 key named by
``key_id``) relayed a request whose body hashes to ``request_sha256`` and sent
the client exactly the bytes hashing to ``response_sha256``, with the stated
model, route, outcome and timing. What it does not prove: what the model server
computed (only the upstream's own signature, when fetched, speaks for that),
nor that the client received every byte (a hang-up loses bytes in flight).

Canonical form: the receipt object serialised as JSON with sorted keys and no
whitespace (``orjson`` with ``OPT_SORT_KEYS``); the signature is Ed25519 over
those bytes, base64-encoded.

Resource handling: hand-offs are bounded by ``max_pending_receipts``; when full
the receipt is dropped, counted and logged (the request never waits). A request
only queues its record; one flusher (a detached job in the service nursery,
started when the first record of an empty queue arrives) waits
``receipt_flush_delay`` (20 ms), then builds, signs and stores whatever has
queued, in batches: one task, one thread hop and one transaction per batch
rather than per receipt. It is drained on graceful shutdown like any detached
work.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import logging
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import trio
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..config import Config
from ..relay.record import CompletionRecord
from .detached import DetachedWork
from .document import build_receipt, compatible_text
from .store import ReceiptStore, Row, open_store

__all__ = [
    "KeyError_",
    "ReceiptService",
    "ReceiptStatistics",
    "Signer",
    "build_receipt",
    "compatible_text",
    "canonical",
    "open_signer_and_store",
    "signing_key_path",
    "key_id_of",
    "verify_receipt",
]

log = logging.getLogger("trioproxy.receipts")
_STORED_KEPT = 20_000  # as many as /debug/records keeps
_SIGN_SLICE = 8  # signatures between two checkpoints of the flusher (~1 ms)


class KeyError_(RuntimeError):
    """The signing key cannot be used (bad permissions or content)."""


def canonical(receipt: dict[str, Any]) -> bytes:
    return orjson.dumps(receipt, option=orjson.OPT_SORT_KEYS)


def key_id_of(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


class Signer:
    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        self.public = private.public_key()
        self.key_id = key_id_of(self.public)

    @classmethod
    def load_or_create(cls, path: Path) -> Signer:
        """Generate the key on first start (mode 0600); refuse a key file that
        other users can read."""
        if path.exists():
            mode = stat.S_IMODE(path.stat().st_mode)
            if mode & 0o077:
                raise KeyError_(
                    f"signing key {path} is readable by others (mode {mode:o}): chmod 600 it"
                )
            try:
                private = serialization.load_pem_private_key(path.read_bytes(), password=None)
            except TypeError:  # cryptography's word for "this key is encrypted"
                raise KeyError_(
                    f"signing key {path} is encrypted: give an unencrypted Ed25519 PEM (mode 0600)"
                ) from None
            except (ValueError, OSError) as exc:
                raise KeyError_(f"signing key {path} is not a PEM private key: {exc}") from None
            if not isinstance(private, Ed25519PrivateKey):
                raise KeyError_(f"signing key {path} is not an Ed25519 key")
            return cls(private)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        private = Ed25519PrivateKey.generate()
        pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another worker process created it first
            time.sleep(0.2)
            return cls.load_or_create(path)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        log.info(
            "generated a new receipt signing key %s (key_id %s)",
            path,
            key_id_of(private.public_key()),
        )
        return cls(private)

    def sign(self, data: bytes) -> str:
        return base64.b64encode(self._private.sign(data)).decode()

    def sign_hex(self, data: bytes) -> str:
        return self._private.sign(data).hex()

    def public_hex(self) -> str:
        raw = self.public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return raw.hex()

    def public_key_document(self) -> dict[str, str]:
        pem = self.public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        raw = self.public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {
            "key_id": self.key_id,
            "signing_algo": "ed25519",
            "public_key_pem": pem.decode(),
            "public_key_base64": base64.b64encode(raw).decode(),
        }


def verify_receipt(document: dict[str, Any], public: Ed25519PublicKey) -> str | None:
    """None if the signed document is valid for ``public``, else the reason."""
    try:
        signature = base64.b64decode(document["signature"], validate=True)
        receipt = document["receipt"]
    except (KeyError, TypeError, ValueError):
        return "not a signed receipt document (needs 'receipt' and a base64 'signature')"
    if document.get("key_id") not in (None, key_id_of(public)):
        return f"receipt was signed with key {document.get('key_id')}, not {key_id_of(public)}"
    try:
        public.verify(signature, canonical(receipt))
    except InvalidSignature:
        return "signature does not match the receipt"
    return None


@dataclass(frozen=True, slots=True)
class ReceiptStatistics:
    pending: int
    stored: int
    failed: int
    dropped: int


class ReceiptService:
    """Hands records to detached signing + storage; answers lookups."""

    def __init__(
        self,
        signer: Signer,
        store: ReceiptStore,
        detached: DetachedWork,
        max_pending: int,
        sign_truncated: bool = True,
        flush_delay: float = 0.0,
    ) -> None:
        self.signer = signer
        self.store = store
        self._detached = detached
        self._max_pending = max_pending
        self._sign_truncated = sign_truncated
        self._flush_delay = flush_delay
        self._queue: list[CompletionRecord] = []  # submitted, not signed yet
        self._flushing = False
        # Receipt ids and completion ids, finished but not stored: ref -> owner (key id).
        self.pending: dict[str, str | None] = {}
        # When each recent receipt was stored (wall clock), by request id: /debug/trace.
        self.stored_at: collections.OrderedDict[str, float] = collections.OrderedDict()
        self._pending = 0
        self._stored = 0
        self._failed = 0
        self._dropped = 0

    def statistics(self) -> ReceiptStatistics:
        return ReceiptStatistics(self._pending, self._stored, self._failed, self._dropped)

    def submit(self, record: CompletionRecord) -> None:
        """Called as a request ends; never awaits. Only exchanges that reached an
        upstream get a receipt (not the gateway's own 4xx answers). The record is
        queued; building and signing it wait for the flusher."""
        if record.receipt_id is None or record.response_sha256 is None:
            return
        if record.truncated and not self._sign_truncated:
            return
        if self._pending >= self._max_pending:
            self._dropped += 1
            log.error(
                "receipt queue full (%d): dropped receipt %s", self._max_pending, record.receipt_id
            )
            return
        if not self._flushing:
            if not self._detached.submit(self._flush, name="receipts"):
                self._dropped += 1
                return
            self._flushing = True
        self._queue.append(record)
        for ref in (record.receipt_id, record.completion_id):
            if ref is not None:
                self.pending[ref] = record.key_id
        self._pending += 1

    async def _flush(self) -> None:
        """The one flusher (a detached job while records are queued): takes every
        queued record, signs each, stores them in one batch, again until the queue
        is empty. It lets other tasks run after every ``_SIGN_SLICE`` signatures
        (signing is CPU in the event loop: ~120 µs a receipt). It first waits
        ``flush_delay`` for more records: one thread hop then carries the receipts
        of many streams, and the work lands after the moment a stream ends, which
        is when a keep-alive client sends its next request."""
        batch: list[CompletionRecord] = []
        try:
            if self._flush_delay:
                await trio.sleep(self._flush_delay)
            while self._queue:
                batch, self._queue = self._queue, []
                rows: list[tuple[Row, CompletionRecord]] = []
                for n, record in enumerate(batch, 1):
                    try:
                        rows.append((self._signed_row(build_receipt(record)), record))
                    except Exception:
                        self._failed += 1
                        self._done(record)
                        log.exception("signing receipt %s failed", record.receipt_id)
                    if n % _SIGN_SLICE == 0:
                        await trio.lowlevel.checkpoint()
                await self._store(rows)
        finally:
            self._flushing = False
            for record in [*batch, *self._queue]:  # cancelled (past drain_timeout): not stored
                if record.receipt_id in self.pending:
                    self._done(record)
            self._queue = []

    def _signed_row(self, receipt: dict[str, Any]) -> Row:
        text = compatible_text(receipt)
        document = {
            "receipt": receipt,
            "signature": self.signer.sign(canonical(receipt)),
            "signing_algo": "ed25519",
            "key_id": self.signer.key_id,
            "text": text,
            "text_signature": self.signer.sign_hex(text.encode()),
        }
        return Row(
            receipt["id"], receipt["completion_id"], receipt["key_id"], receipt["created"],
            orjson.dumps(document),
        )  # fmt: skip

    async def _store(self, rows: list[tuple[Row, CompletionRecord]]) -> None:
        """One batch (one thread hop, one transaction); a failed batch is retried
        row by row, so one bad row fails alone."""
        if not rows:
            return
        settle = True  # the rows of this call stop being pending here
        try:
            try:
                await self.store.put_many([row for row, _ in rows])
            except Exception:
                if len(rows) > 1:
                    settle = False  # each row's own call settles it
                    for one in rows:
                        await self._store([one])
                    return
                self._failed += 1
                log.exception("storing receipt %s failed", rows[0][0].receipt_id)
                return
            now = time.time()
            for _, record in rows:
                self._stored += 1
                self.stored_at[record.request_id] = now
                if len(self.stored_at) > _STORED_KEPT:
                    self.stored_at.popitem(last=False)
        finally:
            if settle:
                for _, record in rows:
                    self._done(record)

    def _done(self, record: CompletionRecord) -> None:
        """The record is stored, or failed: no longer pending."""
        for ref in (record.receipt_id, record.completion_id):
            if ref is not None:
                self.pending.pop(ref, None)
        self._pending -= 1

    async def lookup(self, ref: str, owner: str | None) -> tuple[int, bytes | None]:
        """(200, document) | (202, None) while pending | (404, None). ``owner``: the
        reading key's id (None: any receipt); another key's receipt is 404,
        exactly like an unknown one."""
        if ref in self.pending:
            pending_owner = self.pending[ref]
            return (202, None) if owner is None or pending_owner == owner else (404, None)
        document = await self.store.get(ref, owner)
        return (200, document) if document is not None else (404, None)

    async def prune_forever(self, ttl_days: float, every: float = 3600.0) -> None:
        while True:
            try:
                removed = await self.store.prune(time.time() - ttl_days * 86400)
                if removed:
                    log.info("pruned %d receipts older than %s days", removed, ttl_days)
            except Exception:
                log.exception("pruning receipts failed")
            await trio.sleep(every)


async def open_signer_and_store(config: Config) -> tuple[Signer | None, ReceiptStore | None]:
    """The signing key (made on first start) and the receipt store, or (None, None)
    when receipts are off. Error handling: :class:`KeyError_`, ``OSError``,
    ``sqlite3.Error`` for a key or store that cannot be used."""
    if not config.receipts:
        return None, None
    signer = await trio.to_thread.run_sync(Signer.load_or_create, signing_key_path(config))
    return signer, await open_store(config.receipt_store, Path(config.data_dir))


def signing_key_path(config: Config) -> Path:
    """``signing_key_path``, or ``<data_dir>/signing.key``. Error handling: a
    configured ``signing_key_path`` that does not exist is :class:`KeyError_` (one
    is made only in the data dir: a key the operator named is never replaced)."""
    if config.signing_key_path:
        path = Path(config.signing_key_path)
        if not path.exists():
            raise KeyError_(
                f"signing_key_path {path} does not exist (leave it out to have a key made "
                f"in the data dir)"
            )
        return path
    return Path(config.data_dir) / "signing.key"
