"""A connection's keep-alive timer: one task for the connection's life, whose deadline moves.

Guard 4 of :mod:`trioproxy.server.hypercorn` puts one in as a Hypercorn
connection's ``idle_task`` (built there by ``keep_alive_timer``, which hands it
what it needs of the server); nothing here touches Hypercorn.

Rules:
- ``restart`` (idle from now: the close is due ``timeout`` from now; the first
  call starts the task), ``stop`` (a request started: no close is due),
  :meth:`KeepAliveTimer.end` (the read loop is over, guard 1: the task ends).
- :meth:`KeepAliveTimer.arrived` (guard 8: bytes came in): the first bytes
  while idle begin a request head, which must be whole ``head_timeout`` after
  them: the close is due then, if that is sooner. A whole head is ``stop``.
- The task waits for the server to terminate, in a cancel scope whose deadline
  is the due close. It closes the connection (Hypercorn's own close, shielded)
  when it wakes and the connection is idle past its due time, or idle when the
  server terminates. While a request runs a termination is Hypercorn's to act
  on (it closes the connection after the response), and the task ends.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any

import trio

__all__ = ["KeepAliveTimer"]


class KeepAliveTimer:
    """Hypercorn's ``TrioSingleTask`` interface (``restart``, ``stop``) plus ``end``."""

    __slots__ = (
        "_close",
        "_due",
        "_ended",
        "_head",
        "_head_timeout",
        "_scope",
        "_spawn",
        "_started",
        "_terminated",
        "_timeout",
    )

    def __init__(
        self,
        timeout: float,
        terminated: Any,  # Hypercorn's terminated event: ``await wait()``
        close: Callable[[], Awaitable[None]],
        spawn: Callable[[Any, Callable[[], Awaitable[None]]], None],  # (task group, task)
        head_timeout: float = math.inf,
    ) -> None:
        self._timeout = timeout
        self._head_timeout = head_timeout
        self._head = False  # a request head began while idle
        self._terminated = terminated
        self._close = close
        self._spawn = spawn
        self._due = math.inf
        self._scope: trio.CancelScope | None = None
        self._started = False
        self._ended = False

    async def restart(self, task_group: Any, action: Any) -> None:
        self._head = False
        self._due = trio.current_time() + self._timeout
        if self._scope is not None:
            self._scope.deadline = self._due
        elif not self._started:
            self._started = True
            self._spawn(task_group, self._run)

    async def stop(self) -> None:
        self._head = False
        self._due = math.inf
        if self._scope is not None:
            self._scope.deadline = math.inf

    def arrived(self) -> None:
        """Bytes came in: if idle, a request head began and has ``head_timeout``."""
        if self._head or self._due == math.inf:
            return
        self._head = True
        due = trio.current_time() + self._head_timeout
        if due < self._due:
            self._due = due
            if self._scope is not None:
                self._scope.deadline = due

    def end(self) -> None:
        self._ended = True
        if self._scope is not None:
            self._scope.cancel()

    async def _run(self) -> None:
        while True:
            if self._ended:  # also before the first wait: the reads ended first
                return
            with trio.CancelScope(deadline=self._due) as scope:
                self._scope = scope
                await self._terminated.wait()
            self._scope = None
            idle = self._due != math.inf and not self._ended
            if not scope.cancelled_caught:  # the server terminates
                if not idle:
                    return
                break
            if idle and trio.current_time() >= self._due:
                break  # (ended: the loop's first check returns)
        with trio.CancelScope(shield=True):
            await self._close()
