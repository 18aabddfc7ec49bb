"""OpenAI chat requests as Anthropic messages requests (sans-IO).

Rules:
- Parsed JSON in, the other API's JSON out; the model is carried as it is (the
  gateway names the provider's own per attempt). Nothing here does I/O.
- Every field is translated, or refused, or on the allow-list of fields that
  are safely ignored (:data:`IGNORED_CHAT`, and the docs' mapping table). A refusal is a :class:`~trioproxy.errors.BadRequest`
  that names the field, in the client's dialect, before anything is sent: a
  field is never dropped silently.
- A ``null`` field is an absent one.
- Where the two APIs say the same thing, this and
  :mod:`~trioproxy.translate.messages_to_chat` round-trip (tested):
  system prompts, turns, images, tools and tool results, tool choice, stop
  sequences, sampling, the end user, and reasoning effort as a thinking budget.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson

from ..errors import BadRequest

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "IGNORED_CHAT",
    "THINKING_BUDGETS",
    "chat_to_messages",
    "arguments_of",
    "chat_messages",
    "data_url",
    "refuse",
    "strict_checked",
    "text_of",
]

DEFAULT_MAX_TOKENS = 4096  # Anthropic requires max_tokens; an OpenAI client may not say
# reasoning_effort -> Anthropic's thinking budget (its minimum is 1024 tokens)
THINKING_BUDGETS = {"minimal": 1024, "low": 1024, "medium": 4096, "high": 16384}

# Fields of a chat request an Anthropic model does without, and the values that
# keep them harmless; any other value is refused.
IGNORED_CHAT: dict[str, Any] = {
    "stream_options": None,  # any: Anthropic always reports usage (the gateway sends it on asked)
    "n": 1,
    "logprobs": False,
    "store": False,
    "seed": None,  # any: a best-effort hint in OpenAI's API as well
    "frequency_penalty": 0,
    "presence_penalty": 0,
    "metadata": None,  # any: OpenAI's tags for stored completions
    "response_format": {"type": "text"},
}


MAX_FIELD_NAME = 80  # a field's name is the client's: bounded, printable, before it is an error


def refuse(field: str, where: str) -> BadRequest:
    """The 400 naming ``field``: its name as the client wrote it, at most
    :data:`MAX_FIELD_NAME` printable ASCII characters (others are ``?``), since the
    message reaches the log and the record."""
    name = "".join(c if " " <= c <= "~" else "?" for c in field[: MAX_FIELD_NAME + 1])
    if len(name) > MAX_FIELD_NAME:
        name = name[:MAX_FIELD_NAME] + "..."
    return BadRequest(f"'{name}' cannot be translated for {where}")


def _ignored(name: str, value: Any, table: dict[str, Any], where: str) -> None:
    if name not in table:
        raise refuse(name, where)
    if table[name] is not None and value != table[name]:
        raise refuse(name, where)


def text_of(content: Any, field: str, where: str) -> str:
    """A message's text: a string, or text parts (joined)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text":
                raise refuse(f"{field}[{j}].type", where)
            texts.append(str(part.get("text", "")))
        return "".join(texts)
    if content is None:
        return ""
    raise refuse(field, where)


def arguments_of(raw: Any, field: str) -> Any:
    if isinstance(raw, dict):
        return raw
    try:
        return orjson.loads(raw or "{}")
    except (orjson.JSONDecodeError, TypeError):
        raise BadRequest(f"'{field}' is not valid JSON") from None


