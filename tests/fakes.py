"""Fakes shared by the SIP and RTP tests: a UDP-capable fake reactor and a sender that
records what would go on the wire."""
import json
import queue
import socket
import time

from twisted.internet import defer
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.address import IPv4Address
from twisted.internet.error import InvalidAddressError
from twisted.internet.testing import MemoryReactorClock

from sipgw.sip.parser import parse
from sipgw.sip.transport import Source, transport_for


class RecordingSender:
    """Stands in for TransportLayer: keeps every message sent, re-parsed from bytes."""

    port = 5070

    def __init__(self):
        self.sent = []  # (message, transport, host, port)
        self.server_names = {}  # as TransportLayer: TLS certificate names by (address, port)
        self.public = {}  # as TransportLayer: our NAT address by (transport, host, port)
        self.keepalives = []  # (transport, host, port) of each RFC 5626 keep-alive

    def contact_address(self, transport, host, port):
        return self.public.get((transport, host, port)) or (self.sent_by(host), self.port)

    def send_keepalive(self, transport, host, port):
        self.keepalives.append((transport, host, port))

    def send(self, message, transport, host, port):
        self.sent.append((parse(bytes(message)), transport, host, port))

    def send_response(self, response, source=None):
        self.sent.append((parse(bytes(response)), source and source.transport, None, None))

    transport_for = staticmethod(transport_for)

    def sent_by(self, host):
        return "127.0.0.1"

    def stop(self):
        return None

    def start(self):
        return None

    def requests(self, method=None):
        from sipgw.sip.message import Request
        return [m for m, *_ in self.sent if isinstance(m, Request) and method in (None, m.method)]

    def responses(self, status=None):
        from sipgw.sip.message import Response
        return [m for m, *_ in self.sent if isinstance(m, Response) and status in (None, m.status)]


PEER = Source("UDP", "127.0.0.1", 5060)


class FakeUDPPort:
    """What listenUDP returns: records the datagrams written."""

    def __init__(self, reactor, port, proto, interface, max_packet_size=8192):
        self.reactor, self.port, self.proto, self.interface = reactor, port, proto, interface
        self.max_packet_size = max_packet_size
        self.addressFamily = socket.AF_INET6 if ":" in (interface or "") else socket.AF_INET
        self.written = []

    def receive(self, data, addr):
        """A datagram arrives: cut at maxPacketSize, as the kernel's recvfrom does."""
        self.proto.datagramReceived(data[:self.max_packet_size], addr)

    def write(self, data, addr):
        if not (isIPAddress(addr[0]) or isIPv6Address(addr[0])):  # as twisted.internet.udp does
            raise InvalidAddressError(addr[0], "write() only accepts IP addresses, not hostnames")
        if isIPAddress(addr[0]) and self.addressFamily == socket.AF_INET6:  # as Twisted does
            raise InvalidAddressError(addr[0], "IPv6 port write() called with IPv4 address")
        if isIPv6Address(addr[0]) and self.addressFamily == socket.AF_INET:
            raise InvalidAddressError(addr[0], "IPv4 port write() called with IPv6 address")
        self.written.append((data, addr))

    def getHost(self):
        return IPv4Address("UDP", self.interface or "0.0.0.0", self.port)

    def stopListening(self):
        """As udp.Port's: the protocol is stopped (``doStop``: its transport is None)."""
        if self.reactor.udp_ports.get(self.port) is self:
            del self.reactor.udp_ports[self.port]
            self.proto.doStop()


class UDPMemoryReactor(MemoryReactorClock):
    """MemoryReactorClock (a task.Clock too) with the UDP that MemoryReactor lacks."""

    def __init__(self):
        super().__init__()
        self.udp_ports = {}
        self._next_port = 40000

    def listenUDP(self, port, protocol, interface="", maxPacketSize=8192):
        if port == 0:
            port, self._next_port = self._next_port, self._next_port + 1
        fake = FakeUDPPort(self, port, protocol, interface, maxPacketSize)
        self.udp_ports[port] = fake
        protocol.makeConnection(fake)
        return fake


class HeldHttpClient:
    """Keeps every POST and its Deferred; the test answers (or never answers) each."""

    def __init__(self):
        self.posts = []  # (url, body dict, Deferred)

    def post(self, url, data):
        d = defer.Deferred()
        self.posts.append((url, json.loads(data), d))
        return d

    def answer(self, index=0, code=200):
        self.posts[index][2].callback(code)


