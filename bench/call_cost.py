#!/usr/bin/env python3
"""sipgw's own CPU per call, without sockets, peers or other processes.

    PYTHONPATH=$PWD .venv/bin/python bench/call_cost.py                 # 3 x 2,000 calls
    PYTHONPATH=$PWD .venv/bin/python bench/call_cost.py --calls 500 --rounds 1
    # instructions per call, independent of the machine's load (callgrind, about 2 min):
    PYTHONHASHSEED=0 valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        .venv/bin/python bench/call_cost.py --calls 300 --rounds 1     # then --calls 600: the
                                                                       # difference / 300

The daemon's whole service (``sipgw.service.make_service``: user agent, REST, hooks, metrics,
websocket, WHEP, HLS) runs on an in-memory reactor (``tests/fakes.py``: its UDP ports record
what is written, no socket is opened; timers in a heap, as a real reactor keeps them) with the call_setup bench's settings. Each call is the
bench's flow: ``POST /rest-api/call/startup`` as HTTP/1.1 bytes into the REST site, the INVITE's
200 OK (a PCMU answer) in through the SIP UDP protocol, the ACK out, a BYE from the callee in,
its 200 out; the clock moves 1/``--rate`` s per call, so timers, retention and pruning run as
they would. What it leaves out, and ``bench/call_setup.py`` includes: the kernel (sendto,
recvfrom, epoll, the RTP/RTCP sockets' bind and close), asyncio's loop, and the status polls.

It prints the process CPU per call (``time.process_time``) of each round after a warm-up, and
the best round: compare two trees by running it with each on ``PYTHONPATH``.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import re
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))

ANSWER = (b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
          b"m=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n")
PEER = ("127.0.0.1", 5090)
_HEADER = re.compile(rb"^(Via|From|To|Call-ID|CSeq): (.*)$", re.M | re.I)


def heap_reactor():
    """tests/fakes.py's UDPMemoryReactor with its timers in a heap: task.Clock sorts its whole
    list on every callLater, which a few thousand pending timers make the slowest part."""
    import heapq

    from fakes import UDPMemoryReactor
    from twisted.internet.base import DelayedCall

    class HeapReactor(UDPMemoryReactor):
        def __init__(self):
            super().__init__()
            self._heap: list = []
            self._seq = 0

        def callLater(self, delay, f, *args, **kw):
            dc = DelayedCall(self.seconds() + delay, f, args, kw, lambda dc: None, self._push,
                             seconds=self.seconds)
            self._push(dc)
            return dc

        def _push(self, dc):
            self._seq += 1
            heapq.heappush(self._heap, (dc.getTime(), self._seq, dc))

        def advance(self, amount):
            self.rightNow += amount
            heap = self._heap
            while heap and heap[0][0] <= self.rightNow:
                when, _, dc = heapq.heappop(heap)
                if dc.cancelled or dc.called or dc.getTime() != when:
                    continue  # cancelled, or reset (pushed again with its new time)
                dc.called = 1
                dc.func(*dc.args, **dc.kw)

        def getDelayedCalls(self):
            return [dc for _, _, dc in self._heap if dc.active()]

    return HeapReactor()


def twisted_heap_reactor():
    """tests/fakes.py's UDPMemoryReactor with Twisted's own timer code (``ReactorBase``: a heap
    of ``DelayedCall``, compared by their Python ``__lt__``, cancelled ones left in it until
    compaction), as the daemon's asyncio reactor runs it (its ``callLater`` also inserts at
    once, through ``timeout()``). Only the asyncio ``call_at`` re-arming is left out."""
    from fakes import UDPMemoryReactor
    from twisted.internet.base import ReactorBase

    class TwistedHeapReactor(UDPMemoryReactor):
        _moveCallLaterSooner = ReactorBase._moveCallLaterSooner
        _cancelCallLater = ReactorBase._cancelCallLater
        _insertNewDelayedCalls = ReactorBase._insertNewDelayedCalls
        getDelayedCalls = ReactorBase.getDelayedCalls
        timeout = ReactorBase.timeout

        def __init__(self):
            super().__init__()
            self._pendingTimedCalls: list = []
            self._newTimedCalls: list = []
            self._cancellations = 0
            self.threadCallQueue: list = []
            self._justStopped = False

        def seconds(self):
            return self.rightNow

        def callLater(self, delay, f, *args, **kw):
            dc = ReactorBase.callLater(self, delay, f, *args, **kw)
            self.timeout()  # AsyncioSelectorReactor.callLater does this on every call
            return dc

        def advance(self, amount):
            self.rightNow += amount
            ReactorBase.runUntilCurrent(self)

    return TwistedHeapReactor()


def _headers(data: bytes) -> dict[bytes, bytes]:
    return {name.lower(): value.rstrip(b"\r") for name, value in _HEADER.findall(data)}


class Harness:
    def __init__(self, timers: str = "heap") -> None:
        from twisted.logger import globalLogBeginner, textFileLogObserver
        from twisted.internet.testing import StringTransport
        from twisted.internet.address import IPv4Address

        from sipgw.config import Config
        from sipgw.service import make_service

        # logging as twistd sets it up (a text file), to /dev/null
        self._log = open(os.devnull, "w")
        globalLogBeginner.beginLoggingTo([textFileLogObserver(self._log)],
                                         discardBuffer=True, redirectStandardIO=False)
        self.reactor = heap_reactor() if timers == "heap" else twisted_heap_reactor()
        config = Config(sip_bind_address="127.0.0.1", sip_local_port=5070,
                        rest_bind_address="127.0.0.1", call_retention=5, max_calls=0,
                        max_calls_per_account=0, media_port_from=20000, media_port_to=60000,
                        record_dir=os.path.join(os.environ.get("TMPDIR", "/tmp"),
                                                "sipgw-call-cost"))
        self.top = make_service(config, self.reactor)
        self.top.startService()
        self.ua = self.top.calls  # the call manager (its SIP user agent is .sip)
        self.sip = self.reactor.udp_ports[5070]
        site = next(factory for port, factory, *_ in self.reactor.tcpServers
                    if port == config.rest_port)
        self.http = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        self.http.makeConnection(self.transport)

    def post(self, path: str, body: dict) -> bytes:
        data = json.dumps(body).encode()
        self.transport.clear()
        self.http.dataReceived(b"POST /rest-api%s HTTP/1.1\r\nHost: gw\r\nContent-Type: "
                               b"application/json\r\nContent-Length: %d\r\n\r\n%s"
                               % (path.encode(), len(data), data))
        return self.transport.value()

    def call(self, i: int) -> None:
        name = f"c{i}"
        answer = self.post("/call/startup", {
            "callId": name, "toStream": name, "callee": "bench", "sipLogin": "sipgw",
            "sipDomain": "127.0.0.1", "sipPort": "5090", "sipRegisterRequired": "false",
            "hasAudio": "true", "hasVideo": "false"})
        if not answer.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"/call/startup: {answer[:200]!r}")
        invite = self.sip.written[-1][0]
        if not invite.startswith(b"INVITE "):
            raise RuntimeError(f"no INVITE sent: {invite[:80]!r}")
        h = _headers(invite)
        to = h[b"to"] + b";tag=uas" + str(i).encode()
        self.sip.receive(
            b"SIP/2.0 200 OK\r\nVia: %s\r\nFrom: %s\r\nTo: %s\r\nCall-ID: %s\r\nCSeq: %s\r\n"
            b"Contact: <sip:bench@127.0.0.1:5090>\r\nContent-Type: application/sdp\r\n"
            b"Content-Length: %d\r\n\r\n%s"
            % (h[b"via"], h[b"from"], to, h[b"call-id"], h[b"cseq"], len(ANSWER), ANSWER), PEER)
        if not self.sip.written[-1][0].startswith(b"ACK "):
            raise RuntimeError("no ACK sent")
        self.sip.receive(
            b"BYE sip:sipgw@127.0.0.1:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5090;"
            b"branch=z9hG4bK-bye%d\r\nFrom: %s\r\nTo: %s\r\nCall-ID: %s\r\nCSeq: 1 BYE\r\n"
            b"Max-Forwards: 70\r\nContact: <sip:bench@127.0.0.1:5090>\r\nContent-Length: 0\r\n\r\n"
            % (i, to, h[b"from"], h[b"call-id"]), PEER)
        if not self.sip.written[-1][0].startswith(b"SIP/2.0 200 "):
            raise RuntimeError(f"BYE not answered 200: {self.sip.written[-1][0][:80]!r}")
        del self.sip.written[:]

    def run(self, first: int, count: int, rate: float) -> float:
        """CPU seconds for ``count`` calls."""
        t0 = time.process_time()
        for i in range(first, first + count):
            self.call(i)
            self.reactor.advance(1 / rate)
        return time.process_time() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate", type=float, default=300.0,
                        help="calls per second of the simulated clock (timers, retention)")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--timers", choices=("heap", "twisted"), default="heap",
                        help="the in-memory reactor's timers: a heap of tuples (cheap "
                             "comparisons in C), or Twisted's own DelayedCall heap as the "
                             "daemon's reactor runs it")
    args = parser.parse_args()
    harness = Harness(args.timers)
    harness.run(0, args.warmup, args.rate)
    first, results = args.warmup, []
    for r in range(args.rounds):
        cpu = harness.run(first, args.calls, args.rate)
        first += args.calls
        results.append(cpu / args.calls * 1000)
        print(f"round {r + 1}: {args.calls} calls, {results[-1]:.3f} ms CPU per call", flush=True)
    active = sum(1 for c in harness.ua.calls.values() if not c.status.ended)
    print(f"call cost: best {min(results):.3f} ms CPU per call of sipgw's own code (no sockets); "
          f"{len(harness.ua.calls)} calls retained, {active} active")
    return 0


if __name__ == "__main__":
    sys.exit(main())
