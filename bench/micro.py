"""Microbenchmarks, no sockets: per-chunk costs in microseconds.

- the SSE framer over a recorded chat stream (one event per chunk, and split
  at every 7th byte);
- the relay's reader loop and client writer over an in-memory upstream body
  (trioproxy.relay with a fake httpx response and a no-op ASGI send).

``python -m bench.micro``
"""

from __future__ import annotations

import time

import httpx
import trio

from trioproxy.config import Config
from trioproxy.downstream import Start, write_client
from trioproxy.errors import Dialect
from trioproxy.mock_scripts import script_for
from trioproxy.records import Exchange
from trioproxy.relay import _relay_events
from trioproxy.sse import SSEFramer

N = 20_000


def _events() -> list[bytes]:
    script = script_for("chat", "mock", N, True, 1)
    return [*script.head, *(script.token(i) for i in range(N)), *script.tail]


def bench_framer() -> dict[str, float]:
    events = _events()
    out = {}
    framer = SSEFramer()
    t0 = time.perf_counter()
    for event in events:
        framer.feed(event)
    out["framer_us_per_event_whole"] = (time.perf_counter() - t0) / len(events) * 1e6
    blob = b"".join(events)
    pieces = [blob[i : i + 7] for i in range(0, len(blob), 7)]
    framer = SSEFramer()
    t0 = time.perf_counter()
    for piece in pieces:
        framer.feed(piece)
    out["framer_us_per_event_7_byte_reads"] = (time.perf_counter() - t0) / len(events) * 1e6
    return out


class _Body(httpx.AsyncByteStream):
    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    async def __aiter__(self):  # type: ignore[no-untyped-def]
        for chunk in self.chunks:
            yield chunk


async def _relay_loop(events: list[bytes]) -> float:
    config = Config(bind="127.0.0.1:0", channel_size=64)
    ex = Exchange("r", "chat", "POST", trio.current_time(), stream=True)
    response = httpx.Response(
        200, headers={"content-type": "text/event-stream"}, stream=_Body(events)
    )
    send_ch, recv_ch = trio.open_memory_channel[bytes | Start](config.channel_size)
    sent = 0

    async def send(message: dict[str, object]) -> None:
        nonlocal sent
        sent += 1
        await trio.lowlevel.checkpoint()

    async def reader() -> None:
        async with send_ch:
            await _relay_events(response, config, ex, send_ch, ex.started + config.ttft_timeout)
        ex.upstream_outcome = "done"

    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        nursery.start_soon(
            write_client, send, recv_ch, ex, Dialect.OPENAI, [], nursery.cancel_scope
        )
    return (time.perf_counter() - t0) / len(events) * 1e6


def bench_metrics(n: int = 20_000) -> dict[str, float]:
    """What metrics cost per request (observe) and per scrape (render)."""
    from trioproxy.app import Gateway
    from trioproxy.records import CompletionRecord

    gateway = Gateway(Config(bind="127.0.0.1:0", receipts=False))
    metrics = gateway.metrics
    assert metrics is not None
    ex = Exchange("r", "chat", "POST", 0.0, stream=True, model="m", provider="p")
    ex.first_event_at, ex.last_event_at, ex.ended, ex.outcome = 0.01, 0.5, 0.5, "done"
    ex.added_counts[3], ex.gap_counts[0] = 101, 100
    record = CompletionRecord.from_exchange(ex, False)
    t0 = time.perf_counter()
    for _ in range(n):
        metrics.observe(record, ex)
    observe = (time.perf_counter() - t0) / n * 1e6

    async def scrape() -> float:
        t1 = time.perf_counter()
        for _ in range(100):
            metrics.render()
        return (time.perf_counter() - t1) / 100 * 1e6

    return {"metrics_observe_us_per_request": observe, "metrics_scrape_us": trio.run(scrape)}


def main() -> None:
    results = bench_framer()
    results["relay_loop_us_per_chunk"] = trio.run(_relay_loop, _events())
    results.update(bench_metrics())
    for name, value in results.items():
        print(f"{name:40s} {value:8.2f} µs")


if __name__ == "__main__":
    main()
