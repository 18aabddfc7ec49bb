"""The Hypercorn floor: the least a relay served by Hypercorn's trio worker spends.

``python -m bench.hyper_floor --port P --upstream HOST:PORT``

Rules:
- Hypercorn as released (none of trioproxy's guards) parses each client request
  and frames each response; the app is the least an HTTP relay does: it reads
  the body, writes the request on a kept-alive upstream socket (a stack of idle
  ones, one opened when none is idle), finds the end of the upstream's head, and
  hands each chunk of its chunked body to ``send`` as it arrives.
- No headers but ``content-type`` are passed on, nothing is validated, no
  timeout, no limit, no record: it trusts the mock upstream.

What it is for: a bench target (``hypercorn floor``) that says what Hypercorn
itself costs on the same bytes, between the trio floor (no HTTP) and trioproxy.
It is not a proxy anyone should run.
"""

from __future__ import annotations

from typing import Any

import trio

from trioproxy.testing.naive_relay import whole_body

from .floor import port_and_upstream

CHUNK = 65536


class _Upstream:
    """One upstream connection's bytes: the head, then the chunked body."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream, self.buf = stream, b""

    async def until(self, marker: bytes) -> bytes:
        while marker not in self.buf:
            self.buf += await self.stream.receive_some(CHUNK)
        line, _, self.buf = self.buf.partition(marker)
        return line

    async def take(self, n: int) -> bytes:
        while len(self.buf) < n:
            self.buf += await self.stream.receive_some(CHUNK)
        data, self.buf = self.buf[:n], self.buf[n:]
        return data


def relay(host: str, port: int) -> Any:
    idle: list[_Upstream] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (kind := (await receive())["type"].removeprefix("lifespan.")) != "shutdown":
                await send({"type": f"lifespan.{kind}.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = await whole_body(receive)
        up = idle.pop() if idle else _Upstream(await trio.open_tcp_stream(host, port))
        await up.stream.send_all(
            b"%s %s HTTP/1.1\r\nhost: %s\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n%s"
            % (scope["method"].encode(), scope["raw_path"], host.encode(), len(body), body)
        )
        head = await up.until(b"\r\n\r\n")
        kind = b"text/event-stream" if b"event-stream" in head else b"application/json"
        status = int(head[9:12])
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", kind)]})  # fmt: skip
        if b"chunked" in head.lower():
            while size := int(await up.until(b"\r\n"), 16):
                data = await up.take(size + 2)
                await send({"type": "http.response.body", "body": data[:-2], "more_body": True})
            await up.until(b"\r\n")
        else:
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            await send({"type": "http.response.body", "body": await up.take(length),
                        "more_body": True})  # fmt: skip
        await send({"type": "http.response.body", "body": b""})
        idle.append(up)

    return app


def main() -> None:
    import hypercorn.config
    import hypercorn.trio

    listen, host, port = port_and_upstream(__doc__ or "")
    config = hypercorn.config.Config()
    config.bind, config.accesslog, config.errorlog = [f"127.0.0.1:{listen}"], None, None
    config.read_timeout, config.backlog = None, 4096
    trio.run(hypercorn.trio.serve, relay(host, port), config)


if __name__ == "__main__":
    main()
