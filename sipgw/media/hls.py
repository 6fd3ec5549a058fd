"""HLS of a stream (RFC 8216): fMP4 (CMAF) segments kept in memory, muxed on demand, with
the low-latency parts of RFC 8216bis.

``SegmentStore`` (reactor thread, no I/O) holds one stream's init sections, its last segments
(bounded in count and bytes) and the parts of the segment being made, renders the media
playlist and says when a blocking playlist reload can be answered.  ``HlsJob`` is a
``MediaJob``: on its worker thread the stream's frames go through the same ``Pipeline``
(H.264 passed through, audio to AAC) and the same fragmented-MP4 writer as recordings; the
bytes are cut at top-level boxes; each fragment (at every keyframe, and every part duration)
is a part, and parts are grouped into segments of at least ``target`` seconds that start at a
keyframe.  ``HeldRequests`` holds blocking reloads, hinted parts and first playlists until the
store has them, bounded in number and time.  ``HlsManager`` starts a job when a player first
asks for a stream's playlist and stops it after ``idle`` seconds without a request.
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
# A part (fragment) ends at the first frame at least part duration - margin long: at most the
# part duration with video of 22 fps or more, with AAC frames of up to 128 ms (8 kHz).
VIDEO_MARGIN = 0.045
AUDIO_MARGIN = 0.128


@dataclass(frozen=True)
class Part:
    """A partial segment (RFC 8216bis §4.4.4.9 EXT-X-PART): one fMP4 fragment, numbered
    across the stream (``part-N.m4s``); a slice of its segment's bytes once that is complete."""
    number: int
    duration: float
    data: bytes | memoryview
    independent: bool  # starts with a keyframe (INDEPENDENT=YES)


@dataclass(frozen=True)
class Segment:
    sequence: int
    duration: float
    data: bytes
    init: int  # the init section (EXT-X-MAP) it needs
    discontinuity: bool = False
    parts: tuple[Part, ...] = ()


class TooFar(ValueError):
    """A blocking reload asks for a segment or part too far ahead (RFC 8216bis §6.2.5.2);
    ``field`` names the query parameter."""

    def __init__(self, message: str, field: str):
        super().__init__(message)
        self.field = field


OPEN_SEGMENT_TARGETS = 3  # an open segment is closed past this many target durations

