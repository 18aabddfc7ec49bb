"""What a stream says, whatever its dialect: the events every translation passes through.

Rules:
- A decoder reads one upstream event block and returns the events it holds; an
  encoder writes each event as the client's dialect has it. So a pair of
  dialects is a decoder and an encoder, and each dialect is read (and written)
  in one place.
- The events are few and flat: what a client of any of the three APIs can see
  of an answer (its start, text, reasoning, tool calls as they stream, the stop
  reason, usage, an error, the end). What only one API has is not an event.
- Stop reasons and usage are mapped through the tables below, never ad hoc.

The stop reasons::

    event          OpenAI finish_reason   Anthropic stop_reason   Gemini finishReason
    STOP           stop                   end_turn                STOP
    LENGTH         length                 max_tokens              MAX_TOKENS
    TOOL           tool_calls             tool_use                STOP with a functionCall
    STOP_SEQUENCE  stop                   stop_sequence           (none)
    FILTERED       content_filter         refusal                 SAFETY, RECITATION, ...

Usage: ``input`` counts every prompt token, cached ones included (OpenAI's
``prompt_tokens``, Gemini's ``promptTokenCount``; Anthropic's ``input_tokens``
plus its two cache counts); ``cache_read`` and ``cache_write`` are the parts of it
read from and written to a prompt cache; ``reasoning`` is the part of ``output``
spent thinking.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

__all__ = [
    "MAX_TOOL_CALLS",
    "End",
    "Error",
    "Event",
    "Finish",
    "Reasoning",
    "Start",
    "Stop",
    "Text",
    "ToolArgs",
    "ToolStart",
    "Usage",
    "count",
    "stop_from",
    "stop_to",
]


# Tool calls in one answer that a translation keeps state for (every buffer bounded): an
# upstream that starts more ends the answer with an error event.
MAX_TOOL_CALLS = 256


class Stop(enum.Enum):
    STOP = "stop"
    LENGTH = "length"
    TOOL = "tool"
    STOP_SEQUENCE = "stop_sequence"
    FILTERED = "filtered"


_FROM: dict[str, dict[str, Stop]] = {
    "openai": {
        "stop": Stop.STOP,
        "length": Stop.LENGTH,
        "tool_calls": Stop.TOOL,
        "function_call": Stop.TOOL,
        "content_filter": Stop.FILTERED,
    },
    "anthropic": {
        "end_turn": Stop.STOP,
        "pause_turn": Stop.STOP,
        "max_tokens": Stop.LENGTH,
        "model_context_window_exceeded": Stop.LENGTH,
        "tool_use": Stop.TOOL,
        "stop_sequence": Stop.STOP_SEQUENCE,
        "refusal": Stop.FILTERED,
    },
    "gemini": {
        "STOP": Stop.STOP,
        "MAX_TOKENS": Stop.LENGTH,
        "SAFETY": Stop.FILTERED,
        "RECITATION": Stop.FILTERED,
        "BLOCKLIST": Stop.FILTERED,
        "PROHIBITED_CONTENT": Stop.FILTERED,
        "SPII": Stop.FILTERED,
        "IMAGE_SAFETY": Stop.FILTERED,
    },
}
_TO: dict[str, dict[Stop, str]] = {
    "openai": {
        Stop.STOP: "stop",
        Stop.LENGTH: "length",
        Stop.TOOL: "tool_calls",
        Stop.STOP_SEQUENCE: "stop",
        Stop.FILTERED: "content_filter",
    },
    "anthropic": {
        Stop.STOP: "end_turn",
        Stop.LENGTH: "max_tokens",
        Stop.TOOL: "tool_use",
        Stop.STOP_SEQUENCE: "stop_sequence",
        Stop.FILTERED: "refusal",
    },
}


def stop_from(dialect: str, reason: str) -> Stop:
    """An upstream's stop reason as an event; one a table does not know is STOP
    (Gemini's ``OTHER``, a server's own): the answer ended."""
    return _FROM[dialect].get(reason, Stop.STOP)


def stop_to(dialect: str, stop: Stop) -> str:
    return _TO[dialect][stop]


def count(obj: dict[str, Any] | None, name: str) -> int:
    """A token count of a usage object: a non-negative integer, else 0."""
    value = obj.get(name) if obj else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


@dataclass(slots=True)
class Start:
    id: str
    model: str


@dataclass(slots=True)
class Text:
    text: str


@dataclass(slots=True)
class Reasoning:
    text: str


@dataclass(slots=True)
class ToolStart:
    index: int  # the tool call's place among the answer's tool calls, from 0
    id: str
    name: str


@dataclass(slots=True)
class ToolArgs:
    index: int
    json: str  # a piece of the arguments' JSON text, as it streams


@dataclass(slots=True)
class Finish:
    stop: Stop
    sequence: str | None = None  # the stop sequence that matched (Anthropic says which)


@dataclass(slots=True)
class Usage:
    input: int = 0
    output: int = 0
    cache_read: int = 0
    cache_write: int = 0
    reasoning: int = 0


@dataclass(slots=True)
class Error:
    type: str
    message: str


@dataclass(slots=True)
class End:
    pass


Event = Start | Text | Reasoning | ToolStart | ToolArgs | Finish | Usage | Error | End
