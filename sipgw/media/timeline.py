"""RTP timestamps to one media timeline shared by audio and video.

Pure: no I/O.  Each RTP source has its own clock rate and a random first timestamp, so
audio and video are put on the monotonic arrival clock: the first frame of a source
anchors its RTP clock to the time it arrived, later frames follow their RTP timestamps
(unwrapped past 2^32).  A timestamp that strays further than ``max_skew`` seconds from
the arrival clock (a new SSRC, a sender restarting its clock) anchors that source again.
The timeline's origin is the first frame written (the first keyframe), so audio and
video start aligned within the arrival jitter.
"""
from __future__ import annotations

_WRAP = 1 << 32


class RtpClock:
    """One RTP source's timestamps as seconds on the arrival clock."""

    def __init__(self, clock_rate: int, max_skew: float = 1.0):
        if clock_rate <= 0:
            raise ValueError("clock_rate must be positive")
        self.clock_rate = clock_rate
        self.max_skew = max_skew
        self.resets = 0
        self._last: int | None = None
        self._extended = 0
        self._anchor_ts = 0
        self._anchor_time = 0.0

    def seconds(self, timestamp: int, arrival: float) -> float:
        if self._last is None:
            self._last = timestamp
            self._extended = timestamp
            self._anchor(arrival)
            return arrival
        delta = (timestamp - self._last) % _WRAP
        if delta >= _WRAP // 2:
            delta -= _WRAP  # reordered or repeated: a step back
        self._last = timestamp
        self._extended += delta
        when = self._anchor_time + (self._extended - self._anchor_ts) / self.clock_rate
        if abs(when - arrival) > self.max_skew:
            self.resets += 1
            self._anchor(arrival)
            return arrival
        return when

    def _anchor(self, arrival: float) -> None:
        self._anchor_ts = self._extended
        self._anchor_time = arrival


class Timeline:
    """Seconds since the first written frame, for every source of one stream."""

    def __init__(self, max_skew: float = 1.0):
        self.max_skew = max_skew
        self.origin: float | None = None
        self._clocks: dict[str, RtpClock] = {}

    def when(self, kind: str, clock_rate: int, timestamp: int, arrival: float) -> float:
        """The frame's time on the arrival clock (not yet relative to the origin)."""
        clock = self._clocks.get(kind)
        if clock is None or clock.clock_rate != clock_rate:
            clock = self._clocks[kind] = RtpClock(clock_rate, self.max_skew)
        return clock.seconds(timestamp, arrival)

    def start(self, when: float) -> None:
        if self.origin is None:
            self.origin = when

    def position(self, when: float) -> float | None:
        """Seconds since the origin; None before it (or before the timeline started)."""
        if self.origin is None or when < self.origin:
            return None
        return when - self.origin

    @property
    def resets(self) -> int:
        return sum(c.resets for c in self._clocks.values())
