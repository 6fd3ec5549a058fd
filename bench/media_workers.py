"""CPU per RTMP push and per recording, and the reactor's loop lag meanwhile.

One process, the asyncio reactor (as the daemon runs it), N synthetic streams fed on the
reactor in real time (H.264 320x240 25 fps, 2 s GOP, from libx264, as baresip sends; PCMU
20 ms frames), and per step N pushes to a real nginx-rtmp (started here, 127.0.0.1) or N
recordings (MP4 in a temp folder), or 4 pushes + 4 recordings.  Per step: a warm-up, then
``--seconds`` of measurement of this process's CPU (utime+stime) and of a 10 ms LoopingCall's
lateness (the loop lag every RTP packet of every call would see).

CPU per job = (step CPU - CPU of the same N streams fed with no job) / N, in % of one core.
Targets (issue 5): <= 3 % of a core per push and per recording (audio transcode included),
loop lag p99 < 20 ms.

    .venv/bin/python bench/media_workers.py            # 10 s steps (about 3 min)
    .venv/bin/python bench/media_workers.py --quick    # 4 s steps (about 1.5 min)
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests", "media"), os.path.join(ROOT, "tests", "interop")]

from twisted.internet import asyncioreactor  # noqa: E402

asyncioreactor.install()

from twisted.internet import defer, reactor, task  # noqa: E402

import peers  # noqa: E402
import synthetic  # noqa: E402
from sipgw.media.push import PushManager  # noqa: E402
from sipgw.media.recorder import RecorderManager  # noqa: E402
from sipgw.streams.registry import StreamRegistry  # noqa: E402
from sipgw.streams.stream import MediaFrame, Stream  # noqa: E402

FPS = 25
GOP = 50
TARGET_CPU = 3.0
TARGET_LAG_MS = 20.0


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Feeder:
    """Publishes to every stream on the reactor, in real time: audio every 20 ms, video
    every 40 ms, RTP timestamps running on (the 10 s of video loop)."""

    def __init__(self, streams):
        self.streams = streams
        self.units = synthetic.h264_access_units(10 * FPS, fps=FPS, gop=GOP)
        self.audio = synthetic.pcmu_payloads(10.0)
        self.tick = 0
        self.loop = task.LoopingCall(self._tick)

    def start(self):
        self.loop.start(0.02)

    def stop(self):
        if self.loop.running:
            self.loop.stop()

    def _tick(self):
        i = self.tick
        self.tick += 1
        audio = MediaFrame("audio", "PCMU", 8000, (i * 160) & 0xFFFFFFFF,
                           self.audio[i % len(self.audio)])
        frames = [audio]
        if i % 2 == 0:
            n = i // 2
            data, key = self.units[n % len(self.units)]
            frames.append(MediaFrame("video", "H264", 90000, (n * 3600) & 0xFFFFFFFF, data, key))
        for stream in self.streams:
            for frame in frames:
                stream.publish(frame)


class LagMeter:
    """How late a 10 ms LoopingCall fires: the reactor's loop lag."""

    def __init__(self, interval=0.01):
        self.interval = interval
        self.samples: list[float] = []
        self._last = None
        self.loop = task.LoopingCall(self._beat)

    def start(self):
        self._last = time.monotonic()
        self.loop.start(self.interval, now=False)

    def _beat(self):
        now = time.monotonic()
        self.samples.append(max(0.0, now - self._last - self.interval))
        self._last = now

    def reset(self):
        self.samples = []

    def p(self, q):
        if not self.samples:
            return 0.0
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def sleep(seconds):
    return task.deferLater(reactor, seconds, lambda: None)


@defer.inlineCallbacks
def step(name, n_streams, pushes, recordings, args, nginx, folder, lag):
    registry = StreamRegistry()
    streams = []
    for i in range(n_streams):
        stream = Stream(f"b{i}")
        stream.audio_codec, stream.video_codec, stream.width, stream.height = "PCMU", "H264", 320, 240
        streams.append(registry.add(stream))
    feeder = Feeder(streams)
    feeder.start()
    push_manager = PushManager(reactor, registry, reconnect_min=1, reconnect_max=2, timeout=5)
    recorder = RecorderManager(reactor, registry, folder, "{streamName}-{startTimeMillis}")
    jobs = []
    for i in range(pushes):
        jobs.append(push_manager.startup(streams[i % n_streams].name, nginx.url()))
    for i in range(recordings):
        jobs.append(recorder.start(streams[(pushes + i) % n_streams]))
    yield sleep(args.warmup)
    lag.reset()
    cpu0, wall0 = _cpu(), time.monotonic()
    sent0 = sum(j.sent["video"] if hasattr(j, "sent") else j.written["video"] for j in jobs)
    yield sleep(args.seconds)
    cpu = (_cpu() - cpu0) / (time.monotonic() - wall0) * 100
    sent = sum(j.sent["video"] if hasattr(j, "sent") else j.written["video"] for j in jobs) - sent0
    dropped = sum(j.queue.dropped for j in jobs)
    states = sorted({j.state for j in jobs})
    p50, p99, worst = lag.p(0.5), lag.p(0.99), lag.p(1.0)
    feeder.stop()
    for stream in streams:
        stream.end()
        registry.remove(stream)
    yield defer.DeferredList([j.done for j in jobs])
    return {"name": name, "streams": n_streams, "jobs": len(jobs), "cpu": cpu, "p50": p50,
            "p99": p99, "max": worst, "video_out": sent, "dropped": dropped, "states": states}


