"""``trioproxy chaos``: a seeded campaign of upstream faults  x  client behaviours.

Each run pairs an upstream fault (chosen through the mock's model name) with a
client behaviour, and states up front which outcomes the gateway may record for
that pair. Runs go over real sockets to a gateway whose upstream is a
``trioproxy mock-upstream``; with no ``--gateway`` both are started here as
separate processes, so the gateway's task count and RSS are its own.

A plan depends only on the seed: ``--seed S`` replays a campaign exactly (the
interleaving of concurrent runs on the machine is, of course, not replayed).
Invariants and the report are in :mod:`trioproxy.testing.chaos.report`.
"""

from __future__ import annotations

import gc
import random
import time
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

import h11
import trio

from ..rawclient import RawClient

__all__ = [
    "BEHAVIOURS",
    "CLIENTS",
    "FAULTS",
    "FAULT_OUTCOME",
    "RACE_S",
    "TRANSLATE_TAGS",
    "Limits",
    "Run",
    "RunResult",
    "execute",
    "execute_all",
    "poll_peer_closed",
    "must_cancel_upstream",
    "plan",
]

FAULTS = ("none", "stall", "drop", "slow_ttft", "e500", "e429", "malformed", "heartbeat_only")
BEHAVIOURS = (
    "read_all",
    "disconnect_after",
    "disconnect_before_headers",
    "read_slowly",
    "never_read",
)
# How the client speaks: HTTP/1.1 keep-alive, HTTP/1.0 (nginx's default proxy),
# Connection: close, or keep-alive with a body that trickles in. Drawn from a
# stream of its own, so a seed's faults and behaviours are what they always were.
CLIENTS = ("keep-alive", "keep-alive", "http1.0", "close", "slow-body")
FAULT_OUTCOME = {
    "none": "done",
    "stall": "upstream_idle_timeout",
    "drop": "upstream_error",
    "slow_ttft": "upstream_ttft_timeout",
    "e500": "upstream_error",
    "e429": "upstream_error",
    "malformed": "done",  # passed through: the gateway parses no event mid-stream
    "heartbeat_only": "upstream_ttft_timeout",
    "flood": "slow_client",
}
# Faults that can end the exchange within a few ms: a client closing right
# after its request may lose the race against them.
_FAST = {"e500", "e429", "drop"}
_RACE_MS = 25
RACE_S = _RACE_MS / 1000
_HEAD_EVENTS = {"chat": 1, "messages": 3}  # data events before the first token
_TAIL_EVENTS = {"chat": 2, "messages": 3}
# --translate: each route's model names carry a tag (ignored by the mock) that only a
# provider of the other kind serves, so every request crosses dialects. A translated
# Anthropic stream has no ping before its first token, and a malformed event is dropped.
TRANSLATE_TAGS = {"chat": "x1", "messages": "x2"}
_TRANSLATED_HEAD = {"chat": 1, "messages": 2}


@dataclass(frozen=True, slots=True)
class Limits:
    """The gateway's timeouts, read from its /debug/state."""

    ttft_timeout: float
    idle_timeout: float
    client_stall_timeout: float
    attempts: int = 1  # providers a request may try (each with its own TTFT timeout)
    hang_bound: float = 30.0  # s past the timeouts after which a client counts as hung


@dataclass(frozen=True, slots=True)
class Run:
    index: int
    request_id: str
    route: str  # chat | messages
    fault: str
    behaviour: str
    model: str
    events_available: int  # data events the client can get before the fault
    k: int  # disconnect after k events (disconnect_after)
    expected: frozenset[str]
    client: str = "keep-alive"  # one of CLIENTS
    translated: bool = False  # the route's provider speaks the other dialect (--translate)


@dataclass(slots=True)
class RunResult:
    run: Run
    status: int = 0
    events: int = 0
    closed_mono: float | None = None  # when the client hung up mid-exchange
    idle_error_ms: float | None = None  # stall: error event arrival - last data - idle
    client_error: str | None = None
    final: bool = False  # the stream's final event arrived
    error_event: bool = False  # an SSE error event arrived
    started: float = field(default_factory=time.monotonic)


