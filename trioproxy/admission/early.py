"""An admission counted in Redis while the upstream request is on its way.

Rules:
- A key far from its shared limits (the rule is in
  :mod:`trioproxy.shared.limits`) does not wait for Redis before its upstream
  request leaves: the same one round trip runs as a task of the relay, asked
  once the upstream request is written (:meth:`EarlyAdmission.go`), so its
  CPU time is spent while the upstream works, not before the request leaves.
- The call counts the request whatever the limits say by then (the request
  runs already) and names the limit it overran, if another host filled it
  faster than this one learnt of it: counted (``early_overruns``), and the
  key's next admissions wait for Redis again.
- A relay that never ran never asks: nothing is counted for it.

Resource handling: :meth:`EarlyAdmission.run` is shielded from the relay's
cancellation (the call inside is bounded by ``redis_timeout``), so the count,
and the stream lease it takes, is known however the relay ends: the lease is
given back with the exchange's completion call.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

__all__ = ["EarlyAdmission"]


class EarlyAdmission:
    __slots__ = ("_count", "_go", "_mark", "started")

    def __init__(self, count: Callable[[], Awaitable[None]], mark: Callable[[str], None]) -> None:
        """``count``: the admission call (never raises a refusal); ``mark``: the
        exchange's timeline (``admission_asked``, ``admission_counted``)."""
        self._count = count
        self._mark = mark
        self._go = trio.Event()
        self.started = False  # False: the relay never ran, nothing was asked

    def go(self) -> None:
        """The upstream request is written (or no attempt is left): ask now."""
        self._go.set()

    async def run(self) -> None:
        """The relay's task (``early-admission``)."""
        await self._go.wait()
        self.started = True
        self._mark("admission_asked")
        with trio.CancelScope(shield=True):
            await self._count()
        self._mark("admission_counted")
