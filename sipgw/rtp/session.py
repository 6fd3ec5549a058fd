"""One call's RTP: a UDP RTP/RTCP pair per media kind, demuxed into a Stream.

Twisted side of ``sipgw/rtp``: ``MediaSession`` binds the ports offered in SDP,
takes RTP from the answer's address, or from where a callee behind NAT really
sends from once that source passed probation (strict source), puts packets in
order, rebuilds H264 access units and audio frames, publishes them to the
call's ``Stream``, sends RTCP receiver reports and keyframe requests (PLI,
FIR), watches for RTP inactivity, and sends silence and RFC 4733 DTMF when
asked. Every malformed packet is counted and dropped; nothing here raises
into the reactor.
"""
from __future__ import annotations

import os
import struct
import time

from twisted.internet import error, protocol
from twisted.logger import Logger

from .. import entropy
from ..config import Config
from ..loglimit import LogLimiter, held_back
from ..streams.stream import MediaFrame
from .h264 import H264Depacketizer
from .jitter import ReceptionStats, ReorderBuffer
from .packet import (Bye, FullIntraRequest, PacketError, PictureLossIndication, ReceiverReport,
                     RtpPacket, SenderReport, SourceDescription, ntp_time,
                     parse_rtcp)
from .port import listen_udp
from .ports import PortsExhausted
from .srtp import SrtpContext

log = Logger(namespace="sipgw.rtp")

_FIXED_HEADER = struct.Struct("!BHII").unpack_from  # RTP after its first byte: M+PT, seq, ts, SSRC

RTCP_INTERVAL = 5.0  # seconds between receiver reports (RFC 3550 §6.2 minimum)
SDP_SOURCE_FIRST = 1.0  # seconds after the SDP names an address in which only it can latch
KEYFRAME_MIN_INTERVAL = 0.5  # coalesce keyframe requests of many consumers
KEYFRAME_INFO_AFTER = 1.5  # no IDR this long after RTCP requests: try SIP INFO
SILENCE = {"PCMU": b"\xff" * 160, "PCMA": b"\xd5" * 160, "opus": b"\xf8\xff\xfe"}
DTMF_EVENTS = {d: i for i, d in enumerate("0123456789*#ABCD")}


def _counters() -> dict:
    return {"packets": 0, "bytes": 0, "lost": 0, "jitter": 0, "frames": 0, "keyframes": 0,
            "dropped_frames": 0, "bad_packets": 0, "wrong_source": 0, "wrong_payload_type": 0,
            "bad_payloads": 0, "late": 0, "duplicates": 0, "timestamp_jumps": 0,
            "ssrc_changes": 0, "codec_changes": 0, "rtcp_packets": 0, "rtcp_bad": 0,
            "rate_limited": 0, "srtp_auth_failures": 0}


class _Socket(protocol.DatagramProtocol):
    """The protocol of an RTP or RTCP port. ``datagramsReceived`` takes what one wake-up
    read (``RtpPort``), in arrival order."""

    noisy = False

    def __init__(self, endpoint: "Endpoint", rtcp: bool):
        self.endpoint = endpoint
        self.rtcp = rtcp
        if not rtcp:  # a call level less for every packet: the endpoint's own method
            self.datagramReceived = endpoint.datagram

    def datagramReceived(self, data: bytes, addr) -> None:
        self.endpoint.datagram(data, addr, self.rtcp)

    def datagramsReceived(self, batch) -> None:
        if self.rtcp or len(batch) == 1:
            for data, addr in batch:
                self.endpoint.datagram(data, addr, self.rtcp)
        else:
            self.endpoint.rtp_batch(batch)


