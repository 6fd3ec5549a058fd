"""A live stream: the media of one call, fanned out to any number of sinks.

Runs on the reactor thread. ``publish`` never blocks and never waits for a
consumer: each sink has its own queue, bounded in frames and in bytes, and a
sink that falls behind drops to the next keyframe (its queue is emptied), never
delaying the others. The GOP cached for late sinks is bounded in bytes too.
"""
from __future__ import annotations

import collections
import enum

from twisted.internet import defer

from .. import entropy
from ..config import Config

BURST_MAX_SECONDS = 2.0


class StreamStatus(str, enum.Enum):
    NEW = "NEW"
    PENDING = "PENDING"
    PUBLISHING = "PUBLISHING"
    UNPUBLISHED = "UNPUBLISHED"
    FAILED = "FAILED"


_PUBLISHING, _UNPUBLISHED, _FAILED = (StreamStatus.PUBLISHING, StreamStatus.UNPUBLISHED,
                                      StreamStatus.FAILED)


class MediaFrame:
    """One access unit (video, Annex-B) or one audio frame, with its RTP timestamp."""

    __slots__ = ("kind", "codec", "clock_rate", "timestamp", "data", "keyframe", "payloads")

    def __init__(self, kind: str, codec: str, clock_rate: int, timestamp: int, data: bytes,
                 keyframe: bool = False):
        self.kind = kind
        self.codec = codec
        self.clock_rate = clock_rate
        self.timestamp = timestamp
        self.data = data
        self.keyframe = keyframe
        self.payloads = None  # RTP payloads, made once for every WebRTC viewer

    def __repr__(self):
        return (f"<MediaFrame {self.kind} {self.codec} ts={self.timestamp} {len(self.data)}B"
                f"{' key' if self.keyframe else ''}>")


class Sink:
    """A consumer's queue, bounded in frames and bytes. ``get()`` gives a Deferred firing
    with the next frame, or with None once the stream has ended. ``listen(deliver)`` turns
    it into push mode: frames go straight to ``deliver``, which returns False when its
    consumer is full (the sink then drops to the next keyframe, as a full queue does)."""

    def __init__(self, stream: "Stream", maxlen: int = 256, name: str = "sink",
                 kinds: tuple[str, ...] = ("audio", "video"), max_bytes: int | None = None):
        self.stream = stream
        self.name = name
        self.maxlen = maxlen
        self.max_bytes = stream.sink_max_bytes if max_bytes is None else max_bytes
        self.queued_bytes = 0
        self.kinds = kinds
        self.video = stream.has_video and "video" in kinds
        self.queue: collections.deque[MediaFrame] = collections.deque()
        self.waiting_keyframe = self.video
        self.dropped = 0
        self.closed = False
        self._waiter: defer.Deferred | None = None
        self._deliver = None

    def offer(self, frame: MediaFrame) -> None:
        if self.closed or frame.kind not in self.kinds:
            return
        if frame.kind == "video" and self.waiting_keyframe:
            if not frame.keyframe:
                self.dropped += 1
                return
            self.waiting_keyframe = False
        if self._deliver is not None:
            if not self._deliver(frame):
                self.congested(frame)
            return
        size = len(frame.data)
        if len(self.queue) >= self.maxlen or self.queued_bytes + size > self.max_bytes:
            # Too slow: throw away what is queued and restart at the next keyframe.
            self.dropped += len(self.queue)
            self.queue.clear()
            self.queued_bytes = 0
            if self.video:
                self.waiting_keyframe = True
                self.stream.request_keyframe()
                if not (frame.kind == "video" and frame.keyframe):
                    self.dropped += 1
                    return
                self.waiting_keyframe = False
        self.queue.append(frame)
        self.queued_bytes += size
        self._wake()

    def take(self) -> MediaFrame | None:
        """The next queued frame, or None (a consumer that drains the queue at its own pace)."""
        return self._pop() if self.queue else None

    def listen(self, deliver) -> None:
        """Push mode: what is queued goes to ``deliver`` now, every later frame at once."""
        while self.queue:
            frame = self._pop()
            if not deliver(frame):
                self.congested(frame)
                break
        self._deliver = deliver

    def congested(self, frame: MediaFrame) -> None:
        """The push consumer refused ``frame``: skip to the next keyframe."""
        self.dropped += 1 + len(self.queue)
        self.queue.clear()
        self.queued_bytes = 0
        if self.video and frame.kind == "video":
            self.waiting_keyframe = True
            self.stream.request_keyframe()

    def _pop(self) -> MediaFrame:
        frame = self.queue.popleft()
        self.queued_bytes -= len(frame.data)
        return frame

    def _wake(self) -> None:
        if self._waiter is not None and (self.queue or self.closed):
            waiter, self._waiter = self._waiter, None
            waiter.callback(self._pop() if self.queue else None)

    def get(self) -> defer.Deferred:
        if self._waiter is not None:
            raise RuntimeError("Sink.get() called again before the previous frame arrived")
        if self.queue:
            return defer.succeed(self._pop())
        if self.closed:
            return defer.succeed(None)
        self._waiter = defer.Deferred()
        return self._waiter

    def close(self) -> None:
        """Stop receiving; a pending get() fires with None."""
        if self.closed:
            return
        self.closed = True
        self.stream.sinks.discard(self)
        self._wake()