class SegmentStore:
    """One stream's playlist: at most ``count`` segments and ``max_bytes`` bytes, and the parts
    of the segment being made when ``part_target`` (seconds) is set (low-latency HLS)."""

    def __init__(self, target: float, count: int, max_bytes: int, part_target: float = 0.0):
        self.target = target
        self.count = count
        self.max_bytes = max_bytes
        self.part_target = part_target
        self.longest_part = part_target  # PART-TARGET: no part listed is longer
        self.segments: collections.deque[Segment] = collections.deque()
        self.parts: list[Part] = []  # the open segment's (the next media sequence number's)
        self.inits: dict[int, bytes] = {}
        self.init = 0  # the current init section's number (0: none yet)
        self.sequence = 0  # EXT-X-MEDIA-SEQUENCE of the first segment kept
        self.discontinuity_sequence = 0
        self.ended = False
        self.listeners: list = []  # called with the store after each change
        self._next = 0  # the open segment's media sequence number
        self._next_part = 0  # the number of the next part (EXT-X-PRELOAD-HINT)
        self._discontinuity = False
        self._waiting: list[defer.Deferred] = []

    def restart(self, init: bytes) -> None:
        """A new init section (a new muxing job): later segments follow a discontinuity."""
        self.close_segment()  # what the previous job left open
        self.init += 1
        self.inits[self.init] = init
        self._discontinuity = bool(self.segments) or self._next > 0
        self.ended = False
        self._changed()

    def add(self, duration: float, data: bytes) -> Segment:
        """A whole segment (no parts)."""
        self.close_segment()
        return self._append(duration, data, ())

    def add_part(self, duration: float, data: bytes, independent: bool) -> Part:
        """A part of the open segment (one fMP4 fragment)."""
        part = Part(self._next_part, duration, data, independent)
        self._next_part += 1
        self.parts.append(part)
        self.longest_part = max(self.longest_part, duration)
        if sum(p.duration for p in self.parts) > OPEN_SEGMENT_TARGETS * self.target:
            # no keyframe for that long (a callee that ignores keyframe requests): a segment
            # that does not start with one, rather than parts piling up past hls_max_bytes
            self.close_segment()
        self._trim()
        self._changed()
        return part

    def close_segment(self) -> Segment | None:
        """The open segment's parts become a segment; None when it has none."""
        if not self.parts:
            return None
        data = b"".join(part.data for part in self.parts)
        view, parts, offset = memoryview(data), [], 0
        for part in self.parts:  # the parts now share the segment's bytes
            size = len(part.data)
            parts.append(Part(part.number, part.duration, view[offset:offset + size],
                              part.independent))
            offset += size
        self.parts = []
        return self._append(sum(p.duration for p in parts), data, tuple(parts))

    def _append(self, duration: float, data: bytes, parts: tuple) -> Segment:
        segment = Segment(self._next, duration, data, self.init, self._discontinuity, parts)
        self._next += 1
        self._discontinuity = False
        self.segments.append(segment)
        self._trim()
        self._changed()
        return segment

    def _trim(self) -> None:
        while len(self.segments) > 1 and (len(self.segments) > self.count or
                                          self.size > self.max_bytes):
            self.segments.popleft()
            if self.segments[0].discontinuity:
                self.discontinuity_sequence += 1
        if self.segments:
            self.sequence = self.segments[0].sequence
        needed = {s.init for s in self.segments}
        for number in [n for n in self.inits if n not in needed and n != self.init]:
            del self.inits[number]

    def end(self) -> None:
        """The stream ended: the playlist gets EXT-X-ENDLIST."""
        self.close_segment()
        self.ended = True
        self._changed()

    def _changed(self) -> None:
        if self.segments or self.ended:
            waiting, self._waiting = self._waiting, []
            for d in waiting:
                d.callback(self)
        for listener in list(self.listeners):
            listener(self)

    @property
    def size(self) -> int:
        return (sum(len(s.data) for s in self.segments) + sum(map(len, self.inits.values())) +
                sum(len(p.data) for p in self.parts))

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

    def part(self, number: int) -> Part | None:
        """Part ``number``, of the open segment or of one still kept."""
        for part in self.parts:
            if part.number == number:
                return part
        for segment in reversed(self.segments):
            if segment.parts and segment.parts[0].number <= number:
                for part in segment.parts:
                    if part.number == number:
                        return part
                return None
        return None

    @property
    def hint(self) -> int | None:
        """The number of the part EXT-X-PRELOAD-HINT names (the next one), if any."""
        if not self.part_target or self.ended or not self.init:
            return None
        return self._next_part

    def has(self, msn: int, part: int | None = None) -> bool:
        """Whether the playlist answers a blocking reload for segment ``msn`` (and its part
        ``part``) now (RFC 8216bis §6.2.5.2): a later one is listed, or the stream ended."""
        if self.ended:
            return True  # §6.2.5.2: directives are ignored once the playlist has EXT-X-ENDLIST
        if part is None:
            return msn < self._next
        if msn < self._next:
            segment = self.segment(msn)
            if segment is None or part < len(segment.parts):
                return True
            msn, part = msn + 1, 0  # past a segment's final part: part 0 of the next one
            if msn < self._next:
                return True
        return msn == self._next and part < len(self.parts)

    def check_ahead(self, msn: int, part: int | None = None) -> None:
        """Raise ``TooFar`` when ``msn`` is more than two past the last segment listed, or
        ``part`` more than the Advance Part Limit past the last part (RFC 8216bis §6.2.5.2)."""
        if self.ended:
            return
        last = self._next - 1
        if msn > last + 2:
            raise TooFar(f"_HLS_msn={msn} is more than two segments past the last ({last})",
                         "_HLS_msn")
        if part is None or msn < self._next:
            return
        target = self.part_target or self.target
        limit = 3 / target if target < 1 else 3
        ahead = part + 1 - (len(self.parts) if msn == self._next else 0)
        if ahead > limit:
            raise TooFar(f"_HLS_part={part} is more than {limit:g} parts past the last",
                         "_HLS_part")

    def playlist(self) -> str:
        """The media playlist (RFC 8216 §4.3), fMP4 segments (version 7); with parts, the
        low-latency tags of RFC 8216bis (§4.4.3.7 EXT-X-PART-INF, §4.4.3.8
        EXT-X-SERVER-CONTROL, §4.4.4.9 EXT-X-PART, §4.4.5.3 EXT-X-PRELOAD-HINT)."""
        longest = max([self.target] + [s.duration for s in self.segments])
        target = math.ceil(longest - 0.0005)
        lines = ["#EXTM3U", "#EXT-X-VERSION:7", f"#EXT-X-TARGETDURATION:{target}"]
        if self.part_target:
            part_target = math.ceil(self.longest_part * 1000 - 0.5) / 1000
            lines += [f"#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,"
                      f"PART-HOLD-BACK={3 * part_target:.3f}",
                      f"#EXT-X-PART-INF:PART-TARGET={part_target:.3f}"]
        lines += [f"#EXT-X-MEDIA-SEQUENCE:{self.sequence}",
                  f"#EXT-X-DISCONTINUITY-SEQUENCE:{self.discontinuity_sequence}"]
        # §6.2.2: parts are listed for the segments within three target durations of the end
        left = 3 * target - sum(p.duration for p in self.parts)
        listed = set()
        for segment in reversed(self.segments):
            if left <= 0:
                break
            listed.add(segment.sequence)
            left -= segment.duration
        init = None
        for number, segment in enumerate(self.segments):
            if segment.discontinuity and number:
                lines.append("#EXT-X-DISCONTINUITY")
            if segment.init != init:
                init = segment.init
                lines.append(f'#EXT-X-MAP:URI="init-{init}.mp4"')
            if self.part_target and segment.sequence in listed:
                lines += map(_part_line, segment.parts)
            lines += [f"#EXTINF:{segment.duration:.3f},", f"seg-{segment.sequence}.m4s"]
        if self.parts and self.part_target:
            if self._discontinuity and self.segments:
                lines.append("#EXT-X-DISCONTINUITY")
            if self.init != init:
                lines.append(f'#EXT-X-MAP:URI="init-{self.init}.mp4"')
            lines += map(_part_line, self.parts)
        if self.ended:
            lines.append("#EXT-X-ENDLIST")
        elif self.hint is not None:
            lines.append(f'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="part-{self.hint}.m4s"')
        return "\n".join(lines) + "\n"


