"""Every difference between the OpenAI routes and Anthropic's, in one place.

Rules:
- Sans-IO: parsed JSON and bytes in, values out. Nothing here does I/O.
- A route speaks one :class:`Dialect`; the gateway answers in it, always:
  errors before the first byte are an HTTP error body (:func:`render_json`),
  after it one SSE error event (:func:`render_sse`), shaped as that API's own.
- What the relay needs to know of a stream is here: which event ends it
  (:func:`is_final`), where the completion id is (:func:`completion_id`), where
  usage is (:func:`usage`).
- What the upstream needs is here: the credential header and the API version
  header of each provider kind (:func:`credential_headers`), and the path
  prefix an Anthropic base URL leaves out (:func:`upstream_path`).

The table::

    what                 OpenAI (chat, completions, responses)      Anthropic (messages)
    error body           {"error": {message, type, param, code}}    {"type": "error", "error": {type, message}}
    error event          data: <body>                               event: error / data: <body>
    final event          data: [DONE] / response.completed|failed|  event: message_stop
                         incomplete
    completion id        first event: id / response.id              first event: message.id
    usage                last event with "usage" (response.usage,   message_start usage + last "usage"
                         Groq: x_groq.usage)
    token counts         prompt_tokens / completion_tokens          input_tokens / output_tokens
                         (Responses: input_tokens / output_tokens)
    content event        a choice with non-empty content/text       event: content_block_delta
                         (Responses: response.output_text.delta)
    complete without     the last event has a finish_reason and     message_delta with a stop_reason
      its final event    the connection then ended cleanly          last, then a clean end
    upstream error       data: {"error": {...}} (any spacing);      event: error
                         Responses: event: error, response.failed
    usage-only event     data: {... "choices":[], "usage": ...}     (none)
    credential           Authorization: Bearer KEY                  x-api-key: KEY, anthropic-version
                         (Gemini, reached translated: x-goog-api-key: KEY)
    base URL             ends in /v1                                stops before /v1
    context too long     400, error.code context_length_exceeded;   400, "prompt is too long: N tokens
                         vLLM/SGLang: their message (any of 4)      > M maximum"
"""

from __future__ import annotations

import enum
import re
from typing import Any

import orjson

from .errors import GatewayError

__all__ = [
    "ANTHROPIC_VERSION",
    "CONTENT",
    "ERROR",
    "FINISH",
    "USAGE",
    "USAGE_ONLY",
    "classify",
    "Dialect",
    "completion_id",
    "credential_headers",
    "default_headers",
    "dialect_for_path",
    "error_body",
    "error_type",
    "event_data",
    "is_content",
    "is_final",
    "is_usage_only",
    "render_json",
    "render_sse",
    "response_model",
    "token_counts",
    "upstream_path",
    "usage",
]

ANTHROPIC_VERSION = "2023-06-01"


class Dialect(enum.Enum):
    OPENAI = "openai"
    ANTHROPIC = "anthropic"


def dialect_for_path(path: str) -> Dialect:
    """The dialect of a path, also of one that is not a route (a 404 in it)."""
    return Dialect.ANTHROPIC if path.startswith("/v1/messages") else Dialect.OPENAI


# -- errors ---------------------------------------------------------------------
def error_body(err: GatewayError, dialect: Dialect) -> dict[str, object]:
    if dialect is Dialect.ANTHROPIC:
        return {"type": "error", "error": {"type": err.anthropic_type, "message": err.message}}
    return {
        "error": {"message": err.message, "type": err.openai_type, "param": None, "code": err.code}
    }


def render_json(err: GatewayError, dialect: Dialect) -> bytes:
    """The body of an HTTP error response."""
    return orjson.dumps(error_body(err, dialect))


def render_sse(err: GatewayError, dialect: Dialect) -> bytes:
    """One complete SSE error event: the last thing a broken stream sends."""
    payload = orjson.dumps(error_body(err, dialect))
    if dialect is Dialect.ANTHROPIC:
        return b"event: error\ndata: " + payload + b"\n\n"
    return b"data: " + payload + b"\n\n"


