"""A mock answer that ends in a tool call (``tool1`` in a mock model name), as each API streams one (sans-IO).

After its text the answer calls ``get_weather`` with ``{"city": "Paris"}``, the
arguments streamed in two pieces where the API streams them (OpenAI's
``tool_calls`` deltas, Anthropic's ``input_json_delta``), and stops for the tool
(``tool_calls``, ``tool_use``). The event shapes are the APIs' documented ones
(platform.openai.com "Streaming function calls"; docs.anthropic.com "Streaming
messages", tool use). Gemini's whole call is in :mod:`.mock_gemini`.
"""

from __future__ import annotations

import json
from dataclasses import replace

from .mock_scripts import Script

__all__ = ["TOOL_ARGUMENTS", "with_tool_call"]

TOOL_ARGUMENTS = ('{"city": ', '"Paris"}')


def _compact(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _named(name: str, obj: object) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + _compact(obj) + b"\n\n"


def with_tool_call(script: Script, route: str) -> Script:
    """``script`` (chat or messages) ending in the tool call instead of its stop."""
    if route == "messages":
        start = {"type": "tool_use", "id": "toolu_mock01", "name": "get_weather", "input": {}}
        events = [
            script.tail[0],  # the text block's stop
            _named("content_block_start", {"type": "content_block_start", "index": 1, "content_block": start}),
        ]  # fmt: skip
        for piece in TOOL_ARGUMENTS:
            delta = {"type": "input_json_delta", "partial_json": piece}
            events.append(
                _named(
                    "content_block_delta",
                    {"type": "content_block_delta", "index": 1, "delta": delta},
                )
            )
        events.append(_named("content_block_stop", {"type": "content_block_stop", "index": 1}))
        events.append(script.tail[1].replace(b'"end_turn"', b'"tool_use"'))
        return replace(script, tail=[*events, *script.tail[2:]])
    common = script.prefix[: -len(b'"delta":{"content":"')]
    first = {
        "index": 0,
        "id": "call_mock01",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    deltas = [{"tool_calls": [first]}]
    deltas += [{"tool_calls": [{"index": 0, "function": {"arguments": p}}]} for p in TOOL_ARGUMENTS]
    events = [common + b'"delta":' + _compact(d) + b',"finish_reason":null}]}\n\n' for d in deltas]
    events.append(
        script.tail[0].replace(b'"finish_reason":"stop"', b'"finish_reason":"tool_calls"')
    )
    return replace(script, tail=[*events, *script.tail[1:]])
