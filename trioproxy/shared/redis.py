"""The one Redis connection of a worker: bounded calls, an outage state, a probe.

Rules:
- Every call is bounded by ``redis_timeout`` (default 50 ms) with a trio
  deadline around the coredis call; coredis itself never retries (a retried
  admission script could count a request twice).
- A call refused or reset puts the connection in the *down* state: logged
  once per outage, counted (``outages``), and from then on calls fail at once
  with :class:`RedisUnavailable` instead of each waiting for its timeout. A
  probe task pings every ``PROBE_INTERVAL`` seconds; the first answer ends the
  outage (logged with its length) and wakes whoever waits in
  :meth:`SharedRedis.wait_up` (the receipt copier).
- Calls no client waits for (an early admission's count, a completion, a
  lease given back) are bounded by ``OFF_PATH_TIMEOUT`` instead: a gateway
  whose core is saturated answers its own Redis replies late, and these calls
  falling back would move shared counts into one process for nothing.
- A call that timed out fails alone (its caller falls back), and the probe
  pings at once, allowing ``SUSPECT_PING`` (a busy event loop, not a Redis
  gone, is the usual cause): no answer there either is an outage.
- Every registered script is loaded (``SCRIPT LOAD``) at start-up and when an
  outage ends, so that no call pays for a missing script (``NOSCRIPT``, then
  ``EVAL``) under load.
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
SUSPECT_PING = 0.2  # s a ping may take after a call timed out before it is an outage
OFF_PATH_TIMEOUT = 1.0  # s for calls no client waits for (early counts, completions)


class RedisUnavailable(Exception):
    """Redis did not answer in time (or answered with an error)."""


@dataclass(frozen=True, slots=True)
class RedisStatistics:
    up: bool
    checking: bool  # a call timed out: the ping that decides whether it is an outage runs
    outages: int  # times it went down
    failed_calls: int  # calls that failed or were not tried because it was down
    calls: int
    timed_out: int  # calls that waited the whole redis_timeout for no answer


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
        self._timed_out = 0
        self._changed = trio.Event()
        self._suspect = False  # a call timed out: the probe checks now
        self._sources: list[str] = []

    def script(self, source: str) -> Script[bytes]:
        self._sources.append(source)
        return self.client.register_script(source)

    async def load_scripts(self) -> None:
        """``SCRIPT LOAD`` every registered script (bounded; a failure only means
        the first call of a script finds it missing and sends it whole)."""
        with trio.move_on_after(max(0.5, self.timeout * 4)):
            try:
                for source in self._sources:
                    await self.client.script_load(source)
            except (RedisError, OSError) as exc:
                log.warning("redis at %s: scripts not loaded (%s)", self.where, _describe(exc))

    async def run(
        self,
        script: Script[bytes],
        keys: Sequence[str],
        args: Sequence[Any],
        off_path: bool = False,
    ) -> Any:
        """One script call, bounded by ``redis_timeout`` (``off_path``: a call no
        client waits for, bounded by ``OFF_PATH_TIMEOUT``); raises
        :class:`RedisUnavailable`."""
        self._calls += 1
        if not self.up:
            self._failed += 1
            raise RedisUnavailable(f"redis at {self.where} is down")
        try:
            with trio.fail_after(max(self.timeout, OFF_PATH_TIMEOUT) if off_path else self.timeout):
                return await script(keys=keys, args=args)
        except trio.TooSlowError as exc:
            self._failed += 1
            self._timed_out += 1
            if not self._suspect:
                self._suspect = True
                self._wake()
            raise RedisUnavailable(f"redis at {self.where}: {_describe(exc)}") from None
        except (RedisConnectionError, OSError) as exc:
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

    async def _answers(self) -> bool:
        with trio.move_on_after(max(self.timeout, SUSPECT_PING)):
            try:
                await self.client.ping()
            except (RedisError, OSError):
                return False
            return True
        return False

    async def probe_forever(self) -> None:
        """After a timed-out call, ping at once: no answer is an outage. While
        down, ping every ``PROBE_INTERVAL``; the first answer ends the outage."""
        while True:
            while self.up and not self._suspect:
                await self._changed.wait()
            if self.up:  # suspect
                if not await self._answers():
                    self.down(trio.TooSlowError())
                self._suspect = False
                continue
            await trio.sleep(PROBE_INTERVAL)
            if not await self._answers():
                continue
            await self.load_scripts()
            self.up = True
            log.warning(
                "redis at %s answers again after %.1f s",
                self.where, trio.current_time() - self._down_since,
            )  # fmt: skip
            self._wake()

    def statistics(self) -> RedisStatistics:
        return RedisStatistics(
            self.up, self._suspect, self._outages, self._failed, self._calls, self._timed_out
        )


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
