"""Request bodies being read: a bounded number at once, and a bounded share per key.

Rules:
- At most ``max_body_reads`` bodies are read and parsed at once in a process
  (their memory is bounded by that times ``max_body_bytes``); the wait for one
  of those slots is part of the body's ``body_timeout``, never longer.
- One key holds at most ``max_body_reads_per_key`` of them, counting the ones
  waiting for a slot: a key that trickles bodies fills its own share, and its
  next request is a 429 at once, before anything of its body is read. The other
  keys keep the rest. Open mode (no keys) is one tenant: only the total holds.
- A reader never waits for a slot when one is free (no trip through the
  scheduler on the usual path).

Resource handling: :meth:`BodyReads.open` is a context manager; the key's
share and the slot are given back however the read ends.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio

from ..errors import Overloaded

__all__ = ["BodyReads", "BodyReadsStatistics"]


@dataclass(frozen=True, slots=True)
class BodyReadsStatistics:
    reading: int  # bodies holding a slot
    waiting: int  # bodies waiting for one
    keys: int  # keys with a body being read or waiting
    refused: int  # requests refused for their key's share


class BodyReads:
    """The process's body-read slots and each key's share of them."""

    def __init__(self, total: int, per_key: int) -> None:
        self._slots = trio.Semaphore(total)
        self._total = total
        self.per_key = per_key
        self._held: dict[str, int] = {}  # key name -> bodies being read or waiting
        self.refused = 0

    def statistics(self) -> BodyReadsStatistics:
        return BodyReadsStatistics(
            self._total - self._slots.value,
            self._slots.statistics().tasks_waiting,
            len(self._held),
            self.refused,
        )

    @asynccontextmanager
    async def open(self, key: str | None) -> AsyncIterator[None]:
        """Hold a slot for one body of ``key`` (None: open mode) while the block
        runs. Raises :class:`Overloaded` (429) at once when the key holds its
        share already; the caller's deadline bounds the wait for a slot."""
        if key is not None:
            held = self._held.get(key, 0)
            if held >= self.per_key:
                self.refused += 1
                raise Overloaded(
                    f"key {key!r} has {held} request bodies being read "
                    f"(max_body_reads_per_key = {self.per_key})",
                    retry_after=1,
                )
            self._held[key] = held + 1
        try:
            try:
                self._slots.acquire_nowait()
            except trio.WouldBlock:
                await self._slots.acquire()
            try:
                yield
            finally:
                self._slots.release()
        finally:
            if key is not None:
                left = self._held[key] - 1
                if left:
                    self._held[key] = left
                else:
                    del self._held[key]
