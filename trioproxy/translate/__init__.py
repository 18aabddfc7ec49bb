"""Translation between the APIs: any client to any model, event by event.

Rules:
- The chat route (``/v1/chat/completions``, OpenAI's dialect) and the messages
  route (``/v1/messages``, Anthropic's) reach providers of every kind:
  ``openai``, ``anthropic`` and ``gemini``. When a provider's kind is not the
  route's, the request is translated on the way up and the answer on the way
  down; everything else (failover, timers, slow clients, hang-ups, receipts)
  is the relay's, unchanged.
- Requests: :func:`request_for`, once per kind before the first attempt, so a
  field that cannot be translated is a 400 in the client's dialect naming it,
  and nothing is sent upstream. One module per direction:
  :mod:`~.chat_to_messages`, :mod:`~.messages_to_chat`, :mod:`~.chat_to_gemini`
  (an Anthropic request reaches Gemini through the chat form).
- Streams: :class:`~.stream.StreamTranslator`, one upstream event in, the
  client's events out at once (:mod:`~.decode` reads each upstream dialect,
  :mod:`~.encode` writes each client dialect, :mod:`~.events` is between).
- Whole answers and upstream error answers: :mod:`~.answers`.
- Sans-IO throughout: JSON and bytes in, JSON and bytes out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from .answers import error_answer, translate_answer
from .chat_to_gemini import chat_to_gemini
from .chat_to_messages import chat_to_messages
from .messages_to_chat import messages_to_chat
from .stream import StreamTranslator, TranslatingFramer

__all__ = [
    "ROUTES",
    "StreamTranslator",
    "Translation",
    "TranslatingFramer",
    "error_answer",
    "gemini_path",
    "request_for",
    "translate_answer",
]

# The routes that translate, and the dialect (and so the provider kind) each speaks.
ROUTES = {"chat": "openai", "messages": "anthropic"}


@dataclass(frozen=True, slots=True)
class Translation:
    """An answer from a provider of ``kind`` for a client of ``dialect``."""

    kind: str  # openai | anthropic | gemini
    dialect: str  # openai | anthropic

    @property
    def name(self) -> str:
        """As the receipt and the record carry it: ``anthropic->openai``."""
        return f"{self.kind}->{self.dialect}"


def request_for(kind: str, dialect: str, body: dict[str, Any]) -> dict[str, Any]:
    """A request of ``dialect`` for a provider of ``kind``; the model as the client named it.

    Error handling: :class:`~trioproxy.errors.BadRequest` naming a field that
    cannot be translated."""
    if dialect == "anthropic":
        chat = messages_to_chat(body)
        return chat if kind == "openai" else chat_to_gemini(chat)
    return chat_to_messages(body) if kind == "anthropic" else chat_to_gemini(body)


def gemini_path(model: str, stream: bool) -> str:
    """Gemini's path for a model (the model is in the URL, escaped)."""
    method = "streamGenerateContent?alt=sse" if stream else "generateContent"
    return f"/v1beta/models/{quote(model, safe='')}:{method}"
