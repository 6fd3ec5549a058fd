"""Synthetic media for the media tests and the benchmark: H.264 access units encoded
with PyAV's libx264 (Annex-B, SPS/PPS in-band on every keyframe), PCMU from a sine,
a stand-in for the reactor's ``callFromThread`` and ffprobe."""
from __future__ import annotations

import functools
import json
import math
import queue
import subprocess
import time
from fractions import Fraction

import av
import numpy

from sipgw.streams.stream import MediaFrame

VIDEO_RATE = 90000


@functools.lru_cache(maxsize=8)
def h264_access_units(count: int = 50, *, fps: int = 25, width: int = 320, height: int = 240,
                      gop: int = 25) -> tuple[tuple[bytes, bool], ...]:
    """``count`` access units of a moving picture, a keyframe every ``gop`` frames."""
    encoder = av.CodecContext.create("libx264", "w")
    encoder.width, encoder.height, encoder.pix_fmt = width, height, "yuv420p"
    encoder.time_base = Fraction(1, fps)
    encoder.framerate = fps
    encoder.options = {"preset": "ultrafast", "tune": "zerolatency", "profile": "baseline",
                       "x264-params": f"repeat-headers=1:keyint={gop}:min-keyint={gop}:scenecut=0"}
    units = []
    y, x = numpy.mgrid[0:height, 0:width]
    for i in range(count):
        image = numpy.stack([(x + i * 4) % 256, (y + i * 2) % 256, (x + y) % 256],
                            axis=-1).astype(numpy.uint8)
        frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p")
        frame.pts = i
        units += [(bytes(p), bool(p.is_keyframe)) for p in encoder.encode(frame)]
    units += [(bytes(p), bool(p.is_keyframe)) for p in encoder.encode(None)]
    return tuple(units[:count])


def _ulaw(sample: int) -> int:
    """G.711 mu-law of one 16-bit sample."""
    bias, clip = 0x84, 32635
    sign = 0x80 if sample < 0 else 0
    sample = min(abs(sample), clip) + bias
    exponent = 7
    for exp in range(7, -1, -1):
        if sample & (0x4000 >> (7 - exp)):
            exponent = exp
            break
    mantissa = (sample >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


@functools.lru_cache(maxsize=4)
def pcmu_payloads(seconds: float, hz: float = 440.0) -> tuple[bytes, ...]:
    """20 ms PCMU payloads of a sine."""
    table = bytes(_ulaw(int(8000 * math.sin(2 * math.pi * hz * n / 8000))) for n in range(8000))
    total = int(seconds * 50)
    return tuple(bytes(table[(i * 160 + k) % 8000] for k in range(160)) for i in range(total))


def frames(seconds: float, *, fps: int = 25, gop: int = 25, audio: bool = True,
           video: bool = True, video_ts0: int = 1234567, audio_ts0: int = 4000000000):
    """(seconds, MediaFrame) in time order: video at ``fps``, PCMU every 20 ms.  RTP
    timestamps start at random-looking offsets (the audio one wraps past 2^32)."""
    out = []
    if video:
        units = h264_access_units(max(1, int(seconds * fps)), fps=fps, gop=gop)
        for i, (data, key) in enumerate(units):
            ts = (video_ts0 + i * VIDEO_RATE // fps) % (1 << 32)
            out.append((i / fps, MediaFrame("video", "H264", VIDEO_RATE, ts, data, key)))
    if audio:
        for i, payload in enumerate(pcmu_payloads(seconds)):
            ts = (audio_ts0 + i * 160) % (1 << 32)
            out.append((i * 0.02 + 0.001, MediaFrame("audio", "PCMU", 8000, ts, payload)))
    out.sort(key=lambda pair: pair[0])
    return out


class FakeClock:
    """A monotonic clock the test moves."""

    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


class ThreadCalls:
    """Stands in for the reactor: ``callFromThread`` queues, the test thread runs them."""

    def __init__(self):
        self.calls: queue.Queue = queue.Queue()

    def callFromThread(self, fn, *args, **kwargs):
        self.calls.put((fn, args, kwargs))

    def run_pending(self) -> None:
        while True:
            try:
                fn, args, kwargs = self.calls.get_nowait()
            except queue.Empty:
                return
            fn(*args, **kwargs)

    def run_until(self, condition, timeout: float = 20.0, what: str = "condition"):
        deadline = time.monotonic() + timeout
        while True:
            self.run_pending()
            result = condition()
            if result:
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not within {timeout:g} s")
            try:
                fn, args, kwargs = self.calls.get(timeout=0.02)
            except queue.Empty:
                continue
            fn(*args, **kwargs)


class ClockedCalls(ThreadCalls):
    """ThreadCalls with a task.Clock for callLater (``advance`` moves it)."""

    def __init__(self):
        from twisted.internet.task import Clock
        super().__init__()
        self.clock = Clock()
        self.callLater, self.advance = self.clock.callLater, self.clock.advance
        self.seconds = self.clock.seconds


def publish(stream, timed_frames, clock: FakeClock | None = None, *, realtime: bool = False,
            calls: ThreadCalls | None = None, start: float | None = None) -> None:
    """Publish ``(seconds, frame)`` pairs, moving ``clock`` (or sleeping, ``realtime``)."""
    origin = time.monotonic() if start is None else start
    base = clock.now if clock is not None else 0.0
    for at, frame in timed_frames:
        if realtime:
            delay = origin + at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        elif clock is not None:
            clock.now = base + at
        if calls is not None:
            calls.run_pending()
        stream.publish(frame)


def ffprobe(path_or_url: str, timeout: float = 30) -> dict:
    """ffprobe's streams and format as JSON."""
    result = subprocess.run(
        ["ffprobe", "-v", "error", "-show_streams", "-show_format", "-of", "json", path_or_url],
        capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(f"ffprobe failed: {result.stderr.strip()[-2000:]}")
    return json.loads(result.stdout)
