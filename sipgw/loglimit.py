"""Rate-limited logging for per-packet events (malformed datagrams, strangers' RTP, RTCP BYE),
so that nobody can flood the log. Pure: the clock is passed in. Used by sip/ and rtp/."""
from __future__ import annotations


class LogLimiter:
    """Per-packet events logged at most once per key (a source host) every ``interval``
    seconds; the events held back are counted into the next line. Bounded in memory."""

    def __init__(self, clock, interval: float = 10.0, max_keys: int = 4096):
        self.clock = clock
        self.interval = interval
        self.max_keys = max_keys
        self._seen: dict[object, tuple[float, int]] = {}

    def allow(self, key) -> int | None:
        """None: hold this one back; else log it, with the count held back since the last."""
        now = self.clock.seconds()
        last, held = self._seen.get(key, (None, 0))
        if last is not None and now - last < self.interval:
            self._seen[key] = (last, held + 1)
            return None
        if key not in self._seen and len(self._seen) >= self.max_keys:
            self._seen.clear()
        self._seen[key] = (now, 0)
        return held


def held_back(count: int) -> str:
    return f" ({count} more held back)" if count else ""
