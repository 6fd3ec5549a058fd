#!/usr/bin/env python3
"""Scale-out of a sipgw cluster: call setup rate and viewers per second across 1, 2 and 3
nodes on one Redis.

    .venv/bin/python bench/cluster.py [--quick] [--keep] [--placement round-robin|least-loaded|local]

First one node in single-node mode (no Redis: the baseline of the same run), then for each
cluster size N (1, 2, 3): a loopback redis-server and N sipgw nodes
(``cluster_redis_url``, ``cluster_placement``, as bench/call_setup.py's daemon otherwise),
and a load driver posting ``/call/startup`` at a rising rate, its keep-alive connections
spread over the N nodes' REST ports as an HTTP load balancer would; each node places the
call where the placement policy says (round-robin by default: most calls take one REST hop
to another node), a SIPp UAS answers and hangs up after 1 s.  A step passes as in
call_setup.py (every request 200, the rate kept, every call FINISH, < 1 % retransmissions);
the ladder stops at the first failing step.  Each step prints every node's CPU (% of one
core) and Redis's, so how far a node scales on this machine shows: with 2 cores shared by
the nodes, SIPp, Redis and the driver, the cores cap it long before the nodes do.

Then, per cluster size, viewers: one call (a SIPp UAS holding it) publishes a stream on the
first node, and WHEP players (aiortc, in this process) join at a rising rate, spread over the
nodes in turn (players on other nodes go through that node's one edge pull of the stream); a
player counts once its peer connection is connected (ICE + DTLS with the node it asked); a step
passes when every player of it connected within VIEWER_DEADLINE_S of joining.  The players of
a step are closed before the next.

Exit status 0 whether or not scaling is seen; 2 on a harness error.  Everything binds
127.0.0.1 and every process started is stopped.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests" / "interop"))

import call_setup as cs  # noqa: E402
import peers  # noqa: E402
from peers import free_port  # noqa: E402
from sipgw_daemon import Sipgw  # noqa: E402

RATES = [50, 100, 200, 300, 400, 600, 800, 1000]
VIEWER_RATES = [5, 10, 20, 40, 80]
QUICK_VIEWER_RATES = [5, 10, 20, 40]
VIEWER_STEP_S, VIEWER_DEADLINE_S = 4, 5.0
VIEWER_SETTINGS = {"max_viewers_per_stream": 0}  # the ladder, not the quota, ends the run
QUICK_RATES = [100, 200, 300, 400, 600]
STEP_S, QUICK_STEP_S = 15, 5
TOKEN = "bench-cluster-token-0123456789"
# keep-alive REST connections of the driver: one per 20 calls/s (call_setup.py: 50), as a hop
# to another node adds latency and the driver's requests on one connection go one at a time
cs.RATE_PER_CONN = 20


def start_cluster(workdir: Path, n: int, redis, placement: str,
                  daemons: list[Sipgw]) -> list[Sipgw]:
    nodes = []
    for i in range(n):
        node_dir = workdir / f"node{i}"
        node_dir.mkdir(parents=True)
        gw = Sipgw(str(node_dir), **cs.daemon_settings(node_dir), **VIEWER_SETTINGS,
                   cluster_redis_url=redis.url, cluster_node_id=f"n{i}",
                   cluster_token=TOKEN, cluster_placement=placement)
        gw.settings["cluster_node_url"] = f"http://127.0.0.1:{gw.rest_port}"
        daemons.append(gw)
        nodes.append(gw.start())
    peers.wait_for(lambda: redis.command("SCARD", "sipgw:nodes") == f":{n}", 15,
                   f"{n} nodes in Redis")
    return nodes


def step(nodes: list[Sipgw], redis, workdir: Path, rate: int, step_s: float):
    """One rate: (call_setup.Step, each node's CPU %, Redis's CPU %)."""
    calls = round(rate * step_s)
    result = cs.Step(rate, calls)
    prefix = f"n{len(nodes)}r{rate}-"
    uas = cs.sipp_uas(workdir / f"uas-{len(nodes)}-{rate}", cs.UAS_BYE, calls,
                      hold_ms=cs.HOLD_MS, timeout_s=1.5 * step_s + cs.HOLD_MS / 1000 + 90).start()
    try:
        alive = lambda: all(gw.proc.poll() is None for gw in nodes)  # noqa: E731
        watch = cs.FailureWatch(nodes[0].rest_port, prefix)  # any node lists every call
        watch.start()
        cpu0 = [cs.cpu_ms(gw.proc.pid) for gw in nodes]
        redis0, wall0 = cs.cpu_ms(redis.pid) if redis else 0.0, time.monotonic()
        load = cs.drive([gw.rest_port for gw in nodes], "/call/startup",
                        cs.startup_body(prefix, uas.port), calls, rate)
        wall1 = time.monotonic()
        cpu1 = [cs.cpu_ms(gw.proc.pid) if gw.proc.poll() is None else math.nan for gw in nodes]
        redis1 = cs.cpu_ms(redis.pid) if redis else 0.0
        grace = cs.HOLD_MS / 1000 + (40 if load.ok == calls else 5)
        rc = cs.wait_exit(uas, time.monotonic() + grace, alive)
        watch.finish()
        stat = cs.sipp_stat(uas.tmpdir / "uas_stat.csv")
        messages, retrans = cs.messages_and_retrans(uas)
        result.kept = load.kept_rate
        result.done = int(stat.get("SuccessfulCall(C)") or 0)
        sipp_failed = int(stat.get("FailedCall(C)") or 0)
        result.failed = max(len(watch.failed), sipp_failed)
        result.retrans_pct = 100 * retrans / messages if messages else math.nan
        result.p99_ms = load.latency_ms(0.99)
        span_ms = (wall1 - wall0) * 1000
        node_pct = [100 * (b - a) / span_ms for a, b in zip(cpu0, cpu1)]
        redis_pct = 100 * (redis1 - redis0) / span_ms
        result.cpu_pct = sum(node_pct)
        p = result.problems
        if not alive():
            p.append("a node exited")
        if load.ok != calls:
            p.append(f"REST {load.ok}/{calls} accepted {load.errors}")
        if load.kept_rate < cs.MIN_KEPT * rate:
            p.append(f"REST sent {load.kept_rate:.1f}/s")
        if watch.failed:
            first = next(iter(watch.failed.items()))
            p.append(f"{len(watch.failed)} FAILED/BUSY (e.g. {first[0]}: {first[1]})")
        if rc != 0:
            p.append("SIPp UAS still had calls open" if rc is None else f"SIPp UAS exit {rc}")
        if result.done != calls or sipp_failed:
            p.append(f"SIPp: {result.done} successful, {sipp_failed} failed of {calls}")
        if messages and retrans >= cs.MAX_RETRANS * messages:
            p.append(f"{result.retrans_pct:.1f}% retransmissions")
        return result, node_pct, redis_pct
    finally:
        uas.stop()


async def _join(port: int, name: str) -> tuple[object, float]:
    """A WHEP player of ``name`` on the node at ``port``: (its peer connection, seconds from
    its offer to connected)."""
    import asyncio
    import urllib.request
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
    loop = asyncio.get_running_loop()
    started = loop.time()
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    connected = asyncio.Event()
    pc.on("connectionstatechange",
          lambda: connected.set() if pc.connectionState == "connected" else None)
    pc.addTransceiver("audio", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/whep/{name}", data=pc.localDescription.sdp.encode(),
        method="POST", headers={"Content-Type": "application/sdp"})
    try:
        answer = await loop.run_in_executor(
            None, lambda: urllib.request.urlopen(request, timeout=VIEWER_DEADLINE_S).read())
        await pc.setRemoteDescription(RTCSessionDescription(answer.decode(), "answer"))
        await asyncio.wait_for(connected.wait(), VIEWER_DEADLINE_S - (loop.time() - started))
    except BaseException:
        await pc.close()
        raise
    return pc, loop.time() - started


def viewers_step(nodes: list[Sipgw], name: str, rate: int, step_s: float) -> tuple:
    """``rate`` players a second for ``step_s`` seconds, node by node in turn: (joined, asked,
    p50 and max seconds to connected, each node's CPU %)."""
    import asyncio

    async def run():
        loop = asyncio.get_running_loop()
        count = round(rate * step_s)
        t0 = loop.time()
        tasks = []
        for i in range(count):
            await asyncio.sleep(max(0.0, t0 + i / rate - loop.time()))
            tasks.append(asyncio.ensure_future(_join(nodes[i % len(nodes)].rest_port, name)))
        results = await asyncio.gather(*tasks, return_exceptions=True)
        joined = [r for r in results if not isinstance(r, BaseException)]
        errors = [f"{type(r).__name__}: {r}"[:160] for r in results if isinstance(r, BaseException)]
        for pc, _ in joined:
            await pc.close()
        return count, sorted(t for _, t in joined), errors

    cpu0, wall0 = [cs.cpu_ms(gw.proc.pid) for gw in nodes], time.monotonic()
    asked, times, errors = asyncio.run(run())
    span_ms = (time.monotonic() - wall0) * 1000
    node_pct = [100 * (cs.cpu_ms(gw.proc.pid) - a) / span_ms for a, gw in zip(cpu0, nodes)]
    p50 = times[len(times) // 2] if times else math.nan
    return len(times), asked, p50, times[-1] if times else math.nan, node_pct, errors


def _wait_playable(nodes: list[Sipgw], name: str, timeout: float = 10.0) -> None:
    """Until one player on every node connects: the other nodes learn of a new stream from
    Redis (its event, or the next heartbeat's re-read) some tens of ms after it starts, and
    answer 404 till then."""
    import asyncio

    async def probe():
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        for gw in nodes:
            while True:
                try:
                    pc, _ = await _join(gw.rest_port, name)
                    await pc.close()
                    break
                except Exception:
                    if loop.time() > deadline:
                        raise
                    await asyncio.sleep(0.05)
    asyncio.run(probe())


def viewers(nodes: list[Sipgw], workdir: Path, rates: list[int]) -> int:
    """The viewers ladder on one stream of the first node: the best rate where every player
    connected."""
    import aioice.ice
    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]  # loopback only
    uas = cs.sipp_uas(workdir / "viewers-uas", cs.UAS_HOLD, 1, hold_ms=0, timeout_s=600).start()
    best = 0
    try:
        body = json.loads(cs.startup_body("viewers-", uas.port)(0))
        nodes[0].rest("/call/startup", body)
        nodes[0].wait_status(body["callId"], "ESTABLISHED", timeout=20)
        _wait_playable(nodes, body["toStream"])
        cs.say(f"{'viewers/s':>9} {'joined':>7} {'p50 s':>6} {'max s':>6}  [node cpu% each]  result")
        for rate in rates:
            joined, asked, p50, worst, node_pct, errors = viewers_step(
                nodes, body["toStream"], rate, VIEWER_STEP_S)
            ok = joined == asked
            cs.say(f"{rate:>9} {joined:>3}/{asked:<3} {cs.fmt(p50, '.2f'):>6} "
                   f"{cs.fmt(worst, '.2f'):>6}  [{' '.join(f'{p:>4.0f}' for p in node_pct)}]  "
                   f"{'pass' if ok else 'FAIL: ' + errors[0]}")
            if not ok:
                break
            best = rate
        nodes[0].rest("/call/terminate", {"callId": body["callId"]})
    finally:
        uas.stop()
    return best


def row(result, node_pct: list[float], redis_pct: float) -> str:
    nodes = " ".join(f"{cs.fmt(p, '.0f'):>4}" for p in node_pct)
    verdict = "pass" if result.passed else "FAIL: " + "; ".join(result.problems)
    return (f"{result.rate:>6} {cs.fmt(result.kept):>7} {result.calls:>6} {result.done:>6} "
            f"{result.failed:>6} {cs.fmt(result.retrans_pct, '.2f'):>6} "
            f"{cs.fmt(result.p99_ms):>11}  [{nodes}] {cs.fmt(redis_pct, '.0f'):>6}  {verdict}")


def single(workdir: Path, daemons: list[Sipgw]) -> list[Sipgw]:
    """The baseline: one node in single-node mode (no Redis)."""
    node_dir = workdir / "single"
    node_dir.mkdir(parents=True)
    gw = Sipgw(str(node_dir), **cs.daemon_settings(node_dir), **VIEWER_SETTINGS)
    daemons.append(gw)
    return [gw.start()]


SIZES = {0: "1 node, no Redis (baseline)", 1: "1 node", 2: "2 nodes", 3: "3 nodes"}


def bench(args, workdir: Path, daemons: list[Sipgw]) -> int:
    rates, step_s = (QUICK_RATES, QUICK_STEP_S) if args.quick else (RATES, STEP_S)
    peers.require_program("sipp")
    peers.require_program("redis-server")
    cs.say(f"cluster scale-out bench: placement {args.placement}, {step_s} s steps, SIPp UAS "
           f"hangs up after {cs.HOLD_MS} ms; {os.cpu_count()} CPUs shared by the nodes, "
           f"Redis, SIPp and the driver")
    before = cs.idle_load()
    if before > cs.BUSY_PCT:
        cs.say(f"warning: before the run, other processes use {before:.0f}% of a core; "
               "the figures below will be low")
    best, best_viewers = {}, {}
    for n in SIZES:
        size_dir = workdir / f"n{n}"
        size_dir.mkdir()
        redis = peers.Redis(size_dir, port=free_port("tcp")).start() if n else None
        try:
            nodes = start_cluster(size_dir, n, redis, args.placement, daemons) if n \
                else single(size_dir, daemons)
            cs.say(f"\n== {SIZES[n]} ==")
            cs.say(f"{'rate':>6} {'sent/s':>7} {'calls':>6} {'done':>6} {'failed':>6} "
                   f"{'retr%':>6} {'REST p99 ms':>11}  [node cpu% each] {'redis%':>6}  result")
            for rate in rates:
                result, node_pct, redis_pct = step(nodes, redis, size_dir, rate, step_s)
                cs.say(row(result, node_pct, redis_pct))
                if not result.passed:
                    break
                best[n] = (rate, node_pct)
            if args.viewers:
                cs.say(f"-- viewers ({SIZES[n]}) --")
                best_viewers[n] = viewers(nodes, size_dir, QUICK_VIEWER_RATES if args.quick
                                          else VIEWER_RATES)
            for gw in nodes:
                gw.stop()
        finally:
            if redis is not None:
                redis.stop()
    cs.say()
    for n, label in SIZES.items():
        rate, node_pct = best.get(n, (0, []))
        per_node = ", ".join(f"{p:.0f}%" for p in node_pct) or "-"
        cs.say(f"{label}: held {rate} calls/s for {step_s} s with 0 failed "
               f"(node CPU {per_node})")
    if best.get(0):
        factors = [f"{SIZES[n]} x{best.get(n, (0,))[0] / best[0][0]:.2f}" for n in (1, 2, 3)]
        cs.say(f"over the single-node baseline: {', '.join(factors)}")
    for n, label in SIZES.items():
        if n in best_viewers:
            cs.say(f"{label}: {best_viewers[n]} viewers/s joined, every one connected within "
                   f"{VIEWER_DEADLINE_S:g} s")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_STEP_S} s steps, fewer rates")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    parser.add_argument("--no-viewers", dest="viewers", action="store_false",
                        help="calls only: no viewers ladder")
    parser.add_argument("--placement", default="round-robin",
                        choices=["round-robin", "least-loaded", "local"])
    args = parser.parse_args()
    return cs.in_workdir("sipgw-cluster-bench-", args.keep,
                         lambda workdir, daemons: bench(args, workdir, daemons))


if __name__ == "__main__":
    sys.exit(main())
