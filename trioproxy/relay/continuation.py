"""Opt-in continuation: after a cut, the rest of the answer from a provider that accepts a prefill.

Rules:
- Taken only with ``continue_on_cut = true``, for streams of
  ``/v1/chat/completions`` and ``/v1/messages`` whose pool has a provider
  declared ``accepts_prefill = true``; when the upstream broke or went idle
  after content reached the client, at an event boundary (no half event was
  sent), before the answer finished, and the answer so far is text alone
  (:class:`~trioproxy.relay.splice.PartialAnswer`); at most ``continue_max``
  times per request. Never for a slow client, ``max_stream_duration`` or a
  hang-up.
- Providers: the pool's capable ones that admit a request, others before the
  one that cut. Each is one attempt with its own TTFT and idle timers; one that
  fails before its first event gives way to the next. When none is left, the
  error that cut the stream ends it (one SSE error event), as without
  continuation.
- The client's stream goes on in its own dialect, the events rewritten by
  :class:`~trioproxy.relay.splice.Splicer` (same completion id, no repeated
  text, usage summed).
- Accounting: every attempt reports its health and is counted in
  ``attempts``; a cut one is in ``failovers``; ``continued`` lists (provider,
  sha256 of the complete events it sent) of every attempt that wrote to the
  client, in order, and the receipt carries it.

Resource handling: each continuation's response is closed however it ends.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from typing import Protocol

import httpx
import orjson
import trio

from ..config import Config
from ..dialects import completion_id, event_data
from ..errors import (
    GatewayError,
    Outcome,
    UpstreamBroken,
    UpstreamIdleTimeout,
    UpstreamTTFTTimeout,
    UpstreamUnreachable,
)
from ..routing.pools import Member
from ..routing.targets import UpstreamRequest, target_for
from ..upstream.body import body_of
from ..upstream.client import Upstream
from .exchange import Exchange, note_event
from .splice import PartialAnswer, Splicer, continuation_body
from .sse import SSEFramer, SSEFramingError, is_heartbeat
from .writer import Item

__all__ = ["continue_answer", "partial_for"]

_ROUTES = frozenset({"chat", "messages"})


class UpstreamReader(Protocol):
    """What a continuation uses of the upstream reader (relay/reader.py)."""

    ex: Exchange
    config: Config
    request: UpstreamRequest
    upstream: Upstream
    partial: PartialAnswer | None
    draining: bool

    async def deliver(self, item: Item) -> None: ...


_CUTS = (UpstreamBroken, UpstreamIdleTimeout)


def partial_for(config: Config, ex: Exchange, request: UpstreamRequest) -> PartialAnswer | None:
    """A collector of the answer, if this request may be continued after a cut."""
    if not config.continue_on_cut or not ex.stream or ex.route not in _ROUTES:
        return None
    if not any(m.provider.spec.accepts_prefill for m in request.plan.pool.members):
        return None
    return PartialAnswer(request.dialect)


def _capable(request: UpstreamRequest, cut_by: str | None, now: float) -> Iterator[Member]:
    members = [  # of the route's own kind: a continuation's request is not translated
        m for m in request.plan.pool.members
        if m.provider.spec.accepts_prefill and m.provider.spec.kind == request.kinds[0]
    ]  # fmt: skip
    members.sort(key=lambda m: m.provider.name == cut_by)  # others first
    for member in members:
        if member.provider.admits(now, member.upstream_model):
            yield member


async def continue_answer(reader: UpstreamReader, cut: GatewayError) -> Outcome:
    """Continue the answer ``cut`` ended, or raise ``cut`` (see the rules)."""
    ex, config, request, partial = reader.ex, reader.config, reader.request, reader.partial
    assert partial is not None
    body = orjson.loads(request.body)
    for _ in range(config.continue_max):
        if not (
            isinstance(cut, _CUTS) and ex.committed and not ex.partial_event
            and partial.continuable and partial.tokens and not ex.strip_usage
            and not ex.upstream_error and not ex.final_event and not reader.draining
        ):  # fmt: skip
            break
        ex.failovers.append((ex.provider or "", cut.code))
        ex.mark(f"failover {cut.code}")
        ex.continued.append((ex.provider or "", partial.digest.hexdigest()))
        splicer = Splicer(request.dialect, _answer_id(ex), partial)
        for member in _capable(request, ex.provider, request.router.clock()):
            partial.digest = hashlib.sha256()
            try:
                await _continue_on(reader, member, body, splicer)
            except (UpstreamUnreachable, UpstreamBroken, UpstreamTTFTTimeout) as err:
                if splicer.sent:
                    cut = err  # it sent something, then broke: a new cut
                    break
                continue  # nothing sent: the next provider
            except UpstreamIdleTimeout as err:
                cut = err
                break
            ex.continued.append((ex.provider or "", partial.digest.hexdigest()))
            return Outcome.DONE
        else:  # nobody could continue: no continued answer unless one already wrote
            if len(ex.continued) == 1:
                ex.continued.clear()
            break
    raise cut


def _answer_id(ex: Exchange) -> str | None:
    """The completion id the client was given (the first event's, or the second's)."""
    for block in (ex.first_block, ex.second_block):
        first = event_data(block) if block is not None else None
        if first is not None and (found := completion_id(first)) is not None:
            return found
    return None


async def _continue_on(
    reader: UpstreamReader, member: Member, body: dict[str, object], splicer: Splicer
) -> None:
    """One continuation attempt on ``member``: returns once its final event was
    relayed; raises the gateway's error otherwise (after its health report)."""
    ex, config, request = reader.ex, reader.config, reader.request
    provider, model = member.provider, member.upstream_model
    clock = request.router.clock
    target = target_for(request, member, False)
    sent = continuation_body(body, splicer.partial, provider.spec.kind, model)
    provider.begin(clock(), model)
    verdict: bool | None = None
    splicer.sent = 0
    try:
        ex.provider, ex.upstream, ex.attempts = provider.name, target.url, ex.attempts + 1
        ex.sent_model = model
        ex.mark("continue")
        ex.mark(f"attempt {provider.name}")  # a span of its own in the trace
        headers = target.headers
        if ex.trace is not None:
            headers = {**headers, "traceparent": ex.trace.next_attempt()}
        deadline = trio.current_time() + (config.ttft_timeout or math.inf)
        with trio.CancelScope(deadline=deadline) as head:
            response = await reader.upstream.send("POST", target.url, headers, sent)
        if head.cancelled_caught:
            raise UpstreamTTFTTimeout("continuation sent no event within ttft_timeout")
        try:
            kind = response.headers.get("content-type", "")
            if response.status_code != 200 or not kind.startswith("text/event-stream"):
                raise UpstreamBroken(f"continuation answered HTTP {response.status_code}")
            await _splice(reader, response, splicer, deadline)
        finally:
            await response.aclose()
        verdict = True
    except (UpstreamUnreachable, UpstreamBroken, UpstreamTTFTTimeout, UpstreamIdleTimeout):
        verdict = False
        raise
    finally:
        provider.end(clock(), verdict, config.eject_after, config.cooldown, model)


