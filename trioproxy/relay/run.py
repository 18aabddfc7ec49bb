"""The per-request relay: one nursery, the request's task and two more, a bounded channel.

::

    request nursery (one per request, cancelled by whichever task ends it)
    ├── upstream reader ── UpstreamBody ──► memory channel (channel_size)
    │     (reader.py; the nursery's body, run    │
    │     by the request's own task) TTFT / idle │
    │     timers wrap only the upstream read;    ▼
    │     releases the slots the moment the upstream side ends;
    │     writes a chunk itself while the writer waits empty-handed
    │     and the socket takes it at once (``asgi.direct_writer``)
    ├── client writer (writer.py) ◄── drains greedily, one ASGI send per drain
    ├── disconnect watcher ── blocked on ASGI receive(); http.disconnect cancels
    │                         the nursery, which closes the upstream connection
    └── early admission ── only for a key far from its shared limits: its
                           Redis count, asked once the upstream request is written

Rules:
- The handler took the exchange's slots and moved it to ``admitted``;
  :meth:`Relay.run` moves it to ``relaying`` and returns once it is settled.
- Hypercorn never cancels the app when a client leaves: the watcher, blocked in
  ``receive()`` for the whole stream, is how a hang-up is learnt. It records
  ``client_disconnect`` only if nothing was decided yet, then cancels the
  nursery: the reader's cancellation closes the upstream connection at once.
  With a provider that drains (:mod:`trioproxy.relay.drain`) it cancels the
  writer only, and the reader hands the upstream on to a drain and returns.

Resource handling: memory per stream is bounded by ``channel_size`` chunks plus
one partial event of at most ``max_event_bytes``. Every task lives in the
request's nursery; nothing outlives :meth:`Relay.run` but a drain's detached work.
"""

from __future__ import annotations

import trio

from .. import asgi
from ..asgi import Receive, Send
from ..config import Config
from ..routing.targets import UpstreamRequest
from ..upstream.client import Upstream
from .drain import Drains
from .exchange import Exchange, Phase
from .reader import UpstreamReader
from .writer import Item, Waiting, write_client

__all__ = ["Relay", "UpstreamRequest"]


class Relay:
    """One exchange's relay; ``channel_statistics()`` for ``/debug/state``."""

    def __init__(
        self,
        upstream: Upstream,
        config: Config,
        request: UpstreamRequest,
        ex: Exchange,
        extra_headers: list[tuple[bytes, bytes]],
        drains: Drains | None = None,
    ) -> None:
        self.ex = ex
        self._extra_headers = extra_headers
        self._send_ch, self._recv_ch = trio.open_memory_channel[Item](config.channel_size)
        self._waiting = Waiting()  # the writer parked with nothing in hand
        self._reader = UpstreamReader(upstream, config, request, ex, self._send_ch, self._waiting)
        self._reader.drains = drains
        self._writer_scope = trio.CancelScope()  # cancelled alone when the upstream drains

    def channel_statistics(self) -> trio.MemoryChannelStatistics:
        return self._send_ch.statistics()

    async def run(self, send: Send, receive: Receive) -> None:
        """Run the exchange to its end.

        Error handling: nothing escapes but ``Cancelled`` from an enclosing scope
        (graceful shutdown); every other ending is recorded in the exchange.
        """
        ex = self.ex
        ex.move(Phase.RELAYING)
        self._reader.direct = asgi.direct_writer(send)
        async with trio.open_nursery() as nursery:
            scope = nursery.cancel_scope
            nursery.start_soon(self._watch_disconnect, receive, scope, name="disconnect-watcher")
            if ex.admission is not None:  # counted in Redis while the request is on its way
                nursery.start_soon(ex.admission.run, name="early-admission")
            nursery.start_soon(self._write, send, scope, name="client-writer")
            # The reader is the nursery's body, in the request's own task: the
            # upstream request leaves in the step that admitted it, with no task
            # to start first. Cancelling the nursery cancels it like a child.
            await self._reader.run(scope)

    async def _write(self, send: Send, scope: trio.CancelScope) -> None:
        with self._writer_scope:
            await write_client(
                send, self._recv_ch, self.ex, self._extra_headers, scope, self._waiting
            )

    async def _watch_disconnect(self, receive: Receive, scope: trio.CancelScope) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                if self.ex.outcome is not None:
                    # Settled: the writer is in the response's last send, and
                    # Hypercorn says disconnect from inside it when the response
                    # closes the connection (HTTP/1.0, ``Connection: close``).
                    # Cancelling now would cancel Hypercorn's own close.
                    return
                self.ex.hung_up(trio.current_time())
                if self._reader.can_drain():  # on_client_disconnect = "drain"
                    self._writer_scope.cancel()
                    self._reader.start_drain()
                else:
                    scope.cancel()
                return