def _part_line(part: Part) -> str:
    independent = ",INDEPENDENT=YES" if part.independent else ""
    return f'#EXT-X-PART:DURATION={part.duration:.3f},URI="part-{part.number}.m4s"{independent}'


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


def fragment_tracks(moof: bytes, default_duration: int = 0) -> dict[int, tuple]:
    """Each track fragment of a moof by track ID: (base media decode time, duration, sample
    count, whether its first sample is a sync sample), in that track's timescale (ISO
    14496-12 §8.8.7 tfhd, §8.8.8 trun, §8.8.12 tfdt; sample flags §8.8.3.1: the
    sample_is_non_sync_sample bit 0x10000; no flags anywhere reads as a sync sample)."""
    tracks = {}
    for kind, traf in _children(moof):
        if kind != b"traf":
            continue
        track, start, duration, count, first_flags = None, None, 0, 0, 0
        sample_duration, default_flags = default_duration, 0
        for sub, box in _children(traf):
            flags = int.from_bytes(box[9:12], "big")
            if sub == b"tfhd":
                track = int.from_bytes(box[12:16], "big")
                offset = 16 + (8 if flags & 0x01 else 0) + (4 if flags & 0x02 else 0)
                if flags & 0x08:
                    sample_duration = int.from_bytes(box[offset:offset + 4], "big")
                    offset += 4
                offset += 4 if flags & 0x10 else 0
                if flags & 0x20:
                    default_flags = int.from_bytes(box[offset:offset + 4], "big")
            elif sub == b"tfdt":
                start = int.from_bytes(box[12:20] if box[8] == 1 else box[12:16], "big")
            elif sub == b"trun":
                runs = int.from_bytes(box[12:16], "big")
                pos = 16 + (4 if flags & 0x01 else 0)
                first = None
                if flags & 0x04:
                    first = int.from_bytes(box[pos:pos + 4], "big")
                    pos += 4
                if not count:
                    # the first sample's flags: first-sample-flags, its own, or the default
                    flag_at = pos + (4 if flags & 0x100 else 0) + (4 if flags & 0x200 else 0)
                    if first is None and flags & 0x400 and runs:
                        first = int.from_bytes(box[flag_at:flag_at + 4], "big")
                    first_flags = default_flags if first is None else first
                count += runs
                step = 4 * bin(flags & 0xF00).count("1")
                if not flags & 0x100:
                    duration += runs * sample_duration
                    continue
                for _ in range(runs):
                    duration += int.from_bytes(box[pos:pos + 4], "big")
                    pos += step
        if start is None:
            raise ValueError("moof without tfdt")
        tracks[track] = (start, duration, count, not first_flags & 0x10000)
    return tracks


