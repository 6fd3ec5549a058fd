"""The forwarding fast path: media to a viewer without aiortc's per-viewer encoder path.

aiortc keeps ICE, the DTLS handshake, SDP, RTCP reception and its RTCP SR/SDES (fed with
our counters). Media goes around its ``RTCRtpSender``: each access unit is packetized once
per stream (aiortc's H264 packetizer, cached on the shared ``MediaFrame``); per viewer only
the RTP header is written (its SSRC, sequence numbers, timestamps, payload type, the
mid/abs-send-time extensions it negotiated), the packet SRTP-protected with the viewer's
session from the DTLS handshake and sent on its nominated ICE pair, synchronously.

The aiortc internals used are checked in one place, ``Egress.attach`` and ``report_sent``,
and tested against the pinned aiortc range (tests/webrtc/test_forward.py): an aiortc
upgrade that moves them fails there, not silently in production.
"""
from __future__ import annotations

import fractions
import struct
import time

import av
from aiortc.codecs.h264 import H264Encoder
from aiortc.rtp import HeaderExtensionsMap, RtpPacket, wrap_rtx
from aiortc.sdp import SessionDescription

HISTORY = 256  # packets kept per viewer for NACK retransmission (~1.5 s of 720p30)
NTP_EPOCH = 2208988800  # 1900 -> 1970 (RFC 5905)
_FIRST = struct.Struct("!BBH")  # V/P/X/CC, M/PT, sequence number
_TS = struct.Struct("!I")
_H264 = H264Encoder()
_VIDEO_TB = fractions.Fraction(1, 90000)


def frame_payloads(frame) -> list[bytes]:
    """RTP payloads of a frame, made once per stream: every viewer shares them."""
    payloads = frame.payloads
    if payloads is None:
        if frame.codec == "H264":
            packet = av.Packet(frame.data)
            packet.pts = 0
            packet.time_base = _VIDEO_TB
            payloads = _H264.pack(packet)[0]
        else:  # G.711 and opus: one frame, one packet
            payloads = [frame.data]
        frame.payloads = payloads
    return payloads


class SendParameters:
    """What a viewer negotiated for one m= section, read from our SDP answer."""

    def __init__(self, sdp: str, mid: str):
        media = next(m for m in SessionDescription.parse(sdp).media if m.rtp.muxId == mid)
        codec = media.rtp.codecs[0]
        self.mid = mid
        self.codec = codec.mimeType.partition("/")[2]  # "H264", "PCMU", "opus"...
        self.payload_type = codec.payloadType
        self.clock_rate = codec.clockRate
        self.rtx_payload_type = next(
            (c.payloadType for c in media.rtp.codecs if c.mimeType.lower().endswith("/rtx")
             and str((c.parameters or {}).get("apt")) == str(codec.payloadType)), None)
        self.ssrc = media.ssrc[0].ssrc
        fid = [g for g in media.ssrc_group if g.semantic == "FID"]
        self.rtx_ssrc = fid[0].ssrcs[1] if fid else None
        self.extensions = HeaderExtensionsMap()
        self.extensions.configure(media.rtp)


class Egress:
    """The viewer's SRTP session and ICE socket, from aiortc's DTLS transport once connected.

    Internals (aiortc 1.x, aioice 0.x): ``RTCDtlsTransport._tx_srtp`` (pylibsrtp Session),
    ``RTCIceTransport._connection`` (aioice Connection) and its ``_nominated[1]`` pair
    (``protocol.transport``, ``remote_addr``)."""

    def __init__(self, dtls):
        self.dtls = dtls
        self.srtp = None
        self.pair = None

    def attach(self) -> bool:
        self.srtp = self.dtls._tx_srtp
        self.pair = self.dtls.transport._connection._nominated.get(1)
        return self.srtp is not None and self.pair is not None

    def _socket(self):
        """The asyncio transport and address of the nominated pair (aioice may change it)."""
        pair = self.pair = self.dtls.transport._connection._nominated.get(1) or self.pair
        transport = pair.protocol.transport
        if transport is None:
            raise ConnectionError("the viewer's ICE socket is closed")
        return transport, pair.remote_addr

    def send(self, packets: list[bytes]) -> None:
        transport, addr = self._socket()
        sendto, protect = transport.sendto, self.srtp.protect
        for data in packets:
            sendto(protect(data), addr)

    def backlog(self) -> int:
        """Bytes asyncio holds for the viewer's socket (the kernel's buffer was full)."""
        return self._socket()[0].get_write_buffer_size()


def report_sent(sender, ntp_time: int, rtp_timestamp: int, packets: int, octets: int) -> None:
    """Feed aiortc's RTCP SR (sent by its ``_run_rtcp``) and stats with what we sent."""
    sender._RTCRtpSender__ntp_timestamp = ntp_time
    sender._RTCRtpSender__rtp_timestamp = rtp_timestamp
    sender._RTCRtpSender__packet_count += packets
    sender._RTCRtpSender__octet_count += octets


