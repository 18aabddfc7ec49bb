"""What the mock upstream answers before any stream: errors, refusals, silence, resets.

Rules (the model name's options, :mod:`trioproxy.testing.mock_scripts`):
- ``e<CODE>``: that HTTP error (``error-NAME``: a real server's error body);
  ``n<K>``: for the first K requests of the model name only; ``ra<S>``: with
  ``Retry-After: S`` (a 429 sends 1 unless told).
- ``flap<S>``: HTTP 500 for S seconds from the first request of the model
  name, then healthy (a primary that fails, then recovers).
- ``rst1``: the connection is reset before any byte of an answer.
- ``wait<MS>``: nothing at all for MS milliseconds, then the answer.
- A request that holds part of its answer (a last assistant turn that is an
  Anthropic prefill, or marked ``continue_final_message``) is continued from
  there; with ``noprefill1`` it is refused (400), and an Anthropic prefill
  ending in whitespace is refused as Anthropic's API does.
- A mock started ``healthy`` (a backup) ignores every fault but ``t``, ``i``,
  ``shape`` and ``noprefill``: it answers whatever the primary fails.
"""

from __future__ import annotations

import socket
import time
from typing import Any

import orjson
import trio

from .mock_scripts import Fault
from .shapes.errors import ERRORS

__all__ = ["Refusals", "err", "healthy", "send_bytes", "send_json"]

_REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 411: b"Length Required",
            413: b"Payload Too Large", 429: b"Too Many Requests", 500: b"Internal Server Error",
            503: b"Service Unavailable"}  # fmt: skip
_MAX_MODELS = 10_000  # model names remembered (n<K>, flap<S>)


def healthy(fault: Fault) -> Fault:
    """A backup's view of a fault spec: the length and pace only."""
    return Fault(
        tokens=fault.tokens, itl_ms=fault.itl_ms, shape=fault.shape, tag=fault.tag,
        no_prefill=fault.no_prefill,
    )  # fmt: skip


def err(route: str | None, message: str) -> dict[str, Any]:
    if route == "messages":
        return {"type": "error", "error": {"type": "api_error", "message": message}}
    return {"error": {"message": message, "type": "mock_error", "code": None}}


async def send_json(
    stream: trio.SocketStream, status: int, obj: Any, keep: bool, extra: bytes = b""
) -> None:
    await send_bytes(stream, status, b"application/json", orjson.dumps(obj), keep, extra)


async def send_bytes(
    stream: trio.SocketStream, status: int, ctype: bytes, body: bytes, keep: bool,
    extra: bytes = b"",
) -> None:  # fmt: skip
    head = b"HTTP/1.1 %d %b\r\ncontent-type: %b\r\ncontent-length: %d\r\n%b%b\r\n" % (
        status, _REASONS.get(status, b"Status"), ctype, len(body), extra,
        b"" if keep else b"connection: close\r\n",
    )  # fmt: skip
    await stream.send_all(head + body)


def prefilled(route: str, obj: dict[str, Any]) -> int | None:
    """Tokens of the answer a request already holds (one a word, as the mock
    writes them): a last assistant turn that is an Anthropic prefill or is
    marked ``continue_final_message`` (vLLM, SGLang). None: a refused prefill."""
    messages = obj.get("messages")
    if not isinstance(messages, list) or not messages or not isinstance(messages[-1], dict):
        return 0
    last = messages[-1]
    content = last.get("content")
    if last.get("role") != "assistant" or not isinstance(content, str):
        return 0
    if route == "messages":
        return None if content != content.rstrip() else len(content.split())
    return len(content.split()) if obj.get("continue_final_message") is True else 0


class Refusals:
    """One mock's answers before a stream, and what they remember by model name."""

    def __init__(self) -> None:
        self._errors_sent: dict[str, int] = {}  # model -> errors answered (n<K>)
        self._first_seen: dict[str, float] = {}  # model -> first request (flap<S>)

    def _remember(self, table: dict[str, Any], model: str, value: Any) -> Any:
        if model not in table and len(table) < _MAX_MODELS:
            table[model] = value
        return table.get(model, value)

    def _error_due(self, model: str, times: int | None) -> bool:
        if times is None:
            return True
        sent = self._remember(self._errors_sent, model, 0)
        if sent >= times:
            return False
        self._errors_sent[model] = sent + 1
        return True

    async def answer(
        self, stream: trio.SocketStream, route: str, model: str, obj: dict[str, Any],
        fault: Fault, keep: bool,
    ) -> bool | None:  # fmt: skip
        """Answer here (then: keep the connection?), or None: the stream goes
        on (from the tokens :func:`prefilled` says the request holds)."""
        if fault.reset:
            stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
            return False
        if fault.head_wait_ms:
            await trio.sleep(fault.head_wait_ms / 1000)
        if fault.flap_s is not None:
            began = self._remember(self._first_seen, model, time.monotonic())
            if time.monotonic() - began < fault.flap_s:
                await send_json(stream, 500, err(route, "mock flapping: down"), keep)
                return keep
        if fault.error_status is not None and self._error_due(model, fault.error_times):
            wait = fault.retry_after if fault.retry_after is not None else 1
            extra = b"retry-after: %d\r\n" % wait
            if fault.error_status != 429 and fault.retry_after is None:
                extra = b""
            if fault.error_name is not None:
                _, raw = ERRORS[fault.error_name]
                await send_bytes(stream, fault.error_status, b"application/json", raw, keep, extra)
                return keep
            msg = err(route, f"mock error {fault.error_status}")
            await send_json(stream, fault.error_status, msg, keep, extra)
            return keep
        skip = prefilled(route, obj)
        if skip is None or (skip and fault.no_prefill):
            reason = "final assistant content cannot end with trailing whitespace"
            if skip:
                reason = "this server does not continue a final assistant message"
            await send_json(stream, 400, err(route, reason), keep)
            return keep
        return None
