"""Reading an upstream's stream: one event block in, the events it holds out (sans-IO).

Rules:
- One decoder per upstream dialect, fed the blocks the SSE framer finds, in
  order; each block is parsed once (``orjson``), and only the fields that make
  an :mod:`event <trioproxy.translate.events>` are read. A block that is not a
  JSON object says nothing (no event).
- The first block with an id gives :class:`Start`, before anything else.
- :meth:`Decoder.close` is called when the upstream ended its body cleanly: a
  stream whose stop reason came but whose final event did not (a server that
  writes no ``[DONE]``, and Gemini, which has no final event) ends there.
  A stream with no stop reason ends with nothing: it was cut.
- Tool calls are numbered from 0 in the order they start, whatever index the
  upstream gave them (Anthropic numbers its content blocks, text included).
"""

from __future__ import annotations

from typing import Any

import orjson

from ..dialects import event_data
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
    count,
    stop_from,
)

__all__ = [
    "AnthropicDecoder",
    "Decoder",
    "GeminiDecoder",
    "OpenAIDecoder",
    "as_dict",
    "decoder_for",
]


_EMPTY: dict[str, Any] = {}
_TOO_MANY = Error("api_error", f"the upstream started more than {MAX_TOOL_CALLS} tool calls")


def _object(block: bytes) -> dict[str, Any] | None:
    """The JSON object of an event's data: one ``data:`` line sliced out and
    parsed (the usual event, 3x faster than joining lines), else as SSE joins
    several (:func:`~trioproxy.dialects.event_data`)."""
    start = block.find(b"data:")
    if start < 0 or (start and block[start - 1] != 10):
        return event_data(block)
    start += 6 if block[start + 5 : start + 6] == b" " else 5
    end = block.find(b"\n", start)
    if block.find(b"data:", end) >= 0:
        return event_data(block)
    try:
        obj = orjson.loads(block[start:end])
    except orjson.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


def as_dict(value: Any) -> dict[str, Any]:
    """``value`` if it is a JSON object, else an empty one."""
    return value if isinstance(value, dict) else {}


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _error(error: dict[str, Any]) -> Error:
    kind = error.get("type") or error.get("status") or error.get("code") or "api_error"
    return Error(str(kind)[:64], _str(error.get("message"))[:2000])


class Decoder:
    """What every decoder keeps: whether it started, finished, ended."""

    __slots__ = ("ended", "finished", "started", "usage_seen")

    def __init__(self) -> None:
        self.usage_seen = False  # the upstream reported usage (else the record estimates)
        self.started = False
        self.finished = False  # the upstream gave its stop reason
        self.ended = False  # the upstream's final event came

    def feed(self, block: bytes) -> list[Event]:
        raise NotImplementedError

    def close(self) -> list[Event]:
        """The upstream's body ended cleanly here: :class:`End` if it had finished."""
        if self.finished and not self.ended:
            self.ended = True
            return [End()]
        return []


class OpenAIDecoder(Decoder):
    """OpenAI chat completion chunks (vLLM, SGLang, OpenAI and their kin)."""

    __slots__ = ()

    def feed(self, block: bytes) -> list[Event]:
        if block.startswith((b"data: [DONE]", b"data:[DONE]")):
            self.ended = True
            return [End()]
        obj = _object(block)
        if obj is None:
            return []
        if isinstance(obj.get("error"), dict):
            return [_error(obj["error"])]
        out: list[Event] = []
        if not self.started and _str(obj.get("id")):
            self.started = True
            out.append(Start(obj["id"], _str(obj.get("model"))))
        choices = obj.get("choices")
        choice = choices[0] if type(choices) is list and choices else None
        choice = choice if type(choice) is dict else _EMPTY
        delta = choice.get("delta")
        delta = delta if type(delta) is dict else _EMPTY
        content = delta.get("content")
        if len(delta) > 1 or not content:  # more than text: reasoning, tool calls
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if isinstance(reasoning, str) and reasoning:
                out.append(Reasoning(reasoning))
        if isinstance(content, str) and content:
            out.append(Text(content))
        calls = delta.get("tool_calls")
        for call in calls if type(calls) is list else ():
            call = as_dict(call)
            index = call.get("index", 0)
            index = index if isinstance(index, int) else 0
            function = as_dict(call.get("function"))
            if call.get("id") or function.get("name"):
                out.append(ToolStart(index, _str(call.get("id")), _str(function.get("name"))))
            arguments = function.get("arguments")
            if isinstance(arguments, str) and arguments:
                out.append(ToolArgs(index, arguments))
        finish = choice.get("finish_reason")
        if finish and isinstance(finish, str):
            self.finished = True
            out.append(Finish(stop_from("openai", finish)))
        usage = obj.get("usage")
        if usage is None and "x_groq" in obj:  # Groq's place
            usage = as_dict(obj["x_groq"]).get("usage")
        if isinstance(usage, dict):
            self.usage_seen = True
            prompt = as_dict(usage.get("prompt_tokens_details"))
            completion = as_dict(usage.get("completion_tokens_details"))
            out.append(
                Usage(
                    count(usage, "prompt_tokens"),
                    count(usage, "completion_tokens"),
                    cache_read=count(prompt, "cached_tokens"),
                    cache_write=count(usage, "cache_creation_input_tokens"),
                    reasoning=count(completion, "reasoning_tokens"),
                )
            )
        return out


