"""The global stream limiter: a ``trio.CapacityLimiter`` with a queue timeout.

A slot is taken by the request handler *on behalf of* the request's token and
released by whichever task finishes the upstream side: the slot follows the
upstream connection, not the client. ``CapacityLimiter`` tokens belong to a
borrower object, so acquire and release use ``*_on_behalf_of`` with one object
per request.

Error handling: :meth:`StreamLimiter.acquire` raises
:class:`~trioproxy.errors.Overloaded` (429) when no slot frees up within
``queue_timeout`` seconds (0 = answer at once).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import trio

from ..errors import Overloaded

__all__ = ["LimiterStatistics", "StreamLimiter"]


@dataclass(frozen=True, slots=True)
class LimiterStatistics:
    borrowed_tokens: int
    total_tokens: int
    tasks_waiting: int
    rejected: int


class StreamLimiter:
    def __init__(self, max_streams: int, queue_timeout: float) -> None:
        self._limiter = trio.CapacityLimiter(max_streams)
        self._queue_timeout = queue_timeout
        self._rejected = 0

    async def acquire(self, borrower: object) -> None:
        try:
            self._limiter.acquire_on_behalf_of_nowait(borrower)
            return
        except trio.WouldBlock:
            pass
        if self._queue_timeout > 0:
            with trio.move_on_after(self._queue_timeout):
                await self._limiter.acquire_on_behalf_of(borrower)
                return
        self._rejected += 1
        raise Overloaded(
            f"gateway at capacity ({self._limiter.total_tokens} concurrent streams)",
            retry_after=max(1, round(self._queue_timeout) or 1),
        )

    def try_acquire(self, borrower: object) -> bool:
        """A slot for ``borrower`` now, or False (counted as rejected)."""
        try:
            self._limiter.acquire_on_behalf_of_nowait(borrower)
        except trio.WouldBlock:
            self._rejected += 1
            return False
        return True

    def full(self) -> bool:
        """Every slot is taken (a ``try_acquire`` now would fail)."""
        return self._limiter.available_tokens < 1

    def release(self, borrower: object) -> None:
        """Release the slot held for ``borrower``; a no-op if it holds none."""
        with contextlib.suppress(RuntimeError):
            self._limiter.release_on_behalf_of(borrower)

    def statistics(self) -> LimiterStatistics:
        s = self._limiter.statistics()
        return LimiterStatistics(
            borrowed_tokens=s.borrowed_tokens,
            total_tokens=int(s.total_tokens),
            tasks_waiting=s.tasks_waiting,
            rejected=self._rejected,
        )
