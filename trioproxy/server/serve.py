"""Serving the gateway with Hypercorn's trio worker (the I/O edge).

Hypercorn settings that matter for SSE, fixed here rather than left to defaults:
``read_timeout=None`` (an SSE client sends nothing mid-stream: a read timeout
would fake a disconnect), ``backlog`` raised (bursts), ``graceful_timeout`` from
config (in-flight streams get that long on shutdown), HTTP/1.1 and h2c as
Hypercorn offers them. Its ``date`` and ``server`` response headers are made
once a second, not once a response, and it records the listening sockets it
made, from which Hypercorn guard 5 takes a burst's queued connections
(:class:`HypercornConfig`).

:func:`open_gateway` starts a gateway (and, when no upstream is configured, the
built-in mock upstream) inside the caller's trio run and returns its URL: the
tests, ``chaos`` and ``bench`` use it. :func:`run_gateway` is ``trioproxy
serve``: SIGINT/SIGTERM start a graceful shutdown; ``workers > 1`` runs
Hypercorn's multi-process supervisor.
"""

from __future__ import annotations

import functools
import gc
import logging
import math
import os
import signal
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import hypercorn.config
import hypercorn.trio
import orjson
import trio
from hypercorn.utils import LifespanFailureError

from ..config import Config, ConfigFile, parse_bind
from ..errors import ConfigError
from ..observe.logs import announce, setup_logging
from .app import CompletionHook, Gateway
from .guard_install import install_hypercorn_guards

if TYPE_CHECKING:  # the built-in mock is test tooling: imported when it is served
    from ..testing.mock_scripts import Fault
    from ..testing.mock_upstream import MockUpstream

__all__ = [
    "RunningGateway",
    "HypercornConfig",
    "StartupError",
    "hypercorn_config",
    "open_gateway",
    "run_gateway",
    "worker_app",
]

log = logging.getLogger("trioproxy")
_CONFIG_ENV = "TRIOPROXY_WORKER_CONFIG"
_SOURCE_ENV = "TRIOPROXY_WORKER_SOURCE"


class HypercornConfig(hypercorn.config.Config):
    """Hypercorn's config, two public methods changed. ``response_headers``
    (``date``, ``server``) are built once a second: Hypercorn formatted the date
    for every response (1.4 % of a one-token request's CPU); the same bytes.
    ``create_sockets`` keeps the listening sockets it made, for guard 5
    (:mod:`trioproxy.server.hypercorn`) to take a burst's queued connections
    from; they are not pickled to ``workers > 1`` processes, which get their
    sockets from Hypercorn's parent (the guard then does nothing)."""

    _cached: tuple[float, str, list[tuple[bytes, bytes]]] = (-1.0, "", [])
    listening_sockets: tuple[socket.socket, ...] = ()  # what guard 5 takes queued connections from
    header_timeout: float = math.inf  # s a request head may take once begun (guard 8)

    def create_sockets(self) -> hypercorn.config.Sockets:
        sockets = super().create_sockets()
        self.listening_sockets = tuple(sockets.insecure_sockets)
        return sockets

    def __getstate__(self) -> dict[str, Any]:
        """Workers (``workers > 1``) get the sockets from Hypercorn, not in the config."""
        state = self.__dict__.copy()
        state.pop("listening_sockets", None)
        return state

    def response_headers(self, protocol: str) -> list[tuple[bytes, bytes]]:
        second = time.time() // 1
        at, cached_protocol, headers = self._cached
        if at != second or cached_protocol != protocol:
            headers = super().response_headers(protocol)
            self._cached = (second, protocol, headers)
        return list(headers)


def hypercorn_config(config: Config) -> hypercorn.config.Config:
    hc = HypercornConfig()
    hc.bind = [config.bind]
    hc.read_timeout = None
    hc.backlog = config.backlog
    hc.graceful_timeout = config.graceful_timeout
    hc.keep_alive_timeout = 75
    hc.header_timeout = config.header_timeout or math.inf  # guard 8 reads it
    hc.workers = config.workers
    hc.worker_class = "trio"
    hc.accesslog = None
    hc.errorlog = logging.getLogger("hypercorn.error")
    hc.startup_timeout = 30
    hc.shutdown_timeout = config.graceful_timeout + config.drain_timeout + 5
    return hc


