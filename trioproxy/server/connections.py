"""Which client connections the gateway takes: a cap per process and per peer.

Guards 3 and 5 of :mod:`trioproxy.server.hypercorn` use what is here; nothing
here touches Hypercorn.

Rules:
- At most ``max_connections`` client connections are open in a process, and at
  most ``max_connections_per_ip`` from one peer address, so that one client's
  flood of idle or trickling connections cannot shut the others out. A peer
  listed in ``trusted_proxies`` (a proxy in front, whose connections carry many
  clients) counts only against the process's cap.
- A connection past a cap is closed at once, counted, and logged at most once
  a second (:meth:`ConnectionCap.take`); one taken is given back when it ends
  (:meth:`ConnectionCap.give_back`). Memory: one small count per peer with an
  open connection.
- A connection taken from the listening socket's queue by guard 5 runs in a
  task of the same name trio gives its own (``_run_handler``), so task counts
  read the same whichever took it.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import trio

__all__ = ["ACCEPT_BATCH", "CONNECTIONS", "ConnectionCap", "peer_address", "run_handler"]

ACCEPT_BATCH = 64  # connections a new connection's task takes from the queue, at most


class ConnectionCap:
    """The open client connections of this process, and the caps on them."""

    def __init__(self, limit: int = 4096, per_ip: int = 256) -> None:
        self.limit = limit
        self.per_ip = per_ip
        self.trusted: frozenset[str] = frozenset()  # peers counted against the process cap only
        self.open = 0
        self.refused = 0
        self.by_peer: dict[str, int] = {}  # peers with an open connection (bounded by limit)
        self._logged_at = -math.inf

    def take(self, peer: str | None) -> bool:
        """A new connection from ``peer`` (None: unknown): count it, or refuse it
        (False: the caller closes it) past either cap."""
        held = self.by_peer.get(peer, 0) if peer is not None else 0
        if self.open >= self.limit:
            self._refuse(f"max_connections ({self.limit}) reached")
            return False
        if peer is not None and held >= self.per_ip and peer not in self.trusted:
            self._refuse(f"max_connections_per_ip ({self.per_ip}) reached by {peer}")
            return False
        self.open += 1
        if peer is not None:
            self.by_peer[peer] = held + 1
        return True

    def give_back(self, peer: str | None) -> None:
        self.open -= 1
        if peer is not None:
            left = self.by_peer.pop(peer, 1) - 1
            if left:
                self.by_peer[peer] = left

    def _refuse(self, why: str) -> None:
        # Process time, not trio's clock: a trio run's clock has an offset of its own.
        now = time.monotonic()
        self.refused += 1
        if now - self._logged_at >= 1.0:
            self._logged_at = now
            logging.getLogger("trioproxy").warning(
                "%s: closing new connections (%d so far)", why, self.refused
            )


CONNECTIONS = ConnectionCap()


def peer_address(stream: Any) -> str | None:
    """The peer's IP address of a plain or TLS trio stream (None if it has none)."""
    sock = getattr(stream, "socket", None) or getattr(
        getattr(stream, "transport_stream", None), "socket", None
    )
    try:
        peer = sock.getpeername() if sock is not None else None
    except OSError:  # gone already
        return None
    return str(peer[0]) if isinstance(peer, tuple) and peer else None


async def _run_handler(server: Any) -> None:
    """A connection taken by guard 5, run as trio's listener runs one (same task name)."""
    try:
        await server.run()
    finally:
        await trio.aclose_forcefully(server.stream)


run_handler = _run_handler
