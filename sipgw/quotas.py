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


class DigitBuckets:
    """DTMF rate per call: a token bucket of ``burst`` digits refilled at ``rate`` digits a
    second (``dtmf_max_digits``, ``dtmf_digits_per_second``).  Bounded in memory: full
    buckets are forgotten."""

    def __init__(self, rate: float, burst: int, clock=None, max_keys: int = 10000) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock or _MonotonicClock()
        self.max_keys = max_keys
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, when)

    def take(self, key: str, digits: int) -> None:
        """Spend ``digits`` tokens of ``key``'s bucket or raise QuotaExceeded."""
        if not self.rate:
            return
        now = self.clock.seconds()
        tokens, when = self._buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - when) * self.rate)
        if digits > tokens:
            raise QuotaExceeded(f"DTMF rate exceeded: at most dtmf_digits_per_second="
                                f"{self.rate:g} per call, after a burst of {self.burst}", "dtmf")
        if len(self._buckets) >= self.max_keys:
            self._forget_full(now)
        self._buckets[key] = (tokens - digits, now)

    def _forget_full(self, now: float) -> None:
        for key, (tokens, when) in list(self._buckets.items()):
            if tokens + (now - when) * self.rate >= self.burst:
                del self._buckets[key]
        if len(self._buckets) >= self.max_keys:
            self._buckets.clear()
