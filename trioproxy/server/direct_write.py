"""A relayed chunk written by the reader itself, while the writer task waits.

Rules:
- The relay's writer task sends every chunk; the reader hands them over through
  the channel, one trip through the scheduler per chunk. When the writer waits
  with nothing in hand (the reader checks the channel), that trip buys nothing:
  :meth:`DirectChunks.write_now` writes the chunk from the reader's own step.
- It never waits. It writes only when the connection is ready for it (Hypercorn
  guard 7 decides: a chunked body whose head guard 6 framed and sent, no write
  in progress, the stream open) and only what one non-blocking ``os.write``
  takes. What the socket did not take is the caller's to hand to the writer,
  which sends it (:meth:`DirectChunks.write_rest`) Hypercorn's waiting way,
  before anything later: a slow client meets the writer and the channel, as
  before, and the reader's timers still wrap only the upstream read.
- ``None`` from ``write_now``: nothing was written (not ready, would block, the
  socket failed); the chunk goes through the channel as it always did.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable

from .guard_stats import HEADS, WRITES
from .response_head import frame_chunk

__all__ = ["DirectChunks"]


class DirectChunks:
    """One response's way from the reader to its client socket (``trioproxy.asgi.DirectWriter``)."""

    __slots__ = ("_fileno", "_ready", "_rest")

    def __init__(
        self,
        ready: Callable[[], bool],
        fileno: Callable[[], int],
        rest: Callable[[bytes], Awaitable[None]],
    ) -> None:
        self._ready, self._fileno, self._rest = ready, fileno, rest

    def write_now(self, body: bytes) -> bytes | None:
        """Write ``body`` as one chunk at once: None (nothing written), else what
        the socket did not take (``b""``: all of it)."""
        if not self._ready():
            return None
        data = frame_chunk(body)
        try:
            written = os.write(self._fileno(), data)
        except OSError:  # would block, reset, closed: the writer's way decides
            return None
        WRITES.from_reader += 1
        HEADS.chunks += 1
        if written < len(data):
            WRITES.rest += 1
        return data[written:]

    async def write_rest(self, rest: bytes) -> None:
        """What ``write_now`` left, the waiting way (the writer task)."""
        await self._rest(rest)
