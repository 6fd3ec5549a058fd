"""Audio from RTP payloads (PCMU, PCMA, opus) to AAC with PyAV.  Runs on a worker thread.

Input frames are placed on the timeline by their position (seconds since the origin);
the AAC output is kept contiguous: a gap of lost packets is filled with silence (so
audio stays in step with video), a frame overlapping what was already encoded is
dropped, and a gap longer than ``max_fill`` seconds restarts the audio clock there.
"""
from __future__ import annotations

import os
from fractions import Fraction

import av
import numpy

DECODERS = {"PCMU": "pcm_mulaw", "PCMA": "pcm_alaw", "opus": "libopus"}
_DTYPES = {"u8": "u1", "s16": "<i2", "s32": "<i4", "flt": "<f4", "dbl": "<f8"}
_TOLERANCE = 0.030  # s: jitter accepted before a frame is called early or late


def output_rate(codec: str, clock_rate: int) -> int:
    """AAC sample rate for a source: 16 kHz for narrow-band G.711, 48 kHz otherwise."""
    return 16000 if clock_rate <= 16000 else 48000


def ffmpeg_codec(codec: str) -> str:
    """FFmpeg's codec for RTP's ``codec`` (one of DECODERS): FFmpeg's own opus when this
    PyAV build has no libopus."""
    name = DECODERS[codec]
    if name == "libopus" and name not in av.codecs_available:
        name = "opus"
    return name


def payload_decoder(codec: str, clock_rate: int) -> av.CodecContext:
    """A PyAV decoder of RTP payloads of ``codec`` (one of DECODERS) at ``clock_rate``."""
    decoder = av.CodecContext.create(ffmpeg_codec(codec), "r")
    decoder.sample_rate = clock_rate
    decoder.layout = "stereo" if codec == "opus" else "mono"
    return decoder


class AacEncoder:
    """RTP audio payloads in, (pts in 1/rate, raw AAC frame) out."""

    def __init__(self, codec: str, clock_rate: int, bit_rate: int = 48000,
                 max_fill: float = 5.0):
        if codec not in DECODERS:
            raise ValueError(f"no AAC transcoding from {codec!r}")
        self.codec = codec
        self.in_rate = clock_rate
        self.rate = output_rate(codec, clock_rate)
        self.max_fill = max_fill
        self.filled = 0  # seconds of silence inserted for lost packets
        self.dropped = 0
        self.switches = 0  # input codec changes (the callee switched codec mid-call)
        self._decoder = payload_decoder(codec, clock_rate)
        self._encoder = av.CodecContext.create("aac", "w")
        self._encoder.sample_rate = self.rate
        self._encoder.layout = "mono"
        self._encoder.format = "fltp"
        self._encoder.bit_rate = bit_rate
        self._encoder.time_base = Fraction(1, self.rate)
        self._encoder.open()
        self.frame_size = self._encoder.frame_size or 1024
        self._resampler = av.AudioResampler(format="fltp", layout="mono", rate=self.rate,
                                            frame_size=self.frame_size)
        self._next: int | None = None  # next input sample position (1/in_rate)
        self._in_tb = Fraction(1, clock_rate)
        # substitute(n, rate): n mono float samples to encode instead of the source's, or
        # None for the source's (a push muted or playing a sound file)
        self.substitute = None

    def switch(self, codec: str, clock_rate: int) -> None:
        """Decode ``codec`` at ``clock_rate`` from now on; the AAC output (rate, timeline)
        goes on unchanged.  What the old resampler held (less than one AAC frame) is let go:
        a short frame in mid-stream is refused by the encoder."""
        self._decoder = payload_decoder(codec, clock_rate)
        self._resampler = av.AudioResampler(format="fltp", layout="mono", rate=self.rate,
                                            frame_size=self.frame_size)
        if self._next is not None:
            self._next = round(self._next * clock_rate / self.in_rate)
        self.codec, self.in_rate, self._in_tb = codec, clock_rate, Fraction(1, clock_rate)
        self.switches += 1

    @property
    def extradata(self) -> bytes:
        """The AudioSpecificConfig (FLV's AAC sequence header, MP4's esds)."""
        return bytes(self._encoder.extradata or b"")

    def push(self, payload: bytes, position: float) -> list[tuple[int, bytes]]:
        try:
            frames = self._decoder.decode(av.Packet(payload))
        except av.FFmpegError:
            self.dropped += 1
            return []
        out = []
        for frame in frames:
            out += self._place(frame, position)
            position += frame.samples / self.in_rate
        return out

    def _place(self, frame: av.AudioFrame, position: float) -> list[tuple[int, bytes]]:
        at = round(position * self.in_rate)
        out = []
        if self._next is None:
            self._next = at
        gap = (at - self._next) / self.in_rate
        if gap > self.max_fill:
            self._next = at  # a long silence (hold): restart the audio clock here
        elif gap > _TOLERANCE:
            out += self._silence(at - self._next, frame)
        elif gap < -_TOLERANCE - frame.samples / self.in_rate:
            self.dropped += 1  # overlaps what was already encoded
            return out
        frame.pts = self._next
        frame.time_base = self._in_tb
        self._next += frame.samples
        out += self._encode(frame)
        return out

    def _silence(self, samples: int, like: av.AudioFrame) -> list[tuple[int, bytes]]:
        out = []
        self.filled += samples / self.in_rate
        channels = len(like.layout.channels)
        while samples > 0:
            n = min(samples, like.samples or 160)
            shape = (channels, n) if like.format.is_planar else (1, n * channels)
            dtype = _DTYPES[like.format.name.rstrip("p")]
            silent = av.AudioFrame.from_ndarray(numpy.zeros(shape, dtype=dtype),
                                                format=like.format.name, layout=like.layout.name)
            silent.sample_rate = self.in_rate
            silent.pts = self._next
            silent.time_base = self._in_tb
            self._next += n
            samples -= n
            out += self._encode(silent)
        return out

    def _encode(self, frame: av.AudioFrame | None) -> list[tuple[int, bytes]]:
        out = []
        for resampled in self._resampler.resample(frame):
            samples = self.substitute and self.substitute(resampled.samples, self.rate)
            if samples is not None:
                resampled = _mono(samples, resampled, self.rate)
            for packet in self._encoder.encode(resampled):
                out.append((packet.pts, bytes(packet)))
        return out

    def flush(self) -> list[tuple[int, bytes]]:
        out = self._encode(None)
        for packet in self._encoder.encode(None):
            out.append((packet.pts, bytes(packet)))
        return out


