"""The routing campaign's scenario families: a fault, what a correct gateway does, the verdict (sans-IO).

Rules:
- Every family puts one fault on the primary upstream (a model name for the
  trioproxy mock, :mod:`trioproxy.testing.mock_scripts`); the backup upstream
  answers every model healthy (``mock-upstream --backup``).
- A run is judged from what the client saw (:class:`Seen`), and where a
  family needs it, from what the upstreams saw (which answered; the backup
  asked or not):
  ``pass`` the client got the complete, correct answer (every token once, its
  final event or a clean end after a finish reason; the usage of what it got);
  ``safe`` a clean error in the route's dialect (an HTTP error as JSON, or one
  error event ending the stream), nothing hung, nothing repeated, nothing
  made up; ``fail`` anything else: a hang, a cut presented as a complete
  answer, repeated text, a refusal turned into another model's answer.
- A family's verdict is its worst run's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..mock_scripts import WORDS
from ..shapes import build
from ..shapes.errors import ERRORS

__all__ = ["FAMILIES", "TOKENS", "Family", "Seen", "full_text"]

TOKENS = 20  # tokens of every answer in the campaign
PASS, SAFE, FAIL = "pass", "safe", "fail"
_ORDER = {PASS: 0, SAFE: 1, FAIL: 2}


def full_text(tokens: int = TOKENS) -> str:
    return "".join(WORDS[i % len(WORDS)] + " " for i in range(tokens))


@dataclass
class Seen:
    """What one client saw of one request (OpenAI chat, streamed, usage asked for)."""

    status: int | None = None  # None: no response head at all
    headers: dict[bytes, bytes] = field(default_factory=dict)
    body: bytes = b""
    hung: bool = False  # still waiting at the campaign's bound
    cut: bool = False  # the connection closed before the body's end
    primary_streams: int = 0  # streams the primary / backup began for this run's model
    backup_streams: int = 0

    def events(self) -> list[bytes]:
        return [e.strip(b"\r\n") for e in self.body.split(b"\n\n") if e.strip()]

    def stream(self) -> tuple[str, bool, bool, bool, dict[str, Any] | None, set[str]]:
        """(text, final [DONE], an error event, a finish reason, usage, ids)."""
        text, final, error, finish, usage, ids = "", False, False, False, None, set()
        for event in self.events():
            if event.startswith(b":"):
                continue
            data = event.removeprefix(b"data:").strip()
            if data == b"[DONE]":
                final = True
                continue
            try:
                obj = orjson.loads(data)
            except orjson.JSONDecodeError:
                continue  # a malformed event relayed as sent
            if not isinstance(obj, dict):
                continue
            if isinstance(obj.get("error"), dict):
                error = True
                continue
            if isinstance(obj.get("id"), str):
                ids.add(obj["id"])
            for choice in obj.get("choices") or []:
                text += (choice.get("delta") or {}).get("content") or ""
                finish = finish or bool(choice.get("finish_reason"))
            usage = obj.get("usage") or usage
        return text, final, error, finish, usage, ids

    def http_error(self) -> bool:
        """An HTTP error answered as the dialect's JSON."""
        if self.status is None or self.status < 400 or self.cut or self.hung:
            return False
        try:
            return isinstance(orjson.loads(self.body).get("error"), dict)
        except (orjson.JSONDecodeError, AttributeError):
            return False


def complete(seen: Seen, tokens: int = TOKENS) -> bool:
    """The whole answer, every token once, ended by [DONE] (or a clean end after
    a finish reason), with a usage that counts what the client got."""
    if seen.status != 200 or seen.hung or seen.cut:
        return False
    text, final, error, finish, usage, ids = seen.stream()
    counted = usage is None or usage.get("completion_tokens") == tokens
    return (
        text == full_text(tokens) and (final or finish) and not error and counted and len(ids) <= 1
    )


def clean_error(seen: Seen) -> bool:
    """An HTTP error in the dialect, or a stream that ends with one error event
    after a prefix of the answer (nothing repeated)."""
    if seen.http_error():
        return True
    if seen.status != 200 or seen.hung or seen.cut:
        return False
    text, final, error, _, _, _ = seen.stream()
    return error and not final and full_text().startswith(text)


