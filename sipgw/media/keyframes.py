"""Periodic keyframe requests (WCS ``periodic_fir_request``): while a push or a recording
takes a stream, its callee is asked for a keyframe every ``interval`` seconds, so a player
joining the RTMP stream (or a file cut there) sees video within one interval even when the
callee's own GOP is long.  One timer per stream however many pushes and recordings take it.
The request is the stream's (``Stream.request_keyframe``): RTCP PLI + FIR, and SIP INFO
picture_fast_update for a callee that ignores them (``rtp/session.py``).  Reactor thread.
"""
from __future__ import annotations


class PeriodicKeyframes:
    def __init__(self, reactor, interval: float):
        self.reactor = reactor
        self.interval = interval  # seconds; 0: off
        self._held: dict = {}  # stream -> [holders, IDelayedCall]

    def follow(self, job) -> None:
        """Requests for ``job``'s stream while ``job`` (a push, a recording) runs."""
        stream = job.stream
        self.hold(stream)
        job.done.addBoth(lambda result: (self.release(stream), result)[1])

    def hold(self, stream) -> None:
        """A push or recording of ``stream`` started."""
        if not self.interval:
            return
        held = self._held.get(stream)
        if held is None:
            self._held[stream] = [1, self.reactor.callLater(self.interval, self._tick, stream)]
        else:
            held[0] += 1

    def release(self, stream) -> None:
        """One that ``hold`` counted ended."""
        held = self._held.get(stream)
        if held is None:
            return
        held[0] -= 1
        if held[0] <= 0:
            del self._held[stream]
            if held[1].active():
                held[1].cancel()

    def _tick(self, stream) -> None:
        held = self._held.get(stream)
        if held is None:
            return
        if stream.ended:
            del self._held[stream]
            return
        if stream.has_video:
            stream.request_keyframe()
        held[1] = self.reactor.callLater(self.interval, self._tick, stream)
