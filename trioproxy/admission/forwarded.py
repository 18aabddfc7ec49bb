"""The client behind a proxy: its address, and a cap on its requests in flight.

Rules:
- A request's client address is its peer's, unless the peer is one of
  ``trusted_proxies``: then it is read from ``X-Forwarded-For`` (every line of
  it, in order), from the right: the first address that is not itself a trusted
  proxy. Whatever a client writes into the header lands to the left of what
  its proxy appends, so it is never read. The header is read only from
  trusted peers; an entry that is not an IP address ends the walk, and the
  request then counts as the proxy's own (not capped).
- Sans-IO: headers in, an address out. At most :data:`MAX_HOPS` entries are
  read from the right, the header at most :data:`MAX_HEADER_BYTES` long.
- Behind a proxy the proxy's connections carry every client, so the cap that
  ``max_connections_per_ip`` puts on a peer's connections is put on a forwarded
  client's requests in flight (:class:`ForwardedClients`): past it the request
  is refused at once (429, in the route's dialect), before its body is read.

Resource handling: one count per forwarded client with a request in flight.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from ..errors import Overloaded

__all__ = ["MAX_HEADER_BYTES", "MAX_HOPS", "ForwardedClients", "client_address"]

MAX_HOPS = 16  # X-Forwarded-For entries read, from the right
MAX_HEADER_BYTES = 4096  # of X-Forwarded-For read, from the right
_XFF = b"x-forwarded-for"


def _address(entry: str) -> str | None:
    try:
        return str(ipaddress.ip_address(entry.strip()))
    except ValueError:
        return None


def client_address(
    peer: str | None, headers: Iterable[tuple[bytes, bytes]], trusted: frozenset[str]
) -> str | None:
    """The request's client: ``peer``, or for a trusted proxy's request the
    rightmost ``X-Forwarded-For`` address that is not a trusted proxy (the peer
    itself when there is none)."""
    if peer is None or peer not in trusted:
        return peer
    lines = [value for name, value in headers if name == _XFF]
    joined = b",".join(lines)[-MAX_HEADER_BYTES:].decode("latin-1")
    for entry in reversed(joined.split(",")[-MAX_HOPS:]):
        address = _address(entry)
        if address is None:
            return peer  # not an address: the proxy's (it is not capped)
        if address not in trusted:
            return address
    return peer


class ForwardedClients:
    """Requests in flight per forwarded client (requests of trusted proxies)."""

    def __init__(self, limit: int, trusted: Iterable[str] = ()) -> None:
        self.limit = limit
        self.trusted = frozenset(trusted)
        self.in_flight: dict[str, int] = {}
        self.refused = 0

    def take(
        self, client: tuple[str, int] | None, headers: Iterable[tuple[bytes, bytes]]
    ) -> str | None:
        """Count a request (``client``: the ASGI scope's peer): its forwarded client,
        or None for a request not forwarded by a trusted proxy (not counted here).
        Raises :class:`~trioproxy.errors.Overloaded` past the limit (counted)."""
        peer = client[0] if client else None
        if peer is None or peer not in self.trusted:
            return None
        forwarded = client_address(peer, headers, self.trusted)
        if forwarded is None or forwarded == peer:
            return None
        held = self.in_flight.get(forwarded, 0)
        if held >= self.limit:
            self.refused += 1
            raise Overloaded("too many requests in flight from one client address")
        self.in_flight[forwarded] = held + 1
        return forwarded

    def give_back(self, forwarded: str) -> None:
        left = self.in_flight.pop(forwarded, 1) - 1
        if left:
            self.in_flight[forwarded] = left
