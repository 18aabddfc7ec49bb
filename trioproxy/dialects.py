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
    usage                last event with "usage" (response.usage)   message_start usage + last "usage"
    token counts         prompt_tokens / completion_tokens          input_tokens / output_tokens
                         (Responses: input_tokens / output_tokens)
    content event        data with a non-empty "content"/"text"     event: content_block_delta
                         (Responses: response.output_text.delta)
    usage-only event     data: {... "choices":[], "usage": ...}     (none)
    credential           Authorization: Bearer KEY                  x-api-key: KEY, anthropic-version
    base URL             ends in /v1                                stops before /v1
"""

from __future__ import annotations

import enum
from typing import Any

import orjson

from .errors import GatewayError

__all__ = [
    "ANTHROPIC_VERSION",
    "Dialect",
    "completion_id",
    "credential_headers",
    "default_headers",
    "dialect_for_path",
    "error_body",
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


def is_final(block: bytes) -> bool:
    """Does this event block (as framed by the SSE framer) end the stream?"""
    return block == b"data: [DONE]\n\n" or block.startswith(_FINAL_PREFIXES)


_CONTENT_PREFIXES = (b"event: content_block_delta\n", b"event: response.output_text.delta\n")


def is_content(block: bytes) -> bool:
    """Does this event carry generated text (about one token)? Counted for every
    stream, so that a stream cut short, or one that reports no usage, still has
    an estimate of the tokens it made: OpenAI chat deltas with a non-empty
    ``content`` (``reasoning_content`` too) or completions ``text``; Anthropic
    ``content_block_delta``; Responses ``response.output_text.delta``."""
    if block.startswith(b"data: {"):
        return (b'content":"' in block and b'content":""' not in block) or (
            b'"text":"' in block and b'"text":""' not in block
        )
    return block.startswith(_CONTENT_PREFIXES)


def is_usage_only(block: bytes) -> bool:
    """OpenAI's usage chunk (``stream_options.include_usage``): no choices, only usage."""
    return block.startswith(b"data: {") and b'"choices":[]' in block and b'"usage"' in block


def _dict(v: Any) -> dict[str, Any] | None:
    return v if isinstance(v, dict) else None


def completion_id(first: dict[str, Any]) -> str | None:
    """The upstream's id, from a stream's first event or a whole JSON response.
    OpenAI chat/completions: ``{"id"}``; Anthropic: ``{"message": {"id"}}`` in a
    stream; Responses: ``{"response": {"id"}}`` in a stream."""
    for holder in (first, _dict(first.get("message")), _dict(first.get("response"))):
        if holder is not None and isinstance(holder.get("id"), str):
            return str(holder["id"])
    return None


def response_model(obj: dict[str, Any]) -> str | None:
    """The model that answered, from a stream's first event or a whole response:
    ``model`` (OpenAI chat/completions, a whole Anthropic message),
    ``message.model`` (Anthropic stream), ``response.model`` (Responses)."""
    for holder in (obj, _dict(obj.get("message")), _dict(obj.get("response"))):
        if holder is not None and isinstance(holder.get("model"), str):
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
        if reported is None:
            response = _dict(last.get("response"))
            reported = _dict(response.get("usage")) if response else None
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
    return {"authorization": f"Bearer {credential}"}


def upstream_path(kind: str, path: str) -> str:
    """A route's path below a provider's base URL: OpenAI base URLs end in
    ``/v1``, Anthropic's stop before it (``GET /v1/models`` is both)."""
    return "/v1" + path if kind == "anthropic" and not path.startswith("/v1/") else path
