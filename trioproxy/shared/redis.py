"""The one Redis connection of a worker: bounded calls, an outage state, a probe.

Rules:
- Every call is bounded by ``redis_timeout`` (default 50 ms) with a trio
  deadline around the coredis call; coredis itself never retries (a retried
  admission script could count a request twice).
- A call that fails (refused, reset, timed out) puts the connection in the
  *down* state: logged once per outage, counted (``outages``), and from then
  on calls fail at once with :class:`RedisUnavailable` instead of each waiting
  for its timeout. A probe task pings every ``PROBE_INTERVAL`` seconds; the
  first answer ends the outage (logged with its length) and wakes whoever
  waits in :meth:`SharedRedis.wait_up` (the receipt copier).
- A Redis error reply (a script bug, a wrong type) fails that call only.
- What callers do with :class:`RedisUnavailable` is their decision, made
  explicitly: limits fall back to this process (``redis_failure = "open"``) or
  refuse (``"closed"``); receipts go to the local spool.

Resource handling: :func:`open_shared_redis` owns the coredis client (its
connection pool runs tasks of its own) and the probe task; both end with the
``async with`` block. Scripts are registered once; coredis loads each with
EVALSHA and falls back to EVAL after a Redis restart forgot them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import coredis
import trio
from coredis.commands.script import Script
from coredis.exceptions import ConnectionError as RedisConnectionError
from coredis.exceptions import RedisError
from coredis.retry import NoRetryPolicy

from ..config import Config, parse_redis_url

__all__ = [
    "PROBE_INTERVAL",
    "RedisStatistics",
    "RedisUnavailable",
    "SharedRedis",
    "open_shared_redis",
]

log = logging.getLogger("trioproxy.redis")
PROBE_INTERVAL = 0.5  # s between pings while Redis is down


class RedisUnavailable(Exception):
    """Redis did not answer in time (or answered with an error)."""


@dataclass(frozen=True, slots=True)
class RedisStatistics:
    up: bool
    outages: int  # times it went down
    failed_calls: int  # calls that failed or were not tried because it was down
    calls: int


class SharedRedis:
    def __init__(self, client: coredis.Redis[bytes], timeout: float, where: str) -> None:
        self.client = client
        self.timeout = timeout
        self.where = where  # host:port/db, for the log (never the password)
        self.up = True
        self._down_since = 0.0
        self._outages = 0
        self._failed = 0
        self._calls = 0
        self._changed = trio.Event()

    def script(self, source: str) -> Script[bytes]:
        return self.client.register_script(source)

    async def run(self, script: Script[bytes], keys: Sequence[str], args: Sequence[Any]) -> Any:
        """One script call, bounded; raises :class:`RedisUnavailable`."""
        self._calls += 1
        if not self.up:
            self._failed += 1
            raise RedisUnavailable(f"redis at {self.where} is down")
        try:
            with trio.fail_after(self.timeout):
                return await script(keys=keys, args=args)
        except (trio.TooSlowError, RedisConnectionError, OSError) as exc:
            self._failed += 1
            self.down(exc)
            raise RedisUnavailable(f"redis at {self.where}: {_describe(exc)}") from None
        except RedisError as exc:
            self._failed += 1
            log.error("redis at %s answered an error: %s", self.where, exc)
            raise RedisUnavailable(f"redis at {self.where}: {exc}") from None

    def down(self, exc: BaseException) -> None:
        if not self.up:
            return
        self.up = False
        self._outages += 1
        self._down_since = trio.current_time()
        log.warning(
            "redis at %s unavailable (%s): shared state falls back until it answers",
            self.where, _describe(exc),
        )  # fmt: skip
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_up(self) -> None:
        while not self.up:
            await self._changed.wait()

    async def probe_forever(self) -> None:
        """While down, ping every ``PROBE_INTERVAL``; the first answer ends the outage."""
        while True:
            while self.up:
                await self._changed.wait()
            await trio.sleep(PROBE_INTERVAL)
            with trio.move_on_after(max(self.timeout, 0.2)):
                try:
                    await self.client.ping()
                except (RedisError, OSError):
                    continue
                self.up = True
                log.warning(
                    "redis at %s answers again after %.1f s",
                    self.where, trio.current_time() - self._down_since,
                )  # fmt: skip
                self._wake()

    def statistics(self) -> RedisStatistics:
        return RedisStatistics(self.up, self._outages, self._failed, self._calls)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, trio.TooSlowError):
        return "no answer within redis_timeout"
    return str(exc) or type(exc).__name__


@asynccontextmanager
async def open_shared_redis(config: Config) -> AsyncIterator[SharedRedis]:
    """The worker's Redis client and its probe. A Redis that does not answer at
    start-up is not an error: the gateway starts in the down state (and, with
    ``redis_failure = "closed"``, is not ready until Redis answers)."""
    address = parse_redis_url(config.redis_url)
    password = os.environ.get(config.redis_password_env) or None
    where = f"{address.host}:{address.port}/{address.db}"
    timeout = config.redis_timeout
    client: coredis.Redis[bytes] = coredis.Redis(
        address.host, address.port, address.db,
        username=address.username, password=password, ssl=address.tls,
        stream_timeout=max(1.0, timeout * 4), connect_timeout=max(0.5, timeout * 4),
        retry_policy=NoRetryPolicy(), verify_version=False, client_name="trioproxy",
    )  # fmt: skip
    async with client, trio.open_nursery() as nursery:
        shared = SharedRedis(client, timeout, where)
        nursery.start_soon(shared.probe_forever, name="redis-probe")
        with trio.move_on_after(max(0.5, timeout * 4)) as first:
            try:
                await client.ping()
            except (RedisError, OSError) as exc:
                shared.down(exc)
        if first.cancelled_caught:
            shared.down(trio.TooSlowError())
        try:
            yield shared
        finally:
            nursery.cancel_scope.cancel()
