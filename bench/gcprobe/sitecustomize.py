"""The cyclic GC's share of a running sipgw (issue 16): put this folder on the daemon's
PYTHONPATH with SIPGW_GC_PROBE set to a file, and every SIGUSR2 appends one line: the
process CPU so far and, per generation, the collections, their CPU and what they freed;
SIGURG appends the tracked objects by type and the generations' sizes. Two SIGUSR2 a step
apart give the GC's share of that step:

    SIPGW_GC_PROBE=/tmp/gc.txt PYTHONPATH=$PWD/bench/gcprobe \\
        .venv/bin/python bench/call_setup.py --rates 800 --step 30 --sipgw-only &
    sleep 8; pid=$(pgrep -f "twistd import run"); kill -USR2 $pid; sleep 20; kill -USR2 $pid
    kill -URG $pid; cat /tmp/gc.txt

Every Python process started with it reports (the bench itself too); each line names its pid.
"""
import gc
import os
import signal
import time

OUT = os.environ.get("SIPGW_GC_PROBE")

if OUT:
    _started = [0.0]
    _stats = {g: [0, 0.0, 0] for g in range(3)}  # collections, CPU seconds, objects freed

    def _collecting(phase, info):
        if phase == "start":
            _started[0] = time.thread_time()
        else:
            s = _stats[info["generation"]]
            s[0] += 1
            s[1] += time.thread_time() - _started[0]
            s[2] += info["collected"]

    def _line(*_):
        with open(OUT, "a") as f:
            f.write(f"pid {os.getpid()} cpu {time.process_time():.2f} s "
                    + " ".join(f"gen{g}: {n} collections {t:.3f} s freed {k}"
                               for g, (n, t, k) in _stats.items()) + "\n")

    def _types(*_):
        import collections
        counts = collections.Counter(type(o).__qualname__ for o in gc.get_objects())
        with open(OUT, "a") as f:
            f.write(f"pid {os.getpid()} tracked {sum(counts.values())} frozen "
                    f"{gc.get_freeze_count()} generations {[len(gc.get_objects(g)) for g in range(3)]}\n")
            for name, n in counts.most_common(30):
                f.write(f"  {n} {name}\n")

    gc.callbacks.append(_collecting)
    signal.signal(signal.SIGUSR2, _line)
    signal.signal(signal.SIGURG, _types)