class AnthropicDecoder(Decoder):
    """Anthropic's Messages stream: named events, each a JSON object with its ``type``."""

    __slots__ = ("_input", "_tools")

    def __init__(self) -> None:
        super().__init__()
        self._tools: dict[int, int] = {}  # content block index -> tool call number
        self._input = Usage()  # the prompt's counts, from message_start

    def feed(self, block: bytes) -> list[Event]:
        obj = _object(block)
        if obj is None:
            return []
        kind = obj.get("type")
        if kind == "content_block_delta":
            delta = as_dict(obj.get("delta"))
            what = delta.get("type")
            if what == "text_delta":
                text = _str(delta.get("text"))
                return [Text(text)] if text else []
            if what == "thinking_delta":
                thinking = _str(delta.get("thinking"))
                return [Reasoning(thinking)] if thinking else []
            if what == "input_json_delta":
                piece = _str(delta.get("partial_json"))
                index = obj.get("index")
                tool = self._tools.get(index) if isinstance(index, int) else None
                return [ToolArgs(tool, piece)] if piece and tool is not None else []
            return []  # signature_delta, citations_delta: nothing a client of another API reads
        if kind == "content_block_start":
            content = as_dict(obj.get("content_block"))
            what = content.get("type")
            if what == "tool_use":
                number = len(self._tools)
                if number >= MAX_TOOL_CALLS:
                    return [_TOO_MANY]
                index = obj.get("index")
                self._tools[index if isinstance(index, int) else -1] = number
                return [ToolStart(number, _str(content.get("id")), _str(content.get("name")))]
            if what == "text" and _str(content.get("text")):
                return [Text(content["text"])]
            return []
        if kind == "message_start":
            message = as_dict(obj.get("message"))
            self._input = _input_usage(as_dict(message.get("usage")))
            self.started = True
            return [Start(_str(message.get("id")), _str(message.get("model")))]
        if kind == "message_delta":
            out: list[Event] = []
            delta = as_dict(obj.get("delta"))
            reason = delta.get("stop_reason")
            if isinstance(reason, str) and reason:
                self.finished = True
                sequence = delta.get("stop_sequence")
                out.append(
                    Finish(
                        stop_from("anthropic", reason),
                        sequence if isinstance(sequence, str) else None,
                    )
                )
            usage = obj.get("usage")
            if isinstance(usage, dict):
                self.usage_seen = True
                given = _input_usage(usage)  # a newer API repeats the prompt's counts here
                counts = given if given.input else self._input
                counts.output = count(usage, "output_tokens")
                out.append(counts)
            return out
        if kind == "message_stop":
            self.ended = True
            return [End()]
        if kind == "error":
            return [_error(as_dict(obj.get("error")))]
        return []


def _input_usage(usage: dict[str, Any]) -> Usage:
    read, write = (
        count(usage, "cache_read_input_tokens"),
        count(usage, "cache_creation_input_tokens"),
    )
    return Usage(count(usage, "input_tokens") + read + write, 0, read, write)


class GeminiDecoder(Decoder):
    """Gemini's ``streamGenerateContent?alt=sse``: each event a whole
    ``GenerateContentResponse``; the last holds ``finishReason`` and the usage.
    A function call comes whole, in one part: its start and all its arguments."""

    __slots__ = ("_id", "_tools")

    def __init__(self) -> None:
        super().__init__()
        self._tools = 0
        self._id = ""

    def feed(self, block: bytes) -> list[Event]:
        obj = _object(block)
        return [] if obj is None else self.feed_object(obj)

    def feed_object(self, obj: dict[str, Any]) -> list[Event]:
        """One ``GenerateContentResponse``: a stream's event, or a whole answer."""
        if isinstance(obj.get("error"), dict):
            return [_error(obj["error"])]
        out: list[Event] = []
        if not self.started:
            self.started = True
            self._id = _str(obj.get("responseId"))
            out.append(Start(self._id, _str(obj.get("modelVersion"))))
        candidates = obj.get("candidates")
        candidate = as_dict(candidates[0]) if isinstance(candidates, list) and candidates else {}
        parts = as_dict(candidate.get("content")).get("parts")
        for part in parts if isinstance(parts, list) else ():
            part = as_dict(part)
            text = part.get("text")
            if isinstance(text, str) and text:
                out.append(Reasoning(text) if part.get("thought") is True else Text(text))
            call = part.get("functionCall")
            if isinstance(call, dict):
                if self._tools >= MAX_TOOL_CALLS:
                    return [_TOO_MANY]
                number, self._tools = self._tools, self._tools + 1
                ident = _str(call.get("id")) or f"call_{self._id}_{number}"
                out.append(ToolStart(number, ident, _str(call.get("name"))))
                out.append(ToolArgs(number, orjson.dumps(call.get("args") or {}).decode()))
        reason = candidate.get("finishReason")
        blocked = as_dict(obj.get("promptFeedback")).get("blockReason")
        if (isinstance(reason, str) and reason) or blocked:
            self.finished = True
            stop = stop_from("gemini", reason) if isinstance(reason, str) else Stop.FILTERED
            out.append(Finish(Stop.TOOL if stop is Stop.STOP and self._tools else stop))
            usage = obj.get("usageMetadata")
            if isinstance(usage, dict):  # else none reported: the record estimates
                self.usage_seen = True
                thoughts = count(usage, "thoughtsTokenCount")
                out.append(
                    Usage(
                        count(usage, "promptTokenCount") + count(usage, "toolUsePromptTokenCount"),
                        count(usage, "candidatesTokenCount") + thoughts,
                        cache_read=count(usage, "cachedContentTokenCount"),
                        reasoning=thoughts,
                    )
                )
        return out


def decoder_for(kind: str) -> Decoder:
    if kind == "anthropic":
        return AnthropicDecoder()
    if kind == "gemini":
        return GeminiDecoder()
    return OpenAIDecoder()
