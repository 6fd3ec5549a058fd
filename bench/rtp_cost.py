"""sipgw's RTP intake cost per packet, without the sender: the figures issue 16 quotes.

Two modes, each a short in-process run that depends little on what else the machine runs
(and not at all under callgrind):

- ``own``: the bench's 720p H264 packets (bench/rtp_intake.py's ``h264_packets``) straight
  into one session's protocol, in batches as a busy socket's wake-up gives them
  (``datagramsReceived``, ``--batch 200``) or one by one (``--batch 1``): sipgw's own work.
- ``drain``: real sockets on 127.0.0.1 filled first (one socket x ``--per`` packets, or
  ``--sockets`` x 1 packet per round), then only the reactor emptying them is timed: the read
  path (asyncio, ``RtpPort``, recvfrom) counts too; ``--bare`` puts counting Twisted
  ``DatagramProtocol``s on ``reactor.listenUDP`` there instead (the baseline).

    .venv/bin/python bench/rtp_cost.py own                  # CPU us per packet, best of 3
    .venv/bin/python bench/rtp_cost.py drain --sockets 100 [--bare]
    # instructions per packet (load-independent): the difference of two packet counts
    PYTHONHASHSEED=0 valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        .venv/bin/python bench/rtp_cost.py own --packets 10000 --rounds 1   # and 30000: (I2-I1)/20000
"""
from __future__ import annotations

import argparse
import os
import socket
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(1, HERE)

from twisted.internet import asyncioreactor  # noqa: E402

asyncioreactor.install()
from twisted.internet import protocol, reactor  # noqa: E402

from rtp_intake import SENDER_PORT, h264_packets  # noqa: E402
from sipgw.rtp.ports import PortPool  # noqa: E402
from sipgw.rtp.session import MediaSession  # noqa: E402
from sipgw.service import freeze_startup_objects  # noqa: E402
from sipgw.sip.sdp import Codec, NegotiatedMedia  # noqa: E402
from sipgw.streams.stream import Stream  # noqa: E402

SOURCE = ("127.0.0.1", SENDER_PORT)
CODEC = Codec(102, "H264", 90000)


def sessions(count: int, base: int) -> list[MediaSession]:
    """``count`` video sessions as rtp_intake's receiver makes them (one sink that never reads)."""
    pool = PortPool(base, base + 4 * count + 4, "127.0.0.1")
    out = []
    for i in range(count):
        stream = Stream(f"b{i}", has_audio=False, has_video=True)
        stream.subscribe(maxlen=64)
        session = MediaSession(reactor, call_id=f"b{i}", stream=stream, bind_address="127.0.0.1",
                               ports=pool, kinds=["video"], max_packets_per_second=10 ** 9)
        session.open()
        session.negotiate({"video": NegotiatedMedia(
            kind="video", address="127.0.0.1", port=SENDER_PORT, rtcp_port=SENDER_PORT + 1,
            codec=CODEC, dtmf_pt=None, direction="sendrecv", packetization_mode=1,
            recv_pt=CODEC.pt)})
        session.endpoints["video"].rtp_port.socket.setsockopt(
            socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        out.append(session)
    return out


def own(args) -> None:
    if args.packets * args.rounds > 60000:
        raise SystemExit("at most 60,000 packets in all")
    packets = h264_packets(200 + 60000)  # the same whatever is asked: a difference of two
    # runs under callgrind counts the intake, not the making of the packets
    proto = sessions(1, 47500)[0].endpoints["video"].rtp_port.protocol
    for data in packets[:200]:
        proto.datagramReceived(data, SOURCE)
    freeze_startup_objects()
    pos, best = 200, float("inf")
    for _ in range(args.rounds):
        chunk = packets[pos:pos + args.packets]
        pos += args.packets
        batches = [[(d, SOURCE) for d in chunk[i:i + args.batch]]
                   for i in range(0, len(chunk), args.batch)]
        start = time.process_time()
        if args.batch == 1:
            for (data, addr), in batches:
                proto.datagramReceived(data, addr)
        else:
            for batch in batches:
                proto.datagramsReceived(batch)
        best = min(best, time.process_time() - start)
    print(f"own, batches of {args.batch}: {best / args.packets * 1e6:.2f} us per packet "
          f"(best of {args.rounds} x {args.packets})")


def drain(args) -> None:
    count = {"n": 0}
    base = 52000
    if args.bare:
        class Counter(protocol.DatagramProtocol):
            def datagramReceived(self, data, addr):
                count["n"] += 1
        ports = []
        for i in range(args.sockets):
            port = reactor.listenUDP(base + 2 * i, Counter(), interface="127.0.0.1")
            port.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            ports.append(base + 2 * i)
        total = lambda: count["n"]  # noqa: E731
    else:
        made = sessions(args.sockets, base)
        freeze_startup_objects()
        ports = [s.endpoints["video"].port for s in made]
        total = lambda: sum(s.endpoints["video"].counters["packets"] for s in made)  # noqa: E731
    packets = h264_packets(20000)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    tx.bind(SOURCE)
    targets = [("127.0.0.1", p) for p in ports]
    per = args.per if args.sockets == 1 else 1
    loop = reactor._asyncioEventloop
    sent = i = 0
    cpu = 0.0
    for _ in range(args.rounds):
        for _ in range(per):
            for target in targets:
                tx.sendto(packets[i % len(packets)], target)
                sent += 1
            i += 1
        start = time.process_time()
        while total() < sent:
            loop._run_once()
        cpu += time.process_time() - start
    kind = "bare Twisted" if args.bare else "sipgw"
    print(f"drain, {kind}, {args.sockets} socket(s) x {per} a round: "
          f"{cpu / sent * 1e6:.2f} us per packet ({sent} packets)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    o = sub.add_parser("own", help="sipgw's own work, no sockets")
    o.add_argument("--packets", type=int, default=20000)
    o.add_argument("--rounds", type=int, default=3)
    o.add_argument("--batch", type=int, default=200)
    d = sub.add_parser("drain", help="real sockets filled, then drained by the reactor")
    d.add_argument("--sockets", type=int, default=1)
    d.add_argument("--per", type=int, default=1000, help="packets a round on one socket")
    d.add_argument("--rounds", type=int, default=50)
    d.add_argument("--bare", action="store_true", help="bare Twisted counters instead")
    args = parser.parse_args()
    own(args) if args.mode == "own" else drain(args)


if __name__ == "__main__":
    main()
