"""Fallback models: what a request may try once its own model's providers are spent.

Rules:
- ``fallbacks = { "model-a" = ["model-b", "model-c"] }``: after every provider
  of model-a failed the request (before its first byte), model-b's providers
  are tried, then model-c's, with the body's ``model`` rewritten. At most
  :data:`MAX_FALLBACKS` per model.
- ``context_window_fallbacks = { "small" = "large" }``: taken only when an
  upstream's 400 says the request is longer than small's context window
  (:func:`trioproxy.dialects.context_too_long`); then only the larger model is
  tried. Any other 400 (a content-policy refusal among them) is the client's
  answer: never a fallback.
- The ``x-trioproxy-fallbacks: model-b,model-c`` request header replaces the
  configured list for that request: at most :data:`MAX_FALLBACKS` names, each a
  model the key may use (else 403) and at most :data:`MAX_NAME` characters (else
  400). A configured fallback the key may not use is left out.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import BadRequest, ConfigError, Forbidden

__all__ = ["FALLBACKS_HEADER", "MAX_FALLBACKS", "Fallbacks", "parse_fallbacks"]

FALLBACKS_HEADER = b"x-trioproxy-fallbacks"
MAX_FALLBACKS = 4
MAX_NAME = 256


@dataclass(frozen=True, slots=True)
class Fallbacks:
    models: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    context: Mapping[str, str] = field(default_factory=dict)

    def for_request(
        self,
        model: str | None,
        headers: list[tuple[bytes, bytes]],
        allows: Callable[[str], bool] | None,
    ) -> tuple[tuple[str, ...], str | None]:
        """The fallback models of one request, and its context window fallback
        (``allows``: may the request's key use a model; None: no keys).

        Error handling: :class:`BadRequest` or :class:`Forbidden` for a header
        that names too many, too long, or forbidden models."""
        if model is None:
            return (), None
        if allows is None:
            allows = _anything
        header = next((v for k, v in headers if k == FALLBACKS_HEADER), None)
        if header is not None:
            chosen = _from_header(header, allows)
        else:
            chosen = tuple(m for m in self.models.get(model, ()) if allows(m))
        larger = self.context.get(model)
        if larger is not None and not allows(larger):
            larger = None
        return tuple(m for m in chosen if m != model), larger


def _anything(model: str) -> bool:
    return True


def _from_header(header: bytes, allows: Callable[[str], bool]) -> tuple[str, ...]:
    try:
        text = header.decode("ascii")
    except UnicodeDecodeError:
        raise BadRequest("x-trioproxy-fallbacks must be ASCII model names") from None
    names = [n.strip() for n in text.split(",") if n.strip()]
    if len(names) > MAX_FALLBACKS:
        raise BadRequest(f"x-trioproxy-fallbacks names at most {MAX_FALLBACKS} models")
    for name in names:
        if len(name) > MAX_NAME or not name.isprintable():
            raise BadRequest("x-trioproxy-fallbacks: a model name is not valid")
        if not allows(name):
            raise Forbidden(f"this key may not use fallback model {name!r}")
    return tuple(dict.fromkeys(names))


def parse_fallbacks(models: Any, context: Any) -> Fallbacks:
    """The ``fallbacks`` and ``context_window_fallbacks`` tables of the config."""
    if not isinstance(models, Mapping):
        raise ConfigError("fallbacks must be a table: model = [fallback models]")
    parsed: dict[str, tuple[str, ...]] = {}
    for name, chain in models.items():
        if (
            not isinstance(chain, list | tuple)
            or not 1 <= len(chain) <= MAX_FALLBACKS
            or not all(isinstance(m, str) and m and m != name for m in chain)
        ):
            raise ConfigError(f"fallbacks.{name} must list 1 to {MAX_FALLBACKS} other model names")
        parsed[name] = tuple(dict.fromkeys(chain))
    if not isinstance(context, Mapping) or not all(
        isinstance(v, str) and v and v != k for k, v in context.items()
    ):
        raise ConfigError('context_window_fallbacks must be a table: model = "larger model"')
    return Fallbacks(parsed, dict(context))
