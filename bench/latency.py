"""``python -m bench.latency``: the figures behind relay guarantees 1 and 3, in-process.

Gateway, mock upstream and a raw client share one trio run (one clock):
- first token: the mock's send of the first event -> the client's read of it,
  through the gateway (30 streams);
- cancellation: the client closes mid-stream -> the mock sees its upstream
  connection closed (50 streams).
"""

from __future__ import annotations

import tempfile
from contextlib import aclosing

import orjson
import trio

from trioproxy.config import Config
from trioproxy.server.serve import open_gateway
from trioproxy.testing.rawclient import RawClient


def _q(xs: list[float], p: float) -> float:
    ys = sorted(xs)
    return ys[min(len(ys) - 1, int(p * len(ys)))]


async def main() -> None:
    config = Config(
        bind="127.0.0.1:0", access_log=False, receipt_store="memory",
        data_dir=tempfile.mkdtemp(prefix="trioproxy-latency-"),
    )  # fmt: skip
    body = {"messages": [{"role": "user", "content": "hi"}], "stream": True}
    async with open_gateway(config) as gw:
        assert gw.mock is not None
        gw.mock.record = True
        first: list[float] = []
        for _ in range(30):
            client = await RawClient.connect(gw.url)
            await client.send_request(
                "POST", "/v1/chat/completions", {**body, "model": "mock-t3-i10"}
            )
            await client.response_head()
            arrivals = [c async for c in client.body_chunks()]
            await client.close()
            at, chunk = arrivals[0]
            completion_id = orjson.loads(chunk.split(b"\n\n")[0][len(b"data: ") :])["id"]
            first.append((at - gw.mock.first_sent[completion_id]) * 1000)
        cancel: list[float] = []
        for i in range(50):
            client = await RawClient.connect(gw.url)
            await client.send_request(
                "POST", "/v1/chat/completions", {**body, "model": "mock-t2000-i20"}
            )
            await client.response_head()
            async with aclosing(client.body_chunks()) as chunks:
                await chunks.__anext__()
            await client.close()
            assert client.closed_at is not None
            peer = await gw.mock.wait_peer_close(i + 1)
            cancel.append((peer.at - client.closed_at) * 1000)
    for name, xs in (("first token added (mock send -> client read)", first),
                     ("client close -> upstream closed at the mock", cancel)):  # fmt: skip
        print(f"{name}: p50 {_q(xs, 0.5):.2f} ms, p99 {_q(xs, 0.99):.2f} ms, max {max(xs):.2f} ms")


if __name__ == "__main__":
    trio.run(main)
