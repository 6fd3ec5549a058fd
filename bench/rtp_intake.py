"""RTP intake benchmark (issue 3).

1. Packets/s through sipgw's RTP demux + reorder + H264 depacketizer + stream
   publish (a MediaSession, as a call uses it) versus a bare Twisted
   DatagramProtocol that only counts, fed by the same sender in the same run. The
   rate rises until loss passes 0.1 %; the highest clean rate of each is printed
   with their ratio. Target: >= 0.7x and >= 40,000 packets/s on one core.
2. CPU per concurrent G.711 call: N MediaSessions receiving 50 packets/s each
   (N = 50, 100, 200), receiver CPU over the window -> % of a core per call.
   Target <= 1 %. Memory per call: RSS slope over those sessions.

    .venv/bin/python bench/rtp_intake.py [--quick]

Everything runs on 127.0.0.1; each receiver is its own process (one core), the
sender another. The machine has 2 cores: the sender shares them.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import socket
import struct
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

TICKS = os.sysconf("SC_CLK_TCK")
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


# -- receivers (child processes) ---------------------------------------------------------
def _receiver(kind: str, port: int, ready, results, sessions: int = 1):
    from twisted.internet import asyncioreactor
    asyncioreactor.install()
    from twisted.internet import protocol, reactor

    count = {"n": 0}
    if kind == "bare":
        class Counter(protocol.DatagramProtocol):
            def datagramReceived(self, data, addr):
                count["n"] += 1
        p = reactor.listenUDP(port, Counter(), interface="127.0.0.1")
        p.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
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
        for _ in range(sessions):
            stream = Stream("bench", has_audio=media_kind == "audio",
                            has_video=media_kind == "video")
            sink = stream.subscribe(maxlen=64)  # one consumer that never reads: drops
            session = MediaSession(reactor, call_id="bench", stream=stream,
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
        total = lambda: sum(s.endpoints[media_kind].counters["packets"]  # noqa: E731
                            for s, _ in all_sessions)
        ready.put(ports)
    if kind == "bare":
        ready.put([port])

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
    reactor.run()


class Receiver:
    def __init__(self, kind: str, port: int, sessions: int = 1):
        self.ready = mp.Queue()
        self.ready._cmd = mp.Queue()
        self.results = mp.Queue()
        self.proc = mp.Process(target=_receiver, args=(kind, port, self.ready, self.results,
                                                       sessions), daemon=True)
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
    """Send packets round-robin to the ports at ``rate`` packets/s for ``seconds``, from
    ``source_port`` (the address the sessions' SDP names)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    sock.bind(("127.0.0.1", source_port))
    targets = [("127.0.0.1", p) for p in ports]
    sent, start, n = 0, time.monotonic(), len(packets)
    end = start + seconds
    while True:
        now = time.monotonic()
        if now >= end:
            break
        due = int((now - start) * rate)
        while sent < due:
            sock.sendto(packets[sent % n], targets[sent % len(targets)])
            sent += 1
        time.sleep(0.0005)
    sock.close()
    return sent


def intake(kind: str, rates: list[int], seconds: float, packets: list[bytes]) -> list[tuple]:
    rows = []
    base = 47000 if kind == "bare" else 47100
    for rate in rates:
        receiver = Receiver(kind, base)
        try:
            sent = send_at(receiver.ports, packets, rate, seconds)
            deadline = time.monotonic() + 5
            got = receiver.count()
            while got < sent and time.monotonic() < deadline:
                time.sleep(0.1)
                new = receiver.count()
                if new == got:
                    break
                got = new
            loss = max(0.0, 1 - got / sent)
            rows.append((rate, sent, got, loss, sent / seconds))
            print(f"  {kind:12s} rate {rate:7d}/s sent {sent:8d} received {got:8d} "
                  f"loss {loss * 100:6.3f} %", flush=True)
        finally:
            receiver.stop()
        if loss > 0.001:
            break
    return rows


def best(rows) -> float:
    clean = [actual for rate, sent, got, loss, actual in rows if loss <= 0.001]
    return max(clean) if clean else 0.0


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


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short steps (3 s)")
    args = parser.parse_args()
    seconds = 3.0 if args.quick else 8.0
    packets = h264_packets(20000)
    rates = [10000, 20000, 30000, 40000, 45000, 50000, 55000, 60000, 70000, 80000, 100000,
             130000, 160000, 200000, 250000, 300000]
    print("RTP intake (720p H264 FU-A packets), rising rate until loss > 0.1 %:")
    bare_rows = intake("bare", rates, seconds, packets)
    ours_rows = intake("sipgw-video", rates, seconds, packets)
    bare, ours = best(bare_rows), best(ours_rows)
    for name, rows in (("bare Twisted", bare_rows), ("sipgw", ours_rows)):
        if rows[-1][3] <= 0.001:
            print(f"  note: {name} never lost packets up to the top rate: its figure is a floor "
                  "(the sender's limit), not its capacity")
    ratio = ours / bare if bare else 0
    print("G.711 calls at 50 packets/s each:")
    figures = {n: g711_cpu(n, seconds) for n in (50, 100, 200)}
    print()
    print(f"rtp intake: sipgw {ours:,.0f} packets/s at <0.1 % loss vs bare Twisted "
          f"{bare:,.0f} packets/s: ratio {ratio:.2f} (target >= 0.7 and >= 40,000)")
    for n, (cpu, kb) in figures.items():
        print(f"g711 cpu: {n} calls {cpu:.3f} % of a core per call (target <= 1 %), "
              f"memory {kb:.0f} KB RSS per call")
    print(json.dumps({"sipgw_pps": ours, "bare_pps": bare, "ratio": ratio,
                      "g711": {str(n): {"cpu_pct_per_call": c, "kb_per_call": k}
                               for n, (c, k) in figures.items()}}))


if __name__ == "__main__":
    main()
