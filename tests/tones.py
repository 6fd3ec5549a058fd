"""Tones for the media tests: a sine written as a sound file, sine payloads in a call codec,
RTP payloads decoded back to samples with PyAV, and the frequency that dominates them."""
from __future__ import annotations

from fractions import Fraction

import av
import numpy

CODECS = {"PCMU": ("pcm_mulaw", 8000), "PCMA": ("pcm_alaw", 8000), "opus": ("libopus", 48000)}


def tone_wav(path, hz: float = 1000.0, seconds: float = 0.5, rate: int = 8000):
    """A mono 16-bit WAV of a ``hz`` sine at ``path``."""
    with av.open(str(path), "w") as out:
        audio = out.add_stream("pcm_s16le", rate=rate, layout="mono")
        n = int(rate * seconds)
        tone = numpy.sin(2 * numpy.pi * hz * numpy.arange(n) / rate) * 16000
        frame = av.AudioFrame.from_ndarray(tone.astype("<i2").reshape(1, -1), format="s16",
                                           layout="mono")
        frame.sample_rate = rate
        for packet in audio.encode(frame):
            out.mux(packet)
        for packet in audio.encode(None):
            out.mux(packet)
    return path


def tone_payloads(codec: str, hz: float, seconds: float) -> list[bytes]:
    """20 ms RTP payloads of a ``hz`` sine in ``codec`` (PCMU, PCMA, opus)."""
    name, rate = CODECS[codec]
    encoder = av.CodecContext.create(name, "w")
    encoder.sample_rate, encoder.layout, encoder.format = rate, "mono", "s16"
    encoder.time_base = Fraction(1, rate)
    encoder.open()
    step = rate // 50
    out = []
    for i in range(int(seconds * 50)):
        t = numpy.arange(i * step, (i + 1) * step) / rate
        pcm = (numpy.sin(2 * numpy.pi * hz * t) * 12000).astype(numpy.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = rate, i * step, Fraction(1, rate)
        out += [bytes(p) for p in encoder.encode(frame)]
    return out


def decode(codec: str, payloads: list[bytes]) -> tuple[numpy.ndarray, int]:
    """Mono float samples of RTP ``payloads`` in ``codec``, and their rate."""
    name, rate = CODECS[codec]
    decoder = av.CodecContext.create(name, "r")
    decoder.sample_rate = rate
    decoder.layout = "stereo" if codec == "opus" else "mono"
    resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
    chunks = []
    for payload in payloads:
        for frame in decoder.decode(av.Packet(payload)):
            chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
    return (numpy.concatenate(chunks) if chunks else numpy.zeros(0)), rate


def dominant_hz(samples: numpy.ndarray, rate: int) -> float:
    """The frequency of the spectrum's peak (FFT), 0 for silence."""
    if not len(samples) or not numpy.abs(samples).max():
        return 0.0
    spectrum = numpy.abs(numpy.fft.rfft(samples * numpy.hanning(len(samples))))
    return float(numpy.argmax(spectrum) * rate / len(samples))
