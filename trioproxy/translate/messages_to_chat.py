"""Anthropic messages requests as OpenAI chat requests (sans-IO).

Rules: as :mod:`trioproxy.translate.chat_to_messages` (its reverse): every field
translated, refused by name, or on the allow-list; a ``null`` field is absent.
Past turns' thinking blocks and ``cache_control`` marks are the allow-list: an
OpenAI-compatible server takes neither. A stream asks for usage
(``stream_options.include_usage``): Anthropic's ``message_delta`` carries it.
"""

from __future__ import annotations

from typing import Any

import orjson

from .chat_to_messages import THINKING_BUDGETS, refuse, text_of

__all__ = ["effort_for", "messages_to_chat"]

_OPENAI = "an OpenAI-compatible model"
_MESSAGES_KNOWN = frozenset(
    {
        "model",
        "messages",
        "system",
        "max_tokens",
        "stream",
        "temperature",
        "top_p",
        "top_k",
        "stop_sequences",
        "tools",
        "tool_choice",
        "metadata",
        "thinking",
    }
)


def effort_for(budget: int) -> str:
    """A thinking budget as the nearest reasoning effort (the inverse of :data:`THINKING_BUDGETS`)."""
    return (
        "low"
        if budget < THINKING_BUDGETS["medium"]
        else "medium"
        if budget < THINKING_BUDGETS["high"]
        else "high"
    )


def _blocks(content: Any, field: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list) or not all(isinstance(b, dict) for b in content):
        raise refuse(field, _OPENAI)
    return content


def _part(block: dict[str, Any], field: str) -> dict[str, Any]:
    kind = block.get("type")
    if kind == "text":
        return {"type": "text", "text": str(block.get("text", ""))}
    source = block.get("source")
    if kind == "image" and isinstance(source, dict):
        if source.get("type") == "base64":
            url = f"data:{source.get('media_type')};base64,{source.get('data')}"
        elif source.get("type") == "url":
            url = str(source.get("url"))
        else:
            raise refuse(f"{field}.source.type", _OPENAI)
        return {"type": "image_url", "image_url": {"url": url}}
    raise refuse(f"{field}.type", _OPENAI)


def messages_to_chat(body: dict[str, Any]) -> dict[str, Any]:
    """An Anthropic messages request as an OpenAI chat completion request."""
    for name, value in body.items():
        if value is not None and name not in _MESSAGES_KNOWN:
            raise refuse(name, _OPENAI)
    turns: list[dict[str, Any]] = []
    system = body.get("system")
    if system is not None:
        if isinstance(system, str):
            turns.append({"role": "system", "content": system})
        else:
            parts = [_part(b, f"system[{j}]") for j, b in enumerate(_blocks(system, "system"))]
            turns.append({"role": "system", "content": parts})
    for i, message in enumerate(body.get("messages") or []):
        field = f"messages[{i}]"
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ("user", "assistant"):
            raise refuse(f"{field}.role", _OPENAI)
        content = message.get("content")
        if role == "assistant":
            turns.append(_assistant_to_chat(content, field))
            continue
        if isinstance(content, str):
            turns.append({"role": "user", "content": content})
            continue
        parts = []
        for j, block in enumerate(_blocks(content, f"{field}.content")):
            if block.get("type") == "tool_result":
                text = text_of(block.get("content"), f"{field}.content[{j}].content", _OPENAI)
                if block.get("is_error") is True:
                    text = "Error: " + text
                turns.append(
                    {"role": "tool", "tool_call_id": block.get("tool_use_id"), "content": text}
                )
            else:
                parts.append(_part(block, f"{field}.content[{j}]"))
        if parts:
            turns.append({"role": "user", "content": parts})
    out: dict[str, Any] = {"model": body.get("model"), "messages": turns}
    if isinstance(body.get("max_tokens"), int):
        out["max_tokens"] = body["max_tokens"]
    for name in ("temperature", "top_p", "top_k"):
        if body.get(name) is not None:
            out[name] = body[name]
    if body.get("stop_sequences") is not None:
        out["stop"] = body["stop_sequences"]
    metadata = body.get("metadata")
    if isinstance(metadata, dict):
        for key in metadata:
            if key != "user_id":
                raise refuse(f"metadata.{key}", _OPENAI)
        if metadata.get("user_id") is not None:
            out["user"] = metadata["user_id"]
    if body.get("tools") is not None:
        out["tools"] = [_tool_to_chat(t, i) for i, t in enumerate(body["tools"])]
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        kind = choice.get("type")
        if kind == "tool":
            out["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
        elif kind in ("auto", "none", "any"):
            out["tool_choice"] = "required" if kind == "any" else kind
        else:
            raise refuse("tool_choice.type", _OPENAI)
        if choice.get("disable_parallel_tool_use") is True:
            out["parallel_tool_calls"] = False
    thinking = body.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") == "enabled":
        budget = thinking.get("budget_tokens")
        out["reasoning_effort"] = effort_for(budget if isinstance(budget, int) else 0)
    elif thinking is not None and not (
        isinstance(thinking, dict) and thinking.get("type") == "disabled"
    ):
        raise refuse("thinking", _OPENAI)
    if body.get("stream") is True:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}  # message_delta carries the usage
    return out


def _assistant_to_chat(content: Any, field: str) -> dict[str, Any]:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(_blocks(content, f"{field}.content")):
        kind = block.get("type")
        if kind == "text":
            texts.append(str(block.get("text", "")))
        elif kind == "tool_use":
            arguments = orjson.dumps(block.get("input") or {}).decode()
            function = {"name": block.get("name"), "arguments": arguments}
            calls.append({"id": block.get("id"), "type": "function", "function": function})
        elif kind not in ("thinking", "redacted_thinking"):  # a past turn's thinking: none to give
            raise refuse(f"{field}.content[{j}].type", _OPENAI)
    out: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(texts) if texts or not calls else None,
    }
    if calls:
        out["tool_calls"] = calls
    return out


def _tool_to_chat(tool: Any, i: int) -> dict[str, Any]:
    if not isinstance(tool, dict) or tool.get("type") not in (None, "custom"):
        raise refuse(f"tools[{i}].type", _OPENAI)
    function = {
        "name": tool.get("name"),
        "parameters": tool.get("input_schema") or {"type": "object"},
    }
    if tool.get("description"):
        function["description"] = tool["description"]
    return {"type": "function", "function": function}
