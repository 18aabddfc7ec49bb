"""Continuing a cut answer: what was said, the request that asks for the rest, the splice (sans-IO).

Rules:
- :class:`PartialAnswer` is fed every complete event the client was sent. It
  keeps the answer's text and says whether the stream may be continued: one
  choice (OpenAI chat) or text blocks (Anthropic messages) only. A tool call,
  reasoning or thinking, a second choice, a finish reason, a final event or an
  error event make it not continuable (a continuation could not honestly
  finish those).
- :func:`continuation_body` is the client's request with the partial answer
  as the last assistant turn: Anthropic's prefill (its trailing whitespace
  left out: the API refuses it), or for OpenAI-compatible servers
  ``continue_final_message: true, add_generation_prompt: false`` (vLLM,
  SGLang, TGI). ``max_tokens`` (or ``max_completion_tokens``) less the tokens
  already sent, at least 1; ``model`` the provider's name for it.
- :class:`Splicer` rewrites the continuation's events into the client's stream:
  OpenAI: every chunk carries the first attempt's completion ``id``, the
  role-only opening chunk is dropped, a usage object is summed over both
  attempts; Anthropic: ``message_start``, the text block's start and pings are
  dropped, ``message_delta``'s usage is summed. Other events pass as sent.
  Rewritten events are re-encoded (compact JSON).
- Usage summed: completion = the tokens already sent + the continuation's;
  prompt = both prompts, the first attempt's as it reported it (Anthropic's
  ``message_start``) or, where a cut stream never said, the continuation's
  less the prefill (which it contains).
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from ..dialects import Dialect, event_data

__all__ = ["PartialAnswer", "Splicer", "continuation_body"]

_DATA = (b"data: ", b"data:")
_data = event_data


def _event_name(block: bytes) -> bytes:
    return block[7 : block.index(b"\n")] if block.startswith(b"event: ") else b""


class PartialAnswer:
    """What one attempt sent the client, event by event."""

    __slots__ = ("continuable", "dialect", "digest", "first_prompt", "parts", "tokens")

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        self.parts: list[str] = []
        self.tokens = 0  # content events (about a token each)
        self.continuable = True
        self.first_prompt: int | None = None  # the prompt tokens the first attempt reported
        self.digest = hashlib.sha256()  # of the complete events it sent

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def feed(self, block: bytes) -> None:
        """An upstream event relayed as it came (hashed as this attempt's)."""
        self.digest.update(block)
        self.note(block)

    def note(self, block: bytes) -> None:
        """An event the client was sent."""
        if not self.continuable:
            return
        if self.dialect is Dialect.ANTHROPIC:
            self._anthropic(block)
        else:
            self._openai(block)

    def _openai(self, block: bytes) -> None:
        if block.startswith(b":") or block in (b"data: [DONE]\n\n", b"data:[DONE]\n\n"):
            self.continuable = block.startswith(b":")
            return
        obj = _data(block)
        if obj is None or "error" in obj:
            self.continuable = False
            return
        usage = obj.get("usage")
        if isinstance(usage, dict) and isinstance(usage.get("prompt_tokens"), int):
            self.first_prompt = usage["prompt_tokens"]
        choices = obj.get("choices")
        if not isinstance(choices, list) or not choices:
            return  # a usage-only or filter chunk
        choice = choices[0]
        delta = choice.get("delta") if isinstance(choice, dict) else None
        if len(choices) > 1 or not isinstance(delta, dict) or choice.get("index", 0) != 0:
            self.continuable = False
            return
        if choice.get("finish_reason") or delta.get("tool_calls") or delta.get("function_call"):
            self.continuable = False
            return
        if delta.get("reasoning_content") or delta.get("reasoning"):
            self.continuable = False
            return
        content = delta.get("content")
        if isinstance(content, str) and content:
            self.parts.append(content)
            self.tokens += 1

    def _anthropic(self, block: bytes) -> None:
        name = _event_name(block)
        if name in (b"ping", b"content_block_stop", b""):
            return
        obj = _data(block)
        if obj is None:
            self.continuable = False
            return
        if name == b"message_start":
            usage = (obj.get("message") or {}).get("usage") or {}
            if isinstance(usage.get("input_tokens"), int):
                self.first_prompt = usage["input_tokens"]
        elif name == b"content_block_start":
            block_ = obj.get("content_block") or {}
            self.continuable = block_.get("type") == "text" and obj.get("index") == 0
        elif name == b"content_block_delta":
            delta = obj.get("delta") or {}
            if delta.get("type") != "text_delta" or obj.get("index") != 0:
                self.continuable = False
            elif isinstance(delta.get("text"), str) and delta["text"]:
                self.parts.append(delta["text"])
                self.tokens += 1
        else:  # message_delta (a stop reason), message_stop, error: the answer is over
            self.continuable = False


def continuation_body(
    request: dict[str, Any], partial: PartialAnswer, kind: str, model: str | None
) -> bytes:
    """The request that asks a provider of ``kind`` for the rest of the answer."""
    body = dict(request)
    text = partial.text
    if kind == "anthropic":
        body["messages"] = [*request["messages"], {"role": "assistant", "content": text.rstrip()}]
    else:
        body["messages"] = [*request["messages"], {"role": "assistant", "content": text}]
        body["continue_final_message"] = True
        body["add_generation_prompt"] = False
    for name in ("max_tokens", "max_completion_tokens"):
        if isinstance(body.get(name), int):
            body[name] = max(1, body[name] - partial.tokens)
    if model is not None:
        body["model"] = model
    return orjson.dumps(body)


class Splicer:
    """The continuation's events, as the client's stream goes on."""

    __slots__ = ("before", "completion_id", "dialect", "partial", "prompt", "sent")

    def __init__(self, dialect: Dialect, completion_id: str | None, partial: PartialAnswer) -> None:
        self.dialect = dialect
        self.completion_id = completion_id
        self.partial = partial
        self.before = partial.tokens  # sent before this continuation
        self.prompt: int | None = None  # the continuation's prompt tokens (Anthropic's start)
        self.sent = 0  # events the current continuation wrote to the client

    def rewrite(self, block: bytes) -> bytes | None:
        """The event to send the client for ``block``, or None to drop it."""
        if self.dialect is Dialect.ANTHROPIC:
            return self._anthropic(block)
        return self._openai(block)

    def _sum(self, prompt: Any, completion: Any) -> tuple[int, int]:
        prompt = prompt if isinstance(prompt, int) else 0
        completion = completion if isinstance(completion, int) else 0
        first = self.partial.first_prompt
        if first is None:
            first = max(0, prompt - self.before)
        return first + prompt, self.before + completion

    def _openai(self, block: bytes) -> bytes | None:
        if not block.startswith(_DATA) or block.startswith((b"data: [DONE]", b"data:[DONE]")):
            return block
        obj = _data(block)
        if obj is None or "error" in obj:
            return block
        choices = obj.get("choices")
        if isinstance(choices, list) and len(choices) == 1 and isinstance(choices[0], dict):
            delta = choices[0].get("delta") or {}
            opening = not delta.get("content") and not choices[0].get("finish_reason")
            if opening and set(delta) <= {"role", "content", "refusal"}:
                return None  # the role-only opening chunk: the client had its own
        if self.completion_id is not None:
            obj["id"] = self.completion_id
        usage = obj.get("usage")
        if isinstance(usage, dict):
            prompt, completion = self._sum(
                usage.get("prompt_tokens"), usage.get("completion_tokens")
            )
            obj["usage"] = {
                **usage, "prompt_tokens": prompt, "completion_tokens": completion,
                "total_tokens": prompt + completion,
            }  # fmt: skip
        return b"data: " + orjson.dumps(obj) + b"\n\n"

    def _anthropic(self, block: bytes) -> bytes | None:
        name = _event_name(block)
        if name == b"message_start":
            usage = ((_data(block) or {}).get("message") or {}).get("usage") or {}
            if isinstance(usage.get("input_tokens"), int):
                self.prompt = usage["input_tokens"]
            return None
        if name == b"ping":
            return None
        if name == b"content_block_start":
            start = _data(block) or {}
            return None if start.get("index") == 0 else block
        if name != b"message_delta":
            return block
        obj = _data(block)
        if obj is None:
            return block
        usage = obj.get("usage")
        if isinstance(usage, dict):
            second = usage.get("input_tokens", self.prompt)
            prompt, completion = self._sum(second, usage.get("output_tokens"))
            obj["usage"] = {**usage, "input_tokens": prompt, "output_tokens": completion}
        return b"event: message_delta\ndata: " + orjson.dumps(obj) + b"\n\n"
