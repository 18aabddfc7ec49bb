"""One streamed response of the mock upstream: its events as HTTP chunks, at the
fault's pace (time to first token, inter-token latency, stall, drop, a bad
event, heartbeats only), noting what a test or a campaign checks afterwards:
when the first event went out, when the last write completed, when the fault
began and, when recording, every event and when it was written."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import trio

from .mock_scripts import Fault, Script

__all__ = ["Emitter", "chunk", "write_stream"]

SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
    b"transfer-encoding: chunked\r\n\r\n"
)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


class Emitter:
    """Sends events as HTTP chunks; notes when the first went out and when the
    last write completed and, when the mock records, every event's bytes (for
    byte-fidelity checks) and when each write began (for latency checks)."""

    __slots__ = (
        "fault_at", "first_sent", "last_write", "on_first", "requested", "stream", "times",
        "transcript",
    )  # fmt: skip

    def __init__(
        self, stream: trio.SocketStream, record: bool, on_first: Callable[[float], None]
    ) -> None:
        """``on_first``: told when the first event is sent (at once, not when the
        stream ends: a fast client may read everything before that)."""
        self.stream = stream
        self.requested = time.monotonic()  # made once the request is read
        self.fault_at: float | None = None  # time.monotonic() when its fault began
        self.first_sent: float | None = None
        self.last_write: float | None = None
        self.on_first = on_first
        self.transcript: list[bytes] | None = [] if record else None
        self.times: list[float] = []

    async def __call__(self, *events: bytes) -> None:
        now = trio.current_time()
        if self.first_sent is None:
            self.first_sent = now
            self.on_first(now)
        if self.transcript is not None:
            self.transcript.extend(events)
            self.times.extend(now for _ in events)
        if len(events) == 1:
            await self.stream.send_all(chunk(events[0]))
        else:
            await self.stream.send_all(b"".join(chunk(e) for e in events))
        self.last_write = trio.current_time()


async def write_stream(emit: Emitter, script: Script, fault: Fault, skip: int = 0) -> bool:
    """Send one SSE response; False when the connection must not be reused.
    ``skip``: the first tokens are already in a prefill: the stream goes on from there."""
    stream = emit.stream
    await stream.send_all(SSE_HEAD)
    if fault.ttft_ms:
        await trio.sleep(fault.ttft_ms / 1000)
    itl = fault.itl_ms / 1000
    for i in range(fault.tokens + 1):
        if i in (
            fault.stall_after, fault.drop_after, fault.heartbeat_after, fault.bad_after,
            fault.half_after,
        ):  # fmt: skip
            emit.fault_at = time.monotonic()
        if i == fault.stall_after:
            await trio.sleep_forever()
        if i == fault.half_after:
            event = script.token(i)
            await stream.send_all(chunk(event[: len(event) // 2]))
        if i in (fault.drop_after, fault.half_after):
            stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
            return False
        if i == fault.heartbeat_after:
            while True:
                await trio.sleep(fault.ping_ms / 1000)
                await stream.send_all(chunk(b": ping\n\n"))
        if i == 0 and script.head:  # after the checks: "stall0" sends no data at all
            await emit(*script.head)
        if i == fault.tokens:
            break
        if i == fault.bad_after:
            await emit(script.bad)
        if i < skip:
            continue
        if itl and i > skip:
            await trio.sleep(itl)
        await emit(script.token(i))
    await emit(*script.tail)
    await stream.send_all(b"0\r\n\r\n")
    return True