class Endpoint:
    """RTP and RTCP of one media kind (m-line) of a call."""

    def __init__(self, session: "MediaSession", kind: str, port: int):
        self.session = session
        self.kind = kind
        self.port = port
        self.counters = _counters()
        self.media = None  # NegotiatedMedia once the answer is known
        self.accepted_pts: set[int] = set()
        self.remote_rtp: tuple[str, int] | None = None  # where we send: SDP, then latched
        self.sdp_rtp: tuple[str, int] | None = None
        self.renegotiated_at = 0.0
        self.remote_rtcp: tuple[str, int] | None = None
        self.latched = False
        self.probation: dict = {}  # source -> [SSRC, next sequence number, packets in a row]
        self.ssrc: int | None = None
        self.reorder = ReorderBuffer(window=16 if kind == "video" else 4)
        self.stats: ReceptionStats | None = None
        self.depacketizer = H264Depacketizer() if kind == "video" else None
        self.last_rtp = 0.0
        self.last_frame_ts: int | None = None
        self.last_sr: tuple[int, float] | None = None  # (middle 32 bits of NTP, arrival)
        self.rtp_port = self.rtcp_port = None
        # our own sending state (silence, DTMF)
        self.local_ssrc = entropy.randbits(32)
        self.seq = entropy.randbits(16)
        self.ts = entropy.randbits(32)
        self.sent_packets = 0
        self.sent_octets = 0
        self.last_sent: float | None = None  # clock time of our last RTP packet
        self.injecting = False  # media is injected (sipgw/rtp/sender.py): no silence meanwhile
        self.keyframe_wanted = None  # callable: the peer asks for a keyframe of what we send
        self.srtp = None  # an SrtpContext once SDES keys are agreed (sipgw/rtp/srtp.py)

    def listen(self, reactor, address: str, receive_buffer: int = 0) -> None:
        self.rtp_port = listen_udp(reactor, self.port, _Socket(self, False), address,
                                   receive_buffer)
        try:
            self.rtcp_port = listen_udp(reactor, self.port + 1, _Socket(self, True), address,
                                        receive_buffer)
        except error.CannotListenError:
            self.rtp_port.stopListening()
            raise

    def close(self) -> None:
        for port in (self.rtp_port, self.rtcp_port):
            if port is not None:
                port.stopListening()
        self.rtp_port = self.rtcp_port = None

    def negotiate(self, media) -> None:
        """Apply the SDP answer (or a re-INVITE's new address): where to send, what PTs."""
        self.media = media
        self.accepted_pts = {pt for pt in (media.recv_pt, media.codec.pt) if pt is not None}
        self.accepted_pts.update(media.recv_codecs)  # every codec of the answer's m-line
        dtmf = {pt for pt in (media.recv_dtmf_pt, media.dtmf_pt) if pt is not None}
        self.dtmf_pts = dtmf
        new_rtp = (media.address, media.port)
        if new_rtp != self.sdp_rtp:
            # A new media address (answer, or a re-INVITE moving the media): latch again. The
            # old source, its packets still in flight, is a stranger now (see _source_ok).
            self.renegotiated_at = self.session.clock.seconds()
            self.sdp_rtp = self.remote_rtp = new_rtp
            self.remote_rtcp = (media.address, media.rtcp_port)
            self.latched = False
            self.probation.clear()
        if self.stats is None:
            self.stats = ReceptionStats(media.codec.clock)

    def flooded(self) -> bool:
        """More packets than the call's limit came since its second started: drop and count
        this one (a log line per 10 s). If that second is over, a new one starts here."""
        session = self.session
        now = session.clock.seconds()
        if now - session.window_start >= 1.0:
            session.window_start = now
            session.window_packets = 1
            return False
        self.counters["rate_limited"] += 1
        held = session.log_limiter.allow("flood")
        if held is not None:
            log.warn("call {call}: over {limit} packets/s, dropping the excess{more}",
                     call=session.call_id, limit=session.max_packets_per_second,
                     more=held_back(held))
        return True

    # -- RTP in --------------------------------------------------------------
    def _source_ok(self, packet: RtpPacket, addr) -> bool:
        """Strict source, as rtpengine's: the SDP address is taken at once, even from a learned
        source. Another source (a callee behind NAT) is learned only while nothing is latched,
        once the SDP address had SDP_SOURCE_FIRST seconds to send, on its Nth consecutive
        in-sequence packet of one SSRC (RFC 3550 §A.1 probation); then the rest are dropped."""
        if addr == self.sdp_rtp:
            if not self.latched or self.remote_rtp != addr:
                self._latch(addr)
            return True
        if self.latched:
            return addr == self.remote_rtp
        seq = packet.sequence_number
        state = self.probation.get(addr)
        if state is None or state[0] != packet.ssrc or state[1] != seq:
            if len(self.probation) >= 16:  # bounded: a spray from many sources starts it over
                self.probation.clear()
            state = self.probation[addr] = [packet.ssrc, seq, 0]
        state[1] = (seq + 1) & 0xFFFF
        state[2] += 1
        if (state[2] < self.session.probation_packets or
                self.session.clock.seconds() - self.renegotiated_at < SDP_SOURCE_FIRST):
            return False
        self._latch(addr)
        return True

    def _latch(self, addr) -> None:
        if addr != self.remote_rtp or addr != self.sdp_rtp:
            log.info("{kind} RTP of call {call} latched to {host}:{port} (SDP said {sdp})",
                     kind=self.kind, call=self.session.call_id, host=addr[0], port=addr[1],
                     sdp=self.sdp_rtp)
            if addr != self.sdp_rtp:  # its probation packets were dropped: do not wait for them
                self.reorder.reset()
        self.latched = True
        self.remote_rtp = addr
        self.probation.clear()

    def _admit(self, packet: RtpPacket, pt: int, addr) -> bool:
        """Latching and payload-type checks for packets off the common path."""
        counters = self.counters
        known = pt in self.accepted_pts or pt in self.dtmf_pts
        if not known and not self.latched:
            counters["wrong_payload_type"] += 1
            return False  # a stray packet must not take the latch
        if not self._source_ok(packet, addr):
            counters["wrong_source"] += 1
            return False
        if pt not in self.accepted_pts:
            if pt not in self.dtmf_pts:
                counters["wrong_payload_type"] += 1
            # The followed SSRC's own sequence numbers (RFC 4733 events ride on the audio's):
            # keep the packet in order and in the statistics, or its hole looks like a loss and
            # stalls the reorder buffer; _deliver does not publish it. Another source's packets
            # leave the followed SSRC's state alone.
            return packet.ssrc == self.ssrc
        return True

    def datagram(self, data: bytes, addr, rtcp: bool = False) -> None:
        """One datagram on the RTP (or, ``rtcp``, the RTCP) port: the call's rate limit (a
        count; the clock is read once a second's worth came), RFC 5761 §4 demux."""
        session = self.session
        session.window_packets += 1
        if session.window_packets > session.max_packets_per_second and self.flooded():
            return
        if rtcp or (len(data) > 1 and 192 <= data[1] <= 223):
            self.rtcp_received(data, addr)
        else:
            self.rtp_received(data, addr)

    def rtp_batch(self, batch) -> None:
        """The datagrams one wake-up read on the RTP port, in arrival order, each taken as
        ``datagram`` takes it. The common case (see ``rtp_received``) goes through here
        within the rate limit, with the lookups done and the arrival time read once a batch;
        anything else through ``datagram``. tests/rtp/test_intake_fast_path.py checks that
        both end with the state and the frames of the general path."""
        session = self.session
        if self.media is None or self.srtp is not None:
            for data, addr in batch:
                self.datagram(data, addr)
            return
        now = session.clock.seconds()
        counters = self.counters
        pts = self.accepted_pts
        take_next = self.reorder.take_next
        record = self.stats.record
        take = self._take
        header = _FIXED_HEADER
        room = session.max_packets_per_second - session.window_packets
        source = self.remote_rtp if self.latched else None  # only datagram() changes these
        followed = self.ssrc
        taken = octets = 0
        for data, addr in batch:
            if taken < room and addr == source and len(data) > 12 and data[0] == 0x80:
                b1, seq, ts, ssrc = header(data, 1)
                pt = b1 & 0x7F
                if ssrc == followed and pt in pts and not 192 <= b1 <= 223 and take_next(seq):
                    taken += 1
                    octets += len(data)
                    record(seq, ts, now)
                    take(data, b1, seq, ts)
                    continue
            if taken:
                self._taken(taken, octets, now)
                taken = octets = 0
            self.datagram(data, addr)
            room = session.max_packets_per_second - session.window_packets
            source = self.remote_rtp if self.latched else None
            followed = self.ssrc
        if taken:
            self._taken(taken, octets, now)

    def _take(self, data: bytes, b1: int, seq: int, ts: int) -> None:
        """The common packet's payload (see rtp_received), in order, to the stream: audio as
        it is, video through the depacketizer, cut from the datagram at once."""
        dep = self.depacketizer
        if dep is None:
            self._deliver_audio(b1 & 0x7F, ts, data[12:])
        else:
            units = dep.push_payload(data, seq, ts, b1 > 0x7F, 12)
            if units or dep.needs_keyframe:
                self._publish_units(units)

    def _taken(self, packets: int, octets: int, now: float) -> None:
        """Account packets rtp_batch took (before anything else sees the counts)."""
        self.session.window_packets += packets
        self.counters["packets"] += packets
        self.counters["bytes"] += octets
        self.last_rtp = now

    def rtp_received(self, data: bytes, addr) -> None:
        counters = self.counters
        if self.media is None:
            counters["wrong_source"] += 1  # before any answer: nobody should send yet
            return
        if self.srtp is not None:
            data = self.srtp.unprotect(data)
            if data is None:
                counters["srtp_auth_failures"] += 1
                return
        # Nearly every packet: a plain 12-byte header (no CSRC, extension or padding) of the
        # followed SSRC from the latched source, a stream payload type, the next sequence
        # number with nothing held back. It goes through without an RtpPacket or a copy of
        # its payload; the same state changes as below.
        if len(data) > 12 and data[0] == 0x80 and self.latched and addr == self.remote_rtp:
            b1, seq, ts, ssrc = _FIXED_HEADER(data, 1)
            pt = b1 & 0x7F
            if ssrc == self.ssrc and pt in self.accepted_pts and self.reorder.take_next(seq):
                now = self.session.clock.seconds()
                self.last_rtp = now
                counters["packets"] += 1
                counters["bytes"] += len(data)
                self.stats.record(seq, ts, now)
                self._take(data, b1, seq, ts)
                return
        try:
            packet = RtpPacket.parse(data)
        except PacketError:
            counters["bad_packets"] += 1
            return
        pt = packet.payload_type
        # The common case (latched source, stream payload type) skips the checks below.
        if not (pt in self.accepted_pts and self.latched and addr == self.remote_rtp):
            if not self._admit(packet, pt, addr):
                return
        now = self.session.clock.seconds()
        self.last_rtp = now
        counters["packets"] += 1
        counters["bytes"] += len(data)
        if packet.ssrc != self.ssrc:
            if self.ssrc is not None:
                counters["ssrc_changes"] += 1
                log.info("{kind} SSRC of call {call} changed to {ssrc:08x}", kind=self.kind,
                         call=self.session.call_id, ssrc=packet.ssrc)
                self.reorder.reset()
                self.stats.reset()
            self.ssrc = packet.ssrc
        self.stats.update(packet, now)
        for ordered in self.reorder.push(packet):
            self._deliver(ordered)

    def _deliver(self, packet: RtpPacket) -> None:
        if packet.payload_type not in self.accepted_pts:
            return  # telephone-event (or a stray payload type): not part of the stream
        if self.depacketizer is None:
            self._deliver_audio(packet.payload_type, packet.timestamp, packet.payload)
        else:
            self._deliver_video(packet.payload, packet.sequence_number, packet.timestamp,
                                packet.marker)

    def _deliver_audio(self, pt: int, timestamp: int, payload: bytes) -> None:
        stream = self.session.stream
        codec = self.media.recv_codecs.get(pt, self.media.codec)
        if codec.name != stream.audio_codec:  # the peer switched codec (RFC 3264 §5.1)
            if stream.audio_codec:
                self.counters["codec_changes"] += 1
            stream.audio_codec = codec.name
        self.counters["frames"] += 1
        stream.publish(MediaFrame("audio", codec.name, codec.clock, timestamp, payload))

    def _deliver_video(self, payload, seq: int, timestamp: int, marker: bool) -> None:
        self._publish_units(self.depacketizer.push_payload(payload, seq, timestamp, marker))

    def _publish_units(self, units) -> None:
        dep = self.depacketizer
        stream = self.session.stream
        for unit in units:
            self._note_timestamp(unit.timestamp, 90000)
            stream.publish(MediaFrame("video", "H264", 90000, unit.timestamp, unit.data,
                                      unit.keyframe))
            if unit.keyframe:
                self.session.keyframe_arrived()
            if dep.width != stream.width or dep.height != stream.height:
                stream.width, stream.height = dep.width, dep.height
        if dep.needs_keyframe:
            self.session.request_keyframe()

    def _note_timestamp(self, timestamp: int, clock_rate: int) -> None:
        """Count media timestamp jumps (backwards, or > 5 s ahead): consumers smooth them over,
        operators and tests can see them."""
        if self.last_frame_ts is not None:
            delta = (timestamp - self.last_frame_ts) & 0xFFFFFFFF
            if delta > 0x7FFFFFFF or delta > 5 * clock_rate:
                self.counters["timestamp_jumps"] += 1
        self.last_frame_ts = timestamp

    # -- RTCP ----------------------------------------------------------------
    def rtcp_received(self, data: bytes, addr) -> None:
        if self.srtp is not None:
            data = self.srtp.unprotect_rtcp(data)
            if data is None:
                self.counters["srtp_auth_failures"] += 1
                return
        try:
            packets = parse_rtcp(data)
        except PacketError:
            self.counters["rtcp_bad"] += 1
            return
        self.counters["rtcp_packets"] += 1
        sender = getattr(packets[0], "ssrc", None) if packets else None  # SR/RR first (§6.1)
        if (sender is not None and sender == self.ssrc and self.remote_rtp is not None
                and addr[0] == self.remote_rtp[0]):
            self.remote_rtcp = addr  # symmetric RTCP: the followed source's host and SSRC
        for packet in packets:
            if isinstance(packet, SenderReport):
                self.last_sr = ((packet.ntp_timestamp >> 16) & 0xFFFFFFFF,
                                self.session.clock.seconds())
            elif isinstance(packet, PictureLossIndication):  # RFC 4585 §6.3.1
                if packet.media_ssrc == self.local_ssrc and self.keyframe_wanted is not None:
                    self.keyframe_wanted()
            elif isinstance(packet, FullIntraRequest):  # RFC 5104 §4.3.1
                ours = any(ssrc == self.local_ssrc for ssrc, _ in packet.entries)
                if ours and self.keyframe_wanted is not None:
                    self.keyframe_wanted()
            elif isinstance(packet, Bye):
                held = self.session.log_limiter.allow("bye")
                if held is not None:
                    log.info("{kind} RTCP BYE from {host}:{port} on call {call}{more}",
                             kind=self.kind, host=addr[0], port=addr[1],
                             call=self.session.call_id, more=held_back(held))

    def send_rtcp(self, *packets) -> None:
        if self.remote_rtcp is None or self.rtcp_port is None:
            return
        data = b"".join(bytes(p) for p in packets)
        if self.srtp is not None:
            data = self.srtp.protect_rtcp(data)
        try:
            self.rtcp_port.write(data, self.remote_rtcp)
        except Exception as exc:  # OSError, Twisted's ValueError for a non-IP: never ours to raise
            log.debug("RTCP send failed: {error}", error=str(exc))

    def report(self, bye: bool = False) -> None:
        """RTCP SR (when we sent RTP: silence, DTMF) or RR, + SDES CNAME (RFC 3550 §6.4,
        §6.5.1), then BYE when leaving (§6.6)."""
        received = self.stats is not None and self.ssrc is not None
        if not received and not self.sent_packets:
            return
        blocks = []
        if received:
            lsr = dlsr = 0
            if self.last_sr is not None:
                lsr = self.last_sr[0]
                dlsr = int((self.session.clock.seconds() - self.last_sr[1]) * 65536)
            block = self.stats.report_block(self.ssrc, lsr, dlsr)
            self.counters["lost"] = block.packets_lost
            self.counters["jitter"] = block.jitter
            blocks.append(block)
        if self.sent_packets:
            first = SenderReport(self.local_ssrc, ntp_time(time.time()), self.ts,
                                 self.sent_packets & 0xFFFFFFFF, self.sent_octets & 0xFFFFFFFF,
                                 blocks)
        else:
            first = ReceiverReport(self.local_ssrc, blocks)
        sdes = SourceDescription([(self.local_ssrc, [(1, self.session.cname)])])
        self.send_rtcp(first, sdes, *([Bye([self.local_ssrc])] if bye else []))

    # -- RTP out (silence, DTMF) ----------------------------------------------
    def send_rtp(self, payload_type: int, payload: bytes, *, marker: bool = False,
                 timestamp: int | None = None) -> None:
        if self.remote_rtp is None or self.rtp_port is None:
            return
        packet = RtpPacket(payload_type=payload_type, sequence_number=self.seq,
                           timestamp=self.ts if timestamp is None else timestamp,
                           ssrc=self.local_ssrc, marker=marker, payload=payload)
        self.seq = (self.seq + 1) & 0xFFFF
        data = bytes(packet) if self.srtp is None else self.srtp.protect(bytes(packet))
        try:
            self.rtp_port.write(data, self.remote_rtp)
        except Exception as exc:  # as in send_rtcp
            log.debug("RTP send failed: {error}", error=str(exc))
            return
        self.sent_packets += 1
        self.sent_octets += len(payload)
        self.last_sent = self.session.clock.seconds()


