"""The floor: the least a trio program spends relaying the same bytes.

``python -m bench.floor --port P --upstream HOST:PORT``

Rules:
- One task per direction of each client connection, ``receive_some`` ->
  ``send_all``, no HTTP parsing, no buffering beyond one read (64 KiB).
- A client connection gets its own upstream connection, opened when the
  client connects, closed when either side closes. Keep-alive works because
  nothing here knows where a request ends.

What it is for: a bench target (``trio floor``) whose CPU time per token is
what trio's own I/O costs for the proxied bytes; trioproxy's figure reads as
"x floor". It is not a proxy anyone should run.
"""

from __future__ import annotations

import argparse

import trio

CHUNK = 65536


async def _pipe(source: trio.SocketStream, sink: trio.SocketStream, done: trio.CancelScope) -> None:
    try:
        while data := await source.receive_some(CHUNK):
            await sink.send_all(data)
    except trio.BrokenResourceError:
        pass
    finally:
        done.cancel()


async def _serve_one(client: trio.SocketStream, host: str, port: int) -> None:
    async with client:
        try:
            upstream = await trio.open_tcp_stream(host, port)
        except OSError:
            return
        async with upstream, trio.open_nursery() as nursery:
            nursery.start_soon(_pipe, client, upstream, nursery.cancel_scope, name="to-upstream")
            nursery.start_soon(_pipe, upstream, client, nursery.cancel_scope, name="to-client")


def port_and_upstream(doc: str) -> tuple[int, str, int]:
    """``--port P --upstream HOST:PORT`` from the command line: (P, HOST, PORT)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, metavar="HOST:PORT")
    args = parser.parse_args()
    host, _, port = args.upstream.rpartition(":")
    return args.port, host, int(port)


def main() -> None:
    listen, host, port = port_and_upstream(__doc__ or "")

    async def serve() -> None:
        async def handler(client: trio.SocketStream) -> None:
            await _serve_one(client, host, port)

        await trio.serve_tcp(handler, listen, host="127.0.0.1", backlog=4096)

    trio.run(serve)


if __name__ == "__main__":
    main()
