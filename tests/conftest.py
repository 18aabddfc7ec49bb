"""Shared test helpers: a gateway + mock upstream on loopback, and a raw client.

Streaming and cancellation are tested over real sockets: the gateway is served
by Hypercorn's trio worker on port 0, the mock upstream is a raw trio server,
and :class:`RawClient` speaks HTTP/1.1 through h11 so a test controls exactly
when it reads and when it hangs up.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio

from trioproxy.config import Config
from trioproxy.relay.exchange import Exchange
from trioproxy.relay.record import CompletionRecord
from trioproxy.server.serve import RunningGateway, open_gateway

pytest_plugins = ["tests.redis_server"]  # the redis_server fixture

# An exchange moved along an edge its lifecycle table lacks fails the test.
Exchange.strict = True

# Real sockets are timed with room for a busy machine: a bound of ``s`` seconds
# is ``within(s)`` = s x TRIOPROXY_TEST_SLACK (default 1), applied to a median or
# a quantile of several samples, never to one. Logic that is timed runs on
# trio's MockClock instead; absolute speeds live in bench/.
SLACK = float(os.environ.get("TRIOPROXY_TEST_SLACK", "1"))


def within(seconds: float) -> float:
    return seconds * SLACK


async def hang_up_latencies(
    url: str,
    mock: Any,
    model: str,
    ready: Callable[[Any], Awaitable[None]],
    times: int = 5,
) -> list[float]:
    """``times`` clients, one after another, each hanging up once ``ready(client)``
    returns: the seconds from each hang-up to the upstream's close at ``mock``."""
    from trioproxy.testing.rawclient import RawClient

    latencies = []
    already = len(mock.peer_closes)
    for n in range(already + 1, already + times + 1):
        client = await RawClient.connect(url)
        await client.send_request("POST", "/v1/chat/completions", chat(model))
        await ready(client)
        await client.close()
        assert client.closed_at is not None
        with trio.fail_after(5):
            peer = await mock.wait_peer_close(n)
        latencies.append(peer.at - client.closed_at)
        await eventually(lambda: mock.statistics().streams_active == 0)
    return latencies


def quantile(samples: list[float], q: float) -> float:
    """The ``q`` quantile of ``samples`` (nearest rank)."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def eventually(
    predicate: Callable[[], bool | Awaitable[bool]], timeout: float = 5.0, poll: float = 0.005
) -> None:
    """Wait until ``predicate()`` holds (checked every ``poll`` s; it may be a
    coroutine function), failing the test after ``timeout`` s. For state another
    process or a socket peer changes, where nothing can be awaited; the one
    polling loop of the suite, never a fixed sleep instead."""
    with trio.fail_after(timeout):
        while True:
            result = predicate()
            if result if isinstance(result, bool) else await result:
                return
            await trio.sleep(poll)


async def wait_ready(url: str, timeout: float = 20) -> None:
    """Until a gateway process answers GET /readyz with 200."""
    from trioproxy.testing.rawclient import request

    async def ready() -> bool:
        try:
            return (await request(url, "GET", "/readyz")).status == 200
        except OSError:
            return False

    await eventually(ready, timeout=timeout, poll=0.1)


def make_config(**overrides: Any) -> Config:
    values: dict[str, Any] = {
        "bind": "127.0.0.1:0",
        "access_log": False,
        "graceful_timeout": 5.0,
        "receipt_store": "memory",
        "data_dir": tempfile.mkdtemp(prefix="trioproxy-test-"),
    }
    values.update(overrides)
    return Config(**values)


@dataclass
class Recorder:
    """A completion hook that keeps every record (runs as detached work)."""

    records: list[CompletionRecord] = field(default_factory=list)
    event: trio.Event = field(default_factory=trio.Event)

    async def __call__(self, record: CompletionRecord) -> None:
        self.records.append(record)
        self.event.set()
        self.event = trio.Event()

    async def wait_for(self, count: int) -> list[CompletionRecord]:
        with trio.fail_after(10):
            while len(self.records) < count:
                await self.event.wait()
        return self.records


async def signed_receipt(url: str, ref: str, timeout: float = 10) -> dict[str, Any]:
    """The signed receipt document of ``ref`` (a receipt or completion id), once stored."""
    from trioproxy.testing.rawclient import request

    with trio.fail_after(timeout):
        while True:
            response = await request(url, "GET", f"/v1/signature/{ref}")
            if response.status == 200:
                return dict(response.json())
            assert response.status == 202, response.body
            assert response.headers[b"retry-after"] == b"1"
            await trio.sleep(0.05)


class MovableClock:
    """Trio's clock plus an offset the test moves: the gateway's health and rpm
    clock in tests of cooldowns and windows (the relay's timers keep real time)."""

    def __init__(self) -> None:
        self.offset = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return trio.current_time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds

    async def sleep(self, seconds: float) -> None:
        """The gateway's waits between retries: noted, and passed at once."""
        self.slept.append(seconds)
        self.offset += seconds
        await trio.lowlevel.checkpoint()


@asynccontextmanager
async def running(
    clock: MovableClock | None = None, **overrides: Any
) -> AsyncIterator[tuple[RunningGateway, Recorder]]:
    recorder = Recorder()
    config = make_config(**overrides)
    moved = {"clock": clock, "sleep": clock.sleep} if clock is not None else {}
    async with open_gateway(config, [recorder], **moved) as gw:  # type: ignore[arg-type]
        yield gw, recorder


@pytest.fixture
async def gw() -> AsyncIterator[tuple[RunningGateway, Recorder]]:
    async with running() as pair:
        yield pair


def chat(model: str, stream: bool = True, **extra: Any) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": "hi"}],
        "stream": stream,
        **extra,
    }