def chat_messages(body: dict[str, Any], where: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """A chat request's messages, each with its field name, checked: an object
    of the fields every message type has (``name`` is on the allow-list)."""
    for i, message in enumerate(body.get("messages") or []):
        field = f"messages[{i}]"
        if not isinstance(message, dict):
            raise refuse(field, where)
        for name in message:
            if name not in ("role", "content", "tool_calls", "tool_call_id", "name"):
                raise refuse(f"{field}.{name}", where)
        yield field, message


def strict_checked(function: dict[str, Any], i: int, where: str) -> dict[str, Any]:
    """A tool's function, unless it asks for ``strict`` schema adherence, which the
    other APIs do not promise (``strict: false`` is what they do anyway)."""
    if function.get("strict") is True:
        raise refuse(f"tools[{i}].function.strict", where)
    return function


# -- OpenAI chat -> Anthropic messages ----------------------------------------
_ANTHROPIC = "an Anthropic model"


def data_url(url: str) -> tuple[str, str] | None:
    """(media type, base64 data) of a ``data:`` URL, else None (a URL to fetch)."""
    if not url.startswith("data:"):
        return None
    head, _, data = url.partition(",")
    return head[5:].split(";", 1)[0], data


def _image(url: str) -> dict[str, Any]:
    inline = data_url(url)
    if inline is not None:
        source = {"type": "base64", "media_type": inline[0], "data": inline[1]}
        return {"type": "image", "source": source}
    return {"type": "image", "source": {"type": "url", "url": url}}


def _user_blocks(content: Any, field: str) -> Any:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise refuse(field, _ANTHROPIC)
    blocks: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            blocks.append({"type": "text", "text": str(part.get("text", ""))})
        elif kind == "image_url" and isinstance(part.get("image_url"), dict):
            blocks.append(_image(str(part["image_url"].get("url", ""))))
        else:
            raise refuse(f"{field}[{j}].type", _ANTHROPIC)
    return blocks


def _tool_choice_to_anthropic(choice: Any, parallel: Any) -> dict[str, Any] | None:
    out: dict[str, Any] | None
    if choice is None:
        out = None if parallel is not False else {"type": "auto"}
    elif choice in ("auto", "none"):
        out = {"type": choice}
    elif choice == "required":
        out = {"type": "any"}
    elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        out = {"type": "tool", "name": choice["function"].get("name")}
    else:
        raise refuse("tool_choice", _ANTHROPIC)
    if parallel is False and out is not None and out["type"] != "none":
        out["disable_parallel_tool_use"] = True
    return out


def chat_to_messages(body: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI chat completion request as an Anthropic messages request."""
    out: dict[str, Any] = {"model": body.get("model")}
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for field, message in chat_messages(body, _ANTHROPIC):
        role, content = message.get("role"), message.get("content")
        if role in ("system", "developer"):
            system.append(
                {"type": "text", "text": text_of(content, f"{field}.content", _ANTHROPIC)}
            )
        elif role == "user":
            turns.append({"role": "user", "content": _user_blocks(content, f"{field}.content")})
        elif role == "assistant":
            blocks: list[dict[str, Any]] = []
            text = text_of(content, f"{field}.content", _ANTHROPIC)
            if text:
                blocks.append({"type": "text", "text": text})
            for j, call in enumerate(message.get("tool_calls") or []):
                function = call.get("function") if isinstance(call, dict) else None
                if not isinstance(function, dict):
                    raise refuse(f"{field}.tool_calls[{j}]", _ANTHROPIC)
                args = arguments_of(
                    function.get("arguments"), f"{field}.tool_calls[{j}].function.arguments"
                )
                blocks.append(
                    {
                        "type": "tool_use",
                        "id": call.get("id"),
                        "name": function.get("name"),
                        "input": args,
                    }
                )
            if len(blocks) == 1 and blocks[0]["type"] == "text":
                turns.append({"role": "assistant", "content": text})
            else:
                turns.append({"role": "assistant", "content": blocks})
        elif role == "tool":
            result = {
                "type": "tool_result",
                "tool_use_id": message.get("tool_call_id"),
                "content": text_of(content, f"{field}.content", _ANTHROPIC),
            }
            last = turns[-1] if turns else None
            if (
                last
                and last["role"] == "user"
                and isinstance(last["content"], list)
                and all(b.get("type") == "tool_result" for b in last["content"])
            ):
                last["content"].append(result)
            else:
                turns.append({"role": "user", "content": [result]})
        else:
            raise refuse(f"{field}.role", _ANTHROPIC)
    if system:
        out["system"] = system[0]["text"] if len(system) == 1 else system
    out["messages"] = turns
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    out["max_tokens"] = limit if isinstance(limit, int) else DEFAULT_MAX_TOKENS
    effort = body.get("reasoning_effort")
    if effort is not None and effort != "none":
        budget = THINKING_BUDGETS.get(effort) if isinstance(effort, str) else None
        if budget is None:
            raise refuse("reasoning_effort", _ANTHROPIC)
        out["thinking"] = {"type": "enabled", "budget_tokens": budget}
        if out["max_tokens"] <= budget:  # Anthropic's max_tokens counts the thinking too
            out["max_tokens"] += budget
    for name, value in body.items():
        if value is None or name in _CHAT_DONE:
            continue
        if name in ("temperature", "top_p", "top_k", "stream"):
            out[name] = value
        elif name == "stop":
            out["stop_sequences"] = [value] if isinstance(value, str) else value
        elif name == "user":
            out["metadata"] = {"user_id": value}
        elif name == "tools":
            out["tools"] = [_tool_to_anthropic(t, i) for i, t in enumerate(value)]
        elif name in ("tool_choice", "parallel_tool_calls"):
            continue
        else:
            _ignored(name, value, IGNORED_CHAT, _ANTHROPIC)
    choice = _tool_choice_to_anthropic(body.get("tool_choice"), body.get("parallel_tool_calls"))
    if choice is not None:
        out["tool_choice"] = choice
    return out


_CHAT_DONE = frozenset(
    {"model", "messages", "max_tokens", "max_completion_tokens", "reasoning_effort"}
)


def _tool_to_anthropic(tool: Any, i: int) -> dict[str, Any]:
    if (
        not isinstance(tool, dict)
        or tool.get("type") != "function"
        or not isinstance(tool.get("function"), dict)
    ):
        raise refuse(f"tools[{i}].type", _ANTHROPIC)
    function = strict_checked(tool["function"], i, _ANTHROPIC)
    out = {
        "name": function.get("name"),
        "input_schema": function.get("parameters") or {"type": "object", "properties": {}},
    }
    if function.get("description"):
        out["description"] = function["description"]
    return out
