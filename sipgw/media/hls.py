"""HLS of a stream (RFC 8216): fMP4 (CMAF) segments kept in memory, muxed on demand.

``SegmentStore`` (reactor thread, no I/O) holds one stream's init sections and its last
segments, bounded in count and bytes, and renders the media playlist.  ``HlsJob`` is a
``MediaJob``: on its worker thread the stream's frames go through the same ``Pipeline``
(H.264 passed through, audio to AAC) and the same fragmented-MP4 writer as recordings;
the bytes are cut at top-level boxes, and fragments (one per keyframe) are grouped into
segments of at least ``target`` seconds.  ``HlsManager`` starts a job when a player
first asks for a stream's playlist and stops it after ``idle`` seconds without a request.
"""
from __future__ import annotations

import collections
import math
from dataclasses import dataclass

from twisted.internet import defer
from twisted.logger import Logger

from .pipeline import Pipeline
from .recorder import box_size, open_mp4
from .worker import MediaJob, wait_done

log = Logger(namespace="sipgw.media.hls")

# a fragment at every video keyframe (an audio-only stream: one per target duration)
# and each fragment handed over as soon as it is written (no I/O buffer holding its tail)
HLS_OPTIONS = {"movflags": "frag_keyframe+empty_moov+default_base_moof", "flush_packets": "1"}


@dataclass(frozen=True)
class Segment:
    sequence: int
    duration: float
    data: bytes
    init: int  # the init section (EXT-X-MAP) it needs
    discontinuity: bool = False


class SegmentStore:
    """One stream's playlist: at most ``count`` segments and ``max_bytes`` bytes."""

    def __init__(self, target: float, count: int, max_bytes: int):
        self.target = target
        self.count = count
        self.max_bytes = max_bytes
        self.segments: collections.deque[Segment] = collections.deque()
        self.inits: dict[int, bytes] = {}
        self.init = 0  # the current init section's number (0: none yet)
        self.sequence = 0  # EXT-X-MEDIA-SEQUENCE of the first segment kept
        self.discontinuity_sequence = 0
        self.ended = False
        self._next = 0
        self._discontinuity = False
        self._waiting: list[defer.Deferred] = []

    def restart(self, init: bytes) -> None:
        """A new init section (a new muxing job): later segments follow a discontinuity."""
        self.init += 1
        self.inits[self.init] = init
        self._discontinuity = bool(self.segments) or self._next > 0
        self.ended = False

    def add(self, duration: float, data: bytes) -> Segment:
        segment = Segment(self._next, duration, data, self.init, self._discontinuity)
        self._next += 1
        self._discontinuity = False
        self.segments.append(segment)
        while len(self.segments) > 1 and (len(self.segments) > self.count or
                                          self.size > self.max_bytes):
            gone = self.segments.popleft()
            if self.segments[0].discontinuity:
                self.discontinuity_sequence += 1
            del gone
        self.sequence = self.segments[0].sequence
        needed = {s.init for s in self.segments}
        for number in [n for n in self.inits if n not in needed and n != self.init]:
            del self.inits[number]
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(self)
        return segment

    def end(self) -> None:
        """The stream ended: the playlist gets EXT-X-ENDLIST."""
        self.ended = True
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(self)

    @property
    def size(self) -> int:
        return sum(len(s.data) for s in self.segments) + sum(map(len, self.inits.values()))

    def ready(self) -> defer.Deferred:
        """Fires (with the store) once it has a segment or has ended."""
        if self.segments or self.ended:
            return defer.succeed(self)
        d = defer.Deferred(lambda d: self._waiting.remove(d) if d in self._waiting else None)
        self._waiting.append(d)
        return d

    def segment(self, sequence: int) -> Segment | None:
        for segment in self.segments:
            if segment.sequence == sequence:
                return segment
        return None

    def playlist(self) -> str:
        """The media playlist (RFC 8216 §4.3), fMP4 segments (version 7)."""
        longest = max([self.target] + [s.duration for s in self.segments])
        lines = ["#EXTM3U", "#EXT-X-VERSION:7",
                 f"#EXT-X-TARGETDURATION:{math.ceil(longest - 0.0005)}",
                 f"#EXT-X-MEDIA-SEQUENCE:{self.sequence}",
                 f"#EXT-X-DISCONTINUITY-SEQUENCE:{self.discontinuity_sequence}"]
        init = None
        for number, segment in enumerate(self.segments):
            if segment.discontinuity and number:
                lines.append("#EXT-X-DISCONTINUITY")
            if segment.init != init:
                init = segment.init
                lines.append(f'#EXT-X-MAP:URI="init-{init}.mp4"')
            lines += [f"#EXTINF:{segment.duration:.3f},", f"seg-{segment.sequence}.m4s"]
        if self.ended:
            lines.append("#EXT-X-ENDLIST")
        return "\n".join(lines) + "\n"


