"""The fuzzed surfaces: what each takes, its seed corpus, its documented errors and what
must be left afterwards.  ``feed(data)`` returns True (accepted) or False (refused with
the documented error); anything it raises is a crash.  ``leaks()`` runs once at the end.

- sip:  datagrams into a UserAgent on a fake reactor with one established call (RFC 4475
        torture messages, in-dialog BYE/re-INVITE/INFO/OPTIONS, responses to its INVITE)
- sdp:  SessionDescription.parse, then negotiate / make_answer / serialize again
- rtp:  RTP and RTCP datagrams to an established call's media ports, from the SDP
        address and from a stranger (PCMU, H.264 single/FU-A/STAP-A, SR/RR/SDES/BYE/PLI/FIR)
- rest: JSON bodies to every /rest-api route, in memory, on the real UA and managers
- ws:   websocket frames after 'connection' on the WCS signalling protocol
- rtmp: an RTMP server's replies after the handshake, read by RtmpPublisher.open/send
"""
from __future__ import annotations

import glob
import importlib.util
import json
import os
import re
import shutil
import socket
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.dirname(HERE)
for _folder in (TESTS, os.path.join(TESTS, "media")):
    if _folder not in sys.path:
        sys.path.insert(0, _folder)

from fakes import UDPMemoryReactor  # noqa: E402
from sipgw.calls import CallRequest  # noqa: E402
from sipgw.config import Config  # noqa: E402
from sipgw.sip.message import make_response  # noqa: E402
from sipgw.sip.parser import ParseError, StreamParser, parse  # noqa: E402
from sipgw.sip.sdp import SDPError, SessionDescription, make_offer  # noqa: E402

SDP_ADDRESS = ("127.0.0.1", 6000)
ANSWER = bytes(make_offer("127.0.0.1", audio_port=6000, video_port=6002, session_id=9))
SIP_TOKENS = [b"\r\n", b"\r\n\r\n", b":", b";", b",", b"<", b">", b'"', b"%", b"%00", b"\x00",
              b" ", b"\t", b"Content-Length: ", b"Content-Length: 99999999\r\n", b";branch=z9hG4bK",
              b";rport", b";received=", b";maddr=", b"sip:", b"sips:", b"tel:", b"@", b"[::1]",
              b"CSeq: 1 ", b"INVITE", b"BYE", b"ACK", b"CANCEL", b"SIP/2.0 200 OK\r\n",
              b"Expires: ", b"Max-Forwards: ", b";tag=", b"Contact: *\r\n", b"4294967296", b"-1",
              b"Content-Type: application/sdp\r\n", b"Record-Route: <sip:127.0.0.1;lr>\r\n",
              b"m=audio 0 RTP/AVP 0\r\n", b"c=IN IP4 0.0.0.0\r\n", b"a=sendonly\r\n"]
SDP_TOKENS = [b"\r\n", b"\n", b"=", b" ", b"/", b":", b"m=audio ", b"m=video ", b"c=IN IP4 ",
              b"c=IN IP6 ::1", b"a=rtpmap:", b"a=fmtp:", b"a=rtcp:", b"a=inactive", b"RTP/AVP",
              b"H264/90000", b"PCMU/8000", b"packetization-mode=", b"65536", b"-1", b"/2",
              b"99999999999999999999", b"\x00", b"\xff"]
JSON_TOKENS = [b'"', b"{", b"}", b"[", b"]", b",", b":", b"null", b"true", b"1e999", b"-0",
               b'"\\ud800"', b'"\\u0000"', b"NaN", b"Infinity", b"[" * 50, b"{}", b"[]"]