# -- streams --------------------------------------------------------------------
_FINAL_PREFIXES = (
    b"event: message_stop\n",  # Anthropic
    b"event: response.completed\n",  # OpenAI Responses API, terminal events
    b"event: response.failed\n",
    b"event: response.incomplete\n",
)


_DONE = (b"data: [DONE]\n\n", b"data:[DONE]\n\n")  # a space after the colon is optional


def is_final(block: bytes) -> bool:
    """Does this event block (as framed by the SSE framer) end the stream?"""
    return block in _DONE or block.startswith(_FINAL_PREFIXES)


_CONTENT_PREFIXES = (b"event: content_block_delta\n", b"event: response.output_text.delta\n")

_DATA_OBJECT = (b"data: {", b"data:{")

# What an event tells the relay (:func:`classify`), as bit flags.
CONTENT = 1  # generated text (about one token)
USAGE = 2  # a usage object (not null)
FINISH = 4  # a finish reason (a choice's, or Anthropic's stop_reason): not null, not ""
USAGE_ONLY = 8  # OpenAI's usage chunk: no choices, a usage object
ERROR = 16  # the upstream's own error event: the stream ends in an error

_ERROR_PREFIXES = (
    b"event: error\n",  # Anthropic, Responses
    b"event: response.failed\n",  # Responses: a final event that is an error
    b'data: {"error":',
    b'data:{"error":',
)
_MESSAGE_DELTA = b"event: message_delta\n"  # Anthropic: stop_reason and usage

# Compact JSON (no ": " anywhere): these patterns are exact, since in a JSON
# string a quote is escaped and cannot close a key the way they need.
_COMPACT_CONTENT = re.compile(rb'(?:content|"text|"reasoning)":"[^"]')
_COMPACT_USAGE = b'"usage":{'
_COMPACT_FINISH = b'"finish_reason":"'
_COMPACT_FINISHED = re.compile(rb'"finish_reason":"[^"]')  # "" is no finish reason
_NO_CHOICES = b'"choices":[]'


def classify(block: bytes) -> int:
    """What an event block (as framed by the SSE framer) carries, as flags.

    A ``data: {`` (or ``data:{``) event in compact JSON (as vLLM, SGLang and OpenAI write it) is
    read by byte patterns that are exact there; any other spacing is parsed,
    once (``"content": "x"``, as ``json.dumps`` writes it). Content is a
    non-empty ``content``, ``reasoning_content``, ``reasoning`` or ``text`` of
    a choice (its ``delta`` for chat); usage is ``usage`` or Groq's
    ``x_groq.usage``. Events named by an ``event:`` line (Anthropic, Responses)
    are known by their name; they carry usage when they mention ``"usage"``;
    Anthropic's ``message_delta`` is parsed (once a stream) for its stop reason.
    A finish reason ``""`` is none. An upstream's error event is ``event: error``
    (Anthropic, Responses), ``response.failed``, or a data object whose
    ``error`` is an object (OpenAI's), in any spacing."""
    if not block.startswith(_DATA_OBJECT):  # data: {, or data:{ (no space: SSE allows it)
        if block.startswith(_CONTENT_PREFIXES):
            return CONTENT
        if block.startswith(_MESSAGE_DELTA):
            return _classify_message_delta(block)
        if block.startswith(_ERROR_PREFIXES):
            return ERROR
        return USAGE if b'"usage"' in block else 0
    if b'": ' not in block:
        flags = 0
        if b'content":"' in block:  # the usual token: one non-empty content, no empty one
            if b'content":""' not in block or _COMPACT_CONTENT.search(block):
                flags = CONTENT
        elif (b'"text":"' in block or b'"reasoning":"' in block) and _COMPACT_CONTENT.search(block):
            flags = CONTENT
        if _COMPACT_USAGE in block:
            flags |= (USAGE | USAGE_ONLY) if _NO_CHOICES in block else USAGE
        if _COMPACT_FINISH in block and _COMPACT_FINISHED.search(block):
            flags |= FINISH
        if not flags and block.startswith(_ERROR_PREFIXES):  # {"error":{...}}
            return _classify_parsed(block)
        return flags
    return _classify_parsed(block)


