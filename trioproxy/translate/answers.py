"""Whole answers and error answers, translated (sans-IO).

Rules:
- A non-streaming answer is read as the events a stream of it would have
  (:mod:`~trioproxy.translate.events`), then written whole in the client's
  dialect: its text, reasoning, tool calls, stop reason and usage, its id and
  model. One decoder per upstream dialect, one writer per client dialect.
- An upstream's error answer (4xx) keeps its status and message and takes the
  client's dialect: the error type follows the status (the types both APIs
  name alike), so a client's error handling sees its own API.
"""

from __future__ import annotations

from typing import Any

import orjson

from .decode import GeminiDecoder, as_dict
from .encode import anthropic_usage, openai_usage
from .events import (
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
    stop_to,
)

__all__ = ["error_answer", "translate_answer"]


def _openai_events(obj: dict[str, Any]) -> list[Event]:
    out: list[Event] = [Start(str(obj.get("id") or ""), str(obj.get("model") or ""))]
    choices = obj.get("choices")
    choice = as_dict(choices[0]) if isinstance(choices, list) and choices else {}
    message = as_dict(choice.get("message"))
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    if isinstance(reasoning, str) and reasoning:
        out.append(Reasoning(reasoning))
    if isinstance(message.get("content"), str) and message["content"]:
        out.append(Text(message["content"]))
    calls = message.get("tool_calls")
    for n, call in enumerate(calls if isinstance(calls, list) else ()):
        function = as_dict(as_dict(call).get("function"))
        out.append(ToolStart(n, str(call.get("id") or ""), str(function.get("name") or "")))
        out.append(ToolArgs(n, str(function.get("arguments") or "{}")))
    finish = choice.get("finish_reason")
    out.append(Finish(stop_from("openai", finish if isinstance(finish, str) else "stop")))
    usage = obj.get("usage")
    if isinstance(usage, dict):  # else none reported: the record estimates
        out.append(
            Usage(
                count(usage, "prompt_tokens"),
                count(usage, "completion_tokens"),
                count(as_dict(usage.get("prompt_tokens_details")), "cached_tokens"),
                count(usage, "cache_creation_input_tokens"),
                count(as_dict(usage.get("completion_tokens_details")), "reasoning_tokens"),
            )
        )
    return out


def _anthropic_events(obj: dict[str, Any]) -> list[Event]:
    out: list[Event] = [Start(str(obj.get("id") or ""), str(obj.get("model") or ""))]
    content = obj.get("content")
    tools = 0
    for block in content if isinstance(content, list) else ():
        block = as_dict(block)
        kind = block.get("type")
        if kind == "text" and block.get("text"):
            out.append(Text(str(block["text"])))
        elif kind == "thinking" and block.get("thinking"):
            out.append(Reasoning(str(block["thinking"])))
        elif kind == "tool_use":
            out.append(ToolStart(tools, str(block.get("id") or ""), str(block.get("name") or "")))
            out.append(ToolArgs(tools, orjson.dumps(block.get("input") or {}).decode()))
            tools += 1
    reason, sequence = obj.get("stop_reason"), obj.get("stop_sequence")
    stop = stop_from("anthropic", reason if isinstance(reason, str) else "end_turn")
    out.append(Finish(stop, sequence if isinstance(sequence, str) else None))
    usage = obj.get("usage")
    if isinstance(usage, dict):  # else none reported: the record estimates
        read, write = (
            count(usage, "cache_read_input_tokens"),
            count(usage, "cache_creation_input_tokens"),
        )
        total = count(usage, "input_tokens") + read + write
        out.append(Usage(total, count(usage, "output_tokens"), read, write))
    return out


def _events(kind: str, obj: dict[str, Any]) -> list[Event]:
    if kind == "anthropic":
        return _anthropic_events(obj)
    if kind == "gemini":
        return GeminiDecoder().feed_object(obj)
    return _openai_events(obj)


def _collect(
    events: list[Event],
) -> tuple[Start, str, str, list[list[str]], Finish, Usage | None]:
    start, text, reasoning = Start("", ""), [], []
    tools: list[list[str]] = []  # [id, name, arguments]
    finish, usage = Finish(Stop.STOP), None
    for event in events:
        if isinstance(event, Start):
            start = event
        elif isinstance(event, Text):
            text.append(event.text)
        elif isinstance(event, Reasoning):
            reasoning.append(event.text)
        elif isinstance(event, ToolStart):
            tools.append([event.id, event.name, ""])
        elif isinstance(event, ToolArgs) and event.index < len(tools):
            tools[event.index][2] += event.json
        elif isinstance(event, Finish):
            finish = event
        elif isinstance(event, Usage):
            usage = event
    return start, "".join(text), "".join(reasoning), tools, finish, usage


