"""The cost of shared state: the same gateway with and without Redis, in one run.

``python -m bench.redis_cost [--rounds R] [--requests N] [--concurrency C]``

Two gateways pinned to the proxy core, identical but for ``redis_url`` (a
``redis-server`` on the other core), both with one API key that has limits
(``rpm``, ``tpm``, ``max_streams``), so every request on the Redis gateway
makes its admission round trip (``ADMIT``) and its completion round trip
(``SETTLE``), and its receipt is stored in Redis. Rounds alternate the order
(off, on, on, off, ...) so drift hits both alike.

- TTFT: one request at a time (``mock-t2-i0``), request sent -> first content
  byte at the client; direct to the mock in the same rounds for the "added"
  figure.
- Throughput: a closed loop of C requests in flight, 100 tokens each, no delay.

Results: ``bench/results/redis_cost.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import trio

from trioproxy.admission.auth import new_key
from trioproxy.testing.rawclient import RawClient
from trioproxy.testing.redis_server import redis_command

from .procs import OTHER_CORES, PINNED, free_port, start_mock, start_trioproxy, wait_port

KEY, BLOCK = new_key("bench")
LIMITED = BLOCK.replace("rpm = 0", "rpm = 10000000").replace("tpm = 0", "tpm = 1000000000")
LIMITED = LIMITED.replace("max_streams = 0", "max_streams = 100000")
CHAT = "/v1/chat/completions"


def _body(model: str) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": True}


async def _one(url: str, model: str, auth: bool) -> tuple[float, int]:
    """(seconds to the first content byte, tokens) of one stream."""
    client = await RawClient.connect(url)
    headers = [("authorization", f"Bearer {KEY}")] if auth else []
    start = time.perf_counter()
    await client.send_request("POST", CHAT, _body(model), headers)
    status, _ = await client.response_head()
    assert status == 200, status
    first, body = None, b""
    async for _, chunk in client.body_chunks():
        if first is None and b'"content":"' in chunk:
            first = time.perf_counter() - start
        body += chunk
    await client.close()
    assert first is not None
    return first, body.count(b'"content":"')


async def _ttft(url: str, n: int, auth: bool, pause: float) -> list[float]:
    """``pause`` s between requests: the previous request's after-work (its
    completion call, its receipt) is done before the next one is timed."""
    times = []
    for _ in range(n):
        times.append((await _one(url, "mock-t2-i0", auth))[0])
        await trio.sleep(pause)
    return times


async def _throughput(url: str, n: int, concurrency: int, auth: bool) -> float:
    left, tokens = [n], [0]

    async def worker() -> None:
        while left[0] > 0:
            left[0] -= 1
            tokens[0] += (await _one(url, "mock-t100-i0", auth))[1]

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker)
    return tokens[0] / (time.perf_counter() - start)


def _start_redis() -> tuple[subprocess.Popen[bytes], str, str]:
    port, workdir = free_port(), tempfile.mkdtemp(prefix="trioproxy-bench-redis-")
    try:
        argv = redis_command(port, workdir, durable=False)
    except RuntimeError as exc:
        raise SystemExit(f"bench.redis_cost: {exc}") from None
    popen = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        preexec_fn=lambda: os.sched_setaffinity(0, OTHER_CORES),
    )  # fmt: skip
    wait_port(port)
    return popen, f"redis://127.0.0.1:{port}/0", workdir


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def _run(args: argparse.Namespace, urls: dict[str, str]) -> dict[str, Any]:
    ttft: dict[str, list[float]] = {name: [] for name in urls}
    rates: dict[str, list[float]] = {name: [] for name in ("off", "on")}
    for name, url in urls.items():  # warm up: connections, imports, scripts
        await _ttft(url, 20, name != "direct", 0.0)
    for r in range(args.rounds):
        order = ["direct", "off", "on"] if r % 2 == 0 else ["direct", "on", "off"]
        for name in order:
            ttft[name] += await _ttft(urls[name], args.requests, name != "direct", args.pause)
        for name in order[1:]:
            rates[name].append(await _throughput(urls[name], 300, args.concurrency, True))
    return {"ttft": ttft, "rates": rates}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--requests", type=int, default=200, help="TTFT requests per round")
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--pause", type=float, default=0.02, help="s between TTFT requests")
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    os.sched_setaffinity(0, OTHER_CORES)
    redis, redis_url, redis_dir = _start_redis()
    mock = start_mock()
    off = start_trioproxy(mock.url, extra_config=LIMITED)
    on = start_trioproxy(mock.url, extra_config=f'redis_url = "{redis_url}"\n' + LIMITED)
    try:
        time.sleep(1.0)
        urls = {"direct": mock.url, "off": off.url, "on": on.url}
        result = trio.run(_run, args, urls)
    finally:
        for proc in (on, off, mock):
            proc.stop()
        redis.kill()
        shutil.rmtree(redis_dir, ignore_errors=True)
    ttft, rates = result["ttft"], result["rates"]
    rows = []
    direct50 = _p(ttft["direct"], 0.5)
    for name in ("direct", "off", "on"):
        p50, p99 = _p(ttft[name], 0.5), _p(ttft[name], 0.99)
        added = "" if name == "direct" else f"{p50 - direct50:.3f}"
        rate = f"{statistics.median(rates[name]):,.0f}" if name in rates else ""
        rows.append(f"| {name} | {p50:.3f} | {p99:.3f} | {added} | {rate} |")
    added_by_redis = _p(ttft["on"], 0.5) - _p(ttft["off"], 0.5)
    text = "\n".join(
        [
            f"pinned: {PINNED} (gateways on core 0; mock, Redis and client on the others)",
            f"{args.rounds} rounds x {args.requests} sequential requests {args.pause * 1000:.0f} ms "
            f"apart (TTFT) and 300 "
            f"requests at C={args.concurrency} (tokens/s), order alternating",
            "",
            "| target | TTFT p50 ms | TTFT p99 ms | added p50 ms | tokens/s (median of rounds) |",
            "|---|---|---|---|---|",
            *rows,
            "",
            f"Redis adds {added_by_redis:.3f} ms to TTFT p50 (on - off, same run).",
        ]
    )
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "redis_cost.md").write_text(text + "\n")
    (out / "redis_cost.json").write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))


if __name__ == "__main__":
    main()
