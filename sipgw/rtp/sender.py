"""RTP that sipgw itself sends into a call (``/call/inject_stream``, ``/call/inject_sound``).

Twisted side, reactor passed in: both senders write through the call's own ``Endpoint``
(``sipgw/rtp/session.py``), so the packets leave from the RTP port our SDP advertised, with
the endpoint's SSRC, its sequence numbers (one after the other whoever sends: silence,
DTMF, an injection, the next injection) and SRTP when the call agreed SDES keys.

* ``AudioSender`` paces one payload every 20 ms on the reactor clock, drift-free (the
  schedule is counted from its start, not from the last tick).  It asks ``take()`` for each
  payload; nothing ready (the worker behind, the source silent) sends the codec's silence,
  so the callee's jitter buffer never sees a hole.  The RTP timestamp continues the
  endpoint's: after an idle gap it advances by the time that gap lasted (RFC 3550 §5.1),
  and the first packet after a gap, a switch or DTMF events (RFC 4733, which move the
  endpoint's timeline on) carries the marker bit (RFC 3551 §4.1).  A re-INVITE changing
  the call's codec is followed at the next packet (``on_codec`` tells the encoder's owner).
  While it runs, the session's own silence (``rtp_session_init_always``) pauses.  Nothing
  is sent while the callee holds the call (our side recvonly or inactive).
* ``VideoSender`` sends each access unit's payloads as they come (the source stream is
  paced by its own sender), moved onto the endpoint's timeline: the source's timestamp
  differences are kept, a jump of the source (backwards, or more than 5 s ahead) is
  smoothed over.
"""
from __future__ import annotations

from .session import SILENCE

FRAME_SECONDS = 0.02  # ptime of every injected audio packet
MAX_CATCH_UP = 5  # packets sent at once after a late tick; a longer stall is skipped over
MASK = 0xFFFFFFFF
VIDEO_CLOCK = 90000
MAX_VIDEO_JUMP = 5 * VIDEO_CLOCK
VIDEO_STEP = VIDEO_CLOCK // 25  # what a re-anchored video frame advances by


def may_send(endpoint) -> bool:
    """Our direction lets us send (RFC 3264 §6.1: not while the callee holds the call,
    recvonly or inactive on our side); the timeline goes on meanwhile."""
    return endpoint.media.direction in ("sendrecv", "sendonly")


class AudioSender:
    """20 ms audio payloads from ``take()`` (None: nothing ready) onto ``endpoint``."""

    def __init__(self, clock, endpoint, take, on_codec=None):
        self.clock = clock
        self.endpoint = endpoint
        self.take = take
        self.on_codec = on_codec  # callable(codec): a re-INVITE changed the call's codec
        self._use(endpoint.media.codec)
        self.sent = 0  # payloads from take()
        self.silent = 0  # silence sent for want of a payload
        self.skipped = 0  # packet slots skipped after a reactor stall
        self.running = False
        self._start = 0.0
        self._slots = 0
        self._marker = True
        self._next_ts = 0  # the endpoint's timestamp our next packet expects
        self._timer = None

    def _use(self, codec) -> None:
        self.codec = codec
        self.payload_type = codec.pt
        self.step = codec.clock // 50  # timestamp units per packet
        self.silence = SILENCE.get(codec.name)

    def start(self) -> "AudioSender":
        endpoint = self.endpoint
        now = self.clock.seconds()
        if endpoint.last_sent is not None:
            # endpoint.ts is the slot after the last packet: advance it by the idle time since
            gap = now - endpoint.last_sent - FRAME_SECONDS
            if gap >= FRAME_SECONDS / 2:
                endpoint.ts = (endpoint.ts + round(gap / FRAME_SECONDS) * self.step) & MASK
        endpoint.injecting = True
        self.running = True
        self._start = now
        self._slots = 0
        self._marker = True
        self._next_ts = endpoint.ts
        self._tick()
        return self

    def stop(self) -> None:
        if not self.running:
            return
        self.running = False
        self.endpoint.injecting = False
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _tick(self) -> None:
        self._timer = None
        if not self.running:
            return
        if self.endpoint.session.closed:
            self.stop()
            return
        codec = self.endpoint.media.codec
        if codec != self.codec:  # the callee's re-INVITE changed it: go on in the new one
            self._use(codec)
            self._marker = True
            if self.on_codec is not None:
                self.on_codec(codec)
            if not self.running:
                return
        now = self.clock.seconds()
        # the slots due by now (a hair of tolerance: the next tick is then strictly later)
        due = int((now - self._start) / FRAME_SECONDS + 1e-6) + 1
        behind = due - self._slots
        if behind > MAX_CATCH_UP:  # the reactor stalled: keep the timeline, drop the slots
            skip = behind - 1
            self.endpoint.ts = self._next_ts = (self.endpoint.ts + skip * self.step) & MASK
            self._slots += skip
            self.skipped += skip
            self._marker = True
        while self._slots < due and self.running:
            self._send_one()
        if self.running:
            delay = self._start + self._slots * FRAME_SECONDS - now
            self._timer = self.clock.callLater(delay, self._tick)

    def _send_one(self) -> None:
        endpoint = self.endpoint
        if endpoint.ts != self._next_ts:  # another sender moved the timeline (DTMF events)
            self._marker = True
        payload = self.take()
        if payload is None:
            payload = self.silence
            self.silent += 1
        else:
            self.sent += 1
        if not may_send(endpoint):
            self._marker = True  # the first packet after the hold starts a talkspurt
        elif payload is not None:
            endpoint.send_rtp(self.payload_type, payload, marker=self._marker,
                              timestamp=endpoint.ts)
            self._marker = False
        endpoint.ts = self._next_ts = (endpoint.ts + self.step) & MASK
        self._slots += 1


class VideoSender:
    """Access units (their RTP payloads, made by the caller) onto ``endpoint``, keeping the
    source's timing; ``endpoint.ts`` holds the timestamp of the last one sent."""

    def __init__(self, clock, endpoint):
        self.clock = clock
        self.endpoint = endpoint
        self.payload_type = endpoint.media.codec.pt
        self.frames = 0
        self.jumps = 0
        self._offset: int | None = None
        self._last_source: int | None = None

    def send(self, source_ts: int, payloads: list[bytes]) -> None:
        endpoint = self.endpoint
        if not payloads or endpoint.session.closed:
            return
        if self._offset is None:
            base = endpoint.ts
            if endpoint.last_sent is not None:  # continue the timeline across the idle time
                base += round((self.clock.seconds() - endpoint.last_sent) * VIDEO_CLOCK)
            self._anchor(source_ts, base)
        else:
            delta = (source_ts - self._last_source) & MASK
            if delta > MAX_VIDEO_JUMP:  # backwards (wrapped) or far ahead: a source jump
                self.jumps += 1
                self._anchor(source_ts, endpoint.ts + VIDEO_STEP)
        self._last_source = source_ts
        ts = (source_ts + self._offset) & MASK
        if may_send(endpoint):
            last = len(payloads) - 1
            for i, payload in enumerate(payloads):
                endpoint.send_rtp(self.payload_type, payload, marker=i == last, timestamp=ts)
            self.frames += 1
        endpoint.ts = ts

    def _anchor(self, source_ts: int, ts: int) -> None:
        self._offset = (ts - source_ts) & MASK
