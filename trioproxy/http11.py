"""Sans-IO HTTP/1.1 response parsing for the upstream transport.

Rules:

Rule 1: no I/O here (like :mod:`trioproxy.sse`): bytes in, results out.

Rule 2: only what an upstream response needs: a status line and headers
(:func:`parse_head`), then a body framed by ``Content-Length``, by chunked
transfer coding (:class:`ChunkedDecoder`), or by the connection closing.
Requests are built by :func:`request_head`.

Rule 3: any split of the input gives the same body bytes. The chunked decoder
returns, per ``feed``, the payload of every chunk the data completed or began,
joined: one network read becomes at most one piece of body, however many
chunks it carried.

Rule 4: bounded. A response head over ``MAX_HEAD`` bytes, a chunk-size line
over ``MAX_LINE`` bytes or a malformed size is a :class:`ProtocolError`.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MAX_HEAD", "ChunkedDecoder", "Head", "ProtocolError", "parse_head", "request_head"]

MAX_HEAD = 64 * 1024
MAX_LINE = 1024


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


def parse_head(block: bytes) -> Head:
    """Parse a response head (without its final blank line)."""
    lines = block.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise ProtocolError(f"bad status line {lines[0][:80]!r}")
    status = int(parts[1])
    headers: list[tuple[bytes, bytes]] = []
    length: int | None = None
    chunked = False
    keep_alive = parts[0] == b"HTTP/1.1"
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip():
            raise ProtocolError(f"bad header line {line[:80]!r}")
        value = value.strip()
        lower = name.lower()
        headers.append((name, value))
        if lower == b"content-length":
            if not value.isdigit() or (length is not None and int(value) != length):
                raise ProtocolError("bad Content-Length")
            length = int(value)
        elif lower == b"transfer-encoding":
            chunked = value.lower().endswith(b"chunked")
        elif lower == b"connection":
            tokens = value.lower()
            if b"close" in tokens:
                keep_alive = False
            elif b"keep-alive" in tokens:
                keep_alive = True
    if chunked:
        length = None
    elif length is None and status >= 200 and status not in (204, 304):
        keep_alive = False  # the body ends when the connection closes
    return Head(status, headers, length, chunked, keep_alive)


class ChunkedDecoder:
    """Incremental decoder of a chunked body. ``feed`` returns (payload, done);
    bytes after the terminating chunk and trailers are kept in ``rest``."""

    __slots__ = ("_buf", "_left", "_state", "done", "rest")

    def __init__(self) -> None:
        self._buf = b""
        self._left = 0  # payload bytes still due in the current chunk
        self._state = 0  # 0: size line, 1: payload, 2: CRLF after payload, 3: trailers
        self.done = False
        self.rest = b""

    def feed(self, data: bytes) -> bytes:
        buf = self._buf + data if self._buf else data
        out: list[bytes] = []
        pos = 0
        n = len(buf)
        while pos < n:
            state = self._state
            if state == 1:
                take = min(self._left, n - pos)
                out.append(buf[pos : pos + take])
                pos += take
                self._left -= take
                if self._left == 0:
                    self._state = 2
            elif state == 2:
                if n - pos < 2:
                    break
                if buf[pos : pos + 2] != b"\r\n":
                    raise ProtocolError("missing CRLF after chunk data")
                pos += 2
                self._state = 0
            else:
                end = buf.find(b"\r\n", pos)
                if end < 0:
                    if n - pos > MAX_LINE:
                        raise ProtocolError("chunk line too long")
                    break
                line = buf[pos:end]
                pos = end + 2
                if state == 3:  # trailers end at an empty line
                    if not line:
                        self.done = True
                        self.rest = buf[pos:]
                        self._buf = b""
                        return b"".join(out)
                    continue
                size_text = line.split(b";", 1)[0].strip()
                try:
                    size = int(size_text, 16)
                except ValueError:
                    raise ProtocolError(f"bad chunk size {size_text[:20]!r}") from None
                if size < 0 or not size_text:
                    raise ProtocolError("bad chunk size")
                if size == 0:
                    self._state = 3
                else:
                    self._left = size
                    self._state = 1
        self._buf = buf[pos:]
        return b"".join(out) if len(out) != 1 else out[0]


def request_head(method: bytes, target: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
    lines = [method + b" " + target + b" HTTP/1.1"]
    lines += [name + b": " + value for name, value in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n"
