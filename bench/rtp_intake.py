"""RTP intake benchmark (issues 3 and 16).

1. Packets/s through sipgw's RTP demux + reorder + H264 depacketizer + stream
   publish (MediaSessions, as calls use them) versus bare Twisted
   DatagramProtocols that only count, fed by the same sender in the same run, in
   two regimes: one hot socket (one call; each wake-up reads a batch) and many
   calls (each its own socket; the stream goes to every socket in turn, so a
   wake-up finds about one packet per socket). The rate rises until loss passes
   0.1 % or the receiver falls behind (more than 2 % of the step's packets still
   queued in its socket buffers when the sender stops); the highest clean rate
   of each is printed with their ratio, and the receiver's CPU per packet
   (utime + stime / packets) at the highest rate both passed, which depends
   much less on what else the machine runs. The sender is
   a C program (sendmmsg, 64 packets a call) the bench builds with gcc into a
   temporary directory, so the bare figure is the receiver's capacity, not the
   sender's; without gcc, Python sender processes stand in and the figures say so.
   Target: >= 0.7x and >= 40,000 packets/s on one core.
2. CPU per concurrent G.711 call: N MediaSessions receiving 50 packets/s each
   (N = 50, 100, 200), receiver CPU over the window -> % of a core per call.
   Target <= 1 %. Memory per call: RSS slope over those sessions.

    .venv/bin/python bench/rtp_intake.py [--quick] [--regime hot|many|both] [--no-g711]

Everything runs on 127.0.0.1; each receiver is its own process (one core), the
sender another. The machine has 2 cores: the sender shares them.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

TICKS = os.sysconf("SC_CLK_TCK")
MAX_LOSS = 0.001  # a step passes with at most this share of the packets lost
MAX_BEHIND = 0.02  # and at most this share still queued when the sender stops
SENDER_PORT = 47090  # the sender's source port, which the sessions' SDP names (strict source)


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


# -- the packets: a 720p-like H264 stream (FU-A, ~1.5 Mbit/s) -----------------------
def h264_packets(count: int) -> list[bytes]:
    """RTP packets of 30 fps access units: an IDR every 60 frames, FU-A of 1200 bytes."""
    packets, seq, ts = [], 0, 0
    frame = 0
    while len(packets) < count:
        key = frame % 60 == 0
        size = 30000 if key else 6000
        nal_header = 0x65 if key else 0x41
        units = []
        if key:
            units.append(bytes([0x67, 0x42, 0xE0, 0x1F, 0xDA, 0x01, 0x40, 0x16, 0xE8, 0x06, 0xD0,
                                0xA1, 0x35]))  # SPS 1280x720 baseline
            units.append(bytes([0x68, 0xCE, 0x06, 0xE2]))
        body = bytes(size)
        payloads = [u for u in units]
        fu_indicator = (nal_header & 0xE0) | 28
        chunks = [body[i:i + 1200] for i in range(0, len(body), 1200)]
        for i, chunk in enumerate(chunks):
            fu_header = (nal_header & 0x1F) | (0x80 if i == 0 else 0) | (
                0x40 if i == len(chunks) - 1 else 0)
            payloads.append(bytes([fu_indicator, fu_header]) + chunk)
        for i, payload in enumerate(payloads):
            marker = 0x80 if i == len(payloads) - 1 else 0
            header = struct.pack("!BBHII", 0x80, marker | 102, seq & 0xFFFF, ts, 0x1234)
            packets.append(header + payload)
            seq += 1
        ts = (ts + 3000) & 0xFFFFFFFF
        frame += 1
    return packets[:count]


# -- the sender ---------------------------------------------------------------------------
C_SENDER = r"""
/* RTP load sender for bench/rtp_intake.py: replays packets to UDP ports at a rate. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* usage: sender SRC_PORT RATE SECONDS PACKETS_FILE PORT... ; PACKETS_FILE: (u16 len, bytes)* */
int main(int argc, char **argv) {
    if (argc < 6) {
        fprintf(stderr, "usage: %s SRC_PORT RATE SECONDS PACKETS_FILE PORT...\n", argv[0]);
        return 2;
    }
    int src_port = atoi(argv[1]);
    double rate = atof(argv[2]), seconds = atof(argv[3]);
    FILE *f = fopen(argv[4], "rb");
    if (!f) { perror("packets"); return 2; }
    size_t cap = 1 << 16, n = 0;
    unsigned char **pkts = malloc(cap * sizeof *pkts);
    size_t *lens = malloc(cap * sizeof *lens);
    unsigned char hdr[2];
    while (fread(hdr, 1, 2, f) == 2) {
        size_t len = (hdr[0] << 8) | hdr[1];
        if (n == cap) { cap *= 2; pkts = realloc(pkts, cap * sizeof *pkts); lens = realloc(lens, cap * sizeof *lens); }
        pkts[n] = malloc(len);
        if (fread(pkts[n], 1, len, f) != len) { fprintf(stderr, "short packets file\n"); return 2; }
        lens[n++] = len;
    }
    fclose(f);
    int nports = argc - 5;
    struct sockaddr_in *dst = calloc(nports, sizeof *dst);
    for (int i = 0; i < nports; i++) {
        dst[i].sin_family = AF_INET;
        dst[i].sin_port = htons(atoi(argv[5 + i]));
        dst[i].sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    }
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    int buf = 4 << 20;
    setsockopt(s, SOL_SOCKET, SO_SNDBUF, &buf, sizeof buf);
    int one = 1;  /* several senders share the source port the sessions' SDP names */
    setsockopt(s, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    struct sockaddr_in src = {.sin_family = AF_INET, .sin_port = htons(src_port)};
    src.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(s, (struct sockaddr *)&src, sizeof src) < 0) { perror("bind"); return 2; }
    struct mmsghdr msgs[BATCH];
    struct iovec iov[BATCH];
    /* packet i of the stream goes to every port in turn: each port gets the whole stream */
    uint64_t sent = 0, errors = 0;
    double start = now(), end = start + seconds;
    for (;;) {
        double t = now();
        if (t >= end) break;
        uint64_t due = rate > 0 ? (uint64_t)((t - start) * rate) : sent + BATCH;
        if (due <= sent) {
            struct timespec nap = {0, 50000};
            nanosleep(&nap, NULL);
            continue;
        }
        int k = 0;
        while (sent + k < due && k < BATCH) {
            uint64_t j = sent + k;
            size_t p = (j / nports) % n;
            iov[k].iov_base = pkts[p];
            iov[k].iov_len = lens[p];
            memset(&msgs[k], 0, sizeof msgs[k]);
            msgs[k].msg_hdr.msg_iov = &iov[k];
            msgs[k].msg_hdr.msg_iovlen = 1;
            msgs[k].msg_hdr.msg_name = &dst[j % nports];
            msgs[k].msg_hdr.msg_namelen = sizeof dst[0];
            k++;
        }
        int r = sendmmsg(s, msgs, k, 0);
        if (r < 0) {
            if (errno == EAGAIN || errno == ENOBUFS || errno == EINTR) { errors++; continue; }
            perror("sendmmsg");
            return 1;
        }
        sent += r;
    }
    printf("%llu %.6f %llu\n", (unsigned long long)sent, now() - start, (unsigned long long)errors);
    return 0;
}
"""

SENDER_PROCESSES = 2  # C senders splitting the ports (or Python stand-ins without gcc)


class Sender:
    """Sends a packet list to ports at a rate: the C program when gcc is there, else
    ``SENDER_PROCESSES`` Python processes sharing the rate."""

    def __init__(self, packets: list[bytes]):
        self.workdir = tempfile.mkdtemp(prefix="sipgw-rtp-sender-")
        self.packets = packets
        self.path = os.path.join(self.workdir, "packets.bin")
        with open(self.path, "wb") as f:
            for packet in packets:
                f.write(struct.pack("!H", len(packet)) + packet)
        self.binary = None
        gcc = shutil.which("gcc")
        if gcc:
            source = os.path.join(self.workdir, "sender.c")
            with open(source, "w") as f:
                f.write(C_SENDER)
            binary = os.path.join(self.workdir, "sender")
            built = subprocess.run([gcc, "-O2", "-o", binary, source], capture_output=True,
                                   text=True, timeout=120)
            if built.returncode == 0:
                self.binary = binary
            else:
                print(f"  note: the C sender did not build ({built.stderr.strip()[:200]}); "
                      "Python senders stand in", flush=True)
        self.kind = (f"C sendmmsg, {SENDER_PROCESSES} processes when there are several sockets"
                     if self.binary else f"{SENDER_PROCESSES} Python processes")

    def send(self, ports: list[int], rate: float, seconds: float) -> tuple[int, float]:
        """Packet i of the stream to every port in turn, from SENDER_PORT; returns (sent,
        seconds it took)."""
        if self.binary:
            # one port: one sender (a stream's order is one sender's); more: each sender
            # takes every k-th port and its share of the rate
            k = min(SENDER_PROCESSES, len(ports))
            shares = [ports[i::k] for i in range(k)]
            procs = [subprocess.Popen([self.binary, str(SENDER_PORT),
                                       str(rate * len(share) / len(ports)), str(seconds),
                                       self.path, *map(str, share)],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                     for share in shares]
            sent, took = 0, 0.0
            for proc in procs:
                out, err = proc.communicate(timeout=seconds + 30)
                if proc.returncode != 0:
                    raise RuntimeError(f"sender failed: {err.strip()}")
                n, t, _ = out.split()
                sent, took = sent + int(n), max(took, float(t))
            return sent, took
        with mp.Pool(SENDER_PROCESSES) as pool:
            t0 = time.monotonic()
            parts = pool.starmap(_send_share, [(ports, self.packets, rate / SENDER_PROCESSES,
                                                seconds, SENDER_PORT + 2 * (i + 1))
                                               for i in range(SENDER_PROCESSES)])
            return sum(parts), time.monotonic() - t0

    def close(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)


def _send_share(ports, packets, rate, seconds, source_port):
    return send_at(ports, packets, rate, seconds, source_port)


# -- receivers (child processes) ---------------------------------------------------------
def _receiver(kind: str, port: int, ready, results, sessions: int = 1, profile: str = ""):
    from twisted.internet import asyncioreactor
    asyncioreactor.install()
    from twisted.internet import protocol, reactor

    count = {"n": 0}
    if kind == "bare":
        class Counter(protocol.DatagramProtocol):
            def datagramReceived(self, data, addr):
                count["n"] += 1
        ports = []
        for i in range(sessions):
            p = reactor.listenUDP(port + 2 * i, Counter(), interface="127.0.0.1")
            p.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            ports.append(port + 2 * i)
        total = lambda: count["n"]  # noqa: E731
    else:
        from sipgw.rtp.ports import PortPool
        from sipgw.rtp.session import MediaSession
        from sipgw.sip.sdp import Codec, NegotiatedMedia
        from sipgw.streams.stream import Stream
        media_kind = "video" if kind == "sipgw-video" else "audio"
        codec = Codec(102, "H264", 90000) if media_kind == "video" else Codec(0, "PCMU", 8000)
        pool = PortPool(port, port + 4 * sessions + 4, "127.0.0.1")
        all_sessions = []
        for i in range(sessions):
            stream = Stream(f"bench{i}", has_audio=media_kind == "audio",
                            has_video=media_kind == "video")
            sink = stream.subscribe(maxlen=64)  # one consumer that never reads: drops
            session = MediaSession(reactor, call_id=f"bench{i}", stream=stream,
                                   bind_address="127.0.0.1", ports=pool, kinds=[media_kind],
                                   max_packets_per_second=10 ** 9)  # the intake's own limit
            session.open()
            session.negotiate({media_kind: NegotiatedMedia(
                kind=media_kind, address="127.0.0.1", port=SENDER_PORT,
                rtcp_port=SENDER_PORT + 1, codec=codec,
                dtmf_pt=None, direction="sendrecv", packetization_mode=1, recv_pt=codec.pt)})
            ep = session.endpoints[media_kind]
            ep.rtp_port.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            all_sessions.append((session, sink))
        ports = [s.endpoints[media_kind].port for s, _ in all_sessions]
        from sipgw.service import freeze_startup_objects
        freeze_startup_objects()  # the garbage collector as the daemon sets it up
        total = lambda: sum(s.endpoints[media_kind].counters["packets"]  # noqa: E731
                            for s, _ in all_sessions)
    ready.put(ports)

    import threading

    def control():
        while True:
            command = ready_cmd.get()
            if command == "count":
                reactor.callFromThread(lambda: results.put(total()))
            elif command == "stop":
                reactor.callFromThread(reactor.stop)
                return
    ready_cmd = ready._cmd
    threading.Thread(target=control, daemon=True).start()
    if profile:
        import cProfile
        cProfile.runctx("reactor.run()", globals(), {"reactor": reactor}, profile)
    else:
        reactor.run()


class Receiver:
    def __init__(self, kind: str, port: int, sessions: int = 1, profile: str = ""):
        self.ready = mp.Queue()
        self.ready._cmd = mp.Queue()
        self.results = mp.Queue()
        self.proc = mp.Process(target=_receiver, args=(kind, port, self.ready, self.results,
                                                       sessions, profile), daemon=True)
        self.proc.start()
        self.ports = self.ready.get(timeout=30)

    def count(self) -> int:
        self.ready._cmd.put("count")
        return self.results.get(timeout=10)

    def stop(self) -> None:
        self.ready._cmd.put("stop")
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()


def send_at(ports: list[int], packets: list[bytes], rate: float, seconds: float,
            source_port: int = SENDER_PORT) -> int:
    """Send packet i of the stream to every port in turn at ``rate`` packets/s for
    ``seconds``, from ``source_port`` (the address the sessions' SDP names)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    sock.bind(("127.0.0.1", source_port))
    targets = [("127.0.0.1", p) for p in ports]
    sent, start, n, k = 0, time.monotonic(), len(packets), len(targets)
    end = start + seconds
    while True:
        now = time.monotonic()
        if now >= end:
            break
        due = int((now - start) * rate)
        while sent < due:
            sock.sendto(packets[(sent // k) % n], targets[sent % k])
            sent += 1
        time.sleep(0.0005)
    sock.close()
    return sent


def intake(sender: Sender, kind: str, rates: list[int], seconds: float,
           sessions: int = 1) -> list[tuple]:
    """Rows (rate, sent, received, clean, packets/s sent, receiver us per packet) up to the
    first step that is not clean (more than 0.1 % lost, or the receiver fell behind)."""
    rows = []
    base = 47000 if kind == "bare" else 47100 + 4  # clear of the sender's 47090-47095
    base = base if sessions == 1 else 49000
    label = f"{kind} x{sessions}" if sessions > 1 else kind
    for rate in rates:
        receiver = Receiver(kind, base, sessions)
        try:
            cpu0 = cpu_seconds(receiver.proc.pid)
            sent, took = sender.send(receiver.ports, rate, seconds)
            at_end = receiver.count()  # what it had taken in when the sender stopped
            deadline = time.monotonic() + 5
            got = at_end
            while got < sent and time.monotonic() < deadline:
                time.sleep(0.1)
                new = receiver.count()
                if new == got:
                    break
                got = new
            cpu = cpu_seconds(receiver.proc.pid) - cpu0
            # loss: never received; behind: still queued in the socket buffers when the
            # sender stopped (100 sockets buffer seconds of traffic: a receiver slower than
            # the sender loses nothing in a short step, it falls behind)
            loss = max(0.0, 1 - got / sent) if sent else 1.0
            behind = max(0.0, 1 - at_end / sent) if sent else 1.0
            us = cpu / got * 1e6 if got else float("nan")
            clean = loss <= MAX_LOSS and behind <= MAX_BEHIND
            rows.append((rate, sent, got, clean, sent / took, us))
            print(f"  {label:18s} rate {rate:7d}/s sent {sent / took:9.0f}/s received {got:8d} "
                  f"loss {loss * 100:6.3f} %  behind {behind * 100:5.1f} %  receiver {us:5.2f} "
                  "us/packet", flush=True)
        finally:
            receiver.stop()
        if not rows[-1][3] or sent / took < 0.9 * rate:
            break
    return rows


def best(rows) -> float:
    clean = [actual for rate, sent, got, ok, actual, us in rows if ok]
    return max(clean) if clean else 0.0


def us_at_common_rate(bare_rows, ours_rows) -> tuple[int, float, float]:
    """(rate, bare us/packet, sipgw us/packet) at the highest rate both passed clean."""
    clean = lambda rows: {r[0]: r[5] for r in rows if r[3]}  # noqa: E731
    bare, ours = clean(bare_rows), clean(ours_rows)
    common = sorted(set(bare) & set(ours))
    if not common:
        return 0, float("nan"), float("nan")
    return common[-1], bare[common[-1]], ours[common[-1]]


def g711_cpu(sessions: int, seconds: float) -> tuple[float, float]:
    """% of one core per call and KB RSS per call for N G.711 sessions at 50 pps each."""
    packets = [struct.pack("!BBHII", 0x80, 0, i & 0xFFFF, i * 160, 0x5678) + b"\xff" * 160
               for i in range(5000)]
    idle = Receiver("sipgw-audio", 48000, 1)
    send_at(idle.ports, packets, 50, 1.0)
    idle_rss = rss_kb(idle.proc.pid)
    idle.stop()
    receiver = Receiver("sipgw-audio", 48000, sessions)
    try:
        cpu0 = cpu_seconds(receiver.proc.pid)
        t0 = time.monotonic()
        sent = send_at(receiver.ports, packets, 50 * sessions, seconds)
        elapsed = time.monotonic() - t0
        cpu = cpu_seconds(receiver.proc.pid) - cpu0
        got = receiver.count()
        rss = rss_kb(receiver.proc.pid)  # after the traffic: buffers are allocated
    finally:
        receiver.stop()
    per_call = cpu / elapsed / sessions * 100
    print(f"  {sessions:4d} G.711 calls: {per_call:.3f} % of a core per call, "
          f"loss {max(0, 1 - got / sent) * 100:.3f} %", flush=True)
    return per_call, (rss - idle_rss) / max(sessions - 1, 1)


REGIMES = {"hot": 1, "many": 100}  # sockets (calls) per regime


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short steps (3 s)")
    parser.add_argument("--regime", choices=["hot", "many", "both"], default="both",
                        help="one hot socket, many calls (100 sockets), or both (default)")
    parser.add_argument("--no-g711", action="store_true", help="skip the G.711 calls part")
    args = parser.parse_args()
    seconds = 3.0 if args.quick else 8.0
    packets = h264_packets(20000)
    rates = [20000, 30000, 40000, 50000, 60000, 70000, 80000, 90000, 100000, 115000, 130000,
             150000, 170000, 200000, 230000, 260000, 300000, 350000, 400000]
    sender = Sender(packets)
    results = {}
    try:
        print(f"RTP intake (720p H264 FU-A packets), sender: {sender.kind}; rising rate until "
              "loss > 0.1 %:", flush=True)
        regimes = list(REGIMES) if args.regime == "both" else [args.regime]
        for regime in regimes:
            n = REGIMES[regime]
            print(f"{regime}: {n} socket(s)", flush=True)
            bare_rows = intake(sender, "bare", rates, seconds, n)
            ours_rows = intake(sender, "sipgw-video", rates, seconds, n)
            bare, ours = best(bare_rows), best(ours_rows)
            for name, rows in (("bare Twisted", bare_rows), ("sipgw", ours_rows)):
                if rows and rows[-1][3]:
                    print(f"  note: {name} never lost packets up to the top rate or the sender's "
                          "limit: its figure is a floor, not its capacity", flush=True)
            rate, bare_us, ours_us = us_at_common_rate(bare_rows, ours_rows)
            results[regime] = {"sipgw_pps": ours, "bare_pps": bare,
                               "ratio": ours / bare if bare else 0, "sockets": n,
                               "us_rate": rate, "bare_us": bare_us, "sipgw_us": ours_us}
    finally:
        sender.close()
    figures = {}
    if not args.no_g711:
        print("G.711 calls at 50 packets/s each:")
        figures = {n: g711_cpu(n, seconds) for n in (50, 100, 200)}
    print()
    for regime, r in results.items():
        met = "MET" if r["ratio"] >= 0.7 and r["sipgw_pps"] >= 40000 else "NOT MET"
        print(f"rtp intake ({regime}, {r['sockets']} socket(s)): sipgw {r['sipgw_pps']:,.0f} "
              f"packets/s at <0.1 % loss vs bare Twisted {r['bare_pps']:,.0f} packets/s: ratio "
              f"{r['ratio']:.2f} (target >= 0.7 and >= 40,000: {met}); receiver CPU at "
              f"{r['us_rate']:,} packets/s: bare {r['bare_us']:.2f} us/packet, sipgw "
              f"{r['sipgw_us']:.2f} us/packet (cost ratio {r['bare_us'] / r['sipgw_us']:.2f})")
    for n, (cpu, kb) in figures.items():
        print(f"g711 cpu: {n} calls {cpu:.3f} % of a core per call (target <= 1 %), "
              f"memory {kb:.0f} KB RSS per call")
    print(json.dumps({"sender": sender.kind, "intake": results,
                      "g711": {str(n): {"cpu_pct_per_call": c, "kb_per_call": k}
                               for n, (c, k) in figures.items()}}))


if __name__ == "__main__":
    main()
