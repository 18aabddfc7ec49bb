from __future__ import annotations

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trioproxy.upstream.http11 import (
    ChunkedDecoder,
    ChunkState,
    ProtocolError,
    parse_head,
    request_head,
)


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


def test_whole_chunks_fed_one_at_a_time_are_one_piece_each() -> None:
    """The paced stream's usual read (one whole chunk alone) takes the one-step way."""
    chunks = [
        b"1a;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n",
        b"3\r\n123\r\n",
        b"A\r\n0123456789\r\n",
    ]
    decoder = ChunkedDecoder()
    assert [decoder.feed(c) for c in chunks] == [
        b"abcdefghijklmnopqrstuvwxyz",
        b"123",
        b"0123456789",
    ]
    assert decoder.state is ChunkState.SIZE_LINE and not decoder.done
    assert decoder.feed(b"0\r\nx-trailer: 1\r\n\r\nNEXT") == b"" and decoder.rest == b"NEXT"


@pytest.mark.parametrize("bad", [b"3\r\nabcXY", b"3\r\nabc\r\r", b"3\r\nabc\n\n"])
def test_a_whole_chunk_with_a_bad_end_is_refused(bad: bytes) -> None:
    with pytest.raises(ProtocolError):
        ChunkedDecoder().feed(bad)


@pytest.mark.parametrize("bad", [b"zz\r\n", b"3\r\nabcX\r\n", b"-1\r\n", b"9" * 2000])
def test_bad_chunks(bad: bytes) -> None:
    with pytest.raises(ProtocolError):
        ChunkedDecoder().feed(bad)


def test_request_head() -> None:
    assert request_head(b"POST", b"/v1/x?y=1", [(b"host", b"h"), (b"content-length", b"2")]) == (
        b"POST /v1/x?y=1 HTTP/1.1\r\nhost: h\r\ncontent-length: 2\r\n\r\n"
    )


# -- differential: the same verdicts and body bytes as h11 ----------------------
def _h11_verdict(data: bytes) -> tuple[str, bytes]:
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="POST", target="/", headers=[("host", "x")]))
    conn.send(h11.EndOfMessage())
    body = b""
    try:
        conn.receive_data(data)
        conn.receive_data(b"")  # the server closed after these bytes
        while True:
            event = conn.next_event()
            if isinstance(event, h11.Data):
                body += bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return "ok", body
            elif event is h11.NEED_DATA or isinstance(event, h11.ConnectionClosed):
                return "error", b""
    except h11.RemoteProtocolError:
        return "error", b""


def _our_verdict(data: bytes, cut: int) -> tuple[str, bytes]:
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return "error", b""
    try:
        head = parse_head(data[:end])
    except ProtocolError:
        return "error", b""
    rest = data[end + 4 :]
    if head.chunked:
        decoder = ChunkedDecoder()
        cut = min(cut, len(rest))
        try:
            body = decoder.feed(rest[:cut]) + decoder.feed(rest[cut:])
        except ProtocolError:
            return "error", b""
        return ("ok", body) if decoder.done else ("error", b"")
    if head.length is not None:
        return ("ok", rest[: head.length]) if len(rest) >= head.length else ("error", b"")
    return "ok", rest