class MediaSession:
    """The RTP side of one call. ``clock`` is the reactor (callLater, seconds)."""

    def __init__(self, reactor, *, call_id: str, stream, bind_address: str, ports,
                 kinds: list[str], rtp_timeout: float = 0, send_silence: bool = False,
                 on_timeout=None, on_keyframe_info=None,
                 probation_packets: int = Config.rtp_probation_packets,
                 max_packets_per_second: int = Config.rtp_max_packets_per_second,
                 receive_buffer: int = 0, timers=None):
        self.reactor = self.clock = reactor
        # callLater for the timers of fixed length (RTCP reports, the first RTP inactivity
        # check, silence): the caller's sipgw.timerqueue.TimerQueues, one reactor timer per
        # length for every call (not a DelayedCall per call on the reactor's heap, mostly
        # cancelled); the reactor itself by default
        self.timers = timers if timers is not None else reactor
        self.receive_buffer = receive_buffer  # SO_RCVBUF of each socket; 0: the system's
        self.call_id = call_id
        self.stream = stream
        self.bind_address = bind_address
        self.pool = ports
        self.kinds = kinds
        self.rtp_timeout = rtp_timeout
        self.send_silence = send_silence
        self.on_timeout = on_timeout
        self.on_keyframe_info = on_keyframe_info
        self.probation_packets = probation_packets
        self.max_packets_per_second = max_packets_per_second
        self.window_start = reactor.seconds()  # the packet-rate limit's second, and its count
        self.window_packets = 0
        self.log_limiter = LogLimiter(reactor)
        self.cname = f"sipgw-{os.getpid()}@{call_id}".encode()[:255]
        self.endpoints: dict[str, Endpoint] = {}
        self.established_at: float | None = None
        self.paused = False
        self._timers: dict[str, object] = {}
        self._last_keyframe_request = -1e9
        self._keyframe_pending = False
        self._rtcp_requests_since_idr = 0
        self._last_info = -1e9
        self._fir_seq = 0
        self.closed = False

    # -- life cycle ----------------------------------------------------------
    def open(self) -> dict[str, int]:
        """Bind an RTP/RTCP pair per kind; returns kind -> RTP port for the SDP offer."""
        unbindable = []  # pairs another process holds: kept out of the draw until we are done
        try:
            for kind in self.kinds:
                while True:
                    try:
                        port = self.pool.allocate()
                    except PortsExhausted:
                        self.close()  # give back the pairs already bound for the other kinds
                        raise
                    endpoint = Endpoint(self, kind, port)
                    try:
                        endpoint.listen(self.reactor, self.bind_address, self.receive_buffer)
                    except error.CannotListenError:
                        unbindable.append(port)
                        if len(unbindable) > 20:
                            self.close()
                            raise PortsExhausted("no bindable RTP port pair in the media range")
                        continue
                    self.endpoints[kind] = endpoint
                    break
        finally:
            for port in unbindable:
                self.pool.release(port)
        return {kind: ep.port for kind, ep in self.endpoints.items()}

    def negotiate(self, media: dict) -> None:
        """Apply negotiated media (answer, early answer, or a peer's re-INVITE offer)."""
        for kind, endpoint in self.endpoints.items():
            if kind in media:
                endpoint.negotiate(media[kind])
        streams = self.stream
        if "audio" in media:
            streams.audio_codec = media["audio"].codec.name
        if "video" in media:
            streams.video_codec = "H264"
        # On hold (RFC 3264 §8.4: sendonly, inactive or c=0.0.0.0, whatever the port) the
        # peer may send nothing: the RTP timeout pauses, and counts again from the resume.
        paused = all(m.direction != "sendrecv" for m in media.values())
        if self.paused and not paused:
            for endpoint in self.endpoints.values():
                endpoint.last_rtp = self.clock.seconds()
        self.paused = paused

    def secure(self, keys: dict) -> None:
        """SRTP from now on for each kind in ``keys``: (our Crypto, the peer's Crypto); plain
        RTP for a kind whose value is None."""
        for kind, pair in keys.items():
            if kind in self.endpoints:
                self.endpoints[kind].srtp = (SrtpContext(pair[0].suite, pair[0].key, pair[1].key)
                                             if pair is not None else None)

    def established(self) -> None:
        self.established_at = self.clock.seconds()
        for endpoint in self.endpoints.values():
            endpoint.last_rtp = self.established_at
        self._every("rtcp", RTCP_INTERVAL, self._report)
        if self.rtp_timeout:
            self._timers["timeout"] = self.timers.callLater(self.rtp_timeout, self._check_activity)
        if self.send_silence and "audio" in self.endpoints:
            self._every("silence", 0.02, self._silence)
        if self.stream.has_video and "video" in self.endpoints:
            self.request_keyframe()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for call in self._timers.values():
            if call.active():
                call.cancel()
        self._timers = {}
        for endpoint in self.endpoints.values():
            try:
                endpoint.report(bye=True)  # a compound RR + SDES + BYE (RFC 3550 §6.1)
            except Exception:
                log.failure("call {call}: RTCP BYE failed", call=self.call_id)
            finally:  # whatever failed above, the sockets and ports are given back
                try:
                    endpoint.close()
                finally:
                    self.pool.release(endpoint.port)
        self.stream.counters = self.counters()  # the final figures stay readable
        self.stream.counters_source = None
        # Closed for good: no endpoint, no callback to the call. The endpoints and the call's
        # methods refer back to this session; kept, they would leave the whole call to the
        # cyclic collector (13 % of the daemon's CPU at 500 calls/s).
        self.endpoints = {}
        self.on_timeout = self.on_keyframe_info = None

    def _every(self, name: str, interval: float, fn) -> None:
        self._timers[name] = self.timers.callLater(interval, self._tick, name, interval, fn)

    def _tick(self, name: str, interval: float, fn) -> None:
        if self.closed:
            return
        fn()
        if not self.closed:
            self._timers[name] = self.timers.callLater(interval, self._tick, name, interval, fn)

    def counters(self) -> dict:
        """Live counters per kind; lost and jitter come straight from the statistics."""
        out = {}
        for kind, ep in self.endpoints.items():
            out[kind] = dict(ep.counters)
            out[kind]["late"] = ep.reorder.late
            out[kind]["duplicates"] = ep.reorder.duplicates
            dep = ep.depacketizer
            if dep is not None:  # video: frame counts live in the depacketizer
                out[kind].update(frames=dep.frames, keyframes=dep.keyframes,
                                 dropped_frames=dep.dropped_frames, bad_payloads=dep.bad_packets)
            if ep.stats is not None and ep.ssrc is not None:
                out[kind]["lost"] = ep.stats.lost
                out[kind]["jitter"] = int(ep.stats.jitter)
        return out

    def _report(self) -> None:
        for endpoint in self.endpoints.values():
            endpoint.report()

    # -- RTP inactivity ------------------------------------------------------
    def _check_activity(self) -> None:
        """Runs when the newest RTP could be ``rtp_timeout`` old; one timer per call,
        moved forward while packets keep coming (not a poll every second)."""
        if self.closed:
            return
        now = self.clock.seconds()
        if self.paused:
            for endpoint in self.endpoints.values():
                endpoint.last_rtp = now
        last = max(ep.last_rtp for ep in self.endpoints.values())
        if now - last >= self.rtp_timeout:
            log.warn("call {call}: no RTP for {t} s", call=self.call_id, t=self.rtp_timeout)
            on_timeout = self.on_timeout
            self.close()  # (which lets go of the callback)
            if on_timeout is not None:
                on_timeout()
            return
        self._timers["timeout"] = self.clock.callLater(last + self.rtp_timeout - now,
                                                       self._check_activity)

    # -- keyframes (RFC 4585 PLI, RFC 5104 FIR, then SIP INFO) ---------------------
    def request_keyframe(self) -> None:
        """Ask the callee for an IDR; many requests within 0.5 s become one."""
        video = self.endpoints.get("video")
        if video is None or self.closed:
            return
        now = self.clock.seconds()
        wait = self._last_keyframe_request + KEYFRAME_MIN_INTERVAL - now
        if wait > 0:
            if not self._keyframe_pending:
                self._keyframe_pending = True
                self._timers["keyframe"] = self.clock.callLater(wait, self._send_keyframe_request)
            return
        self._send_keyframe_request()

    def _send_keyframe_request(self) -> None:
        self._keyframe_pending = False
        video = self.endpoints.get("video")
        if video is None or self.closed or video.ssrc is None:
            return  # no video yet: nothing to ask, and its first packet asks (needs_keyframe)
        self._last_keyframe_request = self.clock.seconds()
        self._fir_seq = (self._fir_seq + 1) & 0xFF
        video.send_rtcp(PictureLossIndication(video.local_ssrc, video.ssrc),
                        FullIntraRequest(video.local_ssrc, [(video.ssrc, self._fir_seq)]))
        self._rtcp_requests_since_idr += 1
        # A callee that ignores RTCP feedback gets SIP INFO picture_fast_update.
        if (self._rtcp_requests_since_idr >= 2 and self.on_keyframe_info is not None
                and self._last_keyframe_request - self._last_info >= KEYFRAME_INFO_AFTER):
            self._last_info = self._last_keyframe_request
            self.on_keyframe_info()

    def keyframe_arrived(self) -> None:
        self._rtcp_requests_since_idr = 0

    # -- sending ---------------------------------------------------------------
    def _silence(self) -> None:
        audio = self.endpoints["audio"]
        if audio.media is None or audio.injecting:
            return
        codec = audio.media.codec
        payload = SILENCE.get(codec.name)
        if payload is None:
            return
        audio.send_rtp(codec.pt, payload)
        audio.ts = (audio.ts + codec.clock // 50) & 0xFFFFFFFF

    def send_dtmf(self, digits: str, duration_ms: int = 160) -> None:
        """RFC 4733 telephone-events on the call's audio RTP, one digit after another."""
        audio = self.endpoints.get("audio")
        if audio is None or audio.media is None or audio.media.dtmf_pt is None:
            raise ValueError("the callee did not accept telephone-event (RFC 2833) in SDP")
        for digit in digits:
            if digit.upper() not in DTMF_EVENTS:
                raise ValueError(f"{digit!r} is not a DTMF digit (0-9, *, #, A-D)")
        step = audio.media.codec.clock // 50  # 20 ms of timestamp
        total = max(duration_ms * audio.media.codec.clock // 1000, step)
        delay = 0.0
        for digit in digits:
            event = DTMF_EVENTS[digit.upper()]
            start_ts = (audio.ts + int(delay * audio.media.codec.clock)) & 0xFFFFFFFF
            packets = []
            for duration in range(step, total + 1, step):
                packets.append((duration, False))
            packets += [(total, True)] * 3  # the end packet three times (§2.5.1.4)
            for i, (duration, end) in enumerate(packets):
                payload = struct.pack("!BBH", event, (0x80 if end else 0) | 10, duration)
                when = delay + i * 0.02  # the 3 end packets too, at the update interval
                self.clock.callLater(when, self._send_event, audio, payload, i == 0, start_ts)
            delay += len(packets) * 0.02 + 0.04  # the event, its end packets, a gap
        audio.ts = (audio.ts + int(delay * audio.media.codec.clock)) & 0xFFFFFFFF

    def _send_event(self, audio: Endpoint, payload: bytes, marker: bool, timestamp: int) -> None:
        if not self.closed:
            audio.send_rtp(audio.media.dtmf_pt, payload, marker=marker, timestamp=timestamp)