class AnsweringHttpClient:
    """Answers every POST at once with ``code``; counts them (keeps nothing else)."""

    def __init__(self, code=200):
        self.code = code
        self.count = 0

    def post(self, url, data):
        self.count += 1
        return defer.succeed(self.code)


class ThreadedUDPReactor(UDPMemoryReactor):
    """UDPMemoryReactor whose callFromThread queues (media worker threads) for the test
    thread, which runs them in ``run``."""

    def __init__(self):
        super().__init__()
        self.from_threads = queue.Queue()

    def callFromThread(self, fn, *args, **kwargs):
        self.from_threads.put((fn, args, kwargs))

    def run_pending(self) -> None:
        while True:
            try:
                fn, args, kwargs = self.from_threads.get_nowait()
            except queue.Empty:
                return
            fn(*args, **kwargs)

    def run(self, until, timeout=20.0, step=0.02):
        """Advance ``step`` at a time (the worker threads running meanwhile) until ``until()``."""
        deadline = time.monotonic() + timeout
        while not until():
            assert time.monotonic() < deadline, "condition not met in time"
            self.run_pending()
            self.advance(step)
            time.sleep(0.003)
        self.run_pending()


CALLEE = ("127.0.0.1", 30000)  # where answered_session's callee takes audio, and video
CALLEE_VIDEO = ("127.0.0.1", 30002)


def answered_session(reactor, codec="PCMU", video=False, call_id="c1", port_from=46000):
    """An established MediaSession whose callee answered ``codec`` (and H264 pm=1)."""
    from sipgw.rtp.ports import PortPool
    from sipgw.rtp.session import MediaSession
    from sipgw.sip.sdp import SessionDescription, make_offer, negotiate
    from sipgw.streams.stream import Stream
    stream = Stream(f"stream-{call_id}", has_audio=True, has_video=video, call_id=call_id)
    kinds = ["audio", "video"] if video else ["audio"]
    session = MediaSession(reactor, call_id=call_id, stream=stream, bind_address="127.0.0.1",
                           ports=PortPool(port_from, port_from + 99, "127.0.0.1"), kinds=kinds)
    ports = session.open()
    pt, rtpmap = {"PCMU": (0, "PCMU/8000"), "PCMA": (8, "PCMA/8000"),
                  "opus": (111, "opus/48000/2")}[codec]
    lines = ["v=0", "o=- 1 1 IN IP4 127.0.0.1", "s=-", "c=IN IP4 127.0.0.1", "t=0 0",
             f"m=audio {CALLEE[1]} RTP/AVP {pt}", f"a=rtpmap:{pt} {rtpmap}", "a=sendrecv"]
    if video:
        lines += [f"m=video {CALLEE_VIDEO[1]} RTP/AVP 102", "a=rtpmap:102 H264/90000",
                  "a=fmtp:102 profile-level-id=42e01f;packetization-mode=1", "a=sendrecv"]
    offer = make_offer("127.0.0.1", audio_port=ports["audio"], video_port=ports.get("video"),
                       session_id=1)
    session.negotiate(negotiate(offer, SessionDescription.parse("\r\n".join(lines) + "\r\n")))
    session.established()
    return session, ports


def gateway_on(clock, sender, **settings):
    """A CallManager (and its UserAgent) on ``clock`` whose SIP bytes go to ``sender``."""
    from sipgw.config import Config
    from sipgw.gateway.manager import CallManager
    gateway = CallManager(clock, Config(**settings))
    gateway.sip.transport = sender
    gateway.sip.transactions.sender = sender
    return gateway


def call_request(**fields):
    """A /call/startup request: call1 from alice to bob at 127.0.0.1, ``fields`` changed."""
    from sipgw.calls import CallRequest
    values = dict(call_id="call1", callee="bob", sip_login="alice", sip_domain="127.0.0.1",
                  sip_password="s3cret-pw", sip_port=5060)
    values.update(fields)
    return CallRequest(**values)


def reply(invite, status, *, tag="b1", body=b"", extra=()):
    """The callee's ``status`` response to ``invite`` (its Contact, SDP when ``body``)."""
    from sipgw.sip.message import make_response
    headers = [("Contact", "<sip:bob@127.0.0.1:5060>")] + list(extra)
    if body:
        headers.append(("Content-Type", "application/sdp"))
    return make_response(invite, status, to_tag=tag if status > 100 else None, body=body,
                         extra=headers)
