"""HLS: how far behind the live edge a segment is when it reaches the playlist.

One synthetic stream (H.264 320x240 25 fps, a keyframe every second, as baresip sends with
periodic keyframe requests; PCMU 20 ms frames, transcoded to AAC) is published in real time
into an ``HlsJob`` (the daemon's muxing: worker thread, PyAV, fMP4), for ``--seconds`` at each
target duration.  For every segment: **publication delay** = the moment it is in the playlist -
the arrival of its last frame (what the segmenter itself adds), and **age of its first frame**
at that moment (the server's share of a player's latency).  Baseline from the same run: the
segment's own duration, the floor of any segmenter that cuts at keyframes at that target.  A
player holding back three target durations (hls.js's default liveSyncDurationCount) is about
``age + 2 x target`` behind the source.

    .venv/bin/python bench/hls_latency.py             # 20 s per target (about 45 s)
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
    """A store that notes when each segment arrived (time.monotonic)."""

    def __init__(self, *args):
        super().__init__(*args)
        self.added: list[float] = []

    def add(self, duration, data):
        self.added.append(time.monotonic())
        return super().add(duration, data)


def run(target: float, seconds: float) -> dict:
    calls = synthetic.ThreadCalls()
    stream = Stream("bench", has_video=True)
    stream.audio_codec, stream.video_codec, stream.width, stream.height = "PCMU", "H264", 320, 240
    store = TimedStore(target, 1000, 1 << 30)
    job = HlsJob(calls, stream, store).start()
    timed = synthetic.frames(seconds)
    origin = time.monotonic()
    synthetic.publish(stream, timed, realtime=True, calls=calls, start=origin)
    stream.end()
    calls.run_until(lambda: job.finished, what="the HLS job to end")
    delays, ages, durations, start = [], [], [], 0.0
    for segment, added in list(zip(store.segments, store.added))[:-1]:  # the last: flushed
        ages.append(added - (origin + start))
        delays.append(added - (origin + start + segment.duration))
        durations.append(segment.duration)
        start += segment.duration
    return {"segments": len(durations), "duration": statistics.mean(durations),
            "delay_p50": statistics.median(delays), "delay_max": max(delays),
            "age_p50": statistics.median(ages), "age_max": max(ages)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    synthetic.h264_access_units(int(args.seconds * 25), fps=25, gop=25)  # encode before timing
    print("target  segments  duration(baseline)  delay p50/max      first-frame age p50/max")
    for target in (1.0, 2.0):
        r = run(target, args.seconds)
        print(f"{target:4.0f} s  {r['segments']:8d}  {r['duration']:8.3f} s          "
              f"{r['delay_p50'] * 1000:5.0f}/{r['delay_max'] * 1000:4.0f} ms     "
              f"{r['age_p50']:.3f}/{r['age_max']:.3f} s")


if __name__ == "__main__":
    main()