class Stream:
    """A named stream published by a call."""

    def __init__(self, name: str, *, has_audio: bool = True, has_video: bool = True,
                 call_id: str = "", on_terminate=None, on_keyframe_request=None,
                 gop_max_bytes: int = Config.stream_gop_cache_max_bytes,
                 sink_max_bytes: int = Config.sink_queue_max_bytes):
        self.name = name
        self.media_session_id = entropy.token_hex(16)
        self.call_id = call_id
        self.has_audio = has_audio
        self.has_video = has_video
        self.status = StreamStatus.PENDING
        self.info = ""
        self.audio_codec = ""
        self.video_codec = ""
        self.width = 0
        self.height = 0
        self.counters = {"audio": {}, "video": {}}
        self.counters_source = None  # callable giving live counters (the call's RTP)
        self.sinks: set[Sink] = set()
        self.sps: bytes | None = None
        self.pps: bytes | None = None
        self.gop: list[MediaFrame] = []  # since the last keyframe, for late subscribers
        self.gop_bytes = 0
        self.gop_limit = 600
        self.gop_max_bytes = gop_max_bytes
        self.sink_max_bytes = sink_max_bytes  # each sink's bound unless it asks for another
        self._on_terminate = on_terminate
        self._on_keyframe_request = on_keyframe_request
        self.keyframe_requests = 0

    # -- producer side (the call's RTP) ---------------------------------------
    def publish(self, frame: MediaFrame) -> None:
        # every frame of every stream: the status compared by identity (an Enum attribute
        # lookup and its comparison cost more than the rest of this)
        status = self.status
        if status is not _PUBLISHING:
            if status is _UNPUBLISHED or status is _FAILED:
                return
            self.status = _PUBLISHING
        if frame.kind == "video" and (frame.keyframe or self.gop):
            if frame.keyframe:
                self.gop = []
                self.gop_bytes = 0
            self.gop_bytes += len(frame.data)
            if len(self.gop) < self.gop_limit and self.gop_bytes <= self.gop_max_bytes:
                self.gop.append(frame)
            else:  # too big to replay: late sinks wait for the next keyframe
                self.gop = []
        for sink in list(self.sinks):
            sink.offer(frame)

    def end(self, status: StreamStatus = StreamStatus.UNPUBLISHED, info: str = "") -> None:
        """The call is over: every sink gets None after what it has queued."""
        if self.status in (StreamStatus.UNPUBLISHED, StreamStatus.FAILED):
            return
        self.status = status
        self.info = info
        self.gop = []
        # the call's callbacks: an ended stream calls nobody (and holds no reference cycle)
        self._on_terminate = self._on_keyframe_request = None
        for sink in list(self.sinks):
            sink.close()

    @property
    def ended(self) -> bool:
        return self.status in (StreamStatus.UNPUBLISHED, StreamStatus.FAILED)

    # -- consumer side ---------------------------------------------------------
    def subscribe(self, maxlen: int = 256, name: str = "sink", burst: bool = True,
                  kinds: tuple[str, ...] = ("audio", "video"),
                  max_bytes: int | None = None) -> Sink:
        """A new sink; with ``burst`` it starts with the cached GOP (fast start)."""
        sink = Sink(self, maxlen, name, kinds, max_bytes)
        if self.ended:
            sink.close()
            return sink
        self.sinks.add(sink)
        if sink.video:
            if burst and self._gop_fresh(sink):
                for frame in self.gop:
                    sink.offer(frame)
            else:
                # Hold video until a new keyframe, and ask the callee for one now.
                self.request_keyframe()
        return sink

    def _gop_fresh(self, sink: Sink) -> bool:
        """A cached GOP worth bursting: it fits the sink and spans at most
        BURST_MAX_SECONDS (a long GOP would replay seconds of stale video)."""
        if (not self.gop or len(self.gop) > sink.maxlen // 2
                or self.gop_bytes > sink.max_bytes // 2):
            return False
        span = (self.gop[-1].timestamp - self.gop[0].timestamp) & 0xFFFFFFFF
        return span <= BURST_MAX_SECONDS * self.gop[0].clock_rate

    def request_keyframe(self) -> None:
        self.keyframe_requests += 1
        if self._on_keyframe_request is not None:
            self._on_keyframe_request()

    def terminate(self) -> None:
        """/stream/terminate: end the call that publishes this stream."""
        if self._on_terminate is not None:
            self._on_terminate()

    def to_json(self) -> dict:
        return {"mediaSessionId": self.media_session_id, "name": self.name, "published": True,
                "status": self.status.value, "info": self.info, "hasAudio": self.has_audio,
                "hasVideo": self.has_video, "audioCodec": self.audio_codec,
                "videoCodec": self.video_codec, "width": self.width, "height": self.height,
                "callId": self.call_id, "viewers": len(self.sinks),
                "counters": self.counters_source() if self.counters_source else self.counters}
