#!/usr/bin/env python3
"""Call setup rate, CPU per call and RSS per established call of one sipgw process.

    .venv/bin/python bench/call_setup.py [--quick] [--keep]

1. sipgw -> SIPp UAS: a load driver posts ``/call/startup`` over keep-alive HTTP at a
   rising rate (one step per rate); SIPp answers 200 and sends BYE after a short hold.
   A step passes when every call of the step reached FINISH (SIPp counted all of them
   successful, sipgw reported none FAILED or BUSY and has none left active), the driver
   kept the rate (within 2 %) and retransmissions stayed under 1 % of the SIP messages.
   The ladder stops at the first failing step.  sipgw's CPU (utime + stime) over the
   step gives the CPU ms per call.
2. SIPp UAC -> SIPp UAS: the same call flow, rates and step length, as the ceiling.
3. Memory: a fresh sipgw establishes 1,000 concurrent calls (SIPp holds them until
   sipgw's BYE); the slope of its RSS over 0..1000 calls is the KB per call.  Then
   every call is terminated over REST and must end.

Exit status 0 whether or not the targets are met; 2 on a harness error (a peer that
does not start, a missing program).  Everything binds 127.0.0.1, every process is
stopped at the end, and every wait is bounded.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import http.client
import json
import math
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "interop"))

import peers  # noqa: E402
from peers import Sipp, free_port  # noqa: E402
from sipgw_daemon import Sipgw  # noqa: E402

UAS_BYE = HERE / "scenarios" / "uas_bench_bye.xml"  # answers, holds, hangs up
UAS_HOLD = peers.SCENARIOS / "uas_bench.xml"  # answers, waits for the caller's BYE
UAC_WAIT_BYE = peers.SCENARIOS / "uac_wait_bye.xml"  # calls, waits for the callee's BYE

RATES = [50, 100, 200, 300, 400, 600, 800, 1000, 1500, 2000, 3000, 4000, 6000]
QUICK_RATES = [100, 200, 300, 400, 600, 800, 1000, 2000, 3000, 4000, 6000]
STEP_S, QUICK_STEP_S = 30, 5
HOLD_MS = 1000
RETENTION_S = 5  # call_retention: ended calls stay findable this long
POLL_S = 1.0  # FAILED/BUSY poll period, well under RETENTION_S so none is missed
RATE_PER_CONN, MAX_CONNS = 50, 16  # keep-alive REST connections: one per 50 calls/s, 2 to 16
MIN_KEPT = 0.98  # requests (or INVITEs) sent per second / target rate
MAX_RETRANS = 0.01  # retransmissions / SIP messages
MEMORY_CALLS, MEMORY_BATCHES, MEMORY_RATE, WARMUP_CALLS = 1000, 4, 200, 20
BUSY_PCT = 10  # other processes above this % of a core: the figures are flagged
TARGET_RATE, TARGET_CPU_MS, TARGET_KB = 800, 1.2, 300  # issue 16

UNSETTLED = ("NEW", "PENDING", "TRYING", "RING", "RING_MEDIA", "SESSION_PROGRESS")
ACTIVE = UNSETTLED + ("ESTABLISHED", "HOLD")
TICKS = os.sysconf("SC_CLK_TCK")
HEADERS = {"Content-Type": "application/json"}


def daemon_settings(workdir: Path) -> dict:
    """``--set`` overrides for a bench daemon: short retention, a wide media range, no call
    quota, and every other listener on 127.0.0.1 at a free port (only the keys this sipgw
    knows)."""
    wanted = {"call_retention": RETENTION_S, "media_port_from": 20000, "media_port_to": 60000,
              "max_calls": 0, "max_calls_per_account": 0,  # the bench holds 1,000 calls
              "call_find_limit": 5000,  # and counts them with /call/find by status
              # one SIPp is the only peer: its ACKs and BYEs come from one address, over the
              # per-source default (2,000 a second) at 1,000 calls/s
              "sip_max_requests_per_source": 0,
              "hls_port": free_port("tcp"), "https_port": free_port("tcp"),
              "ws_bind_address": "127.0.0.1", "ws_port": free_port("tcp"),
              "wss_port": free_port("tcp"), "record_dir": str(workdir / "records")}
    try:
        from sipgw.config import Config
    except ImportError:
        return {k: wanted[k] for k in ("call_retention", "media_port_from", "media_port_to")}
    known = {f.name for f in dataclasses.fields(Config)}
    return {k: v for k, v in wanted.items() if k in known}


def profiled_twistd(path: str | None) -> list[str] | None:
    """The twistd command line for a daemon run under cProfile (stats saved to ``path`` when
    the reactor stops), or None for the default one."""
    if not path:
        return None
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
            f"--profile={os.path.abspath(path)}", "--profiler=cprofile", "--savestats"]


class HarnessError(RuntimeError):
    """The bench itself could not do its job (as opposed to sipgw missing a target)."""


# --------------------------------------------------------------------------
# process figures


def cpu_ms(pid: int) -> float:
    """utime + stime of ``pid`` in ms (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / TICKS


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise HarnessError(f"no VmRSS for pid {pid}")


def machine_busy_ms() -> float:
    """CPU time all CPUs spent busy since boot (/proc/stat: not idle, not iowait), in ms."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:9]]
    return (sum(values) - values[3] - values[4]) * 1000 / TICKS


def own_cpu_ms(who: int) -> float:
    """CPU of this process (RUSAGE_SELF) or of its reaped children (RUSAGE_CHILDREN)."""
    usage = resource.getrusage(who)
    return (usage.ru_utime + usage.ru_stime) * 1000


# --------------------------------------------------------------------------
# REST


class Rest:
    """One keep-alive HTTP connection to sipgw's REST API."""

    def __init__(self, port: int):
        self.port = port
        self.conn: http.client.HTTPConnection | None = None

    def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            self.conn.request("POST", "/rest-api" + path, body, HEADERS)
            response = self.conn.getresponse()
            return response.status, response.read()
        except (OSError, http.client.HTTPException):
            self.close()
            raise

    def find(self, **query) -> list[dict]:
        """``/call/find`` (or ``/call/find_all`` without a query); 404 means none."""
        path = "/call/find" if query else "/call/find_all"
        status, data = self.post(path, json.dumps(query).encode())
        if status == 404:
            return []
        if status != 200:
            raise HarnessError(f"{path} {query} -> HTTP {status}: {data[:200]!r}")
        return json.loads(data)

    def count(self, statuses) -> int:
        return sum(len(self.find(status=s)) for s in statuses)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


@dataclass
class Drive:
    """What the load driver did: one entry per request it sent."""

    planned: int
    rate: float
    starts: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def sent(self) -> int:
        return len(self.starts)

    @property
    def kept_rate(self) -> float:
        """Requests per second actually sent, first to last (the target when on time)."""
        if self.sent < 2:
            return 0.0
        span = max(self.starts) - min(self.starts)
        return (self.sent - 1) / span if span > 0 else math.inf

    def latency_ms(self, q: float) -> float:
        if not self.latencies:
            return math.nan
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def drive(port: int | list[int], path: str, body_for, count: int, rate: float) -> Drive:
    """POST ``body_for(i)`` for i < count at ``rate`` per second on a few keep-alive
    connections; request i is due at t0 + i/rate (a monotonic schedule: a late request
    goes out at once, and lateness does not shift the ones after it).  Gives up on
    requests still unsent at 1.5x the planned duration + 10 s.  Several ports (the nodes
    of a cluster): the connections go to them in turn."""
    ports = port if isinstance(port, list) else [port]
    result = Drive(count, rate)
    if count == 0:
        return result
    conns = min(MAX_CONNS, max(2, len(ports), math.ceil(rate / RATE_PER_CONN)))
    t0 = time.monotonic() + 0.05
    give_up = t0 + 1.5 * count / rate + 10
    per_thread = [Drive(0, rate) for _ in range(conns)]

    def worker(j: int) -> None:
        mine, rest = per_thread[j], Rest(ports[j % len(ports)])
        try:
            for i in range(j, count, conns):
                due = t0 + i / rate
                now = time.monotonic()
                if now > give_up:
                    mine.errors["not sent in time"] = mine.errors.get("not sent in time", 0) + 1
                    continue
                if due > now:
                    time.sleep(due - now)
                start = time.monotonic()
                try:
                    status, _ = rest.post(path, body_for(i))
                    key = None if status == 200 else f"HTTP {status}"
                except (OSError, http.client.HTTPException) as exc:
                    key = type(exc).__name__
                mine.starts.append(start)
                mine.latencies.append(time.monotonic() - start)
                if key is None:
                    mine.ok += 1
                else:
                    mine.errors[key] = mine.errors.get(key, 0) + 1
        finally:
            rest.close()

    threads = [threading.Thread(target=worker, args=(j,), daemon=True) for j in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(give_up - time.monotonic() + 15)
    for part in per_thread:
        result.starts += part.starts
        result.latencies += part.latencies
        result.ok += part.ok
        for key, n in part.errors.items():
            result.errors[key] = result.errors.get(key, 0) + n
    return result


def startup_body(prefix: str, sip_port: int):
    def body(i: int) -> bytes:
        name = f"{prefix}{i}"
        return json.dumps({
            "callId": name, "toStream": name, "callee": "bench", "sipLogin": "sipgw",
            "sipDomain": "127.0.0.1", "sipPort": str(sip_port), "sipRegisterRequired": "false",
            "hasAudio": "true", "hasVideo": "false",
        }).encode()
    return body


def terminate_body(prefix: str):
    return lambda i: json.dumps({"callId": f"{prefix}{i}"}).encode()


class FailureWatch(threading.Thread):
    """Polls ``/call/find {status: FAILED|BUSY}`` every POLL_S (ended calls stay findable
    RETENTION_S) and keeps the calls whose callId starts with ``prefix``."""

    def __init__(self, port: int, prefix: str):
        super().__init__(daemon=True)
        self.rest = Rest(port)
        self.prefix = prefix
        self.failed: dict[str, str] = {}
        self.errors: list[str] = []
        self._stop_event = threading.Event()

    def poll(self) -> None:
        try:
            for status in ("FAILED", "BUSY"):
                for call in self.rest.find(status=status):
                    if call["callId"].startswith(self.prefix):
                        self.failed[call["callId"]] = f"{status} {call.get('info', '')}".strip()
        except (OSError, http.client.HTTPException, HarnessError) as exc:
            self.errors.append(f"{type(exc).__name__}: {exc}")

    def run(self) -> None:
        while not self._stop_event.wait(POLL_S):
            self.poll()

    def finish(self) -> None:
        self._stop_event.set()
        self.join(15)
        self.poll()
        self.rest.close()


# --------------------------------------------------------------------------
# SIPp output


def sipp_stat(path: Path) -> dict[str, str]:
    """The last row of a SIPp ``-trace_stat`` CSV as {column: value}."""
    if not path.exists():
        return {}
    with open(path, newline="") as f:
        rows = [r for r in csv.reader(f, delimiter=";") if r]
    return dict(zip(rows[0], rows[-1])) if len(rows) > 1 else {}


def sipp_counts(sipp: Sipp) -> list[dict[str, str]]:
    """Rows of SIPp's ``-trace_counts`` CSV (``<scenario>_<pid>_counts.csv`` in its cwd)."""
    path = sipp.tmpdir / f"{sipp.scenario.stem}_{sipp.pid}_counts.csv"
    if not path.exists():
        return []
    with open(path, newline="") as f:
        rows = [r for r in csv.reader(f, delimiter=";") if r]
    return [dict(zip(rows[0], r)) for r in rows[1:]]


def messages_and_retrans(sipp: Sipp) -> tuple[int, int]:
    """(SIP messages sent + received, retransmissions sent + received) from -trace_counts."""
    rows = sipp_counts(sipp)
    if not rows:
        return 0, 0
    last = rows[-1]
    total = sum(int(v or 0) for k, v in last.items() if k.endswith(("_Sent", "_Recv")))
    retrans = sum(int(v or 0) for k, v in last.items() if k.endswith("_Retrans"))
    return total, retrans


def elapsed_s(text: str) -> float:
    """SIPp's ``HH:MM:SS:micros`` (or ``HH:MM:SS``) as seconds."""
    parts = [int(p) for p in text.split(":")]
    h, m, s = parts[:3]
    return h * 3600 + m * 60 + s + (parts[3] / 1e6 if len(parts) > 3 else 0)


def invite_rate(sipp: Sipp, count: int) -> float:
    """INVITEs per second a SIPp UAC sent, from its -trace_counts rows (every 200 ms):
    the slope between the first row with one sent and the last row with some unsent."""
    points = [(elapsed_s(r["ElapsedTime"]), int(r.get("0_INVITE_Sent") or 0))
              for r in sipp_counts(sipp)]
    going = [(t, c) for t, c in points if 0 < c < count]
    if len(going) >= 2 and going[-1][0] > going[0][0]:
        return (going[-1][1] - going[0][1]) / (going[-1][0] - going[0][0])
    done = [t for t, c in points if c >= count]
    return count / done[0] if done and done[0] > 0 else 0.0


def sipp_uas(workdir: Path, scenario: Path, calls: int, *, hold_ms: int, timeout_s: float) -> Sipp:
    return Sipp(str(scenario), port=free_port("udp"), tmpdir=workdir, calls=calls,
                pause_ms=hold_ms, trace=False, timeout_s=timeout_s,
                extra_args=["-trace_counts", "-fd", "1",
                            "-trace_stat", "-stf", str(workdir / "uas_stat.csv")])


def wait_exit(sipp: Sipp, deadline: float, alive=lambda: True) -> int | None:
    """Wait (bounded) for SIPp to exit by itself; stop it at the deadline.  Returns its
    exit code, or None when it had to be stopped."""
    while time.monotonic() < deadline and alive():
        if sipp.process.poll() is not None:
            return sipp.process.returncode
        time.sleep(0.1)
    if sipp.process.poll() is not None:
        return sipp.process.returncode
    sipp.stop()
    return None


# --------------------------------------------------------------------------
# 1. sipgw -> SIPp UAS


@dataclass
class Step:
    rate: int
    calls: int
    kept: float = 0.0
    done: int = 0
    failed: int = 0
    retrans_pct: float = 0.0
    cpu_ms_per_call: float = math.nan
    cpu_pct: float = math.nan
    p99_ms: float = math.nan
    driver_pct: float = math.nan
    sipp_ms_per_call: float = math.nan
    other_pct: float = math.nan  # CPU of processes outside the bench, % of one core
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems


def sipgw_step(gw: Sipgw, workdir: Path, rate: int, step_s: float, hold_ms: int) -> Step:
    calls = round(rate * step_s)
    step = Step(rate, calls)
    prefix = f"r{rate}-"
    uas = sipp_uas(workdir / f"sipgw-{rate}", UAS_BYE, calls, hold_ms=hold_ms,
                   timeout_s=1.5 * step_s + hold_ms / 1000 + 90).start()
    try:
        alive = lambda: gw.proc.poll() is None  # noqa: E731
        watch = FailureWatch(gw.rest_port, prefix)
        watch.start()
        children0 = own_cpu_ms(resource.RUSAGE_CHILDREN)
        machine0, sipp0 = machine_busy_ms(), cpu_ms(uas.pid)
        cpu0, self0, wall0 = cpu_ms(gw.proc.pid), own_cpu_ms(resource.RUSAGE_SELF), time.monotonic()
        load = drive(gw.rest_port, "/call/startup", startup_body(prefix, uas.port), calls, rate)
        wall1 = time.monotonic()
        cpu1 = cpu_ms(gw.proc.pid) if alive() else math.nan
        self1 = own_cpu_ms(resource.RUSAGE_SELF)
        sipp1 = cpu_ms(uas.pid) if uas.running() else sipp0
        machine1 = machine_busy_ms()
        # every call ends by itself: SIPp hangs up after hold_ms, then exits (-m calls)
        grace = hold_ms / 1000 + (40 if load.ok == calls else 5)
        rc = wait_exit(uas, time.monotonic() + grace, alive)
        left = -1
        if alive():
            rest = Rest(gw.rest_port)
            deadline = time.monotonic() + 5
            try:
                while (left := rest.count(ACTIVE)) and time.monotonic() < deadline:
                    time.sleep(0.2)
            except (OSError, http.client.HTTPException, HarnessError):
                left = -1
            rest.close()
        watch.finish()
        cpu2 = cpu_ms(gw.proc.pid) if alive() else math.nan
        sipp_ms = own_cpu_ms(resource.RUSAGE_CHILDREN) - children0

        stat = sipp_stat(uas.tmpdir / "uas_stat.csv")
        messages, retrans = messages_and_retrans(uas)
        step.kept = load.kept_rate
        step.done = int(stat.get("SuccessfulCall(C)") or 0)
        sipp_failed = int(stat.get("FailedCall(C)") or 0)
        step.failed = max(len(watch.failed), sipp_failed)
        step.retrans_pct = 100 * retrans / messages if messages else math.nan
        step.cpu_ms_per_call = (cpu2 - cpu0) / calls
        step.cpu_pct = 100 * (cpu1 - cpu0) / ((wall1 - wall0) * 1000)
        step.driver_pct = 100 * (self1 - self0) / ((wall1 - wall0) * 1000)
        others = (machine1 - machine0) - (cpu1 - cpu0) - (self1 - self0) - (sipp1 - sipp0)
        step.other_pct = max(0.0, 100 * others / ((wall1 - wall0) * 1000))
        step.sipp_ms_per_call = sipp_ms / calls
        step.p99_ms = load.latency_ms(0.99)

        p = step.problems
        if not alive():
            p.append(f"sipgw exited with {gw.proc.returncode}")
        if load.ok != calls:
            p.append(f"REST {load.ok}/{calls} accepted {load.errors}")
        if load.kept_rate < MIN_KEPT * rate:
            p.append(f"REST sent {load.kept_rate:.1f}/s")
        if watch.failed:
            first = next(iter(watch.failed.items()))
            p.append(f"{len(watch.failed)} FAILED/BUSY (e.g. {first[0]}: {first[1]})")
        if watch.errors:
            p.append(f"status poll: {watch.errors[0]}")
        if rc is None:
            p.append(f"SIPp UAS still had calls open {grace:g} s after the last request")
        elif rc != 0:
            p.append(f"SIPp UAS exit {rc}")
        if step.done != calls or sipp_failed:
            p.append(f"SIPp: {step.done} successful, {sipp_failed} failed of {calls}")
        if left:
            p.append(f"{left} calls still active" if left > 0 else "active calls unknown")
        if not messages:
            p.append("no SIPp message counts")
        elif retrans >= MAX_RETRANS * messages:
            p.append(f"{step.retrans_pct:.1f}% retransmissions")
        return step
    finally:
        uas.stop()


# --------------------------------------------------------------------------
# 2. SIPp UAC -> SIPp UAS


def sipp_step(workdir: Path, rate: int, step_s: float, hold_ms: int) -> Step:
    calls = round(rate * step_s)
    step = Step(rate, calls)
    base = workdir / f"sipp-{rate}"
    timeout = 1.5 * step_s + hold_ms / 1000 + 90
    uas = sipp_uas(base / "uas", UAS_BYE, calls, hold_ms=hold_ms, timeout_s=timeout).start()
    uac = Sipp(str(UAC_WAIT_BYE), port=free_port("udp"), remote=uas.uri_host, tmpdir=base / "uac",
               calls=calls, trace=False, timeout_s=timeout,
               extra_args=["-r", str(rate), "-l", str(max(1000, 3 * rate * (hold_ms // 1000 + 1))),
                           "-trace_counts", "-fd", "200ms",
                           "-trace_stat", "-stf", str(base / "uac" / "uac_stat.csv")])
    try:
        children0, wall0 = own_cpu_ms(resource.RUSAGE_CHILDREN), time.monotonic()
        machine0, self0 = machine_busy_ms(), own_cpu_ms(resource.RUSAGE_SELF)
        uac.start()
        uac_rc = wait_exit(uac, time.monotonic() + 1.5 * step_s + hold_ms / 1000 + 40)
        uas_rc = wait_exit(uas, time.monotonic() + 10)
        sipp_ms = own_cpu_ms(resource.RUSAGE_CHILDREN) - children0
        wall1 = time.monotonic()
        others = machine_busy_ms() - machine0 - sipp_ms - (own_cpu_ms(resource.RUSAGE_SELF) - self0)
        step.sipp_ms_per_call = sipp_ms / calls
        step.other_pct = max(0.0, 100 * others / ((wall1 - wall0) * 1000))

        uac_stat, uas_stat = sipp_stat(base / "uac" / "uac_stat.csv"), sipp_stat(base / "uas" / "uas_stat.csv")
        m1, r1 = messages_and_retrans(uac)
        m2, r2 = messages_and_retrans(uas)
        step.kept = invite_rate(uac, calls)
        step.done = int(uac_stat.get("SuccessfulCall(C)") or 0)
        step.failed = int(uac_stat.get("FailedCall(C)") or 0) + int(uas_stat.get("FailedCall(C)") or 0)
        step.retrans_pct = 100 * (r1 + r2) / (m1 + m2) if m1 + m2 else math.nan
        step.cpu_pct = 100 * step.sipp_ms_per_call * calls / ((wall1 - wall0) * 1000)

        p = step.problems
        for name, rc in (("UAC", uac_rc), ("UAS", uas_rc)):
            if rc is None:
                p.append(f"SIPp {name} still had calls open at the step's deadline")
            elif rc != 0:
                p.append(f"SIPp {name} exit {rc}")
        if step.done != calls or step.failed:
            p.append(f"{step.done} successful, {step.failed} failed of {calls}")
        if step.kept < MIN_KEPT * rate:
            p.append(f"INVITEs sent {step.kept:.1f}/s")
        if not m1 + m2:
            p.append("no SIPp message counts")
        elif r1 + r2 >= MAX_RETRANS * (m1 + m2):
            p.append(f"{step.retrans_pct:.1f}% retransmissions")
        return step
    finally:
        uac.stop()
        uas.stop()


# --------------------------------------------------------------------------
# 3. memory per established call


@dataclass
class Memory:
    points: list[tuple[int, int]] = field(default_factory=list)  # (established, RSS KB)
    after_kb: int = 0
    slope_kb: float = math.nan
    problems: list[str] = field(default_factory=list)


def slope(points: list[tuple[int, int]]) -> float:
    """Least-squares slope of y over x."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else math.nan


def wait_until(condition, timeout: float, period: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(period)
    return True


def memory_run(gw: Sipgw, workdir: Path) -> Memory:
    mem = Memory()
    rest = Rest(gw.rest_port)
    total = WARMUP_CALLS + MEMORY_CALLS
    uas = sipp_uas(workdir / "memory", UAS_HOLD, total, hold_ms=0, timeout_s=600).start()
    try:
        _measure_memory(gw, rest, uas, mem)
    except (OSError, http.client.HTTPException, HarnessError) as exc:
        state = "running" if gw.proc.poll() is None else f"exited with {gw.proc.returncode}"
        mem.problems.append(f"sipgw {state}: {type(exc).__name__}: {exc}")
    finally:
        rest.close()
        uas.stop()
    if len(mem.points) > 1:
        mem.slope_kb = slope(mem.points)
    return mem


def _measure_memory(gw: Sipgw, rest: Rest, uas: Sipp, mem: Memory) -> None:
    """Warm up, take RSS at 0, 250 .. 1000 established calls, hang them all up."""
    pid = gw.proc.pid
    watch = FailureWatch(gw.rest_port, "")
    watch.start()
    try:
        # a few calls placed, hung up and forgotten first, so that first-use costs
        # (imports, caches) are not counted per call
        drive(gw.rest_port, "/call/startup", startup_body("w", uas.port), WARMUP_CALLS, 50)
        wait_until(lambda: rest.count(UNSETTLED) == 0, 20)
        drive(gw.rest_port, "/call/terminate", terminate_body("w"), WARMUP_CALLS, 50)
        wait_until(lambda: not rest.find(), RETENTION_S + 20, 0.5)
        time.sleep(1)
        mem.points.append((0, rss_kb(pid)))
        batch = MEMORY_CALLS // MEMORY_BATCHES
        body = startup_body("m", uas.port)
        for b in range(MEMORY_BATCHES):
            first = b * batch
            load = drive(gw.rest_port, "/call/startup", lambda i: body(first + i), batch,
                         MEMORY_RATE)
            if load.ok != batch:
                mem.problems.append(f"REST {load.ok}/{batch} accepted {load.errors}")
            if not wait_until(lambda: rest.count(UNSETTLED) == 0, 30):
                mem.problems.append("calls still unanswered after 30 s")
            time.sleep(0.5)
            rss = rss_kb(pid)  # before the find below allocates its JSON
            mem.points.append((len(rest.find(status="ESTABLISHED")), rss))
        if mem.points[-1][0] != MEMORY_CALLS:
            mem.problems.append(f"{mem.points[-1][0]} of {MEMORY_CALLS} calls established")

        load = drive(gw.rest_port, "/call/terminate", terminate_body("m"), MEMORY_CALLS,
                     MEMORY_RATE)
        if load.ok != MEMORY_CALLS:
            mem.problems.append(f"terminate: {load.ok}/{MEMORY_CALLS} accepted {load.errors}")
        rc = wait_exit(uas, time.monotonic() + 60, lambda: gw.proc.poll() is None)
        if rc != 0:
            mem.problems.append(f"SIPp UAS exit {rc} after terminate"
                                if rc is not None else "SIPp UAS did not see every BYE")
        if left := rest.count(ACTIVE):
            mem.problems.append(f"{left} calls still active after terminate")
    finally:
        watch.finish()
    if watch.failed:
        mem.problems.append(f"{len(watch.failed)} calls FAILED/BUSY")
    wait_until(lambda: not rest.find(), RETENTION_S + 20, 0.5)
    mem.after_kb = rss_kb(pid)


# --------------------------------------------------------------------------
# output


def fmt(value: float, spec: str = ".1f") -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


SIPGW_HEAD = (f"{'rate':>6} {'sent/s':>7} {'calls':>6} {'done':>6} {'failed':>6} {'retr%':>6} "
              f"{'gw ms/call':>10} {'gw cpu%':>7} {'REST p99 ms':>11} {'SIPp ms/call':>12} "
              f"{'driver cpu%':>11} {'other cpu%':>10}  result")
SIPP_HEAD = (f"{'rate':>6} {'sent/s':>7} {'calls':>6} {'done':>6} {'failed':>6} {'retr%':>6} "
             f"{'SIPp ms/call':>12} {'SIPp cpu%':>9} {'other cpu%':>10}  result")


def sipgw_row(s: Step) -> str:
    return (f"{s.rate:>6} {fmt(s.kept):>7} {s.calls:>6} {s.done:>6} {s.failed:>6} "
            f"{fmt(s.retrans_pct, '.2f'):>6} {fmt(s.cpu_ms_per_call, '.2f'):>10} "
            f"{fmt(s.cpu_pct, '.0f'):>7} {fmt(s.p99_ms):>11} {fmt(s.sipp_ms_per_call, '.2f'):>12} "
            f"{fmt(s.driver_pct, '.0f'):>11} {fmt(s.other_pct, '.0f'):>10}  {'pass' if s.passed else 'FAIL: ' + '; '.join(s.problems)}")


def sipp_row(s: Step) -> str:
    return (f"{s.rate:>6} {fmt(s.kept):>7} {s.calls:>6} {s.done:>6} {s.failed:>6} "
            f"{fmt(s.retrans_pct, '.2f'):>6} {fmt(s.sipp_ms_per_call, '.3f'):>12} "
            f"{fmt(s.cpu_pct, '.0f'):>9} {fmt(s.other_pct, '.0f'):>10}  {'pass' if s.passed else 'FAIL: ' + '; '.join(s.problems)}")


def say(text: str = "") -> None:
    print(text, flush=True)


def ladder(rates, run_step, row) -> list[Step]:
    steps = []
    for rate in rates:
        step = run_step(rate)
        steps.append(step)
        say(row(step))
        if not step.passed:
            break
    return steps


def idle_load(seconds: float = 2.0) -> float:
    """% of one core that other processes use while the bench runs nothing."""
    machine0, wall0 = machine_busy_ms(), time.monotonic()
    time.sleep(seconds)
    return 100 * (machine_busy_ms() - machine0) / ((time.monotonic() - wall0) * 1000)


def busy_note(steps: list[Step]) -> str | None:
    worst = max((s.other_pct for s in steps if not math.isnan(s.other_pct)), default=0.0)
    if worst <= BUSY_PCT:
        return None
    return (f"machine not quiet: other processes used up to {worst:.0f}% of a core "
            f"during these steps")


def met(ok: bool) -> str:
    return "MET" if ok else "NOT MET"


# --------------------------------------------------------------------------


def in_workdir(prefix: str, keep: bool, body: Callable[[Path, list[Sipgw]], int]) -> int:
    """Run ``body(workdir, daemons)`` in a fresh work directory and return its exit status,
    or 2 on a harness error (the directory is then kept). Afterwards every daemon ``body``
    put in ``daemons`` is stopped, every peer left is killed, and the directory is removed
    unless kept."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    daemons: list[Sipgw] = []
    try:
        return body(workdir, daemons)
    except (HarnessError, peers.PeerError, RuntimeError, OSError) as exc:
        keep = True
        say(f"harness error: {type(exc).__name__}: {exc}")
        return 2
    finally:
        for gw in daemons:
            gw.stop()
        peers.kill_leftovers()
        if keep:
            say(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def bench(args, workdir: Path, daemons: list[Sipgw]) -> int:
    """The three parts (rate ladder, SIPp ceiling, memory) and the summary against the targets."""
    rates, step_s = (QUICK_RATES, QUICK_STEP_S) if args.quick else (RATES, STEP_S)
    if args.rates:
        rates = args.rates
    if args.step:
        step_s = args.step
    started = time.monotonic()
    peers.require_program("sipp")
    say(f"call setup bench: {step_s} s steps, SIPp UAS hangs up after {HOLD_MS} ms, "
        f"{os.cpu_count()} CPUs shared by sipgw, SIPp and the driver")
    before = idle_load()
    if before > BUSY_PCT:
        say(f"warning: before the run, other processes use {before:.0f}% of a core; "
            "the figures below will be low")

    say("\n== sipgw (one process) -> SIPp UAS ==")
    (workdir / "rate").mkdir()
    gw = Sipgw(str(workdir / "rate"), twistd=profiled_twistd(args.profile),
               **daemon_settings(workdir / "rate"))
    daemons.append(gw)
    gw.start()
    say(SIPGW_HEAD)
    gw_steps = ladder(rates, lambda r: sipgw_step(gw, workdir, r, step_s, HOLD_MS), sipgw_row)
    gw.stop()
    if args.profile:
        say(f"  sipgw profile (cProfile, whole run) saved to {args.profile}")
    notes = [n for n in (busy_note(gw_steps),) if n]
    for note in notes:
        say(f"  note: {note}")

    sipp_steps: list[Step] = []
    if not args.sipgw_only:
        say("\n== SIPp UAC -> SIPp UAS (ceiling) ==")
        say(SIPP_HEAD)
        sipp_steps = ladder(rates, lambda r: sipp_step(workdir, r, step_s, HOLD_MS), sipp_row)
        if note := busy_note(sipp_steps):
            notes.append(note)
            say(f"  note: {note}")

    mem = Memory(problems=["not measured (--sipgw-only)"])
    if not args.sipgw_only:
        say(f"\n== memory: {MEMORY_CALLS} concurrent calls on a fresh sipgw ==")
        (workdir / "mem").mkdir()
        gw2 = Sipgw(str(workdir / "mem"), **daemon_settings(workdir / "mem"))
        daemons.append(gw2)
        gw2.start()
        mem = memory_run(gw2, workdir)
        gw2.stop()
        say("  " + ", ".join(f"{n} calls {kb / 1024:.1f} MB" for n, kb in mem.points)
            + f"; after hang-up {mem.after_kb / 1024:.1f} MB")
        for problem in mem.problems:
            say(f"  problem: {problem}")

    say()
    held = [s for s in gw_steps if s.passed]
    ceiling = [s for s in sipp_steps if s.passed]
    best = held[-1] if held else None
    top = ceiling[-1].rate if ceiling else 0
    above = "" if sipp_steps and not sipp_steps[-1].passed else "≥ "
    if best:
        ratio = f"{best.rate / top:.2f}" if top else "-"
        say(f"call setup: sipgw held {best.rate} calls/s for {step_s} s with 0 failed; "
            f"{best.cpu_ms_per_call:.1f} ms CPU/call; ceiling SIPp->SIPp {above}{top} calls/s; "
            f"ratio {ratio}")
    else:
        say(f"call setup: sipgw held no rate; ceiling SIPp->SIPp {above}{top} calls/s")
    stops = []
    if gw_steps and not gw_steps[-1].passed:
        stops.append(f"sipgw failed at {gw_steps[-1].rate} calls/s: {'; '.join(gw_steps[-1].problems)}")
    if sipp_steps and not sipp_steps[-1].passed:
        stops.append(f"SIPp failed at {sipp_steps[-1].rate} calls/s: {'; '.join(sipp_steps[-1].problems)}")
    if notes:
        stops.append("figures taken on a busy machine, see the notes above")
    for line in stops:
        say(f"  ({line})")
    mem_note = f"; problems: {'; '.join(mem.problems)}" if mem.problems else ""
    most = mem.points[-1][0] if mem.points else 0
    say(f"memory: {fmt(mem.slope_kb, '.0f')} KB RSS per established call "
        f"(slope over {most}){mem_note}")
    rate_ok = bool(best) and best.rate >= TARGET_RATE
    cpu_ok = bool(best) and best.cpu_ms_per_call <= TARGET_CPU_MS
    mem_ok = not mem.problems and not math.isnan(mem.slope_kb) and mem.slope_kb <= TARGET_KB
    note = f" (--quick: {step_s} s steps, the target asks 30 s)" if args.quick else ""
    say(f"targets: ≥ {TARGET_RATE} calls/s {met(rate_ok)}; ≤ {TARGET_CPU_MS:g} ms CPU/call "
        f"{met(cpu_ok)}; ≤ {TARGET_KB} KB/call {met(mem_ok)}{note}")
    say(f"took {time.monotonic() - started:.0f} s")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_STEP_S} s steps and fewer rates (a smoke run, not the target)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, SIPp CSVs)")
    parser.add_argument("--rates", type=lambda text: [int(r) for r in text.split(",")],
                        help="comma-separated rates instead of the ladder (e.g. 200,400)")
    parser.add_argument("--step", type=float, help="step length in seconds instead of the default")
    parser.add_argument("--sipgw-only", action="store_true",
                        help="only the sipgw ladder: no SIPp ceiling, no memory phase")
    parser.add_argument("--profile", metavar="FILE",
                        help="run the ladder's sipgw under cProfile (twistd --profile) and save "
                             "the stats to FILE when it stops (CPU figures then include the "
                             "profiler's overhead)")
    args = parser.parse_args()
    return in_workdir("sipgw-bench-", args.keep, lambda workdir, daemons: bench(args, workdir, daemons))


if __name__ == "__main__":
    sys.exit(main())