def streaming_bodies(model: str) -> dict[str, dict[str, Any]]:
    """One streaming request per relayed route, asking for usage where the API can."""
    usage = {"include_usage": True}
    return {
        "/v1/chat/completions": chat(model, stream_options=usage),
        "/v1/completions": {
            "model": model,
            "prompt": "hi",
            "stream": True,
            "stream_options": usage,
        },
        "/v1/responses": {"model": model, "input": "hi", "stream": True},
        "/v1/messages": {
            "model": model,
            "max_tokens": 64,
            "messages": [{"role": "user", "content": "hi"}],
            "stream": True,
        },
    }


def events_of(body: bytes) -> list[bytes]:
    return [e for e in body.split(b"\n\n") if e]


@asynccontextmanager
async def open_mocks(*defaults: Any) -> AsyncIterator[list[Any]]:
    """Extra mock upstreams (one per ``Fault`` of defaults), for multi-provider tests.
    Open them outside ``running(...)`` so the gateway shuts down first."""
    from trioproxy.testing.mock_upstream import serve_mock

    async with trio.open_nursery() as nursery:
        yield [await nursery.start(serve_mock, "127.0.0.1", 0, d) for d in defaults]
        nursery.cancel_scope.cancel()


def provider(name: str, mock: Any, **extra: Any) -> dict[str, Any]:
    kind = extra.get("kind", "openai")
    base = mock.base_url + ("/v1" if kind == "openai" else "")
    return {"name": name, "base_url": base, **extra}


def _leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions in ``exc``, exception groups opened."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> object:
    """A guard's twin run without the guard (``hypercorn_as = "unguarded"``) must
    fail with the fault its ``@pytest.mark.fault(raises=(...))`` names (the exceptions of a
    nursery's group opened): then it is an expected failure. Any other error fails
    the test, and so does a pass: the fault no longer shows, the guard can go."""
    fault = item.get_closest_marker("fault")
    params = getattr(getattr(item, "callspec", None), "params", {})
    if fault is None or params.get("hypercorn_as") != "unguarded":
        return (yield)
    try:
        yield
    except BaseException as exc:
        leaves = _leaves(exc)
        if leaves and all(isinstance(leaf, fault.kwargs["raises"]) for leaf in leaves):
            pytest.xfail(f"the Hypercorn fault this guard covers: {type(leaves[0]).__name__}")
        raise
    pytest.fail("the Hypercorn fault no longer shows without its guard: the guard can go")