class RtpForwarder:
    """One kind of one viewer: frames from its Sink (push mode) to RTP packets on its socket.

    ``forward(frame)`` returns False when the viewer's socket backlog is over ``max_backlog``
    bytes: the Sink then drops to the next keyframe (the bounded per-viewer queue)."""

    def __init__(self, timeline, params: SendParameters, egress: Egress, sender,
                 max_backlog: int, seq: int, ts_origin: int):
        self.timeline = timeline  # gives a growing pts per frame (SinkTrack._pts)
        self.params = params
        self.egress = egress
        self.sender = sender
        self.max_backlog = max_backlog
        self.seq = seq
        self.ts_origin = ts_origin
        self.rtx_seq = seq ^ 0x5A5A
        self.history: list = [None] * HISTORY
        self.sent = 0
        self.retransmitted = 0
        self.failed = False  # a send failed (logged once)
        # frames of another codec than the viewer's (the callee switched codec mid-call):
        # skipped, never sent under the viewer's payload type (noise in the browser)
        self.codec = params.codec.lower()
        self.other_codec = 0
        # The header after its first 4 bytes (timestamp, SSRC, extensions), made once by
        # aiortc's serializer with the viewer's extension ids; per frame only the timestamp
        # and the abs-send-time bytes (found by serializing two values) change.
        header = self._serialized(0)
        self.byte0, self.rest = header[0], bytearray(header[4:])
        other = self._serialized(0xFFFFFF)[4:]
        changed = [i for i in range(len(other)) if other[i] != self.rest[i]]
        self.abs_at = changed[0] if changed else None

    def _serialized(self, abs_send_time: int) -> bytes:
        p = self.params
        packet = RtpPacket(payload_type=p.payload_type, ssrc=p.ssrc)
        packet.extensions.mid = p.mid
        packet.extensions.abs_send_time = abs_send_time
        return packet.serialize(p.extensions)

    def forward(self, frame) -> bool:
        if frame.codec.lower() != self.codec:
            self.other_codec += 1
            return True
        if self.egress.backlog() > self.max_backlog:
            return False
        payloads = frame.payloads or frame_payloads(frame)
        timestamp = (self.ts_origin + self.timeline._pts(frame.timestamp, frame.clock_rate)) \
            & 0xFFFFFFFF
        now = time.time() + NTP_EPOCH
        ntp_time = int(now * 4294967296)
        rest = self.rest
        _TS.pack_into(rest, 0, timestamp)
        if self.abs_at is not None:  # 6.18 fixed-point seconds (abs-send-time)
            at = self.abs_at
            rest[at:at + 3] = ((ntp_time >> 14) & 0xFFFFFF).to_bytes(3, "big")
        rest = bytes(rest)
        pt, byte0, pack = self.params.payload_type, self.byte0, _FIRST.pack
        seq = self.seq
        last = len(payloads) - 1
        history = self.history
        packets = []
        octets = 0
        for i, payload in enumerate(payloads):
            mpt = pt | 0x80 if i == last else pt
            history[seq % HISTORY] = (seq, mpt, rest, payload)
            packets.append(pack(byte0, mpt, seq) + rest + payload)
            octets += len(payload)
            seq = (seq + 1) & 0xFFFF
        self.seq = seq
        self.egress.send(packets)
        self.sent += len(packets)
        report_sent(self.sender, ntp_time, timestamp, len(packets), octets)
        return True

    def retransmit(self, lost: list[int]) -> None:
        """NACK (RFC 4585 §6.2.1): resend from the history, over RTX when negotiated; each
        sequence number once however often a NACK lists it, nothing while the socket is full
        (a viewer's NACKs cannot make it send more than the history)."""
        if self.egress.backlog() > self.max_backlog:
            return
        p = self.params
        packets = []
        for seq in dict.fromkeys(lost):
            entry = self.history[seq % HISTORY]
            if entry is None or entry[0] != seq:
                continue
            data = _FIRST.pack(self.byte0, entry[1], seq) + entry[2] + entry[3]
            if p.rtx_payload_type is not None and p.rtx_ssrc is not None:
                packet = wrap_rtx(RtpPacket.parse(data, p.extensions),
                                  payload_type=p.rtx_payload_type,
                                  sequence_number=self.rtx_seq, ssrc=p.rtx_ssrc)
                self.rtx_seq = (self.rtx_seq + 1) & 0xFFFF
                data = packet.serialize(p.extensions)
            packets.append(data)
        if packets:
            self.retransmitted += len(packets)
            self.egress.send(packets)
