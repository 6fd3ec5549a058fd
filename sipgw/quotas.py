"""How much one daemon does at once: the one place for quotas (answered 429 on REST, a
``FAILED`` status on the websocket).  Every limit is a setting; 0 means no limit.

Pure: the caller passes the counts it holds and a clock (``seconds()``), so the checks are
tested without I/O.
"""
from __future__ import annotations

import time

from .policy import Denied


class QuotaExceeded(Denied):
    """A request beyond a limit (429); the message names the setting, ``field`` the request
    field."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(429, message, field)


def check(count: int, limit: int, what: str, setting: str, field: str | None = None) -> None:
    """Refuse one more when ``count`` already reaches ``limit`` (0: no limit)."""
    if limit and count >= limit:
        raise QuotaExceeded(f"too many {what}: {count} of {setting}={limit}", field)


class _MonotonicClock:
    def seconds(self) -> float:
        return time.monotonic()


class TokenBuckets:
    """A token bucket per key: ``burst`` tokens refilled at ``rate`` a second (0: no limit).
    Bounded in memory: full buckets are forgotten."""

    def __init__(self, rate: float, burst: float, clock=None, max_keys: int = 10000) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock or _MonotonicClock()
        self.max_keys = max_keys
        self._buckets: dict[object, tuple[float, float]] = {}  # key -> (tokens, when)

    def allow(self, key, cost: float = 1) -> bool:
        """Spend ``cost`` tokens of ``key``'s bucket; False (nothing spent) when it has fewer."""
        if not self.rate:
            return True
        now = self.clock.seconds()
        tokens, when = self._buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - when) * self.rate)
        if cost > tokens:
            return False
        if key not in self._buckets and len(self._buckets) >= self.max_keys:
            self._forget_full(now)
        self._buckets[key] = (tokens - cost, now)
        return True

    def _forget_full(self, now: float) -> None:
        for key, (tokens, when) in list(self._buckets.items()):
            if tokens + (now - when) * self.rate >= self.burst:
                del self._buckets[key]
        if len(self._buckets) >= self.max_keys:
            self._buckets.clear()


class DigitBuckets(TokenBuckets):
    """DTMF rate per call (``dtmf_max_digits`` burst, ``dtmf_digits_per_second``)."""

    def take(self, key: str, digits: int) -> None:
        """Spend ``digits`` tokens of ``key``'s bucket or raise QuotaExceeded."""
        if not self.allow(key, digits):
            raise QuotaExceeded(f"DTMF rate exceeded: at most dtmf_digits_per_second="
                                f"{self.rate:g} per call, after a burst of {self.burst}", "dtmf")
