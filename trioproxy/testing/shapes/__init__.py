"""Stream shapes of servers that are not our mock, as their bytes come (sans-IO).

Each shape is the body of one streaming answer (OpenAI chat, Anthropic messages,
or OpenAI responses), one SSE event per HTTP chunk, with what a correct gateway
must make of it: the content events, the usage the server reports, the error it
ends with. Where it came from is in its ``source``; none is invented.
``SHAPES`` builds each with 12 tokens (the tests replay those: ``tests/shapes``);
:func:`build` with any number. The mock upstream replays them with its timing
and faults (``mock-shape-NAME-…``, ``trioproxy mock-upstream --shape NAME``).
"""

from __future__ import annotations

from collections.abc import Callable

from . import chat, named
from .shape import Shape

__all__ = ["BUILDERS", "SHAPES", "Shape", "build"]

BUILDERS: dict[str, Callable[[int], Shape]] = {**chat.BUILDERS, **named.BUILDERS}


def build(name: str, tokens: int) -> Shape:
    """Shape ``name`` with ``tokens`` tokens; ``KeyError`` for an unknown name."""
    return BUILDERS[name](tokens)


SHAPES = {name: build(name, 12) for name in BUILDERS}
