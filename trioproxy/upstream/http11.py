"""Sans-IO HTTP/1.1 response parsing for the upstream transport.

Rules:

Rule 1: no I/O here (like :mod:`trioproxy.relay.sse`): bytes in, results out.

Rule 2: only what an upstream response needs: a status line and headers
(:func:`parse_head`), then a body framed by ``Content-Length``, by chunked
transfer coding (:class:`ChunkedDecoder`), or by the connection closing.
Requests are built by :func:`request_head`; a ``Retry-After`` value is read by
:func:`parse_retry_after`.

Rule 3: strict, as h11 is (``tests/test_http11.py`` runs both on the same
generated responses and requires the same verdicts and body bytes): a status
code is three digits; a header name is a token and its value holds no control
byte; ``Content-Length`` is digits only (repeated values must agree); the only
transfer coding is exactly ``chunked``; a chunk size is 1 to 16 hex digits,
nothing else (no ``0x``, sign or ``_``). One deliberate difference: a response
with both ``Content-Length`` and ``Transfer-Encoding`` is refused (h11 lets
chunked win): RFC 9112 section 6.3 calls it a sign of response smuggling, and a
connection that carried one is never reused.

Rule 4: any split of the input gives the same body bytes. The chunked decoder
returns, per ``feed``, the payload of every chunk the data completed or began,
joined: one network read becomes at most one piece of body, however many
chunks it carried.

Rule 5: bounded. A response head over ``MAX_HEAD`` bytes, a chunk-size or
trailer line over ``MAX_LINE`` bytes is a :class:`ProtocolError`.

The decoder's states are data (:class:`ChunkState`); h11 was measured against
this decoder on the relay's per-token path (``python -m bench.micro``): see
``bench/README.md`` for why this module is kept.
"""

from __future__ import annotations

import email.utils
import enum
import math
import re
import time
from dataclasses import dataclass

__all__ = [
    "MAX_HEAD",
    "MAX_LINE",
    "ChunkState",
    "ChunkedDecoder",
    "Head",
    "ProtocolError",
    "parse_head",
    "parse_retry_after",
    "request_head",
]

MAX_HEAD = 64 * 1024
MAX_LINE = 1024

_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([0-9]{3})(?: [\t \x21-\x7e\x80-\xff]*)?")
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_FIELD_VALUE = re.compile(rb"[\t \x21-\x7e\x80-\xff]*")
_DIGITS = re.compile(rb"[0-9]+")
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})(?:;[^\r\n]*)?[ \t]*")


class ProtocolError(ValueError):
    """The upstream's bytes are not a valid HTTP/1.1 response."""


@dataclass(frozen=True, slots=True)
class Head:
    status: int
    headers: list[tuple[bytes, bytes]]
    length: int | None  # Content-Length, or None
    chunked: bool
    keep_alive: bool

    @property
    def has_body(self) -> bool:
        return not (100 <= self.status < 200 or self.status in (204, 304))


def _header_line(line: bytes) -> tuple[bytes, bytes]:
    name, sep, value = line.partition(b":")
    if not sep or not _TOKEN.fullmatch(name):
        raise ProtocolError(f"bad header line {line[:80]!r}")
    value = value.strip(b" \t")
    if not _FIELD_VALUE.fullmatch(value):
        raise ProtocolError(f"bad header value {line[:80]!r}")
    return name, value


def _tokens(value: bytes) -> set[bytes]:
    return {t.strip(b" \t").lower() for t in value.split(b",")}


def parse_head(block: bytes) -> Head:
    """Parse a response head (without its final blank line)."""
    lines = block.split(b"\r\n")
    status_line = _STATUS_LINE.fullmatch(lines[0])
    if status_line is None:
        raise ProtocolError(f"bad status line {lines[0][:80]!r}")
    status = int(status_line.group(2))
    keep_alive = status_line.group(1) == b"1"
    headers: list[tuple[bytes, bytes]] = []
    length: int | None = None
    chunked = False
    seen_te = False
    for line in lines[1:]:
        name, value = _header_line(line)
        headers.append((name, value))
        lower = name.lower()
        if lower == b"content-length":
            values = {v.strip(b" \t") for v in value.split(b",")}
            if len(values) != 1 or not _DIGITS.fullmatch(next(iter(values))):
                raise ProtocolError("bad Content-Length")
            n = int(next(iter(values)))
            if length is not None and n != length:
                raise ProtocolError("conflicting Content-Length headers")
            length = n
        elif lower == b"transfer-encoding":
            if seen_te or value.lower() != b"chunked":
                raise ProtocolError(f"unsupported Transfer-Encoding {value[:40]!r}")
            seen_te = chunked = True
        elif lower == b"connection":
            tokens = _tokens(value)
            if b"close" in tokens:
                keep_alive = False
            elif b"keep-alive" in tokens:
                keep_alive = True
    if chunked and length is not None:
        raise ProtocolError("both Content-Length and Transfer-Encoding: chunked")
    if not chunked and length is None and status >= 200 and status not in (204, 304):
        keep_alive = False  # the body ends when the connection closes
    return Head(status, headers, length, chunked, keep_alive)