_NAME = st.text("abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12).map(str.encode)
_VALUE = st.binary(max_size=16).map(lambda b: bytes(c for c in b if 0x21 <= c <= 0x7E or c >= 0x80))
_GOOD_SIZES = st.sampled_from(["{:x}", "{:X}", "{:04x}", "{:x};ext=1", "{:x} "])
_BAD_SIZES = st.sampled_from(["0x{:x}", "+{:x}", "{:x}_0", " {:x}", "-{:x}", "{:x}g", ""])


@st.composite
def responses(draw: st.DrawFn) -> tuple[bytes, bool]:
    """(an HTTP/1.1 response, does it carry both Content-Length and chunked)."""
    status = draw(st.sampled_from([b"200"] * 6 + [b"404", b"500", b"20", b"2000", b"2x0"]))
    reason = draw(st.sampled_from([b" OK", b"", b" Not Found", b" a\tb"]))
    headers = [(n, v) for n, v in draw(st.lists(st.tuples(_NAME, _VALUE), max_size=3))]
    headers = [(n, v) for n, v in headers if n not in (b"content-length", b"transfer-encoding")]
    if draw(st.integers(0, 7)) == 0:
        headers.append((b"bad name", b"x"))
    chunks = draw(st.lists(st.binary(min_size=1, max_size=20), max_size=4))
    framing = draw(st.sampled_from(["chunked", "length", "close", "both"]))
    body = b"".join(chunks)
    if framing in ("chunked", "both"):
        te = draw(st.sampled_from([b"chunked"] * 4 + [b"Chunked", b"xchunked", b"gzip, chunked"]))
        headers.append((b"Transfer-Encoding", te))
        encoded = b""
        for chunk in chunks:
            fmt = draw(_BAD_SIZES if draw(st.integers(0, 7)) == 0 else _GOOD_SIZES)
            encoded += fmt.format(len(chunk)).encode() + b"\r\n" + chunk + b"\r\n"
        encoded += b"0\r\n"
        if draw(st.booleans()):
            encoded += b"x-trailer: 1\r\n"
        encoded += b"\r\n"
        body = encoded[: draw(st.integers(len(encoded) - 3, len(encoded)))]  # maybe truncated
    if framing in ("length", "both"):
        length = draw(st.sampled_from([b"%d"] * 4 + [b"+%d", b"%d, %d", b"%da", b"0%d"]))
        declared = len(b"".join(chunks)) + draw(st.sampled_from([0, 0, 1]))
        value = length % ((declared,) * length.count(b"%d"))
        headers.append((b"Content-Length", value))
    head = b"HTTP/1.1 " + status + reason + b"\r\n"
    head += b"".join(n + b": " + v + b"\r\n" for n, v in headers)
    return head + b"\r\n" + body, framing == "both"


@settings(max_examples=1500, deadline=None)
@given(responses(), st.integers(0, 200))
def test_same_verdicts_and_bodies_as_h11(response: tuple[bytes, bool], cut: int) -> None:
    data, both = response
    ours = _our_verdict(data, cut)
    theirs = _h11_verdict(data)
    if both and theirs[0] == "ok":
        # The one deliberate difference: h11 lets chunked win over Content-Length;
        # we refuse the response (RFC 9112 section 6.3: a sign of smuggling).
        assert ours == ("error", b"")
    else:
        assert ours == theirs


@pytest.mark.parametrize(
    "line", [b"0x10", b"+a", b"1_0", b"-1", b" a", b"a b", b"g", b"", b"1" * 17]
)
def test_chunk_sizes_are_hex_digits_only(line: bytes) -> None:
    with pytest.raises(ProtocolError):
        ChunkedDecoder().feed(line + b"\r\n")


@pytest.mark.parametrize("te", [b"xchunked", b"gzip, chunked", b"chunked, gzip", b"identity"])
def test_only_exactly_chunked_is_a_transfer_coding(te: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: " + te)


def test_content_length_with_chunked_is_refused() -> None:
    with pytest.raises(ProtocolError, match="both"):
        parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked")


def test_decoder_states_are_named() -> None:
    decoder = ChunkedDecoder()
    assert decoder.state is ChunkState.SIZE_LINE
    decoder.feed(b"3\r\nab")
    assert decoder.state is ChunkState.DATA
    decoder.feed(b"c\r")
    assert decoder.state is ChunkState.DATA_END
    decoder.feed(b"\n0\r\n")
    assert decoder.state is ChunkState.TRAILERS
    decoder.feed(b"\r\n")
    assert decoder.state is ChunkState.DONE and decoder.done
