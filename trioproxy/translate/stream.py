"""A stream translated: upstream bytes in, the client's event blocks out (sans-IO).

Rules:
- :class:`StreamTranslator` turns one upstream event block into the client's
  event blocks: the upstream dialect's decoder, then the client dialect's
  encoder (:mod:`~trioproxy.translate.decode`, :mod:`~trioproxy.translate.encode`).
  Every block it returns is whole, and is returned for the block that caused it:
  nothing waits for a later event but what the client's dialect places later.
- An upstream's error event ends the client's answer: nothing it sends after
  it (a ``[DONE]``) is translated.
- Heartbeats stay heartbeats: an event of SSE comments only passes as it is
  (one with data too is translated, its comments dropped); Anthropic's
  ``event: ping`` is a comment (``: ping``) for an OpenAI client.
- :class:`TranslatingFramer` is the SSE framer the relay reads a translated
  stream with: the same ``feed``/``buffered`` (so the relay's loop is one for
  both paths), the client's blocks out, and the SHA-256 of every upstream byte
  fed (the receipt's ``upstream_sha256``). Any split of the same bytes gives
  the same blocks: the framer's rule 3, kept by a translator that sees only
  whole events.
"""

from __future__ import annotations

import hashlib
from typing import Protocol

from .decode import Decoder, decoder_for
from .encode import AnthropicEncoder, Encoder, OpenAIEncoder

__all__ = ["StreamTranslator", "TranslatingFramer"]

_PING = b"event: ping\n"


class StreamTranslator:
    """One upstream stream of ``kind`` (openai, anthropic, gemini) for a client of
    ``dialect`` (openai, anthropic). ``created``: the Unix time OpenAI chunks carry."""

    __slots__ = ("_decoder", "_encoder", "_openai_client")

    def __init__(self, kind: str, dialect: str, created: int = 0) -> None:
        self._decoder: Decoder = decoder_for(kind)
        self._openai_client = dialect == "openai"
        self._encoder: Encoder = (
            OpenAIEncoder(created) if self._openai_client else AnthropicEncoder()
        )

    def feed(self, block: bytes) -> list[bytes]:
        if block[:1] == b":" and b"\ndata:" not in block:  # comments only: a heartbeat
            return [block]
        if block.startswith(_PING):
            return [b": ping\n\n"] if self._openai_client else [block]
        out: list[bytes] = []
        encode = self._encoder.feed
        for event in self._decoder.feed(block):
            if self._encoder.failed:  # an error event ended the answer
                break
            out += encode(event)
        return out

    @property
    def usage_reported(self) -> bool:
        """Did the upstream report usage? (If not, what the client was told is an estimate.)"""
        return self._decoder.usage_seen

    def close(self) -> list[bytes]:
        """The upstream's body ended cleanly: the client's final events if it had finished."""
        out: list[bytes] = []
        for event in () if self._encoder.failed else self._decoder.close():
            out += self._encoder.feed(event)
        return out


class Framer(Protocol):
    """The SSE framer (:class:`trioproxy.relay.sse.SSEFramer`)."""

    @property
    def buffered(self) -> int: ...

    def feed(self, data: bytes) -> list[bytes]: ...


class TranslatingFramer:
    """An SSE framer whose blocks are the client's, translated."""

    __slots__ = ("_framer", "_translator", "digest")

    def __init__(self, framer: Framer, translator: StreamTranslator) -> None:
        self._framer = framer
        self._translator = translator
        self.digest = hashlib.sha256()  # of the upstream's bytes

    @property
    def buffered(self) -> int:
        return self._framer.buffered

    def feed(self, data: bytes) -> list[bytes]:
        self.digest.update(data)
        blocks = self._framer.feed(data)
        if not blocks:
            return blocks
        feed = self._translator.feed
        if len(blocks) == 1:
            return feed(blocks[0])
        out: list[bytes] = []
        for block in blocks:
            out += feed(block)
        return out

    @property
    def usage_reported(self) -> bool:
        return self._translator.usage_reported

    def close(self) -> list[bytes]:
        return self._translator.close()