class ChunkState(enum.Enum):
    SIZE_LINE = "size line"  # "<hex>[;ext]\r\n"
    DATA = "data"  # payload bytes of the current chunk
    DATA_END = "data end"  # the "\r\n" after a chunk's payload
    TRAILERS = "trailers"  # header lines until an empty one
    DONE = "done"


class ChunkedDecoder:
    """Incremental decoder of a chunked body: ``feed`` returns the payload bytes
    the data completed or began; ``done`` after the last chunk and trailers,
    whose following bytes are kept in ``rest``."""

    __slots__ = ("_buf", "_left", "rest", "state")

    def __init__(self) -> None:
        self._buf = b""
        self._left = 0  # payload bytes still due in the current chunk
        self.state = ChunkState.SIZE_LINE
        self.rest = b""

    @property
    def done(self) -> bool:
        return self.state is ChunkState.DONE

    def feed(self, data: bytes) -> bytes:
        if self.state is ChunkState.SIZE_LINE and not self._buf:  # one whole chunk, alone:
            end = data.find(b"\r\n")  # the usual read of a paced stream, in one step
            size = _CHUNK_SIZE.fullmatch(data, 0, end) if end > 0 else None
            if size is not None:
                stop = end + 2 + int(size.group(1), 16)
                if stop > end + 2 and len(data) == stop + 2 and data.endswith(b"\r\n"):
                    return data[end + 2 : stop]
        if self.state is ChunkState.DONE:
            self.rest += data
            return b""
        buf = self._buf + data if self._buf else data
        out: list[bytes] = []
        pos = 0
        n = len(buf)
        while pos < n:
            state = self.state
            if state is ChunkState.DATA:
                take = min(self._left, n - pos)
                out.append(buf[pos : pos + take])
                pos += take
                self._left -= take
                if self._left == 0:
                    self.state = ChunkState.DATA_END
            elif state is ChunkState.DATA_END:
                if n - pos < 2:
                    if buf[pos : pos + 1] != b"\r":
                        raise ProtocolError("missing CRLF after chunk data")
                    break
                if buf[pos : pos + 2] != b"\r\n":
                    raise ProtocolError("missing CRLF after chunk data")
                pos += 2
                self.state = ChunkState.SIZE_LINE
            elif state is ChunkState.DONE:
                break
            else:
                end = buf.find(b"\r\n", pos)
                if end < 0:
                    if n - pos > MAX_LINE:
                        raise ProtocolError("chunk line too long")
                    break
                line = buf[pos:end]
                pos = end + 2
                if state is ChunkState.TRAILERS:
                    if line:
                        _header_line(line)  # validated, then dropped
                        continue
                    self.state = ChunkState.DONE
                    self.rest = buf[pos:]
                    pos = n
                    break
                size = _CHUNK_SIZE.fullmatch(line)
                if size is None:
                    raise ProtocolError(f"bad chunk size line {line[:20]!r}")
                self._left = int(size.group(1), 16)
                self.state = ChunkState.DATA if self._left else ChunkState.TRAILERS
        self._buf = buf[pos:]
        return b"".join(out) if len(out) != 1 else out[0]


def request_head(method: bytes, target: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
    lines = [method + b" " + target + b" HTTP/1.1"]
    lines += [name + b": " + value for name, value in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n"


_MAX_RETRY_AFTER = 3600


def parse_retry_after(value: str, now: float | None = None) -> int | None:
    """Seconds from a ``Retry-After`` of ASCII digits or an HTTP-date (capped at
    an hour; a date in the past is 0); None for anything else. ``now``: wall
    clock seconds (default: now)."""
    value = value.strip()
    if value.isascii() and value.isdigit():
        return min(int(value), _MAX_RETRY_AFTER)
    if not value.isascii():
        return None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    delta = when.timestamp() - (time.time() if now is None else now)
    return max(0, min(math.ceil(delta), _MAX_RETRY_AFTER))
