"""Writing a stream in the client's dialect: events in, whole SSE event blocks out (sans-IO).

Rules:
- Every event is written at once: an encoder holds back only what its dialect
  places later (Anthropic's ``message_delta`` carries the stop reason *and* the
  usage, which an OpenAI upstream sends one chunk apart: it is written when the
  usage comes, or at the end).
- JSON is written by ``orjson``, compact; a text delta is one template around
  one encoded string.
- What the relay reads of a stream reads the same in a translated one: the
  final event (``[DONE]``, ``message_stop``), the usage, the stop reason, an
  error event (:mod:`trioproxy.dialects`).
"""

from __future__ import annotations

from collections.abc import Mapping

import orjson

from .events import (
    MAX_TOOL_CALLS,
    End,
    Error,
    Event,
    Finish,
    Reasoning,
    Start,
    Stop,
    Text,
    ToolArgs,
    ToolStart,
    Usage,
    stop_to,
)

__all__ = ["AnthropicEncoder", "Encoder", "OpenAIEncoder", "openai_usage", "anthropic_usage"]

_dumps = orjson.dumps


def openai_usage(usage: Usage) -> dict[str, object]:
    out: dict[str, object] = {
        "prompt_tokens": usage.input,
        "completion_tokens": usage.output,
        "total_tokens": usage.input + usage.output,
        "prompt_tokens_details": {"cached_tokens": usage.cache_read},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning},
    }
    if usage.cache_write:  # LiteLLM's name for what OpenAI's usage has no field for
        out["cache_creation_input_tokens"] = usage.cache_write
    return out


def anthropic_usage(usage: Usage) -> dict[str, object]:
    return {
        "input_tokens": max(usage.input - usage.cache_read - usage.cache_write, 0),
        "output_tokens": usage.output,
        "cache_read_input_tokens": usage.cache_read,
        "cache_creation_input_tokens": usage.cache_write,
    }


class Encoder:
    """Writes events in one client dialect; ``failed`` once it wrote an error
    event (the answer ended there: nothing after it is written)."""

    __slots__ = ("failed",)

    def __init__(self) -> None:
        self.failed = False

    def feed(self, event: Event) -> list[bytes]:
        raise NotImplementedError


_TEXT_END = b'},"logprobs":null,"finish_reason":null}]}\n\n'


class OpenAIEncoder(Encoder):
    """Chat completion chunks, one per event (a stop reason and usage: two)."""

    __slots__ = ("_created", "_head", "_id", "_model")

    def __init__(self, created: int) -> None:
        super().__init__()
        self._created = created
        self._begin(Start("chatcmpl-trioproxy", ""))

    def _begin(self, start: Start) -> None:
        self._id, self._model = _dumps(start.id), _dumps(start.model)
        self._head = (
            b'data: {"id":' + self._id + b',"object":"chat.completion.chunk","created":%d,'
            b'"model":' % self._created + self._model + b',"choices":[{"index":0,"delta":'
        )

    def _delta(self, delta: bytes, finish: bytes = b"null") -> bytes:
        return self._head + delta + b',"logprobs":null,"finish_reason":' + finish + b"}]}\n\n"

    def feed(self, event: Event) -> list[bytes]:
        if type(event) is Text:
            return [self._head + b'{"content":' + _dumps(event.text) + _TEXT_END]
        if isinstance(event, Reasoning):
            return [self._delta(b'{"reasoning_content":' + _dumps(event.text) + b"}")]
        if isinstance(event, ToolArgs):
            call = {"index": event.index, "function": {"arguments": event.json}}
            return [self._delta(b'{"tool_calls":[' + _dumps(call) + b"]}")]
        if isinstance(event, ToolStart):
            function = {"name": event.name, "arguments": ""}
            call = {"index": event.index, "id": event.id, "type": "function", "function": function}
            return [self._delta(b'{"tool_calls":[' + _dumps(call) + b"]}")]
        if isinstance(event, Start):
            if event.id:
                self._begin(event)
            return [self._delta(b'{"role":"assistant","content":""}')]
        if isinstance(event, Finish):
            return [self._delta(b"{}", b'"' + stop_to("openai", event.stop).encode() + b'"')]
        if isinstance(event, Usage):
            return [
                b'data: {"id":' + self._id + b',"object":"chat.completion.chunk","created":%d,'
                b'"model":' % self._created + self._model + b',"choices":[],"usage":'
                + _dumps(openai_usage(event)) + b"}\n\n"
            ]  # fmt: skip
        if isinstance(event, Error):
            self.failed = True
            error = {"message": event.message, "type": event.type, "param": None, "code": None}
            return [b"data: " + _dumps({"error": error}) + b"\n\n"]
        if isinstance(event, End):
            return [b"data: [DONE]\n\n"]
        return []


