"""Per-key limits and token usage, kept by this process: rpm, tpm, max_streams, totals.

Rules (the same ones :mod:`trioproxy.shared.limits` runs in Redis for every host):

- A request is admitted when every limit of its key has room, and only then is
  it counted: one entry in the rpm window, its prompt estimate in the tpm
  window, one stream slot. A refused request (429) counts nowhere.
- ``rpm``: a sliding log of the key's admissions of the last 60 s (exact).
- ``tpm``: a minute of one-second buckets of prompt + completion tokens;
  admitted while the last 60 s hold fewer than ``tpm``. The prompt estimate is
  counted at admission and the rest (the true total less the estimate) when the
  exchange ends, so a key sending large prompts is stopped within the minute,
  not a minute late.
- ``max_streams``: a slot per stream, given back when the upstream side ends.
- The same three are checked before a request's body is read
  (:meth:`LocalQuotas.precheck`), so a key over a limit holds no body-read
  slot; a body that times out (408) counts in the key's rpm window.
- Usage totals per key id (:attr:`ApiKey.id`, never its name; ``None`` = open
  mode) for the current minute, the current day (UTC) and all time: requests
  that reached an upstream, prompt and completion tokens, and how many of
  those tokens were estimated.

Time: the limits use the gateway's clock (trio's; tests move it), the totals'
minute and day the wall clock.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import Overloaded
from .auth import ApiKey
from .early import EarlyAdmission
from .limits import StreamLimiter

__all__ = [
    "LIMITS",
    "Grant",
    "LocalQuotas",
    "over_limit",
    "TokenCount",
    "TokenWindow",
    "UsageBook",
    "UsageTotals",
]

WINDOW = 60  # seconds: rpm and tpm windows


@dataclass(frozen=True, slots=True)
class TokenCount:
    prompt: int
    completion: int
    estimated: bool

    @property
    def total(self) -> int:
        return self.prompt + self.completion


@dataclass(slots=True)
class Grant:
    """What an admitted request holds until it ends. ``lease``: its stream lease
    in Redis (None: none, or held in this process); ``shared``: decided by Redis."""

    key: ApiKey | None
    reserved: int  # tokens counted against tpm at admission
    admitted_at: float  # the gateway's clock
    shared: bool = False
    lease: str | None = None
    limiter: StreamLimiter | None = None
    early: EarlyAdmission | None = None  # counted while the upstream request is on its way

    def release(self, borrower: object) -> None:
        """The stream slot held in this process (a ``Slot`` of the exchange)."""
        if self.limiter is not None:
            self.limiter.release(borrower)

    def tpm_delta(self, tokens: TokenCount | None, now: float) -> int:
        """Tokens still to count against tpm: the total less the reservation,
        unless the reservation has left the window already."""
        total = tokens.total if tokens is not None else 0
        return total if now - self.admitted_at >= WINDOW else total - self.reserved


class TokenWindow:
    """Tokens of the last 60 s in one-second buckets (60 integers, bounded)."""

    __slots__ = ("_buckets", "_seconds")

    def __init__(self) -> None:
        self._buckets = [0] * WINDOW
        self._seconds = [-1] * WINDOW  # which second each bucket holds

    def used(self, now: float) -> int:
        second = int(now)
        return sum(
            n for n, s in zip(self._buckets, self._seconds, strict=True) if second - s < WINDOW
        )

    def retry_after(self, now: float) -> int:
        """Seconds until the oldest bucket with tokens leaves the window."""
        second = int(now)
        live = [
            s
            for n, s in zip(self._buckets, self._seconds, strict=True)
            if n and second - s < WINDOW
        ]
        return max(1, min(live) + WINDOW - second) if live else 1

    def add(self, tokens: int, now: float) -> None:
        second = int(now)
        i = second % WINDOW
        if self._seconds[i] != second:
            self._buckets[i], self._seconds[i] = 0, second
        self._buckets[i] += tokens


@dataclass(slots=True)
class UsageTotals:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    estimated_tokens: int = 0

    def add(self, tokens: TokenCount) -> None:
        self.requests += 1
        self.prompt_tokens += tokens.prompt
        self.completion_tokens += tokens.completion
        if tokens.estimated:
            self.estimated_tokens += tokens.total

    def as_dict(self) -> dict[str, int | float]:
        total = self.prompt_tokens + self.completion_tokens
        share = round(self.estimated_tokens / total, 4) if total else 0.0
        return {
            "requests": self.requests,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "estimated_tokens": self.estimated_tokens,
            "estimated_share": share,
        }


@dataclass(slots=True)
class UsageBook:
    """One key's totals: this minute, this day (UTC), all time."""

    minute: int = -1
    day: int = -1
    this_minute: UsageTotals = field(default_factory=UsageTotals)
    this_day: UsageTotals = field(default_factory=UsageTotals)
    all_time: UsageTotals = field(default_factory=UsageTotals)

    def _roll(self, wall: float) -> None:
        minute, day = int(wall // 60), int(wall // 86400)
        if minute != self.minute:
            self.minute, self.this_minute = minute, UsageTotals()
        if day != self.day:
            self.day, self.this_day = day, UsageTotals()

    def add(self, tokens: TokenCount, wall: float) -> None:
        self._roll(wall)
        for totals in (self.this_minute, self.this_day, self.all_time):
            totals.add(tokens)

    def periods(self, wall: float) -> dict[str, dict[str, int | float]]:
        self._roll(wall)
        return {
            "minute": self.this_minute.as_dict(),
            "day": self.this_day.as_dict(),
            "all_time": self.all_time.as_dict(),
        }


@dataclass(slots=True)
class _KeyState:
    key: ApiKey
    requests: collections.deque[float] | None
    tokens: TokenWindow | None
    streams: StreamLimiter | None


# The limits of a key: the ApiKey field and how a 429 names it.
LIMITS = {
    "rpm": "requests per minute",
    "tpm": "tokens per minute",
    "max_streams": "concurrent streams",
}


def over_limit(key: ApiKey, limit: str, retry_after: int) -> Overloaded:
    """The 429 for ``key`` over ``limit`` (a name of :data:`LIMITS`)."""
    return Overloaded(
        f"key {key.name!r} is over its {getattr(key, limit)} {LIMITS[limit]}",
        retry_after=max(1, retry_after),
    )


def _refuse_full_windows(key: ApiKey, state: _KeyState, now: float) -> None:
    """The 429 of a key whose rpm or tpm window is full at ``now``."""
    recent, tokens = state.requests, state.tokens
    if recent is not None and len(recent) == recent.maxlen and now - recent[0] < WINDOW:
        raise over_limit(key, "rpm", int(WINDOW - (now - recent[0])) + 1)
    if tokens is not None and tokens.used(now) >= key.tpm:
        raise over_limit(key, "tpm", tokens.retry_after(now))


class LocalQuotas:
    """This process's limits and totals. ``previous``: the quotas this one
    replaces (SIGHUP): a key whose table did not change keeps its windows and
    its stream slots; a removed key is refused from then on (by the key ring)."""

    def __init__(
        self,
        keys: tuple[ApiKey, ...],
        clock: Callable[[], float],
        previous: LocalQuotas | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.clock, self.wall = clock, wall
        kept = previous.states if previous is not None else {}
        self.states: dict[str, _KeyState] = {}
        for k in keys:
            old = kept.get(k.name)
            if old is not None and old.key == k:
                self.states[k.name] = old
                continue
            self.states[k.name] = _KeyState(
                k,
                collections.deque(maxlen=k.rpm) if k.rpm else None,
                TokenWindow() if k.tpm else None,
                StreamLimiter(k.max_streams, 0) if k.max_streams else None,
            )
        self.usage: dict[str | None, UsageBook] = previous.usage if previous is not None else {}

    def admit(self, key: ApiKey | None, estimate: int, borrower: object) -> Grant:
        """Admit or raise :class:`~trioproxy.errors.Overloaded` (429, counting nothing)."""
        now = self.clock()
        grant = Grant(key, estimate, now)
        state = self.states.get(key.name) if key is not None else None
        if key is None or state is None:
            return grant
        _refuse_full_windows(key, state, now)
        recent, tokens = state.requests, state.tokens
        if state.streams is not None:
            if not state.streams.try_acquire(borrower):
                raise over_limit(key, "max_streams", 1)
            grant.limiter = state.streams
        if recent is not None:
            recent.append(now)
        if tokens is not None:
            tokens.add(estimate, now)
        return grant

    def precheck(self, key: ApiKey | None) -> None:
        """Before the body is read: the 429 :meth:`admit` would raise now for a
        full rpm window, tpm window or stream share (counts nothing)."""
        state = self.states.get(key.name) if key is not None else None
        if key is None or state is None:
            return
        _refuse_full_windows(key, state, self.clock())
        if state.streams is not None and state.streams.full():
            raise over_limit(key, "max_streams", 1)

    def count_request(self, key: ApiKey | None) -> None:
        """A request of ``key`` that was not admitted but costs all the same (a
        body that timed out): one entry in its rpm window."""
        state = self.states.get(key.name) if key is not None else None
        if state is not None and state.requests is not None:
            state.requests.append(self.clock())

    def settle(self, grant: Grant, tokens: TokenCount | None) -> None:
        """The exchange ended: count its tokens (tpm and totals). ``tokens`` None:
        it never reached an upstream (its reservation is given back, no usage)."""
        name = grant.key.name if grant.key is not None else None
        state = self.states.get(name) if name is not None else None
        if state is not None and state.tokens is not None:
            now = self.clock()
            state.tokens.add(grant.tpm_delta(tokens, now), now)
        if tokens is not None:
            account = grant.key.id if grant.key is not None else None
            book = self.usage.get(account)
            if book is None:
                book = self.usage[account] = UsageBook()
            book.add(tokens, self.wall())

    def totals(self, account: str | None) -> dict[str, dict[str, int | float]]:
        """The totals of the key with id ``account`` (None: open mode)."""
        book = self.usage.get(account) or UsageBook()
        return book.periods(self.wall())
