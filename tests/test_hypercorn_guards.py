"""The Hypercorn guards (the two regression tests of the others are in test_server.py)."""

from __future__ import annotations

from typing import Any

import h11
import hypercorn.config
from hypercorn.events import RawData
from hypercorn.protocol.events import Body, EndBody, Response
from hypercorn.protocol.h11 import H11Protocol

import trioproxy.hypercorn_guards  # noqa: F401  (installs the guards)


def _protocol(sent: list[Any]) -> H11Protocol:
    """An H11Protocol that has read one request, writing to ``sent``."""

    async def send(event: Any) -> None:
        sent.append(event)

    proto = H11Protocol.__new__(H11Protocol)
    proto.config = hypercorn.config.Config()
    proto.keep_alive_requests = 0
    proto.send = send
    proto.connection = h11.Connection(h11.SERVER)
    proto.connection.receive_data(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
    assert isinstance(proto.connection.next_event(), h11.Request)
    return proto


async def test_the_head_goes_out_in_one_write_with_the_first_body_bytes() -> None:
    sent: list[Any] = []
    proto = _protocol(sent)
    await proto.stream_send(
        Response(stream_id=1, headers=[(b"content-type", b"text/event-stream")], status_code=200)
    )
    assert sent == []  # held until the first bytes
    await proto.stream_send(Body(stream_id=1, data=b"data: 1\n\n"))
    await proto.stream_send(Body(stream_id=1, data=b"data: 2\n\n"))
    await proto.stream_send(EndBody(stream_id=1))
    writes = [e.data for e in sent if isinstance(e, RawData)]
    assert len(writes) == 3
    assert writes[0].startswith(b"HTTP/1.1 200 ") and writes[0].endswith(b"data: 1\n\n\r\n")
    assert b"data: 2" in writes[1] and writes[2] == b"0\r\n\r\n"


async def test_an_error_response_without_a_body_still_goes_out() -> None:
    sent: list[Any] = []
    proto = _protocol(sent)
    await proto._send_error_response(400)
    (write,) = [e.data for e in sent if isinstance(e, RawData)]
    assert write.startswith(b"HTTP/1.1 400 ") and write.endswith(b"\r\n\r\n")