def mock_fault(config: Config) -> Fault:
    from ..testing.mock_scripts import Fault

    opts = dict(config.mock_options)
    return Fault(
        tokens=int(opts.get("tokens", 16)),
        itl_ms=float(opts.get("itl_ms", 20.0)),
        ttft_ms=float(opts.get("ttft_ms", 0.0)),
    )


@dataclass(frozen=True, slots=True)
class RunningGateway:
    url: str
    app: Gateway
    mock: MockUpstream | None
    shutdown: trio.Event


@asynccontextmanager
async def open_gateway(
    config: Config,
    hooks: Sequence[CompletionHook] = (),
    *,
    mock_fault_defaults: Fault | None = None,
    clock: Callable[[], float] = trio.current_time,
    sleep: Callable[[float], Awaitable[None]] = trio.sleep,
) -> AsyncIterator[RunningGateway]:
    """Serve a gateway in this trio run until the block exits (then shut down
    gracefully). With no upstream configured, a mock upstream is started too.

    Error handling: :class:`~trioproxy.server.hypercorn.UnsupportedHypercorn`
    before anything starts, for a Hypercorn release the guards do not know."""
    install_hypercorn_guards(
        max_connections=config.max_connections,
        per_ip=config.max_connections_per_ip,
        trusted_proxies=config.trusted_proxies,
    )
    async with trio.open_nursery() as mock_nursery:
        mock = None
        if not config.has_upstreams:
            from ..testing.mock_upstream import serve_mock

            host, _ = parse_bind(config.bind)
            mock = await mock_nursery.start(
                serve_mock, host, 0, mock_fault_defaults or mock_fault(config)
            )
            config = config.replace(
                openai_upstreams=(mock.base_url + "/v1",), anthropic_upstreams=(mock.base_url,)
            )
        app = Gateway(config, hooks, clock, sleep)
        if mock is not None:
            app.foreign_nurseries.append(mock_nursery)
        shutdown = trio.Event()
        hc = hypercorn_config(config)
        hc.workers = 1  # one process here; run_gateway handles workers > 1
        serve = functools.partial(
            hypercorn.trio.serve, cast(Any, app), hc, shutdown_trigger=shutdown.wait
        )
        async with trio.open_nursery() as server_nursery:
            binds: list[str] = await server_nursery.start(serve)
            try:
                yield RunningGateway(binds[0], app, mock, shutdown)
            finally:
                shutdown.set()
        # Hypercorn has shut down (streams finished, detached work drained):
        # only now may the mock upstream go.
        mock_nursery.cancel_scope.cancel()


async def _serve_until_signal(config: Config, reload: ConfigFile | None) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async with open_gateway(config) as gw:
            if gw.mock is not None:
                log.warning(
                    "no upstream configured: serving the built-in mock upstream at %s",
                    gw.mock.base_url,
                )
            freeze_startup_objects()
            announce(config, gw.url)
            async for signum in signals:
                if signum == signal.SIGHUP:
                    _reload(gw, reload)
                    continue
                log.info("received %s: shutting down gracefully", signal.Signals(signum).name)
                break


def _reload(gw: RunningGateway, reload: ConfigFile | None) -> None:
    """SIGHUP: re-read the config file; apply providers and routing; keep serving."""
    if reload is None:
        log.warning("SIGHUP: no config file to re-read (serve --config FILE)")
        return
    try:
        new = reload.load()
        if not new.has_upstreams and gw.mock is not None:  # still the built-in mock
            current = gw.app.config
            new = new.replace(
                openai_upstreams=current.openai_upstreams,
                anthropic_upstreams=current.anthropic_upstreams,
            )
        restart = gw.app.reload(new)
    except ConfigError as exc:
        log.error("SIGHUP: config not reloaded, still serving the previous one: %s", exc)
        return
    names = ", ".join(p.name for p in gw.app.router.providers)
    log.info("SIGHUP: config reloaded; providers: %s", names)
    if restart:
        log.warning("SIGHUP: changed options that need a restart: %s", ", ".join(restart))


class StartupError(Exception):
    """The gateway could not start; the message is one line for the operator."""


