"""What a receipt says: the signed document built from a completion record.

Rules:
- Every field comes from the gateway, none from client input but the model
  name (bounded) and the hashes of what was exchanged.
- ``response_sha256`` is of the bytes the client was sent. A translated answer
  (:mod:`trioproxy.translate`) also carries ``translated`` (the pair, such as
  ``anthropic->openai``) and ``upstream_sha256``, of the bytes the upstream sent:
  the two hashes differ there, and both are signed.
"""

from __future__ import annotations

from typing import Any

from ..relay.record import CompletionRecord

__all__ = ["build_receipt", "compatible_text"]


def build_receipt(record: CompletionRecord) -> dict[str, Any]:
    """What is signed. Every field comes from the gateway, none from client input
    but the model name (bounded) and the hashes of what was exchanged."""
    assert record.receipt_id is not None
    receipt = {
        "id": record.receipt_id,
        "completion_id": record.completion_id,
        "request_id": record.request_id,
        "key": record.key,
        "key_id": record.key_id,
        "status": record.status,
        "model": record.model,
        "upstream_model": record.upstream_model,
        "provider": record.provider or "none",
        # every attempt: how many, and the (provider, error code) of each that failed
        "attempts": record.attempts,
        "failed_attempts": [list(f) for f in record.failovers],
        # a continued answer: each attempt that wrote to the client, and its events' hash
        "continued": [{"provider": p, "upstream_sha256": h} for p, h in record.continued],
        "route": record.route,
        "request_sha256": record.request_sha256,
        "response_sha256": record.response_sha256,
        "created": record.created,
        "completed": record.created + record.duration_ms / 1000,
        "usage": record.usage,
        "prompt_tokens": record.prompt_tokens,
        "completion_tokens": record.completion_tokens,
        "usage_source": record.usage_source,
        "outcome": record.outcome,
        "final_event": record.final_event,
        "truncated": record.truncated,
    }
    if record.translated is not None:  # the client's bytes are not the upstream's: both hashed
        receipt.update(translated=record.translated, upstream_sha256=record.upstream_sha256)
    return receipt


def compatible_text(receipt: dict[str, Any]) -> str:
    """The text attested-inference verifiers sign and check:
    ``<sha256 of the request body>:<sha256 of the response bytes>``."""
    return f"{receipt['request_sha256']}:{receipt['response_sha256']}"
