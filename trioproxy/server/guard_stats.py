"""What the Hypercorn guards count, process-wide (the connections they take:
:mod:`trioproxy.server.connections`): socket writes made at once or the waiting way,
the relay's chunks written from its reader,
response heads and chunks framed by the plain-response guard or by h11, and which
guards are installed. Plain
counters, read by the tests (no endpoint shows them); the guards live in
:mod:`trioproxy.server.hypercorn`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["HEADS", "INSTALLED", "WRITES", "FramedHeads", "Patch", "WritePaths"]

Patch = tuple[Any, str, Any]  # (class or module, name, replacement)
# The guards in, each with what it replaced: guard -> (owner, name, original); what
# :mod:`trioproxy.server.guard_install` puts back.
INSTALLED: dict[str, Patch] = {}


@dataclass
class WritePaths:
    """Socket writes of this process: made at once, or (in part) the waiting way."""

    direct: int = 0  # the socket took all of it without waiting (guard 9)
    waited: int = 0  # some or all of it went through Hypercorn's lock and send_all
    from_reader: int = 0  # relayed chunks the reader wrote itself (guard 7)
    rest: int = 0  # of those, ones the socket took only part of (the writer sent the rest)


WRITES = WritePaths()


@dataclass
class FramedHeads:
    """HTTP/1.1 response heads of this process: checked once here, or h11's way."""

    plain: int = 0  # checked here once; h11 was told of a head without them
    h11: int = 0  # h11 decided (a framing header, HEAD, HTTP/1.0, a header it may refuse)
    chunks: int = 0  # body pieces framed here, not by h11


HEADS = FramedHeads()