def _named(name: bytes, obj: object) -> bytes:
    return b"event: " + name + b"\ndata: " + _dumps(obj) + b"\n\n"


_TEXT_DELTA = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":%d,"delta":{"type":"text_delta","text":'


class AnthropicEncoder(Encoder):
    """Anthropic's Messages events: content blocks opened and closed around
    text, thinking and each tool call; ``message_delta`` once, with the stop
    reason and the usage."""

    __slots__ = (
        "_blocks", "_content", "_delta_sent", "_open", "_started", "_stop", "_tools", "_usage",
    )  # fmt: skip

    def __init__(self) -> None:
        super().__init__()
        self._started = False
        self._blocks = 0  # content blocks opened
        self._open: str | None = None  # the kind of the open block (text, thinking, tool_use)
        self._tools: dict[int, int] = {}  # tool call number -> its block's index
        self._stop: Finish | None = None
        self._usage: Usage | None = None
        self._delta_sent = False
        self._content = 0  # text and thinking deltas: the output's estimate when no usage came

    def _start(self, start: Start) -> list[bytes]:
        self._started = True
        message: dict[str, object] = {
            "id": start.id or "msg_trioproxy", "type": "message", "role": "assistant",
            "model": start.model, "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }  # fmt: skip
        return [_named(b"message_start", {"type": "message_start", "message": message})]

    def _close_block(self, out: list[bytes]) -> None:
        if self._open is not None:
            self._open = None
            stop = {"type": "content_block_stop", "index": self._blocks - 1}
            out.append(_named(b"content_block_stop", stop))

    def _block(self, kind: str, out: list[bytes], content: Mapping[str, object]) -> None:
        """Open a block of ``kind`` unless one is open."""
        if self._open == kind and kind != "tool_use":
            return
        self._close_block(out)
        self._open = kind
        start = {"type": "content_block_start", "index": self._blocks, "content_block": content}
        self._blocks += 1
        out.append(_named(b"content_block_start", start))

    def feed(self, event: Event) -> list[bytes]:
        out: list[bytes] = [] if self._started else self._start(Start("", ""))
        if type(event) is Text:
            self._content += 1
            if self._open != "text":
                self._block("text", out, {"type": "text", "text": ""})
            out.append(_TEXT_DELTA % (self._blocks - 1) + _dumps(event.text) + b"}}\n\n")
        elif isinstance(event, Reasoning):
            self._content += 1
            self._block("thinking", out, {"type": "thinking", "thinking": ""})
            delta = {"type": "thinking_delta", "thinking": event.text}
            out.append(self._delta_event(self._blocks - 1, delta))
        elif isinstance(event, ToolArgs):
            index = self._tools.get(event.index)
            if index is not None:
                delta = {"type": "input_json_delta", "partial_json": event.json}
                out.append(self._delta_event(index, delta))
        elif isinstance(event, ToolStart):
            if len(self._tools) >= MAX_TOOL_CALLS:  # an OpenAI upstream's indexes are its own
                return out + self.feed(Error("api_error", "too many tool calls"))
            content = {"type": "tool_use", "id": event.id, "name": event.name, "input": {}}
            self._block("tool_use", out, content)
            self._tools[event.index] = self._blocks - 1
        elif isinstance(event, Start):
            return self._start(event)
        elif isinstance(event, Finish):
            self._close_block(out)
            self._stop = event
        elif isinstance(event, Usage):
            self._usage = event
            if self._stop is not None and not self._delta_sent:
                out.append(self._message_delta())
        elif isinstance(event, Error):
            self.failed = True
            error = {"type": "error", "error": {"type": event.type, "message": event.message}}
            out.append(_named(b"error", error))
        elif isinstance(event, End):
            self._close_block(out)
            if not self._delta_sent:
                out.append(self._message_delta())
            out.append(_named(b"message_stop", {"type": "message_stop"}))
        return out

    @staticmethod
    def _delta_event(index: int, delta: Mapping[str, object]) -> bytes:
        return _named(
            b"content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}
        )

    def _message_delta(self) -> bytes:
        self._delta_sent = True
        stop = self._stop or Finish(Stop.STOP)
        delta = {"stop_reason": stop_to("anthropic", stop.stop), "stop_sequence": stop.sequence}
        # No usage from the upstream: the deltas sent, about one token each (the record
        # knows it is an estimate: trioproxy.translate.stream.StreamTranslator.usage_reported).
        usage = anthropic_usage(self._usage or Usage(output=self._content))
        return _named(b"message_delta", {"type": "message_delta", "delta": delta, "usage": usage})
