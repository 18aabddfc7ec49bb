"""The SSE framer: same events for every split of the same bytes (h11-style)."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from trioproxy.relay.sse import SSEEvent, SSEFramer, SSEFramingError, is_heartbeat, parse_event

STREAM = (
    b": comment first\n\n"
    b"data: one\n\n"
    b'event: message_start\ndata: {"a": 1}\n\n'
    b"data: multi\ndata: line\nid: 7\nretry: 100\n\n"
    b"\n\n"  # stray blank lines between events
    b": ping\n\n"
    b"data:nospace\n\n"
    b"data: [DONE]\n\n"
)


def frame(data: bytes, cuts: list[int]) -> list[SSEEvent]:
    framer = SSEFramer()
    blocks: list[bytes] = []
    prev = 0
    for cut in [*sorted(set(cuts)), len(data)]:
        blocks += framer.feed(data[prev:cut])
        prev = cut
    assert framer.buffered == 0
    return [parse_event(b) for b in blocks]


def with_endings(data: bytes, ending: bytes) -> bytes:
    return data.replace(b"\n", ending)


EXPECTED = frame(STREAM, [])


def test_whole_stream_events() -> None:
    assert [e.data for e in EXPECTED] == [
        None,
        b"one",
        b'{"a": 1}',
        b"multi\nline",
        None,
        b"nospace",
        b"[DONE]",
    ]
    assert EXPECTED[2].event == b"message_start"
    assert EXPECTED[3].id == b"7" and EXPECTED[3].retry == 100
    assert EXPECTED[0].comments == (b" comment first",)


@pytest.mark.parametrize("ending", [b"\n", b"\r\n", b"\r"])
def test_byte_at_a_time_every_line_ending(ending: bytes) -> None:
    data = with_endings(STREAM, ending)
    assert frame(data, list(range(len(data)))) == EXPECTED


@given(
    st.sampled_from([b"\n", b"\r\n", b"\r"]),
    st.lists(st.integers(min_value=0, max_value=len(with_endings(STREAM, b"\r\n")))),
)
@example(b"\r\n", [8])  # "\r" | "\n" split inside a CRLF
@example(b"\r", [17, 18])  # "\r" at the end of a chunk, a lone CR as the blank line
def test_any_split_same_events(ending: bytes, cuts: list[int]) -> None:
    data = with_endings(STREAM, ending)
    assert frame(data, [c for c in cuts if c <= len(data)]) == EXPECTED


@given(st.lists(st.binary(max_size=40), max_size=12), st.data())
def test_arbitrary_bytes_split_invariance(parts: list[bytes], data: st.DataObject) -> None:
    blob = b"".join(parts) + b"\n\n"
    cuts = data.draw(st.lists(st.integers(min_value=0, max_value=len(blob))))
    whole = SSEFramer().feed(blob)
    framer = SSEFramer()
    split: list[bytes] = []
    prev = 0
    for cut in [*sorted(set(cuts)), len(blob)]:
        split += framer.feed(blob[prev:cut])
        prev = cut
    assert [parse_event(b) for b in split] == [parse_event(b) for b in whole]
    # Not vacuous (a framer answering [] passes the line above): as many events as
    # the stream has blocks between blank lines, counted here another way.
    lines = blob.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    assert len(whole) == len([b for b in lines.split(b"\n\n") if b.strip(b"\n")])


def test_mixed_line_endings_in_one_event() -> None:
    data = b"data: a\r\ndata: b\rdata: c\n\r\n"
    assert frame(data, list(range(len(data)))) == [SSEEvent(data=b"a\nb\nc")]


def test_partial_event_is_buffered_not_returned() -> None:
    framer = SSEFramer()
    assert framer.feed(b"data: par") == []
    assert framer.buffered == len(b"data: par")
    assert framer.feed(b"tial\n\ndata: x") == [b"data: partial\n\n"]
    assert framer.buffered == len(b"data: x")


def test_event_larger_than_bound_is_an_error() -> None:
    framer = SSEFramer(max_event_bytes=64)
    framer.feed(b"data: " + b"x" * 50)
    with pytest.raises(SSEFramingError):
        framer.feed(b"x" * 20)


def test_heartbeats() -> None:
    assert is_heartbeat(b": ping\n\n")
    assert is_heartbeat(b'event: ping\ndata: {"type": "ping"}\n\n')
    assert not is_heartbeat(b"data: x\n\n")
    assert not is_heartbeat(b": note\ndata: x\n\n")  # a comment on a real event
