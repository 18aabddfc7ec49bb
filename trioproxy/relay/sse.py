"""Sans-IO Server-Sent-Events framing.

The rules of this module (the relay depends on every one of them):

Rule 1: no I/O. Nothing here imports trio, httpx or hypercorn; the framer is fed
    bytes and hands back raw event blocks. A layering test enforces this.

Rule 2: the relay forwards the upstream's bytes unchanged. The framer only tells
    the relay *where* events end, so the blocks it returns are for inspection,
    never for re-sending. Line endings inside a block are normalised to ``\\n``.

Rule 3: any split of the same input gives the same blocks. ``\\r\\n``, ``\\n`` and
    a lone ``\\r`` all end a line (WHATWG HTML, "Interpreting an event stream"),
    including a ``\\r\\n`` split across two ``feed`` calls; an event ends at the
    first empty line. Blank lines between events produce no block.

Rule 4: every buffer is bounded. An event that grows past ``max_event_bytes``
    without ending raises :class:`SSEFramingError`: an upstream that never ends
    an event is malformed, and the gateway must not buffer it without limit.

Rule 5: parse lazily. The hot path only finds boundaries with ``bytes.find``;
    :func:`parse_event` splits a block into fields and is called by the relay
    for the few events it needs (the first, the final, the usage event).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "DEFAULT_MAX_EVENT_BYTES",
    "SSEEvent",
    "SSEFramer",
    "SSEFramingError",
    "is_heartbeat",
    "parse_event",
]

DEFAULT_MAX_EVENT_BYTES = 1 << 20


class SSEFramingError(ValueError):
    """The byte stream cannot be framed as SSE within the configured bounds."""


class SSEFramer:
    """Find event boundaries in a byte stream, whatever its split.

    ``feed(data)`` returns the list of complete event blocks that ``data``
    finished (usually zero or one per network read), each ending in ``\\n\\n``.
    ``buffered`` is the number of bytes of an event that has begun but not
    ended: the relay uses it to end that event before appending an error event.
    """

    __slots__ = ("_buf", "_max", "_scan", "_skip_lf")

    def __init__(self, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        self._buf = bytearray()
        self._max = max_event_bytes
        self._skip_lf = False  # the previous chunk ended in "\r": drop one "\n"
        self._scan = 0  # where the search for "\n\n" resumes in _buf

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        if self._skip_lf:
            self._skip_lf = False
            if data[:1] == b"\n":
                data = data[1:]
        if b"\r" in data:
            self._skip_lf = data[-1:] == b"\r"
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        buf = self._buf
        if not buf:
            data = data.lstrip(b"\n")
            # Fast path: the read holds exactly one whole event.
            end = data.find(b"\n\n")
            if end >= 0 and end == len(data) - 2:
                return [data]
        buf += data
        events: list[bytes] = []
        start = 0
        scan = self._scan
        while True:
            end = buf.find(b"\n\n", scan)
            if end < 0:
                break
            events.append(bytes(buf[start : end + 2]))
            start = end + 2
            while start < len(buf) and buf[start] == 10:  # skip blank lines
                start += 1
            scan = start
        if start:
            del buf[:start]
            scan -= start
        # A trailing "\n" may pair with the next chunk's "\n": rescan it.
        self._scan = max(len(buf) - 1, 0)
        if len(buf) > self._max:
            raise SSEFramingError(
                f"SSE event exceeds {self._max} bytes without an end-of-event blank line"
            )
        return events


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """The fields of one event block (WHATWG field rules; unknown fields dropped).

    ``data`` is ``None`` when the block had no ``data`` field (comment-only or
    ``event:``-only blocks); otherwise the ``data`` lines joined with ``\\n``.
    """

    event: bytes | None = None
    data: bytes | None = None
    id: bytes | None = None
    retry: int | None = None
    comments: tuple[bytes, ...] = ()


def parse_event(block: bytes) -> SSEEvent:
    """Split one block returned by :meth:`SSEFramer.feed` into its fields."""
    event: bytes | None = None
    data: list[bytes] = []
    ident: bytes | None = None
    retry: int | None = None
    comments: list[bytes] = []
    for line in block.split(b"\n"):
        if not line:
            continue
        if line[0] == 58:  # ":"
            comments.append(line[1:])
            continue
        name, sep, value = line.partition(b":")
        if sep and value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            data.append(value)
        elif name == b"event":
            event = value
        elif name == b"id":
            if b"\0" not in value:
                ident = value
        elif name == b"retry" and value.isdigit():
            retry = int(value)
    return SSEEvent(
        event=event,
        data=b"\n".join(data) if data else None,
        id=ident,
        retry=retry,
        comments=tuple(comments),
    )


def is_heartbeat(block: bytes) -> bool:
    """True for keep-alive blocks that carry no model progress.

    Comment-only blocks (``: ping``) and Anthropic's ``event: ping`` are
    heartbeats. Cheap for ordinary data blocks: one byte compare each.
    """
    first = block[:1]
    if first == b":":
        return parse_event(block).data is None
    return bool(first == b"e" and block.startswith(b"event: ping\n"))