def plan(
    runs: int,
    seed: int,
    limits: Limits,
    routes: tuple[str, ...] = ("chat", "messages"),
    translate: bool = False,
) -> list[Run]:
    rng = random.Random(seed)
    clients = random.Random(f"clients-{seed}")
    out = []
    for i in range(runs):
        fault, behaviour = rng.choice(FAULTS), rng.choice(BEHAVIOURS)
        route = rng.choice(routes)
        n, itl, k_fault = rng.randint(20, 40), rng.choice((5, 10)), rng.randint(3, 12)
        head, tail = (_TRANSLATED_HEAD if translate else _HEAD_EVENTS)[route], _TAIL_EVENTS[route]
        bad = 0 if translate else 1  # a translated stream drops a malformed event
        spec = {
            "none": (f"t{n}-i{itl}", head + n + tail),
            "stall": (f"t{n}-i{itl}-stall{k_fault}", head + k_fault),
            "drop": (f"t{n}-i{itl}-drop{k_fault}", head + k_fault),
            "slow_ttft": (f"t5-f{int(limits.ttft_timeout * 1000) + 400}", 0),
            "e500": ("e500", 0),
            "e429": ("e429", 0),
            "malformed": (f"t{n}-i{itl}-bad{k_fault}", head + n + bad + tail),
            "heartbeat_only": ("hb0-p50", 0),
        }
        options, available = spec[fault]
        if behaviour == "never_read" and fault == "none":
            fault, options = "flood", "t400000-i0"  # more than socket buffers hold
        k = rng.randint(1, 6)
        outcome = FAULT_OUTCOME[fault]
        if behaviour == "disconnect_after":
            # Events come itl ms apart; the fault follows the last one at once.
            # Closer than _RACE_MS, the hang-up and the fault race each other.
            margin = _RACE_MS // itl
            if k < available - margin:
                expected = {"client_disconnect"}
            elif k > available + 1:
                expected = {outcome}
            else:
                expected = {"client_disconnect", outcome}
        elif behaviour == "disconnect_before_headers":
            expected = {"client_disconnect"} | ({outcome} if fault in _FAST else set())
        else:
            expected = {outcome}
        out.append(
            Run(
                index=i,
                request_id=f"chaos-{seed}-{i}",
                route=route,
                fault=fault,
                behaviour=behaviour,
                model=f"mock-{options}-{TRANSLATE_TAGS[route]}-x{i}"
                if translate
                else f"mock-{options}-x{i}",
                events_available=available,
                k=k,
                expected=frozenset(expected),
                client=clients.choice(CLIENTS),
                translated=translate,
            )
        )
    return out


def _body(run: Run) -> dict[str, Any]:
    messages = [{"role": "user", "content": "chaos"}]
    body: dict[str, Any] = {"model": run.model, "messages": messages, "stream": True}
    if run.route == "messages":
        body["max_tokens"] = 64
    return body


def _path(run: Run) -> str:
    return "/v1/messages" if run.route == "messages" else "/v1/chat/completions"


async def execute(run: Run, url: str, limits: Limits, peer_closed: Any) -> RunResult:
    """Drive one run; ``peer_closed(tag)`` waits until the mock saw a hang-up for it."""
    result = RunResult(run)
    read_size = 512 if run.behaviour == "read_slowly" else 65536
    client = await RawClient.connect(url, read_size)
    try:
        headers = [("x-request-id", run.request_id)]
        if run.client == "close":
            headers.append(("connection", "close"))
        slow = run.client == "slow-body"
        await client.send_request(
            "POST", _path(run), _body(run), headers, http10=run.client == "http1.0",
            body_pieces=3 if slow else 1, piece_gap=0.02 if slow else 0.0,
        )  # fmt: skip
        if run.behaviour == "disconnect_before_headers":
            return result
        if run.behaviour == "never_read":
            await _never_read(run, limits, peer_closed)
            return result
        bound = limits.ttft_timeout * limits.attempts + limits.idle_timeout * 3 + limits.hang_bound
        with trio.fail_after(bound):
            await _read(client, run, result, limits)
    except (
        trio.TooSlowError,
        OSError,
        trio.BrokenResourceError,
        ValueError,
        h11.ProtocolError,
    ) as exc:  # a target may cut a chunked body short: that is what the client saw
        result.client_error = f"{type(exc).__name__}: {exc}"
    finally:
        await client.close()
        result.closed_mono = client.closed_mono
    return result


