"""Stream shapes of servers that are not our mock, as their bytes come.

Each shape is the body of one streaming chat completion (``/v1/chat/completions``,
``stream: true``), one SSE event per HTTP chunk, with what a correct gateway must
make of it. Where a shape came from is in its ``source``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

__all__ = ["SHAPES", "Shape"]


@dataclass(frozen=True)
class Shape:
    source: str
    events: tuple[bytes, ...]  # each a whole SSE event, as the server writes it
    content_events: int  # events with generated text
    usage: tuple[int, int] | None  # (prompt, completion) the server reports, if it does


def _dumps_stream(tokens: int, done: bool, usage: bool, usage_inline: bool = False) -> Shape:
    """A server that builds each chunk with Python's ``json.dumps`` (spaces after
    ``:`` and ``,``): the OpenAI chunk fields, a role-only first chunk, a finish
    chunk, optionally OpenAI's usage-only chunk and ``[DONE]``."""
    base = {"id": "chatcmpl-7", "object": "chat.completion.chunk", "created": 1, "model": "m"}

    def event(choices: list[object], **extra: object) -> bytes:
        return b"data: " + json.dumps({**base, "choices": choices, **extra}).encode() + b"\n\n"

    counts = {"prompt_tokens": 9, "completion_tokens": tokens, "total_tokens": 9 + tokens}
    events = [event([{"index": 0, "delta": {"role": "assistant", "content": ""}}])]
    events += [
        event([{"index": 0, "delta": {"content": f"tok{i} "}, "finish_reason": None}])
        for i in range(tokens)
    ]
    finish = {"index": 0, "delta": {}, "finish_reason": "stop"}
    events.append(event([finish], usage=counts) if usage_inline else event([finish]))
    if usage:
        events.append(event([], usage=counts))
    if done:
        events.append(b"data: [DONE]\n\n")
    reported = (9, tokens) if usage or usage_inline else None
    return Shape("", tuple(events), tokens, reported)


SHAPES = {
    # The fake provider of a public gateway benchmark, and Python servers that
    # encode with json.dumps: spaced JSON, usage chunk, [DONE].
    "json-dumps": _dumps_stream(12, done=True, usage=True),
    # A server that ends after its finish chunk, usage inline, without [DONE].
    "finish-no-done": _dumps_stream(12, done=False, usage=False, usage_inline=True),
    # Spaced JSON, no usage at all, no [DONE]: usage can only be estimated.
    "json-dumps-bare": _dumps_stream(12, done=False, usage=False),
}
