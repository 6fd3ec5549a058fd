"""Sound files shipped with sipgw, used when ``sound_dir`` has no file of the asked name.

``sample.wav`` is the name the WebSDK's SIP-as-RTMP pages send for their "Music" box
(``soundFile: "sample.wav"``).  sipgw makes it itself (``chord()``, below): a 2 s A-major chord
(A4, C#5, E5) at 16 kHz, 16-bit mono, with a short fade at both ends so that a looped push
does not click.  No third-party recording, so no licence but sipgw's own.
``python -m sipgw.sounds`` writes it again; tests/media/test_sounds.py checks the shipped file
is exactly what ``chord()`` makes.
"""
from __future__ import annotations

import io
import math
import os
import struct
import wave

HERE = os.path.dirname(os.path.abspath(__file__))
SAMPLE = "sample.wav"
CHORD_HZ = (440.0, 554.37, 659.25)


def chord(seconds: float = 2.0, rate: int = 16000, fade: float = 0.05) -> bytes:
    """The WAV bytes of the A-major chord (deterministic: the same bytes on every machine)."""
    total = int(seconds * rate)
    ramp = max(1, int(fade * rate))
    frames = bytearray()
    for n in range(total):
        value = sum(math.sin(2 * math.pi * hz * n / rate) for hz in CHORD_HZ) / len(CHORD_HZ)
        gain = min(1.0, n / ramp, (total - 1 - n) / ramp)
        frames += struct.pack("<h", int(round(0.6 * 32767 * value * gain)))
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(bytes(frames))
    return out.getvalue()


def builtin(name: str) -> str | None:
    """The path of a shipped sound called ``name``, or None."""
    path = os.path.join(HERE, name)
    return path if name.endswith(".wav") and os.path.isfile(path) else None