async def _never_read(run: Run, limits: Limits, peer_closed: Any) -> None:
    if run.fault == "flood":  # hold until the gateway gave up on us (it must)
        with trio.move_on_after(limits.client_stall_timeout + limits.hang_bound):
            await peer_closed(run.index)
        return
    # Small responses fit in socket buffers: the exchange ends on its own.
    await trio.sleep(max(limits.ttft_timeout * limits.attempts, limits.idle_timeout) + 1.0)


def must_cancel_upstream(run: Run) -> bool:
    """The client leaves while the upstream is still producing (the plan expects
    ``client_disconnect`` alone): the upstream connection must close soon after."""
    return run.expected == frozenset({"client_disconnect"})


# Behaviours whose reads follow the bytes at once: the only ones whose arrival times
# can time the gateway's idle timer from outside.
_PROMPT_READERS = frozenset({"read_all", "disconnect_after"})


async def _read(client: RawClient, run: Run, result: RunResult, limits: Limits) -> None:
    result.status, _ = await client.response_head()
    last_data: float | None = None
    async with aclosing(client.body_chunks()) as chunks:
        async for at, chunk in chunks:
            blocks = chunk.count(b"\n\n")
            data_events = chunk.count(b"data:")
            if b"_timeout" in chunk and last_data is not None and run.fault == "stall":
                if run.behaviour in _PROMPT_READERS:  # a slow reader's times lag the gateway's
                    result.idle_error_ms = (at - last_data - limits.idle_timeout) * 1000
            elif data_events:
                last_data = at
            if b"[DONE]" in chunk or b"event: message_stop" in chunk:
                result.final = True
            if (b'"error"' in chunk and b"event: error" in chunk) or b'data: {"error"' in chunk:
                result.error_event = True
            result.events += min(blocks, data_events)
            if run.behaviour == "disconnect_after" and result.events >= run.k:
                return  # hang up mid-stream
            if run.behaviour == "read_slowly":
                await trio.sleep(0.005)


async def execute_all(
    planned: list[Run],
    url: str,
    limits: Limits,
    peer_closed: Any,
    concurrency: int,
    done: Callable[[RunResult], None] | None = None,
) -> list[RunResult]:
    """Every run, ``concurrency`` at a time; ``done(result)`` after each. The
    results come back in the plan's order. The collector is off meanwhile (what
    the runs make is freed by reference counts): a full collection in the
    clients' process would stop every client for tens of ms and count as the
    gateway's latency."""
    results: list[RunResult] = []
    limiter = trio.CapacityLimiter(concurrency)

    async def one(run: Run) -> None:
        async with limiter:
            results.append(await execute(run, url, limits, peer_closed))
            if done is not None:
                done(results[-1])

    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        async with trio.open_nursery() as nursery:
            for run in planned:
                nursery.start_soon(one, run, name=f"chaos-run-{run.index}")
    finally:
        if enabled:
            gc.enable()
    results.sort(key=lambda r: r.run.index)
    return results


def poll_peer_closed(get: Callable[[str, str], Awaitable[Any]], mock_url: str) -> Any:
    """``peer_closed(index)`` for :func:`execute`: until the mock (another process:
    nothing to wait on) logged a hang-up for that run."""

    async def peer_closed(index: int) -> None:
        while not await get(mock_url, f"/mock/peer-closes?tag={index}"):  # noqa: ASYNC110
            await trio.sleep(0.05)

    return peer_closed