async def _splice(
    reader: UpstreamReader, response: httpx.Response, splicer: Splicer, deadline: float
) -> None:
    ex, config, partial = reader.ex, reader.config, splicer.partial
    framer = SSEFramer(config.max_event_bytes)
    idle = config.idle_timeout or math.inf
    body = body_of(response)
    try:
        with trio.CancelScope(deadline=deadline) as scope:
            async for chunk in body:
                now = trio.current_time()
                ex.bytes_in += len(chunk)
                out = []
                for block in framer.feed(chunk):
                    partial.digest.update(block)
                    if is_heartbeat(block):
                        out.append(block)
                        continue
                    new = splicer.rewrite(block)
                    if new is None:
                        continue
                    note_event(ex, new, now)
                    partial.note(new)
                    out.append(new)
                    splicer.sent += 1
                    scope.deadline = now + idle
                if out:
                    await reader.deliver(b"".join(out))
    except SSEFramingError as exc:
        raise UpstreamBroken(f"continuation sent a malformed event stream: {exc}") from None
    finally:
        await body.aclose()
        ex.partial_event = framer.buffered > 0
    if scope.cancelled_caught:
        if not splicer.sent:
            raise UpstreamTTFTTimeout("continuation sent no event within ttft_timeout")
        raise UpstreamIdleTimeout(f"continuation sent no event for {config.idle_timeout} s")
    if not ex.final_event:
        raise UpstreamBroken("continuation ended before its final event")
