from __future__ import annotations

import pytest
import trio
import trio.testing

from trioproxy.admission.limits import StreamLimiter
from trioproxy.errors import Overloaded


async def test_full_limiter_rejects_at_once_and_counts() -> None:
    limiter = StreamLimiter(1, queue_timeout=0)
    a, b = object(), object()
    await limiter.acquire(a)
    with pytest.raises(Overloaded) as info:
        await limiter.acquire(b)
    assert info.value.retry_after == 1
    stats = limiter.statistics()
    assert (stats.borrowed_tokens, stats.rejected) == (1, 1)
    limiter.release(a)
    limiter.release(a)  # idempotent: the relay and the handler may both release
    assert limiter.statistics().borrowed_tokens == 0


async def test_queue_timeout_waits_for_a_slot(autojump_clock: trio.testing.MockClock) -> None:
    limiter = StreamLimiter(1, queue_timeout=5)
    holder, waiter = object(), object()
    await limiter.acquire(holder)

    async def release_later() -> None:
        await trio.sleep(3)
        limiter.release(holder)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(release_later)
        await limiter.acquire(waiter)  # released by another task: on behalf of
    assert trio.current_time() == 3
    with pytest.raises(Overloaded):
        await limiter.acquire(holder)
    assert trio.current_time() == 8
