"""Guard 6's response head: the bytes and decisions are h11's own, checked once.

Each case runs the same request through two h11 connections: one sends the head
h11's way, the other through :func:`plain_head`. Where ``plain_head`` takes the
head, the bytes must be equal and the connections must go on alike (body, end,
next request); where it does not, h11 must have been told nothing.
"""

from __future__ import annotations

import h11
import pytest

from trioproxy.server.response_head import frame_chunk, is_chunked, plain_head

SSE = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
    (b"x-trioproxy-request-id", b"tp-99ad7e3b398befdd9d6e2f0f"),
    (b"date", b"Tue, 01 Dec 2026 15:41:01 GMT"),
    (b"server", b"hypercorn-h11"),
]
POST = b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-length: 2\r\n\r\n{}"


def _read(request: bytes) -> h11.Connection:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(request)
    while type(conn.next_event()) is not h11.EndOfMessage:
        pass
    return conn


def _both(
    request: bytes, status: int, headers: list[tuple[bytes, bytes]]
) -> tuple[h11.Connection, bytes, h11.Connection, bytes | None]:
    theirs, ours = _read(request), _read(request)
    return (
        theirs,
        theirs.send(h11.Response(status_code=status, headers=headers)) or b"",
        ours,
        (plain_head(ours, status, headers)),
    )


@pytest.mark.parametrize(
    ("request_bytes", "status", "headers"),
    [
        (POST, 200, SSE),  # the relay's stream
        (POST, 200, [*SSE, (b"X-Mixed-Case", b"a  b\tc"), (b"x-empty", b"")]),
        (POST, 429, [(b"retry-after", b"1"), (b"x-obs-text", b"caf\xc3\xa9")]),
        (POST, 204, [(b"x-a", b"1")]),  # no body: not chunked
        (POST.replace(b"host: gw", b"host: gw\r\nconnection: close"), 200, SSE),
        (POST.replace(b"host: gw", b"host: gw\r\nConnection: keep-alive, Close"), 200, SSE),
        (b"GET /v1/models HTTP/1.1\r\nhost: gw\r\n\r\n", 200, SSE),
        (b"GET /v1/models HTTP/1.1\r\nhost: gw\r\nexpect: 100-continue\r\n\r\n", 200, SSE),
    ],
)
def test_a_plain_head_is_the_bytes_h11_writes_and_h11_goes_on_alike(
    request_bytes: bytes, status: int, headers: list[tuple[bytes, bytes]]
) -> None:
    theirs, their_head, ours, our_head = _both(request_bytes, status, headers)
    assert our_head == their_head
    assert is_chunked(our_head) == (status != 204)
    assert ours.our_state is theirs.our_state is h11.SEND_BODY
    if is_chunked(our_head):
        assert frame_chunk(b"data: 1\n\n") == theirs.send(h11.Data(data=b"data: 1\n\n"))
    assert ours.send(h11.EndOfMessage()) == theirs.send(h11.EndOfMessage())
    assert ours.our_state is theirs.our_state
    assert ours.their_state is theirs.their_state
    if ours.our_state is h11.DONE and ours.their_state is h11.DONE:  # keep-alive
        ours.start_next_cycle()
        theirs.start_next_cycle()
        assert ours.our_state is theirs.our_state is h11.IDLE


@pytest.mark.parametrize(
    ("request_bytes", "status", "headers"),
    [
        (POST, 200, [*SSE, (b"content-length", b"5")]),  # framing: h11 decides
        (POST, 200, [*SSE, (b"Transfer-Encoding", b"chunked")]),
        (POST, 200, [*SSE, (b"connection", b"close")]),  # keep-alive: h11 decides
        (POST, 200, [(b"Host", b"x"), *SSE]),  # h11 writes it first
        (POST.replace(b"HTTP/1.1", b"HTTP/1.0"), 200, SSE),
        (POST, 200, [(b"x-a", "text")]),  # not bytes
        (POST, 200, []),
        (POST, 101, SSE),
    ],
)
def test_a_head_h11_must_decide_is_left_to_it_untold(
    request_bytes: bytes, status: int, headers: list[tuple[bytes, bytes]]
) -> None:
    ours = _read(request_bytes)
    assert plain_head(ours, status, headers) is None
    assert ours.our_state is h11.SEND_RESPONSE


@pytest.mark.parametrize(
    "header",
    [
        (b"x-a", b"1\r\nset-cookie: session=attacker"),  # response splitting
        (b"x-a", b"1\nx-b: 2"),
        (b"x-a", b"1\x00"),
        (b"x-a\r\nset-cookie", b"1"),
        (b"x-a\nset-cookie", b"1"),  # a name split in two at the check's own separator
        (b"x-a", b"1\n"),
        (b"x a", b"1"),
        (b"x-a:", b"1"),
        (b"", b"1"),
        (b"x-a", b" leading"),
        (b"x-a", b"trailing\t"),
    ],
)
def test_an_injected_header_is_refused_as_h11_refuses_it(header: tuple[bytes, bytes]) -> None:
    headers = [*SSE, header]
    with pytest.raises(h11.LocalProtocolError):
        _read(POST).send(h11.Response(status_code=200, headers=headers))
    ours = _read(POST)
    assert plain_head(ours, 200, headers) is None
    assert ours.our_state is h11.SEND_RESPONSE  # told nothing: h11's way refuses it


def _h11_accepts(name: bytes, value: bytes) -> bool:
    try:
        h11.Response(status_code=200, headers=[(name, value)])
    except h11.LocalProtocolError:
        return False
    return True


def test_every_byte_in_a_name_or_a_value_is_judged_as_h11_judges_it() -> None:
    cases = []
    for byte in (bytes([i]) for i in range(256)):
        cases += [(byte, b"v"), (b"x" + byte + b"y", b"v"), (b"x", byte)]
        cases += [(b"x", b"a" + byte + b"b"), (b"x", byte + b"b"), (b"x", b"a" + byte)]
    for name, value in cases:
        ours = plain_head(_read(POST), 200, [(name, value)]) is not None
        assert ours == _h11_accepts(name, value), (name, value)


@pytest.mark.parametrize("size", [1, 15, 16, 255, 4096, 70_000])
def test_a_chunk_is_framed_as_h11_frames_it(size: int) -> None:
    conn = _read(POST)
    conn.send(h11.Response(status_code=200, headers=SSE))
    data = b"d" * size
    assert frame_chunk(data) == conn.send(h11.Data(data=data))
