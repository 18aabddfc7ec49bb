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
  figure. ``on`` is the bench key, far from its limits: admitted early (its
  ``ADMIT`` counted while the upstream request is on its way); ``on-near`` a
  second key of the same gateway at half its limit or more (``max_streams =
  1``), whose every admission waits for the ``ADMIT`` reply.
- Throughput: a closed loop of C requests in flight, 100 tokens each, no delay.

Results: ``bench/results/redis_cost.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import contextlib
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
from trioproxy.testing.rawclient import RawClient, request
from trioproxy.testing.redis_server import redis_command

from .procs import OTHER_CORES, PINNED, free_port, start_mock, start_trioproxy, wait_port

KEY, BLOCK = new_key("bench")
LIMITED = BLOCK.replace("rpm = 0", "rpm = 10000000").replace("tpm = 0", "tpm = 1000000000")
LIMITED = LIMITED.replace("max_streams = 0", "max_streams = 100000") + "admin = true\n"
# A key at half its limit or more: every admission waits for Redis (max_streams = 1).
NEAR_KEY, NEAR_BLOCK = new_key("near")
NEAR = NEAR_BLOCK.replace("max_streams = 0", "max_streams = 1")
CHAT = "/v1/chat/completions"


def _body(model: str) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": True}


async def _one(url: str, model: str, key: str | None) -> tuple[float, int]:
    """(seconds to the first content byte, tokens) of one stream."""
    client = await RawClient.connect(url)
    headers = [("authorization", f"Bearer {key}")] if key else []
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


async def _ttft(url: str, n: int, key: str | None, pause: float) -> list[float]:
    """``pause`` s between requests: the previous request's after-work (its
    completion call, its receipt) is done before the next one is timed."""
    times = []
    for _ in range(n):
        times.append((await _one(url, "mock-t2-i0", key))[0])
        await trio.sleep(pause)
    return times


async def _throughput(url: str, n: int, concurrency: int) -> float:
    left, tokens = [n], [0]

    async def worker() -> None:
        while left[0] > 0:
            left[0] -= 1
            got = (await _one(url, "mock-t100-i0", KEY))[1]
            tokens[0] += got  # after the await: `tokens[0] += await ...` loses updates

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker)
    return tokens[0] / (time.perf_counter() - start)


def _redis_core() -> None:
    """Redis shares the other core with the mock and the client, which run flat
    out in the throughput rounds; in production it has a host of its own. A
    higher priority (when allowed) keeps it from being starved past
    ``redis_timeout`` there, which would put the gateway in its outage state."""
    os.sched_setaffinity(0, OTHER_CORES)
    with contextlib.suppress(OSError):
        os.nice(-10)


def _start_redis() -> tuple[subprocess.Popen[bytes], str, str]:
    port, workdir = free_port(), tempfile.mkdtemp(prefix="trioproxy-bench-redis-")
    try:
        argv = redis_command(port, workdir, durable=False)
    except RuntimeError as exc:
        raise SystemExit(f"bench.redis_cost: {exc}") from None
    popen = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=_redis_core,
    )  # fmt: skip
    wait_port(port)
    return popen, f"redis://127.0.0.1:{port}/0", workdir


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


TARGETS = ("direct", "off", "on", "on-near")


_COUNTERS = ("limit_early_admissions", "limit_fallbacks", "redis_outages", "redis_failed_calls")


async def _counters(url: str) -> dict[str, int]:
    """The Redis gateway's own account of its admissions (``/metrics``)."""
    r = await request(url, "GET", "/metrics", None, [("authorization", f"Bearer {KEY}")])
    found = {}
    for line in r.body.decode().splitlines():
        name, _, value = line.partition(" ")
        short = name.removeprefix("trioproxy_").removesuffix("_total")
        if short in _COUNTERS:
            found[short] = int(float(value))
    return found


async def _run(args: argparse.Namespace, urls: dict[str, str]) -> dict[str, Any]:
    """Targets: ``on`` with the bench key (far from its limits: admitted early),
    ``on-near`` the same gateway with a key at its limit's half (max_streams = 1:
    every admission waits for the ADMIT reply)."""
    keys = {"direct": None, "off": KEY, "on": KEY, "on-near": NEAR_KEY}
    ttft: dict[str, list[float]] = {name: [] for name in TARGETS}
    rates: dict[str, list[float]] = {name: [] for name in ("off", "on")}
    for name in TARGETS:  # warm up: connections, imports, scripts
        await _ttft(urls[name], 20, keys[name], 0.0)
    for r in range(args.rounds):
        order = ["direct", "off", "on", "on-near"]
        if r % 2:
            order = ["direct", "on-near", "on", "off"]
        for name in order:
            ttft[name] += await _ttft(urls[name], args.requests, keys[name], args.pause)
        for name in ("off", "on") if r % 2 == 0 else ("on", "off"):
            rates[name].append(await _throughput(urls[name], 300, args.concurrency))
    return {"ttft": ttft, "rates": rates, "counters": await _counters(urls["on"])}


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
    off = start_trioproxy(mock.url, extra_config=LIMITED + NEAR)
    on = start_trioproxy(mock.url, extra_config=f'redis_url = "{redis_url}"\n' + LIMITED + NEAR)
    try:
        time.sleep(1.0)
        urls = {"direct": mock.url, "off": off.url, "on": on.url, "on-near": on.url}
        result = trio.run(_run, args, urls)
    finally:
        for proc in (on, off, mock):
            proc.stop()
        redis.kill()
        shutil.rmtree(redis_dir, ignore_errors=True)
    ttft, rates = result["ttft"], result["rates"]
    rows = []
    direct50 = _p(ttft["direct"], 0.5)
    for name in TARGETS:
        p50, p99 = _p(ttft[name], 0.5), _p(ttft[name], 0.99)
        added = "" if name == "direct" else f"{p50 - direct50:.3f}"
        rate = f"{statistics.median(rates[name]):,.0f}" if name in rates else ""
        rows.append(f"| {name} | {p50:.3f} | {p99:.3f} | {added} | {rate} |")
    added_by_redis = _p(ttft["on"], 0.5) - _p(ttft["off"], 0.5)
    added_near = _p(ttft["on-near"], 0.5) - _p(ttft["off"], 0.5)
    measured = args.rounds * (args.requests + 300) + 20  # the bench key's requests on "on"
    counters = result["counters"]
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
            f"Redis adds {added_by_redis:.3f} ms to TTFT p50 (on - off, same run) for a key "
            f"far from its limits ({counters['limit_early_admissions']} of {measured} requests "
            "of the bench key admitted early), and "
            f"{added_near:.3f} ms for a key at its limit's half or more (on-near - off: "
            "each admission waits for Redis).",
            "Redis gateway: " + ", ".join(f"{k} {v}" for k, v in counters.items()) + ".",
        ]
    )
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "redis_cost.md").write_text(text + "\n")
    (out / "redis_cost.json").write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))


if __name__ == "__main__":
    main()
