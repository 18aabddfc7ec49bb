"""API keys: who may call, which models; the limits each key carries.

Rules:
- The config holds only the SHA-256 of each key (``trioproxy keys new`` prints a
  key once, with its TOML block). Keys are compared by hash in constant time
  (``hmac.compare_digest`` against every configured hash).
- Clients send ``Authorization: Bearer KEY`` (OpenAI) or ``x-api-key: KEY``
  (Anthropic). A gateway with keys never forwards them upstream.
- 401 for a missing or unknown key, 403 for a model the key may not use, each in
  the route's dialect. The key's limits (``max_streams``, ``rpm``, ``tpm``) are
  enforced by :mod:`trioproxy.admission.quotas` (this process) or
  :mod:`trioproxy.shared.limits` (every host, through Redis). A key never
  appears in logs, errors or records: only its ``name`` does.
- No keys configured = open mode: allowed on loopback only, unless
  ``allow_open_public = true`` (checked at start-up by the config).
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError, Forbidden, Unauthorized, config_table

__all__ = ["ApiKey", "KeyRing", "new_key", "parse_keys"]


@dataclass(frozen=True, slots=True)
class ApiKey:
    name: str
    sha256: str
    max_streams: int = 0  # 0: only the global limit applies
    models: tuple[str, ...] = ("*",)
    rpm: int = 0  # 0: no requests-per-minute limit
    admin: bool = False  # may read /metrics, /debug/*, /readyz details and every receipt
    tpm: int = 0  # 0: no tokens-per-minute limit (prompt + completion)

    @property
    def id(self) -> str:
        """The key's stable id: its hash's first 16 hex digits. What it owns
        (receipts, usage, shared limits) is stored under this, not its name: a
        new key given an old name owns none of the old key's."""
        return self.sha256[:16]


_KEY_OPTIONS = frozenset({"name", "sha256", "max_streams", "models", "rpm", "admin", "tpm"})
MAX_KEY_NAME = 64  # names become Redis keys, labels and record fields


def parse_keys(raw: Iterable[Mapping[str, Any]]) -> tuple[ApiKey, ...]:
    keys = []
    for n, entry in enumerate(raw, 1):
        label = config_table("keys", n, entry, _KEY_OPTIONS)
        name, digest = entry["name"], entry.get("sha256")
        if not isinstance(digest, str) or len(digest) != 64 or not _is_hex(digest):
            raise ConfigError(f"{label}: sha256 must be 64 hex digits (the key's hash)")
        models = entry.get("models", ["*"])
        if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
            raise ConfigError(f"{label}: models must be a list of names or patterns")
        if not 1 <= len(name.encode()) <= MAX_KEY_NAME or not name.isprintable():
            raise ConfigError(f"{label}: name must be 1-{MAX_KEY_NAME} printable bytes")
        for field in ("max_streams", "rpm", "tpm"):
            value = entry.get(field, 0)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{label}: {field} must be an integer >= 0")
        admin = entry.get("admin", False)
        if not isinstance(admin, bool):
            raise ConfigError(f"{label}: admin must be true or false")
        keys.append(
            ApiKey(
                name,
                digest.lower(),
                entry.get("max_streams", 0),
                tuple(models),
                entry.get("rpm", 0),
                admin,
                entry.get("tpm", 0),
            )
        )
    if len({k.name for k in keys}) != len(keys):
        raise ConfigError("[[keys]] names must be unique")
    return tuple(keys)


def _is_hex(text: str) -> bool:
    try:
        int(text, 16)
    except ValueError:
        return False
    return True


def new_key(name: str) -> tuple[str, str]:
    """A fresh random key and the TOML block that admits it."""
    key = "tp-" + secrets.token_urlsafe(32)
    digest = hashlib.sha256(key.encode()).hexdigest()
    block = (
        f"[[keys]]\n"
        f'name = "{name}"  # in access lines, records and metrics (never the key)\n'
        f'sha256 = "{digest}"  # the key\'s hash: the gateway never stores the key\n'
        f'models = ["*"]  # model names or patterns this key may use\n'
        f"max_streams = 0  # concurrent streams of this key, 0 = unlimited (the global limit)\n"
        f"rpm = 0  # requests per minute, 0 = unlimited\n"
        f"tpm = 0  # tokens (prompt + completion) per minute, 0 = unlimited\n"
    )
    return key, block


def _presented(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    for name, value in headers:
        if name == b"authorization" and value[:7].lower() == b"bearer ":
            return value[7:].strip()
        if name == b"x-api-key":
            return value.strip()
    return None


class KeyRing:
    def __init__(self, keys: tuple[ApiKey, ...]) -> None:
        self.keys = keys
        self._digests = [(k, k.sha256.encode()) for k in keys]

    def __bool__(self) -> bool:
        return bool(self.keys)

    def authenticate(self, headers: list[tuple[bytes, bytes]]) -> ApiKey:
        presented = _presented(headers)
        if not presented:
            raise Unauthorized("missing API key: send Authorization: Bearer KEY or x-api-key")
        digest = hashlib.sha256(presented).hexdigest().encode()
        found = None
        for key, expected in self._digests:  # every hash, constant time each
            if hmac.compare_digest(digest, expected):
                found = key
        if found is None:
            raise Unauthorized("invalid API key")
        return found

    def allows(self, key: ApiKey, model: str) -> bool:
        return any(fnmatch.fnmatchcase(model, p) for p in key.models)

    def authorize(self, key: ApiKey, model: str | None) -> None:
        if model is None or self.allows(key, model):
            return
        raise Forbidden(f"key {key.name!r} may not use model {model!r}")
