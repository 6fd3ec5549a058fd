"""Corpus + mutation fuzzing: deterministic (one ``random.Random(seed)``), byte-level
mutations (flips, interesting values, inserts, deletes, splices, dictionary tokens) and,
for JSON inputs, structural ones (a value replaced by one of another type)."""
from __future__ import annotations

import json
import random
import time
import traceback
from dataclasses import dataclass, field

from twisted.logger import globalLogPublisher

INTERESTING = [b"\x00", b"\xff", b"\x7f", b"\x80", b"\x00\x00", b"\xff\xff", b"\x7f\xff",
               b"\x80\x00", b"\x00\x00\x00\x00", b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff",
               b"\x80\x00\x00\x00", b"\x00\x00\x00\x01"]
JSON_VALUES = [None, True, False, 0, -1, 1.5, 2 ** 63, -2 ** 63, 1e308, "", "x", "\u0000",
               "\ud800x", "a" * 5000, [], {}, [1], ["x"], {"k": "v"}, {"k": [{}]}, "true",
               "5060", "-1", "99999999999999999999", " ", "../x", "%s%n", "\u202e"]


@dataclass
class Result:
    """What one surface did with its inputs."""

    surface: str
    inputs: int = 0
    rejected: int = 0  # refused with the documented error (parse error, 4xx, fail)
    crashes: list = field(default_factory=list)  # (input, traceback text)
    leaks: list = field(default_factory=list)
    seconds: float = 0.0

    def line(self) -> str:
        return (f"{self.surface:6} {self.inputs:7d} inputs  {self.inputs - self.rejected:7d} "
                f"accepted  {self.rejected:7d} rejected  {len(self.crashes):3d} crashes  "
                f"{len(self.leaks):3d} leaks  {self.seconds:6.1f} s")


def mutate_bytes(rng: random.Random, data: bytes, corpus: list[bytes],
                 tokens: list[bytes]) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.choice((1, 1, 1, 2, 2, 3, 4, 8, 16))):
        if not buf:
            buf += rng.choice(tokens or INTERESTING)
            continue
        i = rng.randrange(len(buf))
        op = rng.randrange(12)
        if op >= 10 and b"\n" in buf:  # line level: drop, repeat or move a line
            lines = bytes(buf).split(b"\n")
            j, k = rng.randrange(len(lines)), rng.randrange(len(lines))
            if op == 10:
                del lines[j]
            else:
                lines.insert(k, lines[j])
                if rng.random() < 0.5:
                    del lines[j + (k <= j)]
            buf = bytearray(b"\n".join(lines))
        elif op == 0:
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1:
            buf[i] = rng.randrange(256)
        elif op == 2:
            value = rng.choice(INTERESTING)
            buf[i:i + len(value)] = value
        elif op == 3:
            del buf[i:i + rng.randint(1, 32)]
        elif op == 4:
            buf[i:i] = rng.randbytes(rng.randint(1, 16))
        elif op == 5:
            j = rng.randrange(len(buf))
            buf[i:i] = buf[j:j + rng.randint(1, 64)] * rng.choice((1, 1, 2, 50))
        elif op == 6:
            other = rng.choice(corpus)
            j = rng.randrange(len(other) + 1)
            buf = buf[:i] + bytearray(other[j:])
        elif op == 7:
            del buf[i:]
        elif op in (8, 9) and tokens:
            buf[i:i] = rng.choice(tokens)
    return bytes(buf)


def mutate_json(rng: random.Random, data: bytes) -> bytes | None:
    """``data`` (JSON, after a ``/path`` line if any) with one node replaced, removed or
    added; None if not JSON."""
    prefix = b""
    if data.startswith(b"/"):
        line, _, data = data.partition(b"\n")
        prefix = line + b"\n"
    try:
        root = json.loads(data)
    except (ValueError, RecursionError):
        return None
    holder = {"root": root}
    parent, key = holder, "root"
    for _ in range(rng.randint(0, 4)):  # walk down a random path
        node = parent[key]
        if isinstance(node, dict) and node:
            parent, key = node, rng.choice(list(node))
        elif isinstance(node, list) and node:
            parent, key = node, rng.randrange(len(node))
        else:
            break
    op = rng.randrange(4)
    if op == 0 and isinstance(parent, dict) and parent is not holder:
        del parent[key]
    elif op == 1 and isinstance(parent[key], dict):
        parent[key][rng.choice(["mediaSessionId", "name", "sdp", "callId", "x"])] = \
            rng.choice(JSON_VALUES)
    else:
        parent[key] = rng.choice(JSON_VALUES)
    return prefix + json.dumps(holder["root"]).encode()


class _FailureLog:
    """Counts log events that carry a traceback while a surface runs."""

    def __init__(self):
        self.failures = []

    def __call__(self, event):
        if "log_failure" in event:
            self.failures.append(event["log_failure"].getTraceback())


def run(surface, examples: int, seed: int = 0, seconds: float | None = None) -> Result:
    """Feed ``examples`` inputs (corpus first, then mutants) to ``surface``; stop early after
    ``seconds``.  A crash is any exception but the surface's documented errors, or a
    traceback in the log; leaks are checked once at the end."""
    rng = random.Random(seed)
    result = Result(surface.name)
    corpus = surface.corpus()
    tokens = getattr(surface, "tokens", [])
    log = _FailureLog()
    globalLogPublisher.addObserver(log)
    started = time.monotonic()
    try:
        surface.setup()
        for n in range(examples):
            if seconds is not None and time.monotonic() - started > seconds:
                break
            if n < len(corpus):
                data = corpus[n]
            else:
                data = rng.choice(corpus)
                mutant = None
                if getattr(surface, "json", False) and rng.random() < 0.5:
                    mutant = mutate_json(rng, data)
                data = mutant if mutant is not None else mutate_bytes(rng, data, corpus, tokens)
            before = len(log.failures)
            try:
                if not surface.feed(data):
                    result.rejected += 1
            except Exception:
                result.crashes.append((data, traceback.format_exc()))
            if len(log.failures) > before:
                result.crashes.append((data, log.failures[-1]))
            result.inputs += 1
        result.leaks = surface.leaks()
    finally:
        globalLogPublisher.removeObserver(log)
        result.seconds = time.monotonic() - started
        teardown = getattr(surface, "teardown", None)
        if teardown is not None:
            teardown()
    return result
