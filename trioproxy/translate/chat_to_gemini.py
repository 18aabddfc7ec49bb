"""OpenAI chat requests as Gemini ``generateContent`` requests (sans-IO).

Rules: as :mod:`trioproxy.translate.chat_to_messages`: every field translated,
refused by name, or on the allow-list (:data:`IGNORED`); a ``null`` field is
absent. An Anthropic request reaches Gemini through
:mod:`~trioproxy.translate.messages_to_chat` first.

- The model is not in the body: it is in the URL (``models/M:streamGenerateContent``),
  which the gateway writes per attempt.
- System and developer messages are ``systemInstruction``; the assistant is
  ``model``; a tool result is a ``functionResponse`` named after the call it
  answers (Gemini matches results by name), in a ``user`` turn.
- Images: a ``data:`` URL is ``inlineData``, any other URL ``fileData``.
- ``reasoning_effort`` is ``thinkingConfig.thinkingBudget`` (``none``: 0), with
  the thoughts included in the stream.
"""

from __future__ import annotations

import mimetypes
from typing import Any

from ..errors import BadRequest
from .chat_to_messages import (
    arguments_of,
    chat_messages,
    data_url,
    refuse,
    strict_checked,
    text_of,
)

__all__ = ["GEMINI_THINKING_BUDGETS", "IGNORED", "chat_to_gemini"]

_GEMINI = "a Gemini model"
GEMINI_THINKING_BUDGETS = {"none": 0, "minimal": 512, "low": 1024, "medium": 8192, "high": 24576}
IGNORED: dict[str, Any] = {
    "stream_options": None,  # any: Gemini always reports usage
    "stream": None,  # the URL says it
    "n": 1,
    "logprobs": False,
    "store": False,
    "metadata": None,
    "user": None,  # any: Gemini's API has no end-user field
    "parallel_tool_calls": True,
    "response_format": {"type": "text"},
}
_CONFIG = {
    "temperature": "temperature",
    "top_p": "topP",
    "top_k": "topK",
    "seed": "seed",
    "presence_penalty": "presencePenalty",
    "frequency_penalty": "frequencyPenalty",
}
_CHOICES = {"auto": "AUTO", "none": "NONE", "required": "ANY"}


def _part(part: Any, field: str) -> dict[str, Any]:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind == "text":
        return {"text": str(part.get("text", ""))}
    if kind == "image_url" and isinstance(part.get("image_url"), dict):
        url = str(part["image_url"].get("url", ""))
        inline = data_url(url)
        if inline is not None:
            return {"inlineData": {"mimeType": inline[0], "data": inline[1]}}
        mime = mimetypes.guess_type(url.split("?", 1)[0])[0] or "image/jpeg"
        return {"fileData": {"mimeType": mime, "fileUri": url}}
    raise refuse(f"{field}.type", _GEMINI)


def _parts(content: Any, field: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"text": content}]
    if isinstance(content, list):
        return [_part(p, f"{field}[{j}]") for j, p in enumerate(content)]
    raise refuse(field, _GEMINI)


def chat_to_gemini(body: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI chat completion request as a Gemini request body."""
    system: list[dict[str, Any]] = []
    contents: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool call id -> the function's name
    for field, message in chat_messages(body, _GEMINI):
        role, content = message.get("role"), message.get("content")
        if role in ("system", "developer"):
            system.append({"text": text_of(content, f"{field}.content", _GEMINI)})
        elif role == "user":
            contents.append({"role": "user", "parts": _parts(content, f"{field}.content")})
        elif role == "assistant":
            parts: list[dict[str, Any]] = (
                [{"text": t}] if (t := text_of(content, f"{field}.content", _GEMINI)) else []
            )
            for j, call in enumerate(message.get("tool_calls") or []):
                function = call.get("function") if isinstance(call, dict) else None
                if not isinstance(function, dict):
                    raise refuse(f"{field}.tool_calls[{j}]", _GEMINI)
                names[str(call.get("id"))] = str(function.get("name"))
                args = arguments_of(
                    function.get("arguments"), f"{field}.tool_calls[{j}].function.arguments"
                )
                parts.append({"functionCall": {"name": function.get("name"), "args": args}})
            contents.append({"role": "model", "parts": parts})
        elif role == "tool":
            name = names.get(str(message.get("tool_call_id")))
            if name is None:
                raise BadRequest(
                    f"'{field}.tool_call_id' answers no tool call of an earlier message"
                )
            text = text_of(content, f"{field}.content", _GEMINI)
            part = {"functionResponse": {"name": name, "response": {"content": text}}}
            last = contents[-1] if contents else None
            if (
                last
                and last["role"] == "user"
                and all("functionResponse" in p for p in last["parts"])
            ):
                last["parts"].append(part)
            else:
                contents.append({"role": "user", "parts": [part]})
        else:
            raise refuse(f"{field}.role", _GEMINI)
    out: dict[str, Any] = {"contents": contents}
    if system:
        out["systemInstruction"] = {"parts": system}
    config: dict[str, Any] = {}
    for name, value in body.items():
        if value is None or name in ("model", "messages", "tool_choice"):
            continue
        if name in _CONFIG:
            config[_CONFIG[name]] = value
        elif name in ("max_tokens", "max_completion_tokens"):
            config["maxOutputTokens"] = value
        elif name == "stop":
            config["stopSequences"] = [value] if isinstance(value, str) else value
        elif name == "reasoning_effort":
            budget = GEMINI_THINKING_BUDGETS.get(value) if isinstance(value, str) else None
            if budget is None:
                raise refuse(name, _GEMINI)
            config["thinkingConfig"] = {"thinkingBudget": budget, "includeThoughts": budget > 0}
        elif name == "tools":
            out["tools"] = [
                {"functionDeclarations": [_declaration(t, i) for i, t in enumerate(value)]}
            ]
        elif name not in IGNORED or (IGNORED[name] is not None and value != IGNORED[name]):
            raise refuse(name, _GEMINI)
    if config:
        out["generationConfig"] = config
    choice = body.get("tool_choice")
    if choice is not None:
        if isinstance(choice, str) and choice in _CHOICES:
            out["toolConfig"] = {"functionCallingConfig": {"mode": _CHOICES[choice]}}
        elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
            calling = {"mode": "ANY", "allowedFunctionNames": [choice["function"].get("name")]}
            out["toolConfig"] = {"functionCallingConfig": calling}
        else:
            raise refuse("tool_choice", _GEMINI)
    return out


def _declaration(tool: Any, i: int) -> dict[str, Any]:
    if (
        not isinstance(tool, dict)
        or tool.get("type") != "function"
        or not isinstance(tool.get("function"), dict)
    ):
        raise refuse(f"tools[{i}].type", _GEMINI)
    function = strict_checked(tool["function"], i, _GEMINI)
    out: dict[str, Any] = {"name": function.get("name")}
    if function.get("description"):
        out["description"] = function["description"]
    if function.get("parameters"):
        out["parametersJsonSchema"] = function["parameters"]
    return out