@defer.inlineCallbacks
def run(args, out):
    work = tempfile.mkdtemp(prefix="sipgw-bench-media-")
    nginx = peers.NginxRtmp(work, port=peers.free_port("tcp")).start()
    folder = os.path.join(work, "records")
    lag = LagMeter()
    lag.start()
    rows = {}
    try:
        synthetic.h264_access_units(10 * FPS, fps=FPS, gop=GOP)  # encode once, before timing
        print(f"{'step':<22}{'jobs':>5}{'cpu%':>8}{'per job%':>10}{'lag p50':>9}{'p99 ms':>8}"
              f"{'max ms':>8}{'video/s':>9}{'dropped':>9}  states", flush=True)
        plan = []
        for n in args.counts:
            plan += [(f"baseline {n} streams", n, 0, 0), (f"{n} pushes", n, n, 0),
                     (f"{n} recordings", n, 0, n)]
        plan.append(("4 pushes + 4 recordings", 8, 4, 4))
        for name, n, pushes, recs in plan:
            row = yield step(name, n, pushes, recs, args, nginx, folder, lag)
            base = rows.get(f"baseline {n} streams")
            per_job = (row["cpu"] - base["cpu"]) / row["jobs"] if base and row["jobs"] else 0.0
            row["per_job"] = per_job
            rows[name] = row
            print(f"{name:<22}{row['jobs']:>5}{row['cpu']:>8.1f}"
                  f"{per_job if row['jobs'] else 0:>10.2f}{row['p50']:>9.2f}{row['p99']:>8.2f}"
                  f"{row['max']:>8.1f}{row['video_out'] / args.seconds:>9.0f}{row['dropped']:>9}"
                  f"  {','.join(row['states'])}", flush=True)
        pushes = [rows[f"{n} pushes"]["per_job"] for n in args.counts]
        recs = [rows[f"{n} recordings"]["per_job"] for n in args.counts]
        mixed = rows["4 pushes + 4 recordings"]
        worst_p99 = max(r["p99"] for r in rows.values())
        print()
        print(f"CPU per push: {', '.join(f'{p:.2f} %' for p in pushes)} of a core at "
              f"{', '.join(map(str, args.counts))} at once (target <= {TARGET_CPU:g} %: "
              f"{'MET' if max(pushes) <= TARGET_CPU else 'NOT MET'}; "
              f"ratio to target {max(pushes) / TARGET_CPU:.2f})")
        print(f"CPU per recording: {', '.join(f'{r:.2f} %' for r in recs)} of a core "
              f"(target <= {TARGET_CPU:g} %: {'MET' if max(recs) <= TARGET_CPU else 'NOT MET'}; "
              f"ratio to target {max(recs) / TARGET_CPU:.2f})")
        print(f"loop lag with 4 pushes + 4 recordings: p99 {mixed['p99']:.2f} ms (target < "
              f"{TARGET_LAG_MS:g} ms: {'MET' if mixed['p99'] < TARGET_LAG_MS else 'NOT MET'}); "
              f"worst p99 of all steps {worst_p99:.2f} ms; baseline p99 "
              f"{rows[f'baseline {args.counts[0]} streams']['p99']:.2f} ms")
        out.append(0)
    except Exception as exc:  # harness error
        print(f"bench failed: {exc!r}; work dir kept: {work}", file=sys.stderr)
        out.append(2)
        work = None
    finally:
        lag.loop.stop()
        nginx.stop()
        if work:
            shutil.rmtree(work, ignore_errors=True)
        reactor.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="4 s steps")
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--counts", default="1,8,16")
    args = parser.parse_args()
    args.seconds = args.seconds or (4.0 if args.quick else 10.0)
    args.warmup = 3.0
    args.counts = [int(c) for c in args.counts.split(",")]
    out: list[int] = []
    started = time.monotonic()
    reactor.callWhenRunning(lambda: run(args, out))
    reactor.run()
    print(f"took {time.monotonic() - started:.0f} s")
    return out[0] if out else 2


if __name__ == "__main__":
    sys.exit(main())