def event_data(block: bytes) -> dict[str, Any] | None:
    """The JSON object of an event's data lines (joined as SSE joins them), or None."""
    data = b"\n".join(
        line[6:] if line.startswith(b"data: ") else line[5:]
        for line in block.splitlines()
        if line.startswith(b"data:")
    )
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


def _classify_message_delta(block: bytes) -> int:
    obj = event_data(block)
    if obj is None:
        return 0
    delta = _dict(obj.get("delta")) or {}
    flags = FINISH if isinstance(delta.get("stop_reason"), str) and delta["stop_reason"] else 0
    return flags | (USAGE if _dict(obj.get("usage")) is not None else 0)


def _classify_parsed(block: bytes) -> int:
    obj = event_data(block)
    if obj is None:
        return 0
    if _dict(obj.get("error")) is not None:
        return ERROR
    flags = 0
    choices = obj.get("choices")
    for choice in choices if isinstance(choices, list) else ():
        if not isinstance(choice, dict):
            continue
        delta = _dict(choice.get("delta")) or {}
        texts = (delta.get("content"), delta.get("reasoning_content"), delta.get("reasoning"))
        if any(isinstance(t, str) and t for t in (*texts, choice.get("text"))):
            flags |= CONTENT
        finish = choice.get("finish_reason")
        if isinstance(finish, str) and finish:
            flags |= FINISH
    groq = _dict(obj.get("x_groq"))
    if _dict(obj.get("usage")) is not None or (groq is not None and _dict(groq.get("usage"))):
        flags |= (USAGE | USAGE_ONLY) if choices == [] else USAGE
    return flags


def is_content(block: bytes) -> bool:
    """Does this event carry generated text (about one token)? (:func:`classify`)"""
    return bool(classify(block) & CONTENT)


_ERROR_TYPE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


def error_type(block: bytes) -> str:
    """The type of an upstream's error event (:data:`ERROR`), as a bounded name:
    ``error.type`` (Anthropic, OpenAI) or ``error.code``; ``error`` when it names
    none a log line may carry."""
    obj = event_data(block) or {}
    response = _dict(obj.get("response")) or {}  # Responses: response.failed
    error = _dict(obj.get("error")) or _dict(response.get("error")) or {}
    for value in (error.get("type"), error.get("code")):
        if isinstance(value, str) and _ERROR_TYPE.fullmatch(value):
            return value
    return "error"


def is_usage_only(block: bytes) -> bool:
    """OpenAI's usage chunk (``stream_options.include_usage``): no choices, only usage."""
    return bool(classify(block) & USAGE_ONLY)


def _dict(v: Any) -> dict[str, Any] | None:
    return v if isinstance(v, dict) else None


def completion_id(first: dict[str, Any]) -> str | None:
    """The upstream's id, from a stream's first event or a whole JSON response.
    OpenAI chat/completions: ``{"id"}``; Anthropic: ``{"message": {"id"}}`` in a
    stream; Responses: ``{"response": {"id"}}`` in a stream."""
    for holder in (first, _dict(first.get("message")), _dict(first.get("response"))):
        if holder is not None and isinstance(holder.get("id"), str) and holder["id"]:
            return str(holder["id"])
    return None


def response_model(obj: dict[str, Any]) -> str | None:
    """The model that answered, from a stream's first event or a whole response:
    ``model`` (OpenAI chat/completions, a whole Anthropic message),
    ``message.model`` (Anthropic stream), ``response.model`` (Responses)."""
    for holder in (obj, _dict(obj.get("message")), _dict(obj.get("response"))):
        if holder is not None and isinstance(holder.get("model"), str) and holder["model"]:
            return str(holder["model"])[:256]
    return None