def _standard(seen: Seen) -> str:
    if complete(seen):
        return PASS
    return SAFE if clean_error(seen) else FAIL


def _rate_limited(seen: Seen) -> str:
    if complete(seen):
        return PASS
    relayed = seen.status == 429 and b"retry-after" in seen.headers and seen.http_error()
    return SAFE if relayed else FAIL


def _no_done(seen: Seen) -> str:
    """No [DONE] upstream: the answer, its finish reason and a clean end; no error added."""
    text, _, error, finish, _, _ = seen.stream()
    sent = Seen(200, body=b"".join(build("finish_no_done", TOKENS).events)).stream()[0]
    ok = seen.status == 200 and not seen.cut and not seen.hung and finish and not error
    return PASS if ok and text == sent else FAIL


def _context(seen: Seen) -> str:
    if complete(seen):
        return PASS
    return SAFE if seen.status == 400 and b"context" in seen.body else FAIL


def _content_policy(seen: Seen) -> str:
    """A refusal is the client's answer, byte for byte; no other model is asked."""
    _, raw = ERRORS["openai_content_policy"]
    ok = seen.status == 400 and seen.body == raw and seen.backup_streams == 0
    return PASS if ok else FAIL


def _accounting(seen: Seen) -> str:
    """After a failover, the usage the client gets is the serving attempt's alone."""
    if not complete(seen):
        return SAFE if clean_error(seen) else FAIL
    usage = seen.stream()[4]
    return PASS if usage is not None and usage.get("completion_tokens") == TOKENS else SAFE


@dataclass(frozen=True)
class Family:
    name: str
    fault: str  # the primary's model-name options (the run's tag is added)
    correct: str  # what a correct gateway does
    judge: Callable[[Seen], str]
    fixed_model: str | None = None  # the exact model name (a gateway's config names it)


_T = f"t{TOKENS}-i2"
FAMILIES = (
    Family("429 with Retry-After", f"e429-n1-ra1-{_T}",
           "retries after the advertised wait, or moves on: the answer", _rate_limited),
    Family("429 persistent", f"e429-ra1-{_T}",
           "another provider answers; else the 429 and its Retry-After", _rate_limited),
    Family("500 once", f"e500-n1-{_T}", "a retry or another provider: the answer", _standard),
    Family("503 persistent", f"e503-{_T}", "another provider answers", _standard),
    Family("reset before headers", f"rst1-{_T}", "another provider answers", _standard),
    Family("no response", f"wait600000-{_T}",
           "gives up at its time to first token, another provider answers", _standard),
    Family("first token late", f"f1500-{_T}",
           "waits (within its time to first token): the answer", _standard),
    Family("stream cut", f"drop12-{_T}",
           "continues on a prefill-capable provider, or ends with one error event", _standard),
    Family("stream stall", f"stall12-{_T}",
           "continues after its idle timeout, or ends with one error event", _standard),
    Family("malformed chunk", f"bad8-{_T}",
           "relays the rest (or ends with one error event), never hangs", _standard),
    Family("no [DONE]", f"shape-finish_no_done-{_T}",
           "the answer and a clean end, no error made up", _no_done),
    Family("context-length 400", f"error-openai_context-{_T}",
           "sends it to the larger-context model", _context, "mock-error-openai_context-x900"),
    Family("content-filter 400", f"error-openai_content_policy-{_T}",
           "the refusal, as sent; never another model", _content_policy,
           "mock-error-openai_content_policy-x901"),
    Family("fallback rejects prefill", f"drop12-{_T}",
           "skips the provider that refuses the prefill, continues on one that takes it",
           _standard, "rejects-prefill"),
    Family("fail-over accounting", f"e503-{_T}",
           "the usage is the serving attempt's alone", _accounting),
)  # fmt: skip


def verdict(results: list[str]) -> str:
    return max(results, key=_ORDER.__getitem__) if results else FAIL
