"""Microbenchmarks, no sockets: per-chunk costs in microseconds.

- the SSE framer over a recorded chat stream (one event per chunk, and split
  at every 7th byte);
- the relay's reader loop and client writer over an in-memory upstream body
  (trioproxy.relay.reader with the real chunked body decoder over a fake socket,
  and a no-op ASGI send);
- the upstream response parser, ours against h11's, per token: each token one
  chunk of a chunked body, fed one network read at a time.

``python -m bench.micro``
"""

from __future__ import annotations

import time

import h11
import httpx
import trio

from trioproxy.config import Config
from trioproxy.errors import Outcome
from trioproxy.relay.exchange import Exchange, StreamMetrics
from trioproxy.relay.reader import UpstreamReader
from trioproxy.relay.record import CompletionRecord
from trioproxy.relay.sse import SSEFramer
from trioproxy.relay.writer import Start, Waiting, write_client
from trioproxy.testing.mock_scripts import script_for
from trioproxy.upstream.body import BODY_EXTENSION, Conn, UpstreamBody
from trioproxy.upstream.http11 import ChunkedDecoder, Head, parse_head

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


class _FakeSocket:
    """What an upstream connection's stream offers the body reader."""

    def __init__(self, reads: list[bytes]) -> None:
        self.reads = reads[::-1]

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint()
        return self.reads.pop() if self.reads else b""


def _chunked(events: list[bytes]) -> list[bytes]:
    reads = [b"%x\r\n%s\r\n" % (len(e), e) for e in events]
    reads[-1] += b"0\r\n\r\n"
    return reads


async def _relay_loop(events: list[bytes]) -> float:
    config = Config(bind="127.0.0.1:0", channel_size=64)
    ex = Exchange("r", "chat", "POST", trio.current_time(), stream=True)
    conn = Conn(_FakeSocket(_chunked(events)), (b"http", b"x", 80))  # type: ignore[arg-type]
    head = Head(200, [(b"content-type", b"text/event-stream")], None, True, True)
    body = UpstreamBody(lambda conn, reusable: None, conn, head)
    response = httpx.Response(
        200,
        headers={"content-type": "text/event-stream"},
        stream=body,
        extensions={BODY_EXTENSION: body},
    )
    send_ch, recv_ch = trio.open_memory_channel[bytes | Start](config.channel_size)
    waiting = Waiting()
    reader = UpstreamReader(None, config, None, ex, send_ch, waiting)  # type: ignore[arg-type]
    sent = 0

    async def send(message: dict[str, object]) -> None:
        nonlocal sent
        sent += 1
        await trio.lowlevel.checkpoint()

    async def read() -> None:
        async with send_ch:
            await reader._relay_events(response, ex.started + config.ttft_timeout, None)
        ex.upstream_outcome = Outcome.DONE

    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)
        nursery.start_soon(write_client, send, recv_ch, ex, [], nursery.cancel_scope, waiting)
    return (time.perf_counter() - t0) / len(events) * 1e6


def bench_http11(events: list[bytes]) -> dict[str, float]:
    """Per token: our ChunkedDecoder vs h11's client connection, on the same reads."""
    head = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    reads = _chunked(events)
    best_ours = best_h11 = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        parse_head(head[:-4])
        decoder = ChunkedDecoder()
        for data in reads:
            decoder.feed(data)
        assert decoder.done
        best_ours = min(best_ours, time.perf_counter() - t0)
        t0 = time.perf_counter()
        conn = h11.Connection(h11.CLIENT)
        conn.send(h11.Request(method="POST", target="/", headers=[("host", "x")]))
        conn.send(h11.EndOfMessage())
        conn.receive_data(head)
        conn.next_event()
        for data in reads:
            conn.receive_data(data)
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA or type(event) is h11.EndOfMessage:
                    break
        best_h11 = min(best_h11, time.perf_counter() - t0)
    ours, theirs = best_ours / len(events) * 1e6, best_h11 / len(events) * 1e6
    return {
        "http11_ours_us_per_token": ours,
        "http11_h11_us_per_token": theirs,
        "http11_h11_over_ours": theirs / ours,
    }


def bench_metrics(n: int = 20_000) -> dict[str, float]:
    """What metrics cost per request (observe) and per scrape (render)."""
    from trioproxy.server.app import Gateway

    gateway = Gateway(Config(bind="127.0.0.1:0", receipts=False))
    metrics = gateway.metrics
    assert metrics is not None
    stream = StreamMetrics()

    async def make_record() -> CompletionRecord:  # exchanges live on the trio clock
        ex = Exchange("r", "chat", "POST", 0.0, stream=True, model="m", provider="p")
        ex.metrics = stream
        ex.first_event_at, ex.last_event_at, ex.ended = 0.01, 0.5, 0.5
        ex.settle(Outcome.DONE)
        return CompletionRecord.from_exchange(ex)

    stream.added_counts[3], stream.gap_counts[0] = 101, 100
    record = trio.run(make_record)
    t0 = time.perf_counter()
    for _ in range(n):
        metrics.observe(record, stream)
    observe = (time.perf_counter() - t0) / n * 1e6

    async def scrape() -> float:
        t1 = time.perf_counter()
        for _ in range(100):
            metrics.render()
        return (time.perf_counter() - t1) / 100 * 1e6

    return {"metrics_observe_us_per_request": observe, "metrics_scrape_us": trio.run(scrape)}


def bench_tracing(n: int = 5_000) -> dict[str, float]:
    """What OpenTelemetry costs the event loop per request (spans built from the
    record and handed to the batch processor; the export runs in its thread)."""
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from trioproxy.observe.tracing import Tracing
    from trioproxy.relay.timeline import traceparent_of

    async def run() -> float:
        ex = Exchange("r", "chat", "POST", trio.current_time(), stream=True, model="m")
        for event in ("body_read", "admitted", "attempt p", "connected", "request_written",
                      "response_head", "first_event", "committed", "upstream_closed"):  # fmt: skip
            ex.mark(event)
        ex.ended = trio.current_time() + 0.5
        ex.settle(Outcome.DONE)
        record = CompletionRecord.from_exchange(ex)
        tracing = Tracing("", exporter=InMemorySpanExporter())
        t0 = time.perf_counter()
        for _ in range(n):
            ids = traceparent_of([])
            ids.next_attempt()
            tracing.export(record, ids, "openai", "POST chat")
        cost = (time.perf_counter() - t0) / n * 1e6
        tracing.shutdown()
        return cost

    return {"tracing_on_us_per_request": trio.run(run)}


def main() -> None:
    results = bench_framer()
    results["relay_loop_us_per_chunk"] = trio.run(_relay_loop, _events())
    results.update(bench_http11(_events()))
    results.update(bench_metrics())
    results.update(bench_tracing())
    for name, value in results.items():
        unit = "x" if name.endswith("_over_ours") else "µs"
        print(f"{name:40s} {value:8.2f} {unit}")


if __name__ == "__main__":
    main()
