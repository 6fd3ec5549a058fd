"""Fuzzing run: corpus + mutation inputs per surface (SIP, SDP, RTP/RTCP, REST JSON,
websocket JSON, RTMP server replies), in memory, counted.

    nice -n 10 .venv/bin/python bench/fuzz.py                      # 100,000 per surface
    .venv/bin/python bench/fuzz.py --examples 2000 --surface sip   # one surface, fewer
    .venv/bin/python bench/fuzz.py --seconds 600                   # time-box each surface

Prints one line per surface: inputs, accepted, rejected with the documented error,
crashes (an exception other than the documented one, a traceback in the log, a REST 5xx,
a websocket closed on valid UTF-8) and leaks (calls, ports, sockets, streams,
transactions, pushes, recordings, viewers left afterwards).  Each crash's input and
traceback go to --out (default fuzz-crashes/).  Exits 1 if any surface crashed or leaked.
The normal suite runs a fixed-seed sample: tests/fuzz/test_fuzz.py (SIPGW_FUZZ_EXAMPLES).
"""
from __future__ import annotations

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), os.path.join(os.path.dirname(HERE), "tests", "fuzz")]

from mutate import run  # noqa: E402
from surfaces import SURFACES  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=100_000, help="inputs per surface")
    parser.add_argument("--seconds", type=float, default=None,
                        help="stop each surface after this long (the count says how many ran)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--surface", action="append", choices=sorted(SURFACES),
                        help="only these surfaces (repeatable); default: all")
    parser.add_argument("--out", default="fuzz-crashes", help="folder for crashing inputs")
    args = parser.parse_args(argv)
    failed = False
    total = 0
    for name in args.surface or list(SURFACES):
        result = run(SURFACES[name](), args.examples, seed=args.seed, seconds=args.seconds)
        total += result.inputs
        print(result.line() + (f"  leaks: {'; '.join(result.leaks)}" if result.leaks else ""),
              flush=True)
        if result.crashes or result.leaks:
            failed = True
        for i, (data, trace) in enumerate(result.crashes[:100]):
            os.makedirs(args.out, exist_ok=True)
            base = os.path.join(args.out, f"{name}-{i}")
            with open(base + ".input", "wb") as handle:
                handle.write(data)
            with open(base + ".txt", "w") as handle:
                handle.write(trace)
    print(f"total  {total:7d} inputs, seed {args.seed}: "
          + ("CRASHES OR LEAKS (see above)" if failed else "0 crashes, 0 leaks"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
