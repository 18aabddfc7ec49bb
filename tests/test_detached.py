"""Detached work: bounded, failure-isolated, drained; and the completion hand-off."""

from __future__ import annotations

import trio
import trio.testing

from tests.conftest import chat, eventually, running
from trioproxy.receipts.detached import open_detached_work
from trioproxy.relay.record import CompletionRecord
from trioproxy.testing.rawclient import RawClient


async def test_jobs_run_failures_are_counted_and_the_queue_is_bounded(
    autojump_clock: trio.testing.MockClock,
) -> None:
    done: list[int] = []

    async def job(n: int) -> None:
        await trio.sleep(1)
        done.append(n)

    async def boom() -> None:
        raise RuntimeError("hook bug")

    async with open_detached_work(max_pending=3, concurrency=1, drain_timeout=60) as work:
        assert work.submit(job, 1) and work.submit(boom) and work.submit(job, 2)
        assert not work.submit(job, 3)  # full: dropped, counted, never blocks
        assert work.statistics().pending == 3
        await trio.testing.wait_all_tasks_blocked()
        assert work.statistics().running == 1  # its own limiter
    stats = work.statistics()
    assert sorted(done) == [1, 2]  # drained on exit
    assert (stats.pending, stats.completed, stats.failed, stats.dropped) == (0, 2, 1, 1)


async def test_drain_is_bounded(autojump_clock: trio.testing.MockClock) -> None:
    start = trio.current_time()
    async with open_detached_work(max_pending=3, concurrency=1, drain_timeout=5) as work:
        work.submit(trio.sleep_forever)
    assert trio.current_time() - start == 5


async def test_hand_off_runs_after_the_stream_ended_and_never_delays_it() -> None:
    """Guarantee 11: the client's stream ends while the hook is still blocked;
    a hook that raises does not affect the server."""
    release = trio.Event()
    seen: list[CompletionRecord] = []

    async def slow_hook(record: CompletionRecord) -> None:
        await release.wait()  # would deadlock the test if the stream waited for it
        seen.append(record)

    async def broken_hook(record: CompletionRecord) -> None:
        raise RuntimeError("a bug in a hook")

    async with running() as (gw, _):
        gw.app.hooks = (slow_hook, broken_hook)
        client = await RawClient.connect(gw.url)
        await client.send_request("POST", "/v1/chat/completions", chat("mock-t5-i0"))
        with trio.fail_after(5):
            response = await client.read_response()
        await client.close()
        assert response.body.endswith(b"data: [DONE]\n\n")
        assert gw.app.detached is not None
        await eventually(
            lambda: gw.app.detached.statistics().failed >= 1, timeout=5
        )  # the hand-off happens as the handler returns
        assert seen == []
        # slow_hook, still blocked (the receipt flusher ends after receipt_flush_delay)
        await eventually(lambda: gw.app.detached.statistics().pending == 1, timeout=5)
        assert seen == []
        release.set()
        await eventually(lambda: bool(seen), timeout=5)
        assert seen[0].outcome == "done"
        # The server keeps serving after the failing hook.
        client = await RawClient.connect(gw.url)
        await client.send_request("POST", "/v1/chat/completions", chat("mock-t2-i0"))
        assert (await client.read_response()).status == 200
        await client.close()