def _load(name: str, path: str):
    """A test helper module by its path (tests/rest/conftest.py is not importable by name)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


class FuzzReactor(UDPMemoryReactor):
    """A fake reactor (clock + UDP) whose callFromThread queues for ``run_pending``."""

    def __init__(self):
        from synthetic import ThreadCalls
        super().__init__()
        self.from_threads = ThreadCalls()
        self.callFromThread = self.from_threads.callFromThread
        self.run_pending = self.from_threads.run_pending


class _CallHarness:
    """A CallManager on a FuzzReactor with one established call at a time (remade when the
    fuzzing ended it), and the checks that nothing is left once every call is over."""

    def setup(self):
        from sipgw.gateway.manager import CallManager
        self.clock = FuzzReactor()
        self.ua = CallManager(self.clock, Config(sip_bind_address="127.0.0.1", sip_local_port=0,
                                                call_retention=1, media_port_from=47000,
                                                media_port_to=47999))
        self.ua.start()
        self.sip_port = self.ua.sip.transport.port
        self.port = self.clock.udp_ports[self.sip_port]
        self.calls = 0
        self.fed = 0
        self._new_call()
        self._new_ringing_call()

    def _start(self, status: int) -> tuple[str, object]:
        """A new call answered ``status`` (with the SDP answer) by the fake callee."""
        self.calls += 1
        call_id = f"fuzz{self.calls}"
        self.ua.startup(CallRequest(call_id=call_id, callee="bob", sip_login="alice",
                                    sip_domain="127.0.0.1", sip_port=5060, to_stream=call_id))
        invites = [d for d, _ in self.port.written if d.startswith(b"INVITE ")]
        invite = parse(invites[-1])
        reply = make_response(invite, status, to_tag="b1", body=ANSWER,
                              extra=[("Contact", "<sip:bob@127.0.0.1:5060>"),
                                     ("Content-Type", "application/sdp")])
        self.port.proto.datagramReceived(bytes(reply), ("127.0.0.1", 5060))
        self.port.written.clear()
        return call_id, invite

    def _new_call(self):
        self.call_id, self.invite = self._start(200)
        offer = SessionDescription.parse(self.invite.body)
        self.media_ports = {m.kind: m.port for m in offer.media}

    def _new_ringing_call(self):
        """A call left ringing (183 with SDP): its INVITE transaction takes the responses."""
        self.ringing_id, self.ringing_invite = self._start(183)

    def _status(self, call_id) -> str:
        found = self.ua.find(call_id)
        return found[0]["status"] if found else ""

    def step(self):
        """After each input: time passes; every 100 inputs ended calls are replaced."""
        self.fed += 1
        self.clock.advance(0.02)
        self.port.written.clear()
        if self.fed % 100 == 0:
            if self._status(self.call_id) != "ESTABLISHED":
                self._new_call()
            if self._status(self.ringing_id) not in ("RING", "RING_MEDIA", "SESSION_PROGRESS",
                                                     "TRYING", "PENDING"):
                self._new_ringing_call()

    def leaks(self) -> list[str]:
        from sipgw.calls import CallError
        for call_id in list(self.ua.calls):
            try:
                self.ua.terminate(call_id)
            except CallError:
                pass
        for _ in range(200):
            self.clock.advance(1)
        ua, problems = self.ua, []
        if ua.calls or ua.sip.sessions:
            problems.append(f"{len(ua.calls)} calls left")
        if ua.ports.in_use:
            problems.append(f"{len(ua.ports.in_use)} media ports left")
        if set(self.clock.udp_ports) != {self.sip_port}:
            problems.append(f"{len(self.clock.udp_ports) - 1} UDP sockets left")
        if ua.streams.all():
            problems.append(f"{len(ua.streams.all())} streams left")
        if ua.sip.transactions.server or ua.sip.transactions.client:
            problems.append("transactions left")
        if ua.sip.registrations:
            problems.append("registrations left")
        return problems


class SipSurface(_CallHarness):
    name = "sip"
    tokens = SIP_TOKENS

    def corpus(self) -> list[bytes]:
        files = sorted(glob.glob(os.path.join(TESTS, "sip", "torture", "*", "*.sip")))
        seeds = [open(f, "rb").read() for f in files]
        dialog = (b"Via: SIP/2.0/UDP 127.0.0.1:5060;branch={BRANCH};rport\r\n"
                  b"From: <sip:bob@127.0.0.1>;tag=b1\r\nTo: {FROM}\r\nCall-ID: {CALLID}\r\n")
        for method, cseq, body, extra in [
                (b"BYE", 2, b"", b""), (b"OPTIONS", 2, b"", b""),
                (b"INFO", 3, b"Signal=5\r\nDuration=160\r\n",
                 b"Content-Type: application/dtmf-relay\r\n"),
                (b"INVITE", 4, ANSWER.replace(b"sendrecv", b"sendonly"),
                 b"Content-Type: application/sdp\r\n"),
                (b"INVITE", 5, ANSWER, b"Content-Type: application/sdp\r\n"),
                (b"UPDATE", 6, b"", b""), (b"ACK", 4, b"", b""), (b"CANCEL", 2, b"", b"")]:
            seeds.append(method + b" sip:alice@127.0.0.1:5070 SIP/2.0\r\n" + dialog
                         + b"CSeq: %d " % cseq + method + b"\r\nMax-Forwards: 70\r\n"
                         + b"Contact: <sip:bob@127.0.0.1:5060>\r\n" + extra
                         + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        for status, body in [(b"180 Ringing", b""), (b"183 Session Progress", ANSWER),
                             (b"200 OK", ANSWER), (b"486 Busy Here", b""),
                             (b"407 Proxy Authentication Required", b"")]:
            seeds.append(b"SIP/2.0 " + status + b"\r\nVia: {VIA}\r\nFrom: {FROM}\r\n"
                         b"To: <sip:bob@127.0.0.1>;tag=b1\r\nCall-ID: {CALLID}\r\n"
                         b"CSeq: 1 INVITE\r\nContact: <sip:bob@127.0.0.1:5060>\r\n"
                         b'Proxy-Authenticate: Digest realm="x", nonce="n1", qop="auth"\r\n'
                         + (b"Content-Type: application/sdp\r\n" if body else b"")
                         + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        return seeds

    def feed(self, data: bytes) -> bool:
        from sipgw.sip.transaction import new_branch
        invite = self.ringing_invite if data.startswith(b"SIP/") and len(data) % 2 else \
            self.invite  # responses go to the ringing call's INVITE half the time
        for key, value in ((b"{VIA}", invite.get("Via")), (b"{FROM}", invite.get("From")),
                           (b"{CALLID}", invite.call_id), (b"{BRANCH}", new_branch())):
            data = data.replace(key, value.encode())
        try:
            parse(data, self.ua.config.sip_max_message_size)
            accepted = True
        except ParseError:
            accepted = False
        framing = StreamParser(self.ua.config.sip_max_message_size)  # TCP, in two reads
        try:
            framing.feed(data[:len(data) // 3])
            framing.feed(data[len(data) // 3:] + b"\r\n\r\n")
        except ParseError:
            pass
        self.port.proto.datagramReceived(data, ("127.0.0.1", 5060))
        self.step()
        return accepted


class RtpSurface(_CallHarness):
    """The first byte of an input picks the socket (audio/video, RTP/RTCP) and the source."""

    name = "rtp"
    tokens = [b"\x80", b"\x90", b"\xa0", b"\x81\xc8", b"\x81\xc9", b"\x81\xcb", b"\x81\xce",
              b"\x7c\x85", b"\x7c\x45", b"\x78", b"\x67", b"\x68", b"\x65", b"\xff\xff"]

    def corpus(self) -> list[bytes]:
        from sipgw.rtp.packet import (Bye, FullIntraRequest, PictureLossIndication,
                                      ReceiverReport, ReceptionReport, SenderReport,
                                      SourceDescription)
        from synthetic import h264_access_units
        seeds = []
        for seq in range(3):
            seeds.append(b"\x00" + bytes(_rtp(0, seq, seq * 160, bytes(160))))
        seeds.append(b"\x00" + bytes(_rtp(101, 9, 480, b"\x05\x0a\x00\xa0", marker=True)))
        seq = 100
        for unit, _key in h264_access_units(3, width=64, height=48):
            nals = [n.rstrip(b"\x00") for n in re.split(b"\x00\x00\x01", unit)[1:]]
            small = [n for n in nals if len(n) < 100]
            if len(small) > 1:  # STAP-A (RFC 6184 §5.7.1)
                body = b"\x78" + b"".join(len(n).to_bytes(2, "big") + n for n in small)
                seeds.append(b"\x02" + bytes(_rtp(102, seq, seq * 3600, body)))
                seq += 1
            for nal in nals:
                if len(nal) <= 300:
                    seeds.append(b"\x02" + bytes(_rtp(102, seq, seq * 3600, nal, marker=True)))
                    seq += 1
                    continue
                header, rest = nal[0], nal[1:]  # FU-A (RFC 6184 §5.8)
                pieces = [rest[i:i + 300] for i in range(0, len(rest), 300)]
                for i, piece in enumerate(pieces):
                    fu = bytes([(header & 0xE0) | 28, (header & 0x1F) | (0x80 if i == 0 else 0)
                                | (0x40 if i == len(pieces) - 1 else 0)])
                    seeds.append(b"\x02" + bytes(_rtp(102, seq, 7200, fu + piece,
                                                      marker=i == len(pieces) - 1)))
                    seq += 1
        report = ReceptionReport(1234, 5, 6, 7, 8)
        for packet in (SenderReport(99, 1 << 40, 160, 3, 480, [report]),
                       ReceiverReport(99, [report]),
                       SourceDescription([(99, [(1, b"peer@host")])]),
                       Bye([99], b"bye"), PictureLossIndication(99, 1),
                       FullIntraRequest(99, [(1, 2)])):
            seeds.append(b"\x01" + bytes(packet))
            seeds.append(b"\x03" + bytes(packet))
        seeds.append(b"\x01" + bytes(ReceiverReport(99, [report])) + bytes(Bye([99])))
        return seeds

    def feed(self, data: bytes) -> bool:
        if not data:
            return False
        selector, packet = data[0], data[1:]
        kind = "video" if selector & 2 else "audio"
        port = self.media_ports.get(kind, 0) + (selector & 1)
        remote = SDP_ADDRESS[1] + (2 if kind == "video" else 0) + (selector & 1)
        source = ("127.0.0.1", remote) if not selector & 4 else ("198.51.100.9", 40000)
        proto = self.clock.udp_ports.get(port)
        if proto is not None:
            proto.proto.datagramReceived(packet, source)
        self.step()
        return proto is not None


def _rtp(pt, seq, ts, payload, marker=False):
    from sipgw.rtp.packet import RtpPacket
    return RtpPacket(payload_type=pt, marker=marker, sequence_number=seq, timestamp=ts,
                     ssrc=0x1234, payload=payload)


class SdpSurface:
    name = "sdp"
    tokens = SDP_TOKENS

    def corpus(self) -> list[bytes]:
        seeds = [ANSWER, ANSWER.replace(b"\r\n", b"\n")]
        module = _load("fuzz_test_sdp", os.path.join(TESTS, "sip", "test_sdp.py"))
        for value in vars(module).values():
            if isinstance(value, str):
                value = value.encode()
            if isinstance(value, bytes) and b"v=0" in value:
                seeds.append(value)
        torture = open(os.path.join(TESTS, "sip", "torture", "valid", "sdp01.sip"), "rb").read()
        seeds.append(torture.partition(b"\r\n\r\n")[2])
        return seeds

    def setup(self):
        from sipgw.sip.sdp import make_offer
        self.offer = make_offer("127.0.0.1", audio_port=7000, video_port=7002, session_id=1)

    def feed(self, data: bytes) -> bool:
        from sipgw.sip.sdp import is_hold, make_answer, negotiate
        try:
            sdp = SessionDescription.parse(data)
        except SDPError:
            return False
        SessionDescription.parse(bytes(sdp))  # what it serializes parses again
        is_hold(sdp)
        try:
            negotiate(self.offer, sdp)
            make_answer(sdp, address="127.0.0.1", audio_port=7000, video_port=7002,
                        session_id=2, version=1)
        except SDPError:
            return False
        return True

    def leaks(self) -> list[str]:
        return []


class RestSurface(_CallHarness):
    """An input is ``/path`` NEWLINE body; the answer must be below 500."""

    name = "rest"
    json = True
    tokens = JSON_TOKENS

    def setup(self):
        super().setup()
        from sipgw.media.push import PushError, PushManager
        from sipgw.media.recorder import Limits, RecorderManager
        from sipgw.media.rtmp import target
        from sipgw.rest import CallApi, RestResource
        from sipgw.rest.push import PushApi
        from sipgw.rest.recorder import RecorderApi
        from sipgw.rest.streams import StreamApi

        class LoopbackPushes(PushManager):
            """Pushes only to 127.0.0.1 (the fuzzer must not send DNS queries or packets
            elsewhere): other hosts are refused as the egress policy would, 403."""

            def startup(self, stream_name, rtmp_url, full_url=False, options=None):
                try:
                    host = target(rtmp_url, "x", full_url).host
                except (ValueError, TypeError):
                    host = "127.0.0.1"  # let the real startup refuse it
                if host != "127.0.0.1":
                    raise PushError(403, "fuzzing pushes to 127.0.0.1 only", "rtmpUrl")
                return super().startup(stream_name, rtmp_url, full_url, options)

        self.folder = tempfile.mkdtemp(prefix="sipgw-fuzz-")
        self.pushes = LoopbackPushes(self.clock, self.ua.streams, reconnect_min=0.05,
                                     reconnect_max=0.05, timeout=0.5)
        self.recorders = RecorderManager(self.clock, self.ua.streams, self.folder,
                                         "{streamName}-{mediaSessionId}", limits=Limits())
        rest = _load("fuzz_rest_http", os.path.join(TESTS, "rest", "conftest.py"))
        from fakes import AnsweringHttpClient
        from sipgw.hooks import Hooks, parse_apps
        from sipgw.rest.apps import AppApi
        hooks = Hooks(self.clock, AnsweringHttpClient(),
                      apps=parse_apps("defaultApp=http://127.0.0.1:9/app"))
        resource = RestResource(CallApi(self.ua), StreamApi(self.ua.streams),
                                PushApi(self.pushes), RecorderApi(self.recorders, self.ua.streams),
                                AppApi(hooks))
        self.client = rest.RestClient(resource)
        self.paths = resource.paths

    def corpus(self) -> list[bytes]:
        call = {"callId": "c1", "callee": "bob", "toStream": "c1", "sipLogin": "alice",
                "sipAuthenticationName": "alice", "sipPassword": "pw", "sipDomain": "127.0.0.1",
                "sipPort": "5060", "sipOutboundProxy": "", "sipRegisterRequired": "false",
                "hasAudio": "true", "hasVideo": "true", "appKey": "defaultApp"}
        bodies = [
            ("/call/startup", call), ("/call/startup", dict(call, sipRegisterRequired="true")),
            ("/call/find", {"callId": "fuzz1"}), ("/call/find", {"status": "ESTABLISHED"}),
            ("/call/find_all", {}), ("/call/terminate", {"callId": "c1"}),
            ("/call/send_dtmf", {"callId": "fuzz1", "dtmf": "12#", "type": "INFO"}),
            ("/call/send_dtmf", {"callId": "fuzz1", "dtmf": "5", "type": "RFC2833"}),
            ("/stream/find", {"name": "fuzz1"}), ("/stream/find_all", {}),
            ("/stream/terminate", {"name": "c1"}),
            ("/push/startup", {"streamName": "fuzz1", "rtmpUrl": "rtmp://127.0.0.1:9/live",
                               "rtmpTransponderFullUrl": False, "options": {}}),
            ("/push/find", {"streamName": "rtmp_fuzz1", "rtmpUrl": "rtmp://127.0.0.1:9/live"}),
            ("/push/find_all", {}), ("/push/terminate", {"mediaSessionId": "{PUSH}"}),
            ("/recorder/startup", {"mediaSessionId": "{STREAM}",
                                   "config": {"fileTemplate": "{streamName}-x"}}),
            ("/recorder/find_all", {}), ("/recorder/terminate", {"mediaSessionId": "{STREAM}"}),
            ("/stream/startRecording", {"mediaSessionId": "{STREAM}", "fileName": "f"}),
            ("/stream/stopRecording", {"mediaSessionId": "{STREAM}"}),
            ("/app/add", {"appKey": "a1", "name": "A", "url": "http://127.0.0.1:9/a",
                          "restMethods": ["connect", "CallStatusEvent"]}),
            ("/app/find_all", {}), ("/app/remove", {"appKey": "a1"}),
            ("/nope", {})]
        return [path.encode() + b"\n" + json.dumps(body).encode() for path, body in bodies]

    def feed(self, data: bytes) -> bool:
        path, _, body = data.partition(b"\n")
        stream = self.ua.streams.get(name=self.call_id)
        push = next(iter(self.pushes.pushes), "none")
        body = body.replace(b"{STREAM}", (stream.media_session_id if stream else "x").encode())
        body = body.replace(b"{PUSH}", push.encode())
        path = path.decode("latin-1").replace(" ", "%20")
        exchange = self.client.send("POST", path if path.startswith("/") else "/" + path, body)
        self._settle(lambda: exchange.done)
        code = exchange.response.code
        if code >= 500:
            raise AssertionError(f"{path} answered {code}: {exchange.response.body[:300]!r}")
        self.step()
        return code < 300

    def _settle(self, condition, seconds: float = 5.0):
        """Run what worker threads handed back until ``condition`` (answers that wait for
        a file to close come later)."""
        import time
        deadline = time.monotonic() + seconds
        while True:
            self.clock.run_pending()
            if condition() or time.monotonic() > deadline:
                return
            time.sleep(0.001)

    def leaks(self) -> list[str]:
        closing = [self.pushes.close(), self.recorders.close(timeout=0)]
        self._settle(lambda: all(d.called for d in closing), 30)
        problems = super().leaks()
        if self.pushes.pushes:
            problems.append(f"{len(self.pushes.pushes)} pushes left")
        if self.recorders.active:
            problems.append(f"{len(self.recorders.active)} recordings left")
        return problems

    def teardown(self):
        shutil.rmtree(self.folder, ignore_errors=True)


class WsSurface:
    name = "ws"
    json = True
    tokens = JSON_TOKENS

    def setup(self):
        from twisted.internet.address import IPv4Address
        from twisted.internet.task import Clock
        from twisted.internet.testing import StringTransport
        from sipgw.streams.registry import StreamRegistry
        from sipgw.ws.signalling import SignallingFactory
        self.peer = IPv4Address("TCP", "127.0.0.1", 50000)
        class ClosableTransport(StringTransport):
            """autobahn unregisters a producer it never registered when it drops a socket."""

            def unregisterProducer(self):
                self.producer = None

        self.transport_class = ClosableTransport
        from fakes import AnsweringHttpClient
        from sipgw.hooks import Hooks, parse_apps
        clock = Clock()  # with an app that allows everything: the hooks' paths are fuzzed too
        hooks = Hooks(clock, AnsweringHttpClient(),
                      apps=parse_apps("defaultApp=http://127.0.0.1:9/app"))
        self.factory = SignallingFactory(Config(), StreamRegistry(), clock, hooks=hooks)
        self.ws = _load("fuzz_test_signalling", os.path.join(TESTS, "ws", "test_signalling.py"))
        self.frame = self.ws.client_frame
        self._open()

    def _open(self):
        self.protocol = self.factory.buildProtocol(self.peer)
        self.transport = self.transport_class(peerAddress=self.peer)
        self.protocol.makeConnection(self.transport)
        self.protocol.dataReceived(self.ws.UPGRADE)
        self.protocol.dataReceived(self.frame(b'{"message": "connection", "data": [{}]}'))
        self.transport.clear()

    def _lost(self):
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure
        self.protocol.connectionLost(Failure(ConnectionDone()))

    def corpus(self) -> list[bytes]:
        messages = [
            {"message": "connection", "data": [{"appKey": "defaultApp", "authToken": "t",
                                                "mediaProviders": ["WebRTC"]}]},
            {"message": "playStream", "data": [{"mediaSessionId": "m1", "name": "s1",
                                                "sdp": "v=0\r\n", "hasAudio": True}]},
            {"message": "stopStream", "data": [{"mediaSessionId": "m1", "name": "s1"}]},
            {"message": "ping", "data": []}, {"message": "pong", "data": None},
            {"message": "unknownMethod", "data": [{"mediaSessionId": "m1"}]}]
        return [json.dumps(m).encode() for m in messages]

    def feed(self, data: bytes) -> bool:
        from autobahn.websocket.protocol import WebSocketProtocol
        self.protocol.dataReceived(self.frame(data))
        out = self.transport.value()
        self.transport.clear()
        if self.protocol.state != WebSocketProtocol.STATE_OPEN:
            try:
                data.decode("utf-8")
            except UnicodeDecodeError:  # RFC 6455 §8.1: the one reason to close
                self._lost()
                self._open()
                return False
            raise AssertionError(f"the socket closed on valid UTF-8: {out[-200:]!r}")
        return b'"fail"' not in out

    def leaks(self) -> list[str]:
        self._lost()
        return [f"{self.factory.viewer_count()} viewers left"] if self.factory.viewer_count() \
            else []


class RtmpSurface:
    """An input is what the server sends after the handshake; the publisher opens, then
    sends three tags.  Only RtmpError may come out."""

    name = "rtmp"
    tokens = [b"\x02\x00\x00\x00\x00\x00\x04\x01\x00\x00\x00\x00", b"\x00\x00\x00\x01",
              b"\x00\x00\x00\x00", b"\x7f\xff\xff\xff", b"\x03", b"\x43", b"\x83", b"\xc3",
              b"\x02\x00\x07_result", b"\x02\x00\x08onStatus", b"\x00\x3f\xf0" + bytes(6),
              b"\x03\x00\x00\x09", b"\x05", b"\x0a\xff\xff\xff\xff", b"\x08\x00\x00\x00\x01"]

    handshake = b"\x03" + bytes(1536) + bytes(1536)  # S0, S1, S2

    def setup(self):
        self.listener = socket.create_server(("127.0.0.1", 0))

    def _pair(self):
        """A connected loopback TCP pair (TCP_NODELAY needs TCP)."""
        ours = socket.create_connection(self.listener.getsockname())
        theirs, _ = self.listener.accept()
        return ours, theirs

    def teardown(self):
        self.listener.close()

    def corpus(self) -> list[bytes]:
        from sipgw.media import flv
        from sipgw.media.rtmp import _chunks

        def reply(name, txn, *values, msid=0, size=128):
            body = flv.amf0(name) + flv.amf0(float(txn)) + b"".join(flv.amf0(v) for v in values)
            return _chunks(3, 20, msid, 0, body, size)

        seeds = []
        for size in (128, 1, 4096):
            head = _chunks(2, 1, 0, 0, size.to_bytes(4, "big"), 128) if size != 128 else b""
            head += _chunks(2, 5, 0, 0, (2500000).to_bytes(4, "big"), size)
            seeds.append(head + reply("_result", 1, {"fmsVer": "FMS/3,0,1,123"},
                                      {"level": "status", "code": "NetConnection.Connect.Success",
                                       "objectEncoding": 0.0}, size=size)
                         + reply("_result", 4, None, 1.0, size=size)
                         + reply("onStatus", 0, None, {"level": "status",
                                                       "code": "NetStream.Publish.Start"},
                                 msid=1, size=size))
        # "RAW" inputs are the whole byte stream, handshake included (S0 version, S1, S2)
        seeds.append(b"RAW" + self.handshake + seeds[0])
        seeds.append(b"RAW" + self.handshake[:2000])
        seeds.append(b"RAW\x06" + self.handshake[1:])
        seeds.append(reply("_error", 1, None, {"level": "error", "code": "NetConnection.Connect"
                                               ".Rejected", "description": "no"}))
        seeds.append(seeds[0] + reply("onStatus", 0, None, {"level": "error",
                                                            "code": "NetStream.Publish.BadName"}))
        return seeds

    def feed(self, data: bytes) -> bool:
        from sipgw.media import flv
        from sipgw.media.rtmp import RtmpError, RtmpPublisher, target
        ours, theirs = self._pair()
        try:
            theirs.sendall(data[3:] if data.startswith(b"RAW") else self.handshake + data)
            theirs.shutdown(socket.SHUT_WR)
            publisher = RtmpPublisher(target("rtmp://127.0.0.1/live", "s"), timeout=2,
                                      connect=lambda *a, **kw: ours)
            try:
                publisher.open()
            except RtmpError:
                return False
            try:  # what the server sent after the publish start is read while sending
                for kind in (flv.TAG_SCRIPT, flv.TAG_VIDEO, flv.TAG_AUDIO):
                    publisher.send(kind, 0, b"\x17\x00\x00\x00\x00" + bytes(20))
            except RtmpError:
                pass
            finally:
                publisher.close()
            return True
        finally:
            ours.close()
            theirs.close()

    def leaks(self) -> list[str]:
        return []


SURFACES = {s.name: s for s in (SipSurface, SdpSurface, RtpSurface, RestSurface, WsSurface,
                                RtmpSurface)}
