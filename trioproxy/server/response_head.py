"""A plain HTTP/1.1 response head, checked once; the chunks of its body framed here.

No I/O: over an ``h11.Connection`` that has read a request, through h11's public
API only. Used by guard 6 of :mod:`trioproxy.server.hypercorn`.

Rules:
- h11 checks a response's headers four times on the way out (the ``Response``
  event, two ``set_comma_header`` rewrites, the cleaned-up event), about 100 µs
  a head in the gateway, on the path to a stream's first byte.
  :func:`plain_head` checks them once, with h11's own grammar (a header name is
  an RFC 9110 token; a value is visible bytes or obs-text with inner spaces and
  tabs: no CR, LF or NUL), then tells h11 of a head *without* them, so h11 makes
  every decision it makes for a head (framing, keep-alive, state) and writes the
  status line and its framing headers. The app's headers go between the two:
  the bytes and their order are the ones h11 writes for the full head.
- That only holds when the app's headers cannot change h11's decisions: none
  named ``content-length``, ``transfer-encoding`` or ``connection`` (framing,
  keep-alive) or ``host`` (h11 writes it first), the connection waits to send a
  response to an HTTP/1.1 request, and the names and values are ``bytes``.
  Otherwise, and for any header h11 would refuse, :func:`plain_head` returns
  ``None`` having told h11 nothing: the caller goes h11's way, which refuses
  the bad header as it always did.
- A head h11 framed as chunked (:func:`is_chunked`) has its body's bytes framed
  by :func:`frame_chunk`, as h11's chunked writer frames them; sending h11 a
  ``Data`` event in ``SEND_BODY`` changes none of its state. Not for a ``HEAD``
  request: h11 names chunked framing in its head, but sends no body.
"""

from __future__ import annotations

import re

import h11

__all__ = ["frame_chunk", "is_chunked", "plain_head"]

_TOKEN = rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+"
_VALUE = rb"(?:[^\x00\s]+(?:[ \t]+[^\x00\s]+)*)?"  # h11's field-value; \s: CR LF too
# Names and values are checked joined by LF. No valid part holds an LF, and a join
# holds exactly one less than its parts (else a part held one: a response split),
# so a join matches when and only when every part does.
_NAMES = re.compile(_TOKEN + rb"(?:\n" + _TOKEN + rb")*")
_VALUES = re.compile(_VALUE + rb"(?:\n" + _VALUE + rb")*")
_DECIDING = frozenset({b"content-length", b"transfer-encoding", b"connection", b"host"})
_CHUNKED = b"\r\nTransfer-Encoding: chunked\r\n"


def plain_head(
    conn: h11.Connection, status: int, headers: list[tuple[bytes, bytes]]
) -> bytes | None:
    """The head's bytes, h11 told of it; ``None`` (h11 told nothing) when h11 must decide.

    Error handling: a ``LocalProtocolError`` from h11 (a status it refuses)
    propagates, as it does on h11's own way."""
    if status < 200 or conn.our_state is not h11.SEND_RESPONSE or conn.their_http_version != b"1.1":
        return None
    names = []
    for name, value in headers:
        if type(name) is not bytes or type(value) is not bytes or name.lower() in _DECIDING:
            return None
        names.append(name)
    joined_names = b"\n".join(names)
    joined_values = b"\n".join([value for _, value in headers])
    parts = len(names) - 1
    if not names or joined_names.count(b"\n") != parts or joined_values.count(b"\n") != parts:
        return None
    if _NAMES.fullmatch(joined_names) is None or _VALUES.fullmatch(joined_values) is None:
        return None
    told = conn.send(h11.Response(status_code=status, headers=[]))
    assert told is not None
    end = told.index(b"\r\n") + 2  # after the status line
    return b"".join([told[:end], *[b"%s: %s\r\n" % pair for pair in headers], told[end:]])


def is_chunked(head: bytes) -> bool:
    """Whether h11 framed the head :func:`plain_head` made as chunked."""
    return _CHUNKED in head


def frame_chunk(data: bytes) -> bytes:
    """One non-empty piece of a chunked body, as h11's chunked writer frames it."""
    return b"%x\r\n%b\r\n" % (len(data), data)
