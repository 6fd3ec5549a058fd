"""HLS: how far behind the live edge segments and low-latency parts are when they are listed.

One synthetic stream (H.264 320x240 25 fps, a keyframe every second, as baresip sends with
periodic keyframe requests; PCMU 20 ms frames, transcoded to AAC) is published in real time
into an ``HlsJob`` (the daemon's muxing: worker thread, PyAV, fMP4), for ``--seconds``, once
with whole segments only (``hls_part_duration=0``: the baseline, same run) and once with parts
of ``--part`` seconds, at each target duration.  For every segment and every part:
**publication delay** = the moment it is in the playlist - the arrival of its last frame (what
the segmenter adds), and **age of its first frame** at that moment.  A player's distance to the
live edge is about the delay, plus half a segment (or part: the playlist's end ages until the
next one is listed), plus what it holds back: hls.js without parts starts 3 target durations
before the end (liveSyncDurationCount), with parts PART-HOLD-BACK (3 parts).

    .venv/bin/python bench/hls_latency.py             # 20 s per run (about 90 s)
    .venv/bin/python bench/hls_latency.py --seconds 8
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests", "media")]

import synthetic  # noqa: E402
from sipgw.media.hls import HlsJob, SegmentStore  # noqa: E402
from sipgw.streams.stream import Stream  # noqa: E402


class TimedStore(SegmentStore):
    """A store that notes when each segment and each part is listed (time.monotonic)."""

    def __init__(self, *args):
        super().__init__(*args)
        self.segment_times: list[float] = []
        self.part_times: list[float] = []

    def add_part(self, duration, data, independent):
        self.part_times.append(time.monotonic())
        return super().add_part(duration, data, independent)

    def close_segment(self):
        segment = super().close_segment()
        if segment is not None:
            self.segment_times.append(time.monotonic())
        return segment


def _spans(durations: list[float], listed: list[float], origin: float) -> dict:
    """Delay (listed - end) and first-frame age (listed - start) of consecutive media, the
    last one (flushed at the end) left out."""
    delays, ages, start = [], [], 0.0
    for duration, at in list(zip(durations, listed))[:-1]:
        ages.append(at - (origin + start))
        delays.append(at - (origin + start + duration))
        start += duration
    return {"count": len(delays), "duration": statistics.mean(durations[:-1]),
            "delay_p50": statistics.median(delays), "delay_max": max(delays),
            "age_p50": statistics.median(ages), "age_max": max(ages)}


def run(target: float, part: float, seconds: float) -> dict:
    calls = synthetic.ThreadCalls()
    stream = Stream("bench", has_video=True)
    stream.audio_codec, stream.video_codec, stream.width, stream.height = "PCMU", "H264", 320, 240
    store = TimedStore(target, 1000, 1 << 30, part)
    job = HlsJob(calls, stream, store).start()
    timed = synthetic.frames(seconds)
    origin = time.monotonic()
    synthetic.publish(stream, timed, realtime=True, calls=calls, start=origin)
    stream.end()
    calls.run_until(lambda: job.finished, what="the HLS job to end")
    segments = list(store.segments)
    parts = [p for s in segments for p in s.parts]
    return {"segments": _spans([s.duration for s in segments], store.segment_times, origin),
            "parts": _spans([p.duration for p in parts], store.part_times, origin),
            "part_target": store.longest_part}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--part", type=float, default=0.5, help="part duration (seconds)")
    args = parser.parse_args()
    synthetic.h264_access_units(int(args.seconds * 25), fps=25, gop=25)  # encode before timing
    print("target  listed            count  duration   delay p50/max    first-frame age p50/max"
          "   player behind the edge (p50)")
    for target in (1.0, 2.0):
        baseline = run(target, 0.0, args.seconds)["segments"]
        low = run(target, args.part, args.seconds)
        rows = [("segments (no parts)", baseline, 3 * target),
                ("segments (parts on)", low["segments"], 3 * target),
                (f"parts of {args.part:g} s", low["parts"], 3 * low["part_target"])]
        for label, r, hold in rows:
            print(f"{target:4.0f} s  {label:18s} {r['count']:5d}  {r['duration']:6.3f} s  "
                  f"{r['delay_p50'] * 1000:5.0f}/{r['delay_max'] * 1000:4.0f} ms    "
                  f"{r['age_p50']:.3f}/{r['age_max']:.3f} s          "
                  f"{r['delay_p50'] + r['duration'] / 2 + hold:.2f} s (holding back {hold:.2f} s)")


if __name__ == "__main__":
    main()
