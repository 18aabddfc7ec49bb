"""What a stream shape is: one server's streaming answer as its bytes come (sans-IO)."""

from __future__ import annotations

import json
from dataclasses import dataclass

__all__ = ["Shape", "compact"]


@dataclass(frozen=True)
class Shape:
    source: str  # where it was read from: the server's code, docs, or a quoted stream
    events: tuple[bytes, ...]  # each a whole SSE event, as the server writes it
    content_events: int  # events with generated text
    usage: tuple[int, int] | None  # (prompt, completion) the server reports, if it does
    route: str = "chat"  # chat, messages (/v1/messages) or responses (/v1/responses)
    head: int = 1  # events before the first token
    error: str | None = None  # the type of the error event the server ends the stream with


def compact(obj: object) -> bytes:
    """JSON as pydantic, Go's encoding/json and serde write it: no spaces."""
    return json.dumps(obj, separators=(",", ":")).encode()