def _startup_error(exc: BaseException, config: Config) -> StartupError | None:
    """The start-up failure inside ``exc`` (an exception group, often), if any."""
    leaves: list[BaseException] = []
    stack = [exc]
    while stack:
        e = stack.pop()
        if isinstance(e, BaseExceptionGroup):
            stack.extend(e.exceptions)
        else:
            leaves.append(e)
    for leaf in leaves:
        if isinstance(leaf, StartupError):
            return leaf
        if isinstance(leaf, OSError) and leaf.errno is not None:
            reason = os.strerror(leaf.errno).lower()
            return StartupError(f"cannot listen on {config.bind}: {reason}")
        if isinstance(leaf, LifespanFailureError):
            return StartupError(f"cannot start: {leaf}")
    return None


def run_gateway(config: Config, reload: ConfigFile | None = None) -> None:
    """``trioproxy serve``: blocks until SIGINT/SIGTERM and graceful shutdown.
    With one worker, SIGHUP calls ``reload`` for a fresh config and applies its
    providers and routing options (:meth:`Gateway.reload`).

    Error handling: :class:`StartupError` (one line) when the gateway cannot start:
    the port is taken or not allowed, the signing key or the store is unusable."""
    try:
        if config.workers <= 1:
            trio.run(_serve_until_signal, config, reload)
            return
        from hypercorn.run import run as hypercorn_run

        if not config.has_upstreams:
            config = _start_mock_thread(config)
        os.environ[_CONFIG_ENV] = orjson.dumps(config.options()).decode()
        if reload is not None:  # each worker reads the file again when it (re)starts
            source = {"path": reload.path, "flags": dict(reload.flags)}
            os.environ[_SOURCE_ENV] = orjson.dumps(source).decode()
        hc = hypercorn_config(config)
        hc.application_path = "trioproxy.server.serve:worker_app()"
        hypercorn_run(hc)
    except (Exception, BaseExceptionGroup) as exc:
        error = _startup_error(exc, config)
        if error is None:
            raise
        raise error from exc


def worker_app() -> Gateway:
    """The app of one worker process of ``serve --workers N``.

    SIGHUP makes Hypercorn's supervisor stop the workers gracefully (streams in
    flight finish) and start new ones: each reads the config file again, so a
    removed key is refused by every worker. A file that no longer loads changes
    nothing: the worker logs why and keeps the start-up config."""
    values = orjson.loads(os.environ[_CONFIG_ENV])
    for key in ("openai_upstreams", "anthropic_upstreams", "keys", "providers", "cors_origins"):
        values[key] = tuple(values[key])
    config = Config(**values)
    source = os.environ.get(_SOURCE_ENV)
    if source is not None:
        spec = orjson.loads(source)
        try:
            fresh = ConfigFile(spec["path"], spec["flags"]).load()
        except ConfigError as exc:
            log.error("config not reloaded, serving the start-up config: %s", exc)
        else:
            if not fresh.has_upstreams:  # the built-in mock of the supervisor
                fresh = fresh.replace(
                    openai_upstreams=config.openai_upstreams,
                    anthropic_upstreams=config.anthropic_upstreams,
                )
            config = fresh
    install_hypercorn_guards(
        max_connections=config.max_connections,
        per_ip=config.max_connections_per_ip,
        trusted_proxies=config.trusted_proxies,
    )
    setup_logging(config.log_level)  # a fresh interpreter: it logs as the supervisor does
    host, port = parse_bind(config.bind)
    announce(config, f"http://{host}:{port}", f"trioproxy worker {os.getpid()}")
    app = Gateway(config)
    freeze_startup_objects()
    return app


def freeze_startup_objects() -> None:
    """Collect what starting left behind, then move every object alive now
    (modules, config, tables) out of the collector's reach: a full collection
    while serving walks only what serving made. Without it, the first full
    collections of a fresh process took 80-100 ms (the event loop stopped,
    every stream waiting), measured in a chaos campaign."""
    gc.collect()
    gc.freeze()


def _start_mock_thread(config: Config) -> Config:
    """Multi-worker mode without upstreams: the mock runs in a thread of the parent."""
    from ..testing.mock_upstream import serve_mock

    host, _ = parse_bind(config.bind)
    ready: list[MockUpstream] = []
    started = threading.Event()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            ready.append(await nursery.start(serve_mock, host, 0, mock_fault(config)))
            started.set()

    threading.Thread(target=trio.run, args=(main,), daemon=True, name="mock-upstream").start()
    started.wait(10)
    mock = ready[0]
    log.warning("no upstream configured: serving the built-in mock upstream at %s", mock.base_url)
    return config.replace(
        openai_upstreams=(mock.base_url + "/v1",), anthropic_upstreams=(mock.base_url,)
    )
