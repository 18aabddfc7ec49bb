"""Same-provider retries: which failures are retried there, and after what wait (sans-IO).

Rules:
- A provider with ``retries = N`` is asked again, at most N more times in one
  request, after a failure that shows it did not begin an answer: it could not
  be reached, it reset or ended the connection before any event, it answered
  5xx, or 429. A TTFT timeout is never retried there (the server may be
  generating, and billing, the first answer): the request moves on to the
  next provider, as before. Nothing is retried once a byte reached the client.
- The wait: the upstream's ``Retry-After`` (a 429's, or a 503's), in seconds
  or as an HTTP date, when it sent one; else full jitter, uniform in
  ``[0, retry_backoff x 2^n)`` before the (n+1)-th retry. A ``Retry-After``
  longer than ``max_retry_wait`` moves on to the next provider at once.
- No wait runs past the request's ``first_byte_deadline``: a retry that could
  not begin before it is not made.
"""

from __future__ import annotations

from collections.abc import Callable

from ..errors import (
    GatewayError,
    UpstreamBroken,
    UpstreamRateLimited,
    UpstreamServerError,
    UpstreamUnreachable,
)
from .providers import ProviderSpec

__all__ = ["retry_wait"]


def retry_wait(
    spec: ProviderSpec,
    done: int,
    err: GatewayError,
    time_left: float,
    random: Callable[[], float],
) -> float | None:
    """Seconds to wait before asking ``spec``'s provider again after ``err``
    (``done`` retries made so far, ``time_left`` before the first-byte
    deadline), or None: move on."""
    if done >= spec.retries:
        return None
    if isinstance(err, UpstreamRateLimited):
        advertised = err.retry_after
    elif isinstance(err, UpstreamServerError):
        advertised = err.wait_hint
    elif isinstance(err, (UpstreamUnreachable, UpstreamBroken)):
        advertised = None
    else:
        return None  # a timeout: the server may be answering
    if advertised is not None:
        if advertised > spec.max_retry_wait:
            return None
        wait = float(advertised)
    else:
        wait = random() * spec.retry_backoff * 2**done
    return wait if wait < time_left else None