class _Boxes:
    """The muxer's output as a write-only file, cut into top-level MP4 boxes."""

    def __init__(self):
        self.buffer = bytearray()

    def write(self, data) -> int:
        self.buffer += data
        return len(data)

    def close(self) -> None:
        pass

    def take(self):
        """Every complete box written so far: (type, bytes)."""
        boxes = []
        while len(self.buffer) >= 8:
            size = box_size(self.buffer[:16])
            if size < 8 or len(self.buffer) < size:
                break
            boxes.append((bytes(self.buffer[4:8]), bytes(self.buffer[:size])))
            del self.buffer[:size]
        return boxes


def _children(box: bytes, start: int = 8):
    pos = start
    while pos + 8 <= len(box):
        size = int.from_bytes(box[pos:pos + 4], "big")
        if size < 8:
            return
        yield box[pos + 4:pos + 8], box[pos:pos + size]
        pos += size


def fragment_span(moof: bytes, default_duration: int = 0) -> tuple[int, int]:
    """(base media decode time, duration) of the first track fragment of a moof, in that
    track's timescale (ISO 14496-12 §8.8.7 tfhd, §8.8.8 trun, §8.8.12 tfdt)."""
    start, duration = None, 0
    for kind, traf in _children(moof):
        if kind != b"traf":
            continue
        for sub, box in _children(traf):
            flags = int.from_bytes(box[9:12], "big")
            if sub == b"tfhd" and flags & 0x08:
                offset = 16 + (8 if flags & 0x01 else 0) + (4 if flags & 0x02 else 0)
                default_duration = int.from_bytes(box[offset:offset + 4], "big")
            elif sub == b"tfdt":
                start = int.from_bytes(box[12:20] if box[8] == 1 else box[12:16], "big")
            elif sub == b"trun":
                count = int.from_bytes(box[12:16], "big")
                pos = 16 + (4 if flags & 0x01 else 0) + (4 if flags & 0x04 else 0)
                step = 4 * bin(flags & 0xF00).count("1")
                if not flags & 0x100:
                    duration += count * default_duration
                    continue
                for _ in range(count):
                    duration += int.from_bytes(box[pos:pos + 4], "big")
                    pos += step
        break
    if start is None:
        raise ValueError("moof without tfdt")
    return start, duration


class HlsJob(MediaJob):
    """One stream muxed to fMP4 segments (worker thread) stored in ``store`` (reactor)."""

    kind = "hls"

    def __init__(self, reactor, stream, store: SegmentStore, **kwargs):
        super().__init__(reactor, stream, **kwargs)
        self.store: SegmentStore | None = store  # None: detached, what is left goes nowhere
        self.target = store.target

    def _to_store(self, method: str, *args) -> None:
        """Worker thread: ``store.method(*args)`` on the reactor thread, unless detached."""
        self.call(lambda: self.store is not None and getattr(self.store, method)(*args))

    def work(self) -> tuple[str, str]:
        stream = self.stream
        pipe = Pipeline(stream.has_video, stream.has_audio)
        boxes = _Boxes()
        out = None
        options = dict(HLS_OPTIONS) if stream.has_video else {  # every AAC frame is a key
            "movflags": "empty_moov+default_base_moof", "flush_packets": "1",
            "frag_duration": str(int(self.target * 1e6))}
        scale = 90000
        init, pending, started, end = b"", [], None, 0.0  # pending: this segment's boxes
        cut = None  # when to ask for a keyframe (the source's own may come later)
        while True:
            item = self.next_frame()
            events = pipe.feed(*item) if item is not None else pipe.flush()
            for event in events:
                if out is None:
                    out = open_mp4(stream, pipe, boxes, options)
                    if out.video is None and out.audio is not None:
                        scale = out.audio.rate
                out.write(event, pipe)
                if event[0] == "video":
                    if event[3]:
                        cut = event[1] + self.target
                    elif cut is not None and event[1] >= cut:
                        # the segment is long enough: ask the source for its next keyframe
                        self.call(stream.request_keyframe)
                        cut = None
            if item is None and out is not None:
                out.close()
            for kind, box in boxes.take():
                if kind in (b"moof", b"mdat"):
                    if init:
                        self._to_store("restart", init)
                        init = None
                    pending.append(box)
                elif init is not None:
                    init += box  # ftyp, moov: the init section
                if kind == b"moof":
                    start, length = fragment_span(box)
                    if started is None:
                        started = start / scale
                    end = (start + length) / scale
                # a fragment is complete once its mdat is out: cut if the segment is long enough
                if kind == b"mdat" and end - started >= self.target - 0.05:
                    self._to_store("add", end - started, b"".join(pending))
                    pending, started = [], None
            if item is None:
                break
        if pending and started is not None:
            self._to_store("add", max(end - started, 0.001), b"".join(pending))
        return "FINISHED", ""