_ANSWER_FIELD = {"openai": "choices", "anthropic": "content", "gemini": "candidates"}


def translate_answer(kind: str, dialect: str, body: bytes, created: int) -> tuple[bytes, bool]:
    """A whole answer of an upstream of ``kind`` as a client of ``dialect`` reads
    it, and whether the upstream reported its usage (if not, an OpenAI client's
    answer has none, an Anthropic client's zeros, and the record estimates).

    Error handling: raises ``ValueError`` for a body that is not a JSON object
    holding the API's answer (``choices``, ``content``, ``candidates``)."""
    obj = orjson.loads(body)
    blocked = (
        kind == "gemini" and isinstance(obj, dict) and isinstance(obj.get("promptFeedback"), dict)
    )
    if not isinstance(obj, dict) or not (isinstance(obj.get(_ANSWER_FIELD[kind]), list) or blocked):
        raise ValueError("the upstream's answer is not one of its API's answers")
    start, text, reasoning, tools, finish, usage = _collect(_events(kind, obj))
    if dialect == "anthropic":
        content: list[dict[str, Any]] = []
        if reasoning:
            content.append({"type": "thinking", "thinking": reasoning, "signature": ""})
        if text:
            content.append({"type": "text", "text": text})
        for ident, name, arguments in tools:
            try:
                tool_input = orjson.loads(arguments or "{}")
            except orjson.JSONDecodeError:
                tool_input = {}
            content.append({"type": "tool_use", "id": ident, "name": name, "input": tool_input})
        answer: dict[str, Any] = {
            "id": start.id or "msg_trioproxy", "type": "message", "role": "assistant",
            "model": start.model, "content": content,
            "stop_reason": stop_to("anthropic", finish.stop), "stop_sequence": finish.sequence,
            "usage": anthropic_usage(usage or Usage()),  # the API's field is required
        }  # fmt: skip
        return orjson.dumps(answer), usage is not None
    message: dict[str, Any] = {"role": "assistant", "content": text or (None if tools else "")}
    if reasoning:
        message["reasoning_content"] = reasoning
    if tools:
        message["tool_calls"] = [
            {"id": i, "type": "function", "function": {"name": n, "arguments": a}}
            for i, n, a in tools
        ]
    choice = {
        "index": 0,
        "message": message,
        "logprobs": None,
        "finish_reason": stop_to("openai", finish.stop),
    }
    completion: dict[str, Any] = {
        "id": start.id or "chatcmpl-trioproxy", "object": "chat.completion", "created": created,
        "model": start.model, "choices": [choice],
    }  # fmt: skip
    if usage is not None:
        completion["usage"] = openai_usage(usage)
    return orjson.dumps(completion), usage is not None


# An upstream's error status as the type each client's API gives it.
_TYPES = {
    400: ("invalid_request_error", "invalid_request_error"),
    401: ("authentication_error", "authentication_error"),
    403: ("permission_error", "permission_error"),
    404: ("not_found_error", "not_found_error"),
    413: ("invalid_request_error", "request_too_large"),
    429: ("rate_limit_error", "rate_limit_error"),
}


def error_answer(status: int, body: bytes, dialect: str) -> bytes:
    """An upstream's error answer (any of the three APIs' shapes, or none) in ``dialect``."""
    message = ""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        obj = None
    if isinstance(obj, dict):
        error = obj.get("error")
        error = error if isinstance(error, dict) else obj
        found = error.get("message")
        message = found if isinstance(found, str) else ""
    message = message[:2000] or f"the upstream answered {status}"
    openai_type, anthropic_type = _TYPES.get(
        status, ("invalid_request_error", "invalid_request_error")
    )
    if dialect == "anthropic":
        return orjson.dumps(
            {"type": "error", "error": {"type": anthropic_type, "message": message}}
        )
    return orjson.dumps(
        {"error": {"message": message, "type": openai_type, "param": None, "code": None}}
    )