def _mono(samples: numpy.ndarray, like: av.AudioFrame, rate: int) -> av.AudioFrame:
    """A fltp mono frame of ``samples`` in the place (pts, time base) of ``like``."""
    frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="fltp", layout="mono")
    frame.sample_rate, frame.pts, frame.time_base = rate, like.pts, like.time_base
    return frame


SOUND_FILE_MAX_BYTES = 64 << 20  # a bigger file would hold the push's worker demuxing it


class SoundLoop:
    """A sound file decoded with PyAV (on the worker thread that plays it) to mono float
    samples at ``rate``, at most ``max_seconds`` of it from a file of at most ``max_bytes``;
    ``take(n)`` gives the next ``n``, from the start again at the end (``loop``) or silence
    once played through."""

    def __init__(self, path: str, rate: int, loop: bool = True, max_seconds: float = 60.0,
                 max_bytes: int = SOUND_FILE_MAX_BYTES):
        if os.path.getsize(path) > max_bytes:
            raise ValueError(f"the sound file is over {max_bytes >> 20} MB")
        limit = int(rate * max_seconds)
        chunks, total = [], 0
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        with av.open(path) as container:
            if not container.streams.audio:
                raise ValueError("no audio in the sound file")
            for frame in container.decode(audio=0):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
                    total += out.samples
                if total >= limit:
                    break
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray().reshape(-1))
        samples = numpy.concatenate(chunks)[:limit] if chunks else numpy.zeros(0)
        if not samples.size:
            raise ValueError("no audio in the sound file")
        self.samples = samples.astype(numpy.float32)
        self.loop = loop
        self._at = 0

    @property
    def played(self) -> bool:
        """Played through once, not looped: ``take`` gives only silence from now on."""
        return not self.loop and self._at >= len(self.samples)

    def take(self, n: int) -> numpy.ndarray:
        out = numpy.zeros(n, dtype=numpy.float32)
        filled = 0
        while filled < n:
            if self._at >= len(self.samples):
                if not self.loop:
                    break
                self._at = 0
            k = min(n - filled, len(self.samples) - self._at)
            out[filled:filled + k] = self.samples[self._at:self._at + k]
            filled += k
            self._at += k
        return out
