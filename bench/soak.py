#!/usr/bin/env python3
"""Soak: one sipgw process at a steady call rate with media for an hour; RSS, fds and
threads over time and their growth per hour.

    .venv/bin/python bench/soak.py                 # 60 minutes at 10 calls/s, 5 s calls (the measurement)
    .venv/bin/python bench/soak.py --quick         # 3 minutes: a smoke run, not the target
    .venv/bin/python bench/soak.py --minutes 20 --rate 20 --hold 3 --keep

A load driver posts ``/call/startup`` at the rate; SIPp answers PCMA and replays its
G.711 capture (RTP into sipgw for the whole call); the driver hangs each call up with
``/call/terminate`` ``--hold`` seconds after starting it.  Every ``--every`` seconds the
bench reads sipgw's VmRSS, open fds and threads from /proc.  The growth per hour is the
least-squares slope over the run after its warm-up (its first fifth, at least 2 min: RSS
climbs to its working set over the first ~1,000 calls), beside the idle baseline taken
before the load in the same run.  At the end the load stops, every call must end,
and the idle figures are read again.

Target (issue 10): < 5 MB/h RSS growth, fds and threads flat.  Exit status 0 whether or
not the target is met; 2 on a harness error.  Everything binds 127.0.0.1, every process
is stopped at the end, and every wait is bounded.
"""
from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests" / "interop"))

import peers  # noqa: E402
from call_setup import (ACTIVE, HarnessError, Rest, cpu_ms, daemon_settings, drive,  # noqa: E402
                        in_workdir, rss_kb, slope, startup_body, terminate_body, wait_until)
from peers import Sipp, free_port  # noqa: E402
from sipgw_daemon import Sipgw  # noqa: E402

UAS_MEDIA = peers.SCENARIOS / "uas_pcap_pcma.xml"  # answers PCMA, replays RTP, waits for BYE
TARGET_MB_PER_H = 5.0
WARMUP_S = 120  # RSS still climbs to its working set for about the first 1,000 calls


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def threads(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    raise HarnessError(f"no Threads for pid {pid}")


def sample(pid: int) -> tuple[int, int, int, float]:
    """(RSS KB, fds, threads, CPU ms) of ``pid`` now."""
    return rss_kb(pid), fds(pid), threads(pid), cpu_ms(pid)


def say(text: str = "") -> None:
    print(text, flush=True)


def run(gw: Sipgw, workdir: Path, minutes: float, rate: float, hold_s: float,
        every_s: float) -> int:
    pid = gw.proc.pid
    count = int(minutes * 60 * rate)
    uas = Sipp(str(UAS_MEDIA), port=free_port("udp"), tmpdir=workdir, calls=count,
               trace=False, timeout_s=minutes * 60 + 120).start()
    rest = Rest(gw.rest_port)
    time.sleep(1)
    base = sample(pid)
    say(f"idle baseline: RSS {base[0] / 1024:.1f} MB, {base[1]} fds, {base[2]} threads")
    say(f"{'t s':>6} {'started':>8} {'active':>7} {'RSS MB':>7} {'fds':>5} {'thr':>4} "
        f"{'cpu%':>5}")
    starts = threading.Thread(target=drive, daemon=True, args=(
        gw.rest_port, "/call/startup", startup_body("s", uas.port), count, rate))
    ends = threading.Thread(target=lambda: (time.sleep(hold_s), drive(
        gw.rest_port, "/call/terminate", terminate_body("s"), count, rate)), daemon=True)
    t0 = time.monotonic()
    starts.start()
    ends.start()
    points: list[tuple[float, int, int, int]] = []  # (t, RSS KB, fds, threads)
    last_t, last_cpu = t0, base[3]
    while starts.is_alive() or ends.is_alive():
        time.sleep(every_s)
        now = time.monotonic()
        kb, nfd, nthr, cpu = sample(pid)
        active = rest.count(("ESTABLISHED",))
        started = min(count, int((now - t0) * rate))
        points.append((now - t0, kb, nfd, nthr))
        say(f"{now - t0:6.0f} {started:8d} {active:7d} {kb / 1024:7.1f} {nfd:5d} {nthr:4d} "
            f"{(cpu - last_cpu) / (now - last_t) / 10:5.0f}")
        last_t, last_cpu = now, cpu
    if not wait_until(lambda: rest.count(ACTIVE) == 0, 60, 1):
        say("problem: calls still active 60 s after the last hang-up")
    peers_exit = uas.process.poll()
    uas.stop()
    rest.close()  # its keep-alive connection is one of sipgw's fds
    time.sleep(10)  # call_retention (5 s) passes: ended calls are forgotten
    end = sample(pid)
    say(f"idle after: RSS {end[0] / 1024:.1f} MB, {end[1]} fds, {end[2]} threads "
        f"(SIPp exit {peers_exit})")
    warm = max(points[-1][0] / 5, WARMUP_S) if points else 0
    steady = [p for p in points if p[0] >= warm]
    if len(steady) < 3:
        say("too few samples for a growth figure")
        return 0
    per_h = slope([(t, kb) for t, kb, _, _ in steady]) * 3600 / 1024
    fd_span = (min(p[2] for p in steady), max(p[2] for p in steady))
    thr_span = (min(p[3] for p in steady), max(p[3] for p in steady))
    say(f"RSS growth {per_h:+.1f} MB/h (slope from {warm:.0f} s on); fds {fd_span[0]}-"
        f"{fd_span[1]} under load, {base[1]} -> {end[1]} idle; threads {thr_span[0]}-"
        f"{thr_span[1]} under load, {base[2]} -> {end[2]} idle")
    flat = end[1] <= base[1] and end[2] <= base[2]
    say(f"target: < {TARGET_MB_PER_H:g} MB/h {'met' if per_h < TARGET_MB_PER_H else 'not met'}; "
        f"fds and threads back to baseline {'met' if flat else 'not met'}"
        + ("" if minutes >= 60 else f" (a {minutes:g} min run, the target asks 60)"))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 minutes (a smoke run)")
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--rate", type=float, default=10.0, help="calls started per second")
    parser.add_argument("--hold", type=float, default=5.0, help="seconds each call lasts")
    parser.add_argument("--every", type=float, default=30.0, help="seconds between samples")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    minutes, every = (3.0, 10.0) if args.quick else (args.minutes, args.every)

    def soak(workdir: Path, daemons: list[Sipgw]) -> int:
        peers.require_program("sipp")
        say(f"soak: {minutes:g} min at {args.rate:g} calls/s, {args.hold:g} s each with RTP "
            f"(SIPp replays PCMA), samples every {every:g} s, {os.cpu_count()} CPUs shared")
        gw = Sipgw(str(workdir), **daemon_settings(workdir))
        daemons.append(gw)
        gw.start()
        return run(gw, workdir, minutes, args.rate, args.hold, every)
    return in_workdir("sipgw-soak-", args.keep, soak)


if __name__ == "__main__":
    sys.exit(main())
