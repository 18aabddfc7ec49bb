"""Detached work: jobs that outlive the request, run in the service nursery.

The service nursery is opened by the ASGI lifespan and lives as long as the
worker; a request hands a job to it with :meth:`DetachedWork.submit`, which
never awaits, so the client's stream never waits for detached work.

Resource handling: at most ``max_pending`` jobs are queued or running at once
and at most ``concurrency`` run at the same time (their own limiter, separate
from the stream limiter). When ``max_pending`` is reached a new job is dropped,
counted in ``dropped`` and logged: the hot path never blocks on a full queue.
:meth:`drain` waits for pending jobs on graceful shutdown.

Error handling: an exception in a job is logged and counted in ``failed``; it
never reaches the service nursery (which would take the worker down).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio

__all__ = ["DetachedStatistics", "DetachedWork", "open_detached_work"]

log = logging.getLogger("trioproxy.detached")


@dataclass(frozen=True, slots=True)
class DetachedStatistics:
    pending: int
    running: int
    completed: int
    failed: int
    dropped: int


class DetachedWork:
    def __init__(self, nursery: trio.Nursery, max_pending: int, concurrency: int) -> None:
        self._nursery = nursery
        self._max_pending = max_pending
        self._limiter = trio.CapacityLimiter(concurrency)
        self._pending = 0
        self._completed = 0
        self._failed = 0
        self._dropped = 0
        self._idle = trio.Event()
        self._idle.set()

    def submit(self, fn: Callable[..., Awaitable[Any]], *args: Any, name: str = "job") -> bool:
        """Queue ``fn(*args)``; False (and counted) when the queue is full."""
        if self._pending >= self._max_pending:
            self._dropped += 1
            log.error("detached work queue full (%d): dropped %s", self._max_pending, name)
            return False
        try:
            self._nursery.start_soon(self._run, fn, args, name=f"detached:{name}")
        except RuntimeError:  # the service nursery has closed (shutdown finished)
            self._dropped += 1
            log.error("detached work submitted after shutdown: dropped %s", name)
            return False
        self._pending += 1
        if self._idle.is_set():
            self._idle = trio.Event()
        return True

    async def _run(self, fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...]) -> None:
        try:
            async with self._limiter:
                await fn(*args)
            self._completed += 1
        except Exception:
            self._failed += 1
            log.exception("detached job failed")
        finally:
            self._pending -= 1
            if self._pending == 0:
                self._idle.set()

    async def drain(self) -> None:
        """Wait until no job is pending (callers bound the wait)."""
        await self._idle.wait()

    def statistics(self) -> DetachedStatistics:
        return DetachedStatistics(
            pending=self._pending,
            running=self._limiter.borrowed_tokens,
            completed=self._completed,
            failed=self._failed,
            dropped=self._dropped,
        )


@asynccontextmanager
async def open_detached_work(
    max_pending: int, concurrency: int, drain_timeout: float
) -> AsyncIterator[DetachedWork]:
    """Open the service nursery; on exit drain pending jobs (bounded), then cancel."""
    async with trio.open_nursery() as service_nursery:
        work = DetachedWork(service_nursery, max_pending, concurrency)
        try:
            yield work
        finally:
            with trio.move_on_after(drain_timeout, shield=True):
                await work.drain()
            pending = work.statistics().pending
            if pending:
                log.error("drain timed out with %d detached jobs pending", pending)
            service_nursery.cancel_scope.cancel()