def fragment_span(moof: bytes, default_duration: int = 0) -> tuple[int, int]:
    """(base media decode time, duration) of the first track fragment of a moof, in that
    track's timescale (ISO 14496-12 §8.8.7 tfhd, §8.8.8 trun, §8.8.12 tfdt)."""
    tracks = fragment_tracks(moof, default_duration)
    if not tracks:
        raise ValueError("moof without tfdt")
    start, duration, _, _ = next(iter(tracks.values()))
    return start, duration


class HlsJob(MediaJob):
    """One stream muxed to fMP4 parts and segments (worker thread) stored in ``store``
    (reactor).  Every fragment the muxer writes is a part; a segment ends after the part that
    a keyframe follows once the segment is long enough (``target``)."""

    kind = "hls"

    def __init__(self, reactor, stream, store: SegmentStore, **kwargs):
        super().__init__(reactor, stream, **kwargs)
        self.store: SegmentStore | None = store  # None: detached, what is left goes nowhere
        self.target = store.target
        self.part = store.part_target

    def _to_store(self, method: str, *args) -> None:
        """Worker thread: ``store.method(*args)`` on the reactor thread, unless detached."""
        self.call(lambda: self.store is not None and getattr(self.store, method)(*args))

    def _options(self) -> tuple[dict, float]:
        """The muxer's options and how long a segment must be before it may end."""
        if self.stream.has_video:
            options = dict(HLS_OPTIONS)
            if self.part:  # a fragment at each keyframe and at the first frame past this
                options["frag_duration"] = str(int(max(self.part - VIDEO_MARGIN,
                                                       self.part / 2) * 1e6))
            return options, self.target - 0.05
        # every AAC frame is a key: fragments of the part (or target) duration
        length = max(self.part - AUDIO_MARGIN, self.part / 2) if self.part else self.target
        options = {"movflags": "empty_moov+default_base_moof", "flush_packets": "1",
                   "frag_duration": str(int(length * 1e6))}
        return options, self.target - (self.part / 2 if self.part else 0.05)

    def work(self) -> tuple[str, str]:
        stream = self.stream
        pipe = Pipeline(stream.has_video, stream.has_audio)
        boxes = _Boxes()
        out = None
        options, enough = self._options()
        init, pending, fragment = b"", [], None
        length = 0.0  # of the open segment
        frame = 0.04  # a video frame's duration, as last seen
        written = flushed = 0  # video samples given to the muxer, and in its fragments
        keys: collections.deque[int] = collections.deque()  # the keyframes' sample numbers
        cut = None  # when to ask for a keyframe (the source's own may come later)
        while True:
            item = self.next_frame()
            events = pipe.feed(*item) if item is not None else pipe.flush()
            for event in events:
                if out is None:
                    out = open_mp4(stream, pipe, boxes, options)
                out.write(event, pipe)
                if event[0] == "video" and out.video is not None:
                    if event[3]:
                        keys.append(written)
                        cut = event[1] + self.target
                    elif cut is not None and event[1] >= cut:
                        # the segment is long enough: ask the source for its next keyframe
                        self.call(stream.request_keyframe)
                        cut = None
                    written += 1
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
                    tracks = fragment_tracks(box)
                    video = tracks.get(1) if out.video is not None else None
                    audio = tracks.get(1 if out.video is None else 2)
                    # the video's span; the audio's when it has none (the last, or a stall)
                    if video is not None and video[1]:
                        seconds = video[1] / 90000
                        frame = seconds / video[2]
                    elif video is not None:  # the last fragment: its frame has no duration
                        seconds = video[2] * frame
                    else:
                        seconds = audio[1] / out.audio.rate if audio and out.audio else 0.0
                    if out.video is None:  # AAC only: every frame is a key
                        fragment = (seconds, True, True)
                    else:
                        flushed += video[2] if video is not None else 0
                        while keys and keys[0] < flushed:
                            keys.popleft()
                        fragment = (seconds, video is not None and video[3],
                                    bool(keys) and keys[0] == flushed)
                # a fragment is complete once its mdat is out: a part
                if kind == b"mdat" and fragment is not None:
                    duration, independent, followed = fragment
                    if independent and length >= enough:  # the keyframe came unannounced
                        self._to_store("close_segment")
                        length = 0.0
                    self._to_store("add_part", duration, b"".join(pending), independent)
                    pending, fragment = [], None
                    length += duration
                    if followed and length >= enough:
                        self._to_store("close_segment")
                        length = 0.0
            if item is None:
                break
        self._to_store("close_segment")
        return "FINISHED", ""


