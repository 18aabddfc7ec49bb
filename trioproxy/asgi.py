"""ASGI plumbing shared by the server and the relay: the callable types, reading
a bounded body, JSON responses, request ids, messages already queued. It knows
nothing of exchanges or the relay; of the server behind ``receive`` and
``send`` it uses one detail, when it is there (:func:`take_queued`)."""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, cast

import orjson
import trio

from .errors import BadRequest, PayloadTooLarge

__all__ = [
    "Receive",
    "Scope",
    "Send",
    "DirectWriter",
    "already_disconnected",
    "direct_writer",
    "read_body",
    "request_id",
    "send_json",
    "send_raw_json",
    "take_queued",
]

Scope = dict[str, Any]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]


class DirectWriter(Protocol):
    """A response body's way to the client socket that never waits
    (:class:`trioproxy.server.direct_write.DirectChunks` has the rules)."""

    def write_now(self, body: bytes) -> bytes | None: ...

    async def write_rest(self, rest: bytes) -> None: ...


def _no_direct_writer(send: Send) -> DirectWriter | None:
    return None


# What a relay uses to write from its reader; the Hypercorn guards put theirs in
# (guard 7); under another server, or with the guards out, there is none.
direct_writer: Callable[[Send], DirectWriter | None] = _no_direct_writer


def request_id(scope: dict[str, Any]) -> str:
    """The client's ``x-request-id`` (1-128 visible ASCII bytes), else a new one."""
    for name, value in scope["headers"]:
        if name == b"x-request-id" and 0 < len(value) <= 128 and _ID_BYTES.issuperset(value):
            return str(value.decode("ascii"))
    return "tp-" + secrets.token_hex(12)


_ID_BYTES = frozenset(range(0x21, 0x7F))


async def read_body(
    scope: Scope,
    receive: Receive,
    limit: int,
    queued: Callable[[], dict[str, Any] | None] = lambda: None,
) -> bytes | None:
    """The whole request body, at most ``limit`` bytes (413 beyond); None when
    the client hung up before sending all of it. ``queued``: a message the
    server has already queued, taken without waiting (None: await ``receive``)."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            if not value.isdigit():
                raise BadRequest("invalid Content-Length")
            if int(value) > limit:
                raise PayloadTooLarge(f"request body exceeds {limit} bytes")
    parts: list[bytes] = []
    size = 0
    while True:
        message = queued() or await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds {limit} bytes")
        parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts)


async def send_json(
    send: Send, status: int, obj: Any, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    await send_raw_json(send, status, orjson.dumps(obj), extra)


async def send_raw_json(
    send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    headers += extra or []
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def take_queued(receive: Receive) -> dict[str, Any] | None:
    """A message Hypercorn has already queued for the app, taken without a trip
    through the scheduler; None if there is none yet. Relies on a Hypercorn
    detail: its ``receive`` is a trio memory channel's bound ``receive``, whose
    ``receive_nowait`` neither blocks nor polls a cancelled scope (Hypercorn
    issue #210). Under another server it always answers None (callers then
    ``await receive()``)."""
    receive_nowait = getattr(getattr(receive, "__self__", None), "receive_nowait", None)
    if receive_nowait is None:
        return None
    try:
        return cast(dict[str, Any], receive_nowait())
    except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
        return None


def already_disconnected(receive: Receive) -> bool:
    """Has the client's hang-up already been queued? Called after the whole body
    was read, when only ``http.disconnect`` can follow, so nothing else is taken."""
    message = take_queued(receive)
    return message is not None and message.get("type") == "http.disconnect"
