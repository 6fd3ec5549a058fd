"""CPU of the injection's PyAV work (sipgw/media/inject.py) per second of injected audio.

What an injection's worker thread does, without the reactor: ``--seconds`` of a 440 Hz tone in
each source codec decoded, resampled and encoded to each call codec (inject_stream), and a
sound file encoded from its decoded samples (inject_sound), 20 ms payloads as the sender takes
them.  Baseline from the same run: the push's audio path (``AacEncoder``: PCMU to AAC), which
every /push/startup of a call pays.  Printed: ms of CPU (this thread's) per second of audio,
and the injections one core would carry at that rate.

    .venv/bin/python bench/inject_cpu.py               # 20 s of audio per path
    .venv/bin/python bench/inject_cpu.py --seconds 5   # quicker
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

from sipgw.media.audio import AacEncoder, SoundLoop  # noqa: E402
from sipgw.media.inject import AudioDecoder, PayloadEncoder  # noqa: E402
from sipgw.sip.sdp import Codec  # noqa: E402
from tones import tone_payloads, tone_wav  # noqa: E402

CODECS = {"PCMU": Codec(0, "PCMU", 8000), "PCMA": Codec(8, "PCMA", 8000),
          "opus": Codec(111, "opus", 48000, 2)}


def cpu(run) -> float:
    start = time.thread_time()
    run()
    return time.thread_time() - start


def stream_path(source: str, target: str, payloads: list[bytes]) -> float:
    def run():
        encoder = PayloadEncoder(CODECS[target])
        decoder = AudioDecoder(source, CODECS[source].clock, encoder.rate)
        for payload in payloads:
            encoder.encode(decoder.decode(payload))
    return cpu(run)


def sound_path(target: str, path: str, seconds: float) -> float:
    def run():
        encoder = PayloadEncoder(CODECS[target])
        sound = SoundLoop(path, encoder.rate, loop=True)
        for _ in range(int(seconds * 50)):
            encoder.encode(sound.take(encoder.frame))
    return cpu(run)


def aac_baseline(payloads: list[bytes]) -> float:
    def run():
        encoder = AacEncoder("PCMU", 8000)
        for i, payload in enumerate(payloads):
            encoder.push(payload, i * 0.02)
    return cpu(run)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    seconds = args.seconds
    rows = []
    sources = {name: tone_payloads(name, 440, seconds) for name in CODECS}
    rows.append(("baseline: push audio PCMU -> AAC", aac_baseline(sources["PCMU"])))
    for source in CODECS:
        for target in CODECS:
            rows.append((f"inject_stream {source} -> {target}",
                         stream_path(source, target, sources[source])))
    with tempfile.TemporaryDirectory() as folder:
        path = str(tone_wav(os.path.join(folder, "tone.wav"), 1000, 10.0, rate=44100))
        for target in CODECS:
            rows.append((f"inject_sound WAV 44.1 kHz -> {target}",
                         sound_path(target, path, seconds)))
    print(f"{'path':40} {'ms CPU / s audio':>17} {'injections / core':>18}")
    for name, spent in rows:
        per_second = spent * 1000 / seconds
        print(f"{name:40} {per_second:17.2f} {1000 / per_second:18.0f}")


if __name__ == "__main__":
    main()