class Unavailable(Exception):
    """A held request that cannot be answered in time (503, RFC 8216bis §6.2.5.2)."""


class Busy(Unavailable):
    """Too many requests held at once (``hls_max_blocked_requests``)."""


class _Hold:
    __slots__ = ("ready", "deferred", "timer")

    def __init__(self, ready):
        self.ready = ready
        self.deferred = None
        self.timer = None


class HeldRequests:
    """Requests held until a store has what they ask for (a blocking playlist reload, a
    hinted part, a first playlist): at most ``limit`` at once, each for at most its timeout.
    Reactor thread, no I/O; timers through ``reactor.callLater``."""

    def __init__(self, reactor, limit: int):
        self.reactor = reactor
        self.limit = limit
        self.count = 0
        self._held: dict[SegmentStore, list[_Hold]] = {}

    def hold(self, store: SegmentStore, ready, timeout: float) -> defer.Deferred:
        """Fires with True once ``ready()`` is (checked after each change of ``store``), with
        False after ``timeout`` seconds; raises ``Busy`` when ``limit`` are held already.
        Cancelling it (the player went away) lets it go."""
        if ready():
            return defer.succeed(True)
        if self.count >= self.limit:
            raise Busy(f"{self.limit} HLS requests are held already")
        hold = _Hold(ready)
        hold.deferred = defer.Deferred(lambda _: self._drop(store, hold))
        hold.timer = self.reactor.callLater(timeout, self._expire, store, hold)
        held = self._held.setdefault(store, [])
        if not held:
            store.listeners.append(self._changed)
        held.append(hold)
        self.count += 1
        return hold.deferred

    def _drop(self, store: SegmentStore, hold: _Hold) -> None:
        held = self._held.get(store, [])
        if hold not in held:
            return
        held.remove(hold)
        self.count -= 1
        if hold.timer.active():
            hold.timer.cancel()
        if not held:
            del self._held[store]
            store.listeners.remove(self._changed)

    def _expire(self, store: SegmentStore, hold: _Hold) -> None:
        self._drop(store, hold)
        hold.deferred.callback(False)

    def _changed(self, store: SegmentStore) -> None:
        for hold in list(self._held.get(store, ())):
            if hold in self._held.get(store, ()) and hold.ready():
                self._drop(store, hold)
                hold.deferred.callback(True)


class _Live:
    """One stream's HLS: its store, its muxing job, when a player last asked and who."""

    def __init__(self, store: SegmentStore):
        self.store = store
        self.job: HlsJob | None = None
        self.last = 0.0
        self.timer = None
        self.waiting = 0  # requests held (first segment, blocking reloads, hinted parts)
        self.players: collections.OrderedDict[str, float] = collections.OrderedDict()


MAX_PLAYERS_TRACKED = 4096  # client addresses remembered per stream (the players gauge)


