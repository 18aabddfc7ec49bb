from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trioproxy.upstream.http11 import ChunkedDecoder, ProtocolError, parse_head, request_head


def test_parse_head() -> None:
    head = parse_head(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked"
    )
    assert (head.status, head.chunked, head.length, head.keep_alive) == (200, True, None, True)
    assert head.headers[0] == (b"Content-Type", b"text/event-stream")
    close = parse_head(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close")
    assert (close.length, close.keep_alive) == (5, False)
    until_eof = parse_head(b"HTTP/1.0 200 OK\r\ncontent-type: x")
    assert until_eof.length is None and not until_eof.keep_alive
    assert not parse_head(b"HTTP/1.1 204 No Content").has_body


@pytest.mark.parametrize(
    "block",
    [b"HTTP/2 200", b"HTTP/1.1 abc", b"HTTP/1.1 200 OK\r\nno colon", b"HTTP/1.1 200\r\ncontent-length: x",
     b"HTTP/1.1 200\r\ncontent-length: 1\r\ncontent-length: 2", b"HTTP/1.1 200\r\n bad: fold"],
)  # fmt: skip
def test_bad_heads(block: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_head(block)


BODY = b"1a;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n3\r\n123\r\nA\r\n0123456789\r\n0\r\nx-trailer: 1\r\n\r\nNEXT"


def decode(data: bytes, cuts: list[int]) -> tuple[bytes, bytes]:
    decoder = ChunkedDecoder()
    out = b""
    prev = 0
    for cut in [*sorted(set(cuts)), len(data)]:
        if decoder.done:
            break
        out += decoder.feed(data[prev:cut])
        prev = cut
    assert decoder.done
    return out, decoder.rest + data[prev:]


def test_byte_at_a_time() -> None:
    assert decode(BODY, list(range(len(BODY)))) == (
        b"abcdefghijklmnopqrstuvwxyz1230123456789",
        b"NEXT",
    )


@given(st.lists(st.integers(min_value=0, max_value=len(BODY))))
def test_any_split_same_body(cuts: list[int]) -> None:
    assert decode(BODY, cuts) == decode(BODY, [])


@pytest.mark.parametrize("bad", [b"zz\r\n", b"3\r\nabcX\r\n", b"-1\r\n", b"9" * 2000])
def test_bad_chunks(bad: bytes) -> None:
    with pytest.raises(ProtocolError):
        ChunkedDecoder().feed(bad)


def test_request_head() -> None:
    assert request_head(b"POST", b"/v1/x?y=1", [(b"host", b"h"), (b"content-length", b"2")]) == (
        b"POST /v1/x?y=1 HTTP/1.1\r\nhost: h\r\ncontent-length: 2\r\n\r\n"
    )
