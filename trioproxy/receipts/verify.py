"""``trioproxy verify``: check a receipt's signature and, given the captured
request body and SSE response, both hashes. One line out; exit 0 valid, 1 not."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

import httpx
import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .service import key_id_of, verify_receipt

__all__ = ["load_public_key", "verify"]


class VerifyError(ValueError):
    pass


def _public_from_document(doc: dict[str, Any]) -> Ed25519PublicKey:
    if "public_key_base64" in doc:
        return Ed25519PublicKey.from_public_bytes(base64.b64decode(doc["public_key_base64"]))
    return _public_from_pem(doc["public_key_pem"].encode())


def _public_from_pem(pem: bytes) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(pem)
    if not isinstance(key, Ed25519PublicKey):
        raise VerifyError("the key is not an Ed25519 public key")
    return key


def load_public_key(key_file: str | None, gateway: str | None) -> Ed25519PublicKey:
    try:
        if key_file:
            data = Path(key_file).read_bytes()
            if data.lstrip().startswith(b"{"):
                return _public_from_document(orjson.loads(data))
            return _public_from_pem(data)
        if gateway:
            response = httpx.get(gateway.rstrip("/") + "/v1/attestation/key", timeout=10)
            response.raise_for_status()
            return _public_from_document(response.json())
    except (OSError, ValueError, KeyError, httpx.HTTPError) as exc:
        raise VerifyError(f"cannot load the public key: {exc}") from None
    raise VerifyError("give --key FILE or --gateway URL")


def _sha256_file(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def verify(
    receipt_file: str,
    request_file: str | None = None,
    response_file: str | None = None,
    key_file: str | None = None,
    gateway: str | None = None,
) -> tuple[bool, str]:
    try:
        document = orjson.loads(Path(receipt_file).read_bytes())
        public = load_public_key(key_file, gateway)
        if not isinstance(document, dict):
            return False, "the receipt file is not a JSON object"
        reason = verify_receipt(document, public)
        if reason:
            return False, reason
        receipt = document["receipt"]
        if request_file and _sha256_file(request_file) != receipt.get("request_sha256"):
            return False, "request body does not match request_sha256"
        if response_file and _sha256_file(response_file) != receipt.get("response_sha256"):
            return False, "response bytes do not match response_sha256"
    except (OSError, orjson.JSONDecodeError, VerifyError) as exc:
        return False, str(exc)
    checked = ["signature"]
    checked += ["request"] if request_file else []
    checked += ["response"] if response_file else []
    return True, (
        f"valid: receipt {receipt.get('id')} ({', '.join(checked)} checked, key {key_id_of(public)}"
        f"{', truncated' if receipt.get('truncated') else ''})"
    )
