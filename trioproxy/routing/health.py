"""Passive health of one provider for one model, learnt from real requests (sans-IO).

Rules:
- Health is kept per provider x model (the name the provider knows the model
  by): one model's outage on a shared server ejects that model there, not the
  server's other models. A provider's records are bounded
  (:data:`MAX_RECORDS`: clients choose model names a pattern may serve); a
  record that holds nothing (healthy, no window, no trial) is the one dropped.
- ``eject_after`` consecutive failures (connect error, reset, 5xx, TTFT or
  idle timeout) eject the model from the provider for ``cooldown`` seconds.
  Then it is half open: one trial request is let through. Success makes it
  healthy; failure ejects it again, for less than a full cooldown at first
  (:data:`RETRIAL_FIRST` seconds, doubling with each failed trial in a row, up to
  ``cooldown``): a provider that comes back is found within seconds, one that
  stays down costs one trial per cooldown.
- A 429 is not a failure: it opens a "not before" window from its
  ``Retry-After`` in which the model is chosen on that provider only if no other
  can be.
- An active probe that succeeds (``health_check``, see
  :mod:`trioproxy.server.probes`) ends an ejection caused by unreachability
  at once, and makes the next request the trial of any other ejection; a
  one-token request that the model itself answers ends its ejection.

Every method takes ``now`` (the router's clock); nothing here waits or reads a clock.
"""

from __future__ import annotations

__all__ = ["MAX_RECORDS", "RETRIAL_FIRST", "Health", "HealthRecords"]

MAX_RECORDS = 256  # health records per provider (models seen); past it, one shared record
RETRIAL_FIRST = 1.0  # s: the wait after a first failed trial; doubles up to the cooldown


class Health:
    """One (provider, model)'s passive health."""

    __slots__ = (
        "consecutive_failures",
        "ejected_until",
        "failed_trials",
        "not_before",
        "trial_out",
        "unreachable",
    )  # fmt: skip

    def __init__(self) -> None:
        self.consecutive_failures = 0
        self.ejected_until = 0.0  # 0: not ejected
        self.trial_out = False  # the one trial request after an ejection is running
        self.not_before = 0.0  # a 429's Retry-After window ends here
        self.failed_trials = 0  # in a row: the next ejection's length backs off
        self.unreachable = False  # the last failure was a connect error

    def state(self, now: float) -> str:
        if not self.ejected_until:
            return "healthy"
        return "trial" if now >= self.ejected_until else "ejected"

    def healthy(self, now: float) -> bool:
        """Could serve a request (ignoring capacity and Retry-After)."""
        return not self.ejected_until or (now >= self.ejected_until and not self.trial_out)

    def admits(self, now: float) -> bool:
        return self.healthy(now) and now >= self.not_before

    def idle(self, now: float) -> bool:
        """Holds nothing a fresh record would not (may be dropped)."""
        return (
            not self.ejected_until
            and not self.trial_out
            and not self.consecutive_failures
            and now >= self.not_before
        )

    def begin(self, now: float) -> None:
        if self.ejected_until and now >= self.ejected_until:
            self.trial_out = True  # after the ejection: this request is the one trial

    def end(
        self, now: float, ok: bool | None, eject_after: int, cooldown: float, unreachable: bool
    ) -> bool:
        """``ok`` is None when the request says nothing about health (cancelled,
        429, slow client). True if the model was ejected now."""
        trial, self.trial_out = self.trial_out, False
        if ok is None:
            return False
        if ok:
            self.consecutive_failures = self.failed_trials = 0
            self.ejected_until = 0.0
            self.unreachable = False
            return False
        self.consecutive_failures += 1
        self.unreachable = unreachable
        if trial:
            self.failed_trials += 1
            wait = min(cooldown, RETRIAL_FIRST * 2 ** (self.failed_trials - 1))
            self.ejected_until = max(self.ejected_until, now + wait)
            return True
        if eject_after and self.consecutive_failures >= eject_after:
            already = self.ejected_until > now  # a stream that began before the ejection
            self.ejected_until = max(self.ejected_until, now + cooldown)
            return not already
        return False

    def rate_limited(self, now: float, retry_after: float) -> None:
        self.not_before = max(self.not_before, now + retry_after)

    def answered(self, now: float) -> None:
        """The model answered a probe request: healthy again."""
        self.consecutive_failures = self.failed_trials = 0
        self.ejected_until = 0.0
        self.unreachable = False

    def probed(self, now: float) -> None:
        """An active probe of the provider succeeded."""
        if not self.ejected_until or now >= self.ejected_until:
            return
        if self.unreachable:  # it answers again: back at once
            self.consecutive_failures = self.failed_trials = 0
            self.ejected_until = 0.0
            self.unreachable = False
        else:  # the server answers; whether this model does, the next request tries
            self.ejected_until = now


class HealthRecords:
    """A provider's health records by model name (``None``: requests naming no model)."""

    __slots__ = ("_records", "_shared")

    def __init__(self) -> None:
        self._records: dict[str | None, Health] = {}
        self._shared = Health()  # every model past MAX_RECORDS

    def of(self, model: str | None, now: float) -> Health:
        record = self._records.get(model)
        if record is not None:
            return record
        if len(self._records) >= MAX_RECORDS:
            for key, held in self._records.items():
                if held.idle(now):
                    del self._records[key]
                    break
            else:
                return self._shared
        record = self._records[model] = Health()
        return record

    def items(self) -> list[tuple[str | None, Health]]:
        return [*self._records.items(), ("*", self._shared)]
