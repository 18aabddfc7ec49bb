"""The load client: cheap enough not to be the bottleneck.

Raw HTTP/1.1 keep-alive connections (one per concurrent stream, closed loop),
no HTTP library: the response head is found with ``bytes.find``, tokens are
counted by a per-API marker in the raw bytes (chunk framing never contains it),
the end of a chunked body is its ``0\\r\\n\\r\\n``. Per token it records only
the arrival time of the read that carried it.

Run as ``python -m bench.loadgen`` (JSON on stdout) so it can be pinned to
its own core; ``run_load`` is the in-process API.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import orjson
import trio

MARKERS = {"chat": b'{"content":"', "messages": b'"text_delta"'}
PATHS = {"chat": "/v1/chat/completions", "messages": "/v1/messages"}


@dataclass
class Sample:
    ok: bool
    ttft: float = 0.0  # s, request sent -> first token read
    total: float = 0.0  # s, request sent -> end of body
    tokens: int = 0
    gaps: list[float] = field(default_factory=list)  # between token arrivals
    same_read: int = 0  # tokens that arrived in a read with an earlier token


def request_bytes(api: str, model: str, host: str) -> bytes:
    body: dict[str, object] = {
        "model": model,
        "stream": True,
        "messages": [{"role": "user", "content": "benchmark"}],
    }
    if api == "messages":
        body["max_tokens"] = 4096
    data = orjson.dumps(body)
    head = (
        f"POST {PATHS[api]} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
        f"accept: text/event-stream\r\ncontent-length: {len(data)}\r\n\r\n"
    )
    return head.encode() + data


async def one_stream(stream: trio.SocketStream, req: bytes, marker: bytes) -> Sample:
    clock = time.perf_counter
    t0 = clock()
    await stream.send_all(req)
    buf = b""
    while (end := buf.find(b"\r\n\r\n")) < 0:
        data = await stream.receive_some(65536)
        if not data:
            return Sample(ok=False)
        buf += data
    if not buf.startswith(b"HTTP/1.1 200"):
        return Sample(ok=False, total=clock() - t0)
    sample = Sample(ok=True)
    body = buf[end + 4 :]
    keep = len(marker) - 1
    last = t0
    carry = b""
    while True:
        if body:
            now = clock()
            window = carry + body
            n = window.count(marker)
            if n:
                if sample.tokens == 0:
                    sample.ttft = now - t0
                else:
                    sample.gaps.append(now - last)
                sample.gaps.extend([0.0] * (n - 1))
                sample.same_read += n - 1
                sample.tokens += n
                last = now
            carry = window[-keep:]
            if window.endswith(b"\r\n0\r\n\r\n"):
                sample.total = now - t0
                return sample
        body = await stream.receive_some(65536)
        if not body:
            sample.ok = False
            return sample


async def run_load(
    url: str, api: str, model: str, requests: int, concurrency: int, warmup: int = 0
) -> tuple[list[Sample], float]:
    """Closed loop: exactly ``concurrency`` streams in flight until ``requests``
    are done (after ``warmup`` unmeasured ones). Returns samples and wall time."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    req, marker = request_bytes(api, model, f"{host}:{port}"), MARKERS[api]
    samples: list[Sample] = []
    todo = [warmup, requests]

    async def worker() -> None:
        stream = await trio.open_tcp_stream(host, port)
        try:
            while todo[0] > 0 or todo[1] > 0:
                measured = todo[0] <= 0
                todo[0 if not measured else 1] -= 1
                sample = await one_stream(stream, req, marker)
                if measured:
                    samples.append(sample)
                if not sample.ok:  # reconnect after a failure
                    await stream.aclose()
                    stream = await trio.open_tcp_stream(host, port)
        finally:
            await stream.aclose()

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker)
    return samples, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--api", choices=sorted(PATHS), default="chat")
    parser.add_argument("--model", required=True)
    parser.add_argument("--requests", type=int, required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--warmup", type=int, default=0)
    args = parser.parse_args()
    samples, wall = trio.run(
        run_load, args.url, args.api, args.model, args.requests, args.concurrency, args.warmup
    )
    out = {"wall": wall, "samples": [s.__dict__ for s in samples]}
    sys.stdout.buffer.write(orjson.dumps(out))


if __name__ == "__main__":
    main()