def usage(
    first: dict[str, Any] | None, last: dict[str, Any] | None, dialect: Dialect
) -> dict[str, Any] | None:
    """Token usage of a stream: Anthropic counts input tokens in ``message_start``
    (the first event) and output tokens in the last event with ``usage``; OpenAI
    reports it in the last event (``usage``, or ``response.usage`` for the
    Responses API). For a whole JSON response, pass it as ``last``."""
    found: dict[str, Any] = {}
    if dialect is Dialect.ANTHROPIC and first is not None:
        message = _dict(first.get("message"))
        start = _dict(message.get("usage")) if message else None
        if start:
            found.update(start)
    if last is not None:
        reported = _dict(last.get("usage"))
        for holder in ("response", "x_groq"):  # Responses API; Groq
            if reported is None:
                inner = _dict(last.get(holder))
                reported = _dict(inner.get("usage")) if inner else None
        if reported:
            found.update(reported)
    return found or None


def token_counts(reported: dict[str, Any] | None) -> tuple[int | None, int | None]:
    """(prompt, completion) tokens of a usage object, either dialect's names;
    None for a count it does not hold as a non-negative integer."""
    if not reported:
        return None, None

    def count(*names: str) -> int | None:
        for name in names:
            value = reported.get(name)
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                return value
        return None

    return count("prompt_tokens", "input_tokens"), count("completion_tokens", "output_tokens")


# -- upstream requests -------------------------------------------------------------
def default_headers(kind: str) -> dict[str, str]:
    """Headers a provider of ``kind`` needs unless the client or the provider's
    config sent their own: Anthropic's API version."""
    return {"anthropic-version": ANTHROPIC_VERSION} if kind == "anthropic" else {}


def credential_headers(kind: str, credential: str | None) -> dict[str, str]:
    """The provider's credential, in the header its kind reads."""
    if not credential:
        return {}
    if kind == "anthropic":
        return {"x-api-key": credential}
    if kind == "gemini":
        return {"x-goog-api-key": credential}
    return {"authorization": f"Bearer {credential}"}


def upstream_path(kind: str, path: str) -> str:
    """A route's path below a provider's base URL: OpenAI base URLs end in
    ``/v1``, Anthropic's stop before it (``GET /v1/models`` is both)."""
    return "/v1" + path if kind == "anthropic" and not path.startswith("/v1/") else path


# -- error answers ----------------------------------------------------------------
# A 400 that says the request is longer than the model's context window, as
# each server words it (checked against their sources; see tests/test_dialects).
_CONTEXT_CODES = frozenset({"context_length_exceeded"})  # OpenAI's error.code
_CONTEXT_MESSAGES = re.compile(
    r"maximum context length is \d+ tokens"  # OpenAI; vLLM (both wordings)
    r"|prompt is too long: \d+ tokens > \d+ maximum"  # Anthropic
    r"|is longer than the model's context length"  # SGLang (input alone)
    r"|requested token count exceeds the model's maximum context length"  # SGLang
    r"|is longer than the maximum model length",  # vLLM: the decoder prompt
    re.IGNORECASE,
)


def context_too_long(status: int, body: bytes) -> bool:
    """Does an upstream's error answer say the context window was exceeded?
    The body is parsed as JSON (OpenAI's and Anthropic's ``error`` object,
    vLLM's and SGLang's ``message``); only its code and message are judged. A
    content-policy refusal is never one."""
    if status not in (400, 413):
        return False
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    if not isinstance(obj, dict):
        return False
    error = _dict(obj.get("error")) or obj
    if error.get("code") in _CONTEXT_CODES:
        return True
    message = error.get("message")
    return isinstance(message, str) and _CONTEXT_MESSAGES.search(message[:2000]) is not None