class HlsManager:
    """Every stream played over HLS (reactor thread), by stream name."""

    def __init__(self, reactor, registry, *, target: float = 2.0, count: int = 6,
                 max_bytes: int = 32 << 20, idle: float = 20.0, wait: float | None = None,
                 keyframes=None, queue_frames: int | None = None, part: float = 0.0,
                 max_held: int = 1000, block_timeout: float = 0.0):
        self.reactor = reactor
        self.registry = registry
        self.target, self.count, self.max_bytes, self.idle = target, count, max_bytes, idle
        self.part_target = part  # seconds; 0: whole segments only
        self.wait = wait if wait is not None else 3 * target + 5  # first segment, at most
        self.block_timeout = block_timeout or 3 * target  # RFC 8216bis §6.2.5.2
        self.keyframes = keyframes
        self.queue_frames = queue_frames
        self.live: dict[str, _Live] = {}
        self.held = HeldRequests(reactor, max_held)
        self.requests: collections.Counter = collections.Counter()  # by kind of resource
        self.reloads: collections.Counter = collections.Counter()  # blocking, by outcome

    def _touch(self, name: str, start: bool, client: str | None = None) -> _Live | None:
        """The stream's HLS, its idle timer restarted; ``start``: a muxing job for the
        stream's current publication if none runs (a playlist request)."""
        stream = self.registry.get(name)
        live = self.live.get(name)
        if live is None:
            if not start or stream is None or stream.ended:
                return None
            live = self.live[name] = _Live(SegmentStore(self.target, self.count,
                                                        self.max_bytes, self.part_target))
        live.last = self.reactor.seconds()
        if client is not None:
            live.players[client] = live.last
            live.players.move_to_end(client)
            while len(live.players) > MAX_PLAYERS_TRACKED:
                live.players.popitem(last=False)
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

    async def _hold(self, live: _Live, ready, timeout: float) -> bool:
        live.waiting += 1
        try:
            return await self.held.hold(live.store, ready, timeout)
        finally:
            live.waiting -= 1
            live.last = self.reactor.seconds()

    async def playlist(self, name: str, msn: int | None = None, part: int | None = None,
                       client: str | None = None) -> str | None:
        """The stream's media playlist once it has a segment; None: no such stream, or no
        segment within ``wait`` seconds.  With ``msn`` (and ``part``), a blocking reload
        (RFC 8216bis §6.2.5.2): answered once the playlist has that segment (part); raises
        ``TooFar`` for one too far ahead, ``Unavailable`` when it does not come within
        ``block_timeout`` or too many requests are held."""
        self.requests["playlist"] += 1
        live = self._touch(name, start=True, client=client)
        if live is None:
            return None
        store = live.store
        if not await self._hold(live, lambda: bool(store.segments or store.ended), self.wait):
            return None
        if not store.segments:
            return None
        if msn is not None:
            try:
                store.check_ahead(msn, part)
            except TooFar:
                self.reloads["too_far"] += 1
                raise
            try:
                answered = await self._hold(live, lambda: store.has(msn, part),
                                            self.block_timeout)
            except Busy:
                self.reloads["refused"] += 1
                raise
            self.reloads["answered" if answered else "timed_out"] += 1
            if not answered:
                raise Unavailable(f"segment {msn} part {part} did not come within "
                                  f"{self.block_timeout:g} s")
        return store.playlist()

    def part(self, name: str, file: str, client: str | None = None) -> bytes | None:
        """``init-N.mp4``, ``seg-N.m4s`` or ``part-N.m4s`` of the stream, None when not (or
        no longer) kept."""
        live = self._touch(name, start=False, client=client)
        kind, number = _resource(file)
        self.requests[kind or "unknown"] += 1
        if live is None or kind is None:
            return None
        store = live.store
        if kind == "init":
            return store.inits.get(number)
        if kind == "segment":
            segment = store.segment(number)
            return segment.data if segment is not None else None
        found = store.part(number)
        return bytes(found.data) if found is not None else None

    async def fetch(self, name: str, file: str, client: str | None = None) -> bytes | None:
        """As ``part``, but the part EXT-X-PRELOAD-HINT names is answered once it exists
        (RFC 8216bis §6.2.6), held as a blocking reload is."""
        live = self.live.get(name)
        kind, number = _resource(file)
        if live is not None and kind == "part" and number == live.store.hint:
            store = live.store
            if not await self._hold(live, lambda: store.hint != number, self.block_timeout):
                self.requests[kind] += 1
                raise Unavailable(f"part {number} did not come within "
                                  f"{self.block_timeout:g} s")
        return self.part(name, file, client)

    def streams_muxed(self) -> int:
        """Streams being muxed to HLS now."""
        return sum(1 for live in self.live.values()
                   if live.job is not None and not live.job.finished)

    def players(self) -> int:
        """Client addresses that asked for a stream within the last ``idle`` seconds."""
        since = self.reactor.seconds() - self.idle
        return sum(sum(1 for at in live.players.values() if at >= since)
                   for live in self.live.values())

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


_KINDS = {("init", "mp4"): "init", ("seg", "m4s"): "segment", ("part", "m4s"): "part"}


def _resource(file: str) -> tuple[str | None, int]:
    """(kind, number) of ``init-N.mp4``, ``seg-N.m4s`` or ``part-N.m4s``; (None, 0) else."""
    prefix, _, rest = file.partition("-")
    number, _, ext = rest.partition(".")
    kind = _KINDS.get((prefix, ext))
    # from the URL: ASCII digits only (int() refuses "²" and more than 4300 digits)
    if kind is None or not (number.isascii() and number.isdigit()) or len(number) > 20:
        return None, 0
    return kind, int(number)