class _Live:
    """One stream's HLS: its store, its muxing job and when a player last asked."""

    def __init__(self, store: SegmentStore):
        self.store = store
        self.job: HlsJob | None = None
        self.last = 0.0
        self.timer = None
        self.waiting = 0  # playlist requests waiting for the first segment


class HlsManager:
    """Every stream played over HLS (reactor thread), by stream name."""

    def __init__(self, reactor, registry, *, target: float = 2.0, count: int = 6,
                 max_bytes: int = 32 << 20, idle: float = 20.0, wait: float | None = None,
                 keyframes=None, queue_frames: int | None = None):
        self.reactor = reactor
        self.registry = registry
        self.target, self.count, self.max_bytes, self.idle = target, count, max_bytes, idle
        self.wait = wait if wait is not None else 3 * target + 5  # first segment, at most
        self.keyframes = keyframes
        self.queue_frames = queue_frames
        self.live: dict[str, _Live] = {}

    def _touch(self, name: str, start: bool) -> _Live | None:
        """The stream's HLS, its idle timer restarted; ``start``: a muxing job for the
        stream's current publication if none runs (a playlist request)."""
        stream = self.registry.get(name)
        live = self.live.get(name)
        if live is None:
            if not start or stream is None or stream.ended:
                return None
            live = self.live[name] = _Live(SegmentStore(self.target, self.count,
                                                        self.max_bytes))
        live.last = self.reactor.seconds()
        if live.timer is None:
            live.timer = self.reactor.callLater(self.idle, self._check, name, live)
        job = live.job
        if start and stream is not None and not stream.ended and (
                job is None or job.stream is not stream):
            if job is not None:
                job.store = None
                job.stop("Restarted: the stream was published again", discard=True)
            self._start(live, stream)
        return live

    def _start(self, live: _Live, stream) -> None:
        kwargs = {} if self.queue_frames is None else {"queue_frames": self.queue_frames}
        job = live.job = HlsJob(self.reactor, stream, live.store, **kwargs)
        job.done.addCallback(lambda _: live.store.end() if live.job is job else None)
        if self.keyframes is not None:
            self.keyframes.follow(job)
        log.info("HLS of {name} started", name=stream.name)
        job.start()
        stream.request_keyframe()

    def _check(self, name: str, live: _Live) -> None:
        left = live.last + self.idle - self.reactor.seconds()
        if live.waiting:
            left = self.idle
        if left > 0:
            live.timer = self.reactor.callLater(left, self._check, name, live)
            return
        live.timer = None
        if self.live.get(name) is live:
            del self.live[name]
        if live.job is not None:
            log.info("HLS of {name} stopped: no request for {idle:g} s", name=name,
                     idle=self.idle)
            live.job.store = None
            live.job.stop("no HLS request", discard=True)
            live.job = None

    async def playlist(self, name: str) -> str | None:
        """The stream's media playlist once it has a segment; None: no such stream, or no
        segment within ``wait`` seconds."""
        live = self._touch(name, start=True)
        if live is None:
            return None
        ready = live.store.ready()
        timer = self.reactor.callLater(self.wait, ready.cancel)
        live.waiting += 1
        try:
            await ready
        except defer.CancelledError:
            return None
        finally:
            live.waiting -= 1
            live.last = self.reactor.seconds()
        if timer.active():
            timer.cancel()
        return live.store.playlist() if live.store.segments else None

    def part(self, name: str, file: str) -> bytes | None:
        """``init-N.mp4`` or ``seg-N.m4s`` of the stream, None when not (or no longer) kept."""
        live = self._touch(name, start=False)
        if live is None:
            return None
        kind, _, rest = file.partition("-")
        number, _, ext = rest.partition(".")
        # from the URL: ASCII digits only (int() refuses "²" and more than 4300 digits)
        if not (number.isascii() and number.isdigit()) or len(number) > 20:
            return None
        if (kind, ext) == ("init", "mp4"):
            return live.store.inits.get(int(number))
        if (kind, ext) == ("seg", "m4s"):
            segment = live.store.segment(int(number))
            return segment.data if segment is not None else None
        return None

    def close(self, timeout: float = 10.0) -> defer.Deferred:
        """Stop every muxing job (daemon shutdown)."""
        jobs = [live.job for live in self.live.values() if live.job is not None]
        for live in self.live.values():
            if live.timer is not None and live.timer.active():
                live.timer.cancel()
        self.live.clear()
        for job in jobs:
            job.store = None
            job.stop("Stopped: server shutdown", discard=True)
        return wait_done(self.reactor, jobs, timeout)
