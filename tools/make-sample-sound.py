"""Writes sipgw/media/sounds/sample.wav: the built-in sound the WCS SIP-as-RTMP pages play
(their "Music" box asks for soundFile=sample.wav).  Made by this script, so it carries no
third party's rights: a slow C-major arpeggio of decaying tones, 8 s, 16 kHz mono 16-bit.

    .venv/bin/python tools/make-sample-sound.py
"""
import os

import av
import numpy

RATE = 16000
NOTES = [261.63, 329.63, 392.00, 523.25, 392.00, 329.63, 293.66, 349.23,
         440.00, 587.33, 440.00, 349.23, 261.63, 329.63, 392.00, 523.25]  # Hz, 0.5 s each


def melody() -> numpy.ndarray:
    step = RATE // 2
    t = numpy.arange(step) / RATE
    envelope = numpy.exp(-3.0 * t) * numpy.minimum(1.0, t / 0.01)
    tones = [(numpy.sin(2 * numpy.pi * hz * t) + 0.3 * numpy.sin(4 * numpy.pi * hz * t))
             * envelope for hz in NOTES]
    return (numpy.concatenate(tones) * 0.5 * 32767 / 1.3).astype("<i2")


def main() -> None:
    path = os.path.join(os.path.dirname(__file__), "..", "sipgw", "media", "sounds", "sample.wav")
    with av.open(path, "w", format="wav") as out:
        stream = out.add_stream("pcm_s16le", rate=RATE, layout="mono")
        frame = av.AudioFrame.from_ndarray(melody().reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = RATE
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    print(f"wrote {os.path.normpath(path)} ({os.path.getsize(path)} bytes)")


if __name__ == "__main__":
    main()
