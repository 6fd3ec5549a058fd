"""Send order of a push's audio and video: neither kind runs ahead of the other.

The AAC encoder gives a frame out ~250 ms after its audio came in (16 kHz: the resampler's
1024-sample frames, the encoder's look-ahead), while H.264 passes through at once.  Sent in
the order they come out, the video tags of an instant reach the RTMP server a quarter of a
second before the audio of that instant: nginx-rtmp's ``avsync`` reads about -270 ms, and
players that join must buffer the skew.  ``Interleaver`` holds video back until audio of
the same time has gone (at most ``max_hold`` seconds, so a stream whose audio stops keeps
its picture moving), as an RTMP server's own interleaving would.

Pure: no I/O, no clock but the media's.
"""
from __future__ import annotations

import collections


class Interleaver:
    """``video(t, item)`` / ``audio(t, item)`` give the items to send now, in order; ``flush()``
    the rest.  ``t``: media time in seconds, increasing within each kind."""

    def __init__(self, has_audio: bool, max_hold: float = 0.5):
        self.has_audio = has_audio
        self.max_hold = max_hold
        self._held: collections.deque = collections.deque()  # (t, item) of video

    @property
    def pending(self) -> bool:
        """Video is held (the caller flushes it after ``max_hold`` s without frames)."""
        return bool(self._held)

    def video(self, t: float, item) -> list:
        if not self.has_audio:
            return [item]
        self._held.append((t, item))
        out = []
        while self._held and t - self._held[0][0] > self.max_hold:
            out.append(self._held.popleft()[1])  # audio is late or gone: let the picture go
        return out

    def audio(self, t: float, item) -> list:
        out = []
        while self._held and self._held[0][0] <= t:
            out.append(self._held.popleft()[1])
        out.append(item)
        return out

    def flush(self) -> list:
        out = [item for _, item in self._held]
        self._held.clear()
        return out
