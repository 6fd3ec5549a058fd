"""RTP and RTCP packets (RFC 3550), feedback messages (RFC 4585, RFC 5104), RTP/RTCP demux (RFC 5761).

Pure: no I/O, no Twisted. Every malformed input raises ``PacketError`` (a ``ValueError``) with an
exact message; nothing else escapes ``RtpPacket.parse`` or ``parse_rtcp``. This is the hot path, so
the classes use ``__slots__`` and ``struct.unpack_from`` rather than dataclasses.
"""
from __future__ import annotations

import math
import struct

__all__ = [
    "PacketError", "RtpPacket", "is_rtcp", "parse_rtcp", "ntp_time", "ntp_short",
    "ReceptionReport", "SenderReport", "ReceiverReport", "SourceDescription", "Bye",
    "PictureLossIndication", "FullIntraRequest", "RtcpUnknown",
]


class PacketError(ValueError):
    """An RTP or RTCP packet that cannot be parsed (or serialized)."""


_RTP_HEADER = struct.Struct("!BBHII")
_unpack_rtp = _RTP_HEADER.unpack_from
_pack_rtp = _RTP_HEADER.pack
_HH = struct.Struct("!HH")
_I = struct.Struct("!I")
_new = object.__new__


class RtpPacket:
    """One RTP packet (RFC 3550 §5.1). ``payload`` excludes padding; ``padding_size`` is the
    count of padding octets including the final count octet (0 = no padding)."""

    __slots__ = ("version", "marker", "payload_type", "sequence_number", "timestamp", "ssrc",
                 "csrc", "extension", "payload", "padding_size")

    def __init__(self, payload_type: int = 0, marker: bool = False, sequence_number: int = 0,
                 timestamp: int = 0, ssrc: int = 0, payload: bytes = b"", csrc: list | None = None,
                 extension: tuple[int, bytes] | None = None, padding_size: int = 0,
                 version: int = 2):
        self.version = version
        self.marker = marker
        self.payload_type = payload_type
        self.sequence_number = sequence_number
        self.timestamp = timestamp
        self.ssrc = ssrc
        self.payload = payload
        self.csrc = [] if csrc is None else csrc
        self.extension = extension
        self.padding_size = padding_size

    @classmethod
    def parse(cls, data: bytes) -> "RtpPacket":
        n = len(data)
        if n < 12:
            raise PacketError("RTP packet is shorter than 12 bytes")
        b0, b1, seq, ts, ssrc = _unpack_rtp(data)
        if b0 == 0x80:  # version 2 without padding, extension or CSRCs: nearly every packet
            packet = _new(cls)
            packet.version = 2
            packet.marker = b1 > 0x7F
            packet.payload_type = b1 & 0x7F
            packet.sequence_number = seq
            packet.timestamp = ts
            packet.ssrc = ssrc
            payload = data[12:]
            packet.payload = payload if type(payload) is bytes else bytes(payload)
            packet.csrc = []
            packet.extension = None
            packet.padding_size = 0
            return packet
        if b0 >> 6 != 2:
            raise PacketError(f"RTP version {b0 >> 6} is not 2")
        pos = 12
        csrc = []
        cc = b0 & 0x0F
        if cc:  # RFC 3550 §5.1: CC 32-bit CSRC identifiers follow the fixed header
            pos += 4 * cc
            if pos > n:
                raise PacketError("RTP CSRC count past the end of the packet")
            csrc = list(struct.unpack_from(f"!{cc}I", data, 12))
        extension = None
        if b0 & 0x10:  # RFC 3550 §5.3.1: 16-bit profile, 16-bit length in 32-bit words
            if pos + 4 > n:
                raise PacketError("RTP header extension past the end of the packet")
            profile, words = _HH.unpack_from(data, pos)
            end = pos + 4 + 4 * words
            if end > n:
                raise PacketError("RTP header extension past the end of the packet")
            extension = (profile, bytes(data[pos + 4:end]))
            pos = end
        padding = 0
        if b0 & 0x20:  # RFC 3550 §5.1: the last octet counts the padding, itself included
            padding = data[-1]
            if padding == 0 or padding > n - pos:
                raise PacketError("RTP padding length is invalid")
            n -= padding
        return cls(b1 & 0x7F, bool(b1 & 0x80), seq, ts, ssrc, bytes(data[pos:n]), csrc,
                   extension, padding)

    def __bytes__(self) -> bytes:
        cc = len(self.csrc)
        if cc > 15:
            raise PacketError("RTP packet has more than 15 CSRCs")
        b0 = (self.version << 6) | cc
        if self.padding_size:
            b0 |= 0x20
        if self.extension is not None:
            b0 |= 0x10
        parts = [_pack_rtp(b0, (0x80 if self.marker else 0) | self.payload_type,
                           self.sequence_number, self.timestamp, self.ssrc)]
        if cc:
            parts.append(struct.pack(f"!{cc}I", *self.csrc))
        if self.extension is not None:
            profile, ext = self.extension
            if len(ext) % 4:
                raise PacketError("RTP header extension is not a multiple of 4 bytes")
            parts.append(_HH.pack(profile, len(ext) // 4))
            parts.append(ext)
        parts.append(self.payload)
        if self.padding_size:
            parts.append(bytes(self.padding_size - 1) + bytes([self.padding_size]))
        return b"".join(parts)

    def __eq__(self, other):
        if type(other) is not type(self):
            return NotImplemented
        return all(getattr(self, name) == getattr(other, name) for name in self.__slots__)

    def __repr__(self):
        return (f"RtpPacket(pt={self.payload_type}, seq={self.sequence_number}, "
                f"ts={self.timestamp}, ssrc={self.ssrc:#010x}, marker={self.marker}, "
                f"payload={len(self.payload)} bytes)")


def is_rtcp(data: bytes) -> bool:
    """RFC 5761 §4: on a muxed port, a second octet of 192-223 (RTCP PT 192-223, i.e. RTP PT
    64-95 with the marker bit) is RTCP; everything else is RTP."""
    return len(data) >= 2 and 192 <= data[1] <= 223


# NTP epoch (1900) to Unix epoch (1970), RFC 3550 §4.
_NTP_EPOCH_OFFSET = 2208988800


def ntp_time(unix_seconds: float) -> int:
    """The 64-bit NTP timestamp (RFC 3550 §4: 32.32 fixed point since 1900) for a Unix time."""
    seconds = math.floor(unix_seconds)
    fraction = int((unix_seconds - seconds) * (1 << 32))
    return (((seconds + _NTP_EPOCH_OFFSET) << 32) | fraction) & 0xFFFFFFFFFFFFFFFF


def ntp_short(ntp: int) -> int:
    """The middle 32 bits of an NTP timestamp: the LSR of a report block (RFC 3550 §6.4.1)."""
    return (ntp >> 16) & 0xFFFFFFFF


# --- RTCP -------------------------------------------------------------------------------------

_SR_INFO = struct.Struct("!IQIII")
_REPORT = struct.Struct("!IIIIII")
_II = struct.Struct("!II")
_FIR_ENTRY = struct.Struct("!IB3x")


class _Rtcp:
    """Common behaviour: equality over the slots, ``parse`` of exactly one packet, ``__bytes__``
    through ``_count_and_body``."""

    __slots__ = ()
    packet_type: int

    @classmethod
    def parse(cls, data: bytes):
        packets = parse_rtcp(data)
        if len(packets) != 1 or type(packets[0]) is not cls:
            raise PacketError(f"RTCP data is not a single {cls.__name__}")
        return packets[0]

    def _count_and_body(self) -> tuple[int, bytes]:
        raise NotImplementedError

    def __bytes__(self) -> bytes:
        count, body = self._count_and_body()
        return _rtcp_header(count, self.packet_type, body)

    def __eq__(self, other):
        if type(other) is not type(self):
            return NotImplemented
        return all(getattr(self, name) == getattr(other, name) for name in self.__slots__)

    def __repr__(self):
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{type(self).__name__}({fields})"


def _rtcp_header(count: int, packet_type: int, body: bytes) -> bytes:
    """RFC 3550 §6.4.1 common header; a body that is not 32-bit aligned gets RTCP padding."""
    if count > 31:
        raise PacketError("RTCP count field is larger than 31")
    pad = -len(body) % 4
    if pad:
        body += bytes(pad - 1) + bytes([pad])
    length = len(body) // 4  # words minus one, counting the 4-byte header
    if length > 0xFFFF:
        raise PacketError("RTCP packet is too long")
    return struct.pack("!BBH", 0x80 | (0x20 if pad else 0) | count, packet_type, length) + body


class ReceptionReport:
    """One report block of an SR or RR (RFC 3550 §6.4.1). ``packets_lost`` is signed 24-bit."""

    __slots__ = ("ssrc", "fraction_lost", "packets_lost", "highest_sequence", "jitter", "lsr",
                 "dlsr")

    def __init__(self, ssrc: int, fraction_lost: int = 0, packets_lost: int = 0,
                 highest_sequence: int = 0, jitter: int = 0, lsr: int = 0, dlsr: int = 0):
        self.ssrc = ssrc
        self.fraction_lost = fraction_lost
        self.packets_lost = packets_lost
        self.highest_sequence = highest_sequence
        self.jitter = jitter
        self.lsr = lsr
        self.dlsr = dlsr

    @classmethod
    def parse(cls, data: bytes, offset: int = 0) -> "ReceptionReport":
        if len(data) - offset < 24:
            raise PacketError("RTCP report block is truncated")
        ssrc, word, highest, jitter, lsr, dlsr = _REPORT.unpack_from(data, offset)
        lost = word & 0xFFFFFF
        if lost & 0x800000:
            lost -= 0x1000000
        return cls(ssrc, word >> 24, lost, highest, jitter, lsr, dlsr)

    def __bytes__(self) -> bytes:
        # RFC 3550 Appendix A.3: clamp the cumulative loss to the signed 24-bit range.
        lost = max(-0x800000, min(0x7FFFFF, self.packets_lost)) & 0xFFFFFF
        return _REPORT.pack(self.ssrc, (self.fraction_lost << 24) | lost, self.highest_sequence,
                            self.jitter, self.lsr, self.dlsr)

    __eq__ = _Rtcp.__eq__
    __repr__ = _Rtcp.__repr__


def _parse_reports(body: bytes, offset: int, count: int) -> list[ReceptionReport]:
    if offset + 24 * count > len(body):
        raise PacketError("RTCP report blocks past the end of the packet")
    return [ReceptionReport.parse(body, offset + 24 * i) for i in range(count)]


class SenderReport(_Rtcp):
    """SR, PT 200 (RFC 3550 §6.4.1). ``ntp_timestamp`` is the 64-bit NTP time."""

    __slots__ = ("ssrc", "ntp_timestamp", "rtp_timestamp", "packet_count", "octet_count",
                 "reports")
    packet_type = 200

    def __init__(self, ssrc: int, ntp_timestamp: int = 0, rtp_timestamp: int = 0,
                 packet_count: int = 0, octet_count: int = 0,
                 reports: list[ReceptionReport] | None = None):
        self.ssrc = ssrc
        self.ntp_timestamp = ntp_timestamp
        self.rtp_timestamp = rtp_timestamp
        self.packet_count = packet_count
        self.octet_count = octet_count
        self.reports = [] if reports is None else reports

    @classmethod
    def _from_body(cls, count: int, body: bytes) -> "SenderReport":
        if len(body) < 24:
            raise PacketError("RTCP sender report is truncated")
        # Profile-specific extensions after the report blocks are ignored (RFC 3550 §6.4.1).
        return cls(*_SR_INFO.unpack_from(body), _parse_reports(body, 24, count))

    def _count_and_body(self):
        return len(self.reports), b"".join(
            [_SR_INFO.pack(self.ssrc, self.ntp_timestamp, self.rtp_timestamp, self.packet_count,
                           self.octet_count)] + [bytes(r) for r in self.reports])


class ReceiverReport(_Rtcp):
    """RR, PT 201 (RFC 3550 §6.4.2)."""

    __slots__ = ("ssrc", "reports")
    packet_type = 201

    def __init__(self, ssrc: int, reports: list[ReceptionReport] | None = None):
        self.ssrc = ssrc
        self.reports = [] if reports is None else reports

    @classmethod
    def _from_body(cls, count: int, body: bytes) -> "ReceiverReport":
        if len(body) < 4:
            raise PacketError("RTCP receiver report is truncated")
        return cls(_I.unpack_from(body)[0], _parse_reports(body, 4, count))

    def _count_and_body(self):
        return len(self.reports), b"".join([_I.pack(self.ssrc)] + [bytes(r) for r in self.reports])


class SourceDescription(_Rtcp):
    """SDES, PT 202 (RFC 3550 §6.5): ``chunks`` is a list of (ssrc, [(item_type, value), ...])
    with item types 1-255 (CNAME is 1)."""

    __slots__ = ("chunks",)
    packet_type = 202

    def __init__(self, chunks: list[tuple[int, list[tuple[int, bytes]]]] | None = None):
        self.chunks = [] if chunks is None else chunks

    @classmethod
    def _from_body(cls, count: int, body: bytes) -> "SourceDescription":
        chunks = []
        pos, n = 0, len(body)
        for _ in range(count):
            if pos + 4 > n:
                raise PacketError("RTCP SDES chunk is truncated")
            ssrc = _I.unpack_from(body, pos)[0]
            pos += 4
            items = []
            while True:
                if pos >= n:
                    raise PacketError("RTCP SDES chunk is truncated")
                item_type = body[pos]
                if item_type == 0:  # END, then null octets up to the next 32-bit boundary
                    pos = (pos + 4) & ~3
                    if pos > n:
                        raise PacketError("RTCP SDES chunk is truncated")
                    break
                if pos + 2 > n or pos + 2 + body[pos + 1] > n:
                    raise PacketError("RTCP SDES item is truncated")
                end = pos + 2 + body[pos + 1]
                items.append((item_type, bytes(body[pos + 2:end])))
                pos = end
            chunks.append((ssrc, items))
        return cls(chunks)

    def _count_and_body(self):
        out = bytearray()
        for ssrc, items in self.chunks:
            out += _I.pack(ssrc)
            for item_type, value in items:
                if not 1 <= item_type <= 255 or len(value) > 255:
                    raise PacketError("RTCP SDES item type or length out of range")
                out += bytes([item_type, len(value)]) + value
            out += bytes(4 - len(out) % 4)  # END plus null octets to a 32-bit boundary
        return len(self.chunks), bytes(out)


class Bye(_Rtcp):
    """BYE, PT 203 (RFC 3550 §6.6); ``reason`` is None when absent."""

    __slots__ = ("sources", "reason")
    packet_type = 203

    def __init__(self, sources: list[int] | None = None, reason: bytes | None = None):
        self.sources = [] if sources is None else sources
        self.reason = reason

    @classmethod
    def _from_body(cls, count: int, body: bytes) -> "Bye":
        pos = 4 * count
        if pos > len(body):
            raise PacketError("RTCP BYE sources past the end of the packet")
        sources = list(struct.unpack_from(f"!{count}I", body))
        reason = None
        if pos < len(body):
            end = pos + 1 + body[pos]
            if end > len(body):
                raise PacketError("RTCP BYE reason past the end of the packet")
            reason = bytes(body[pos + 1:end])
        return cls(sources, reason)

    def _count_and_body(self):
        body = b"".join(_I.pack(s) for s in self.sources)
        if self.reason is not None:
            if len(self.reason) > 255:
                raise PacketError("RTCP BYE reason is longer than 255 bytes")
            reason = bytes([len(self.reason)]) + self.reason
            body += reason + bytes(-len(reason) % 4)
        return len(self.sources), body


class PictureLossIndication(_Rtcp):
    """PLI: payload-specific feedback PT 206, FMT 1, no FCI (RFC 4585 §6.3.1)."""

    __slots__ = ("sender_ssrc", "media_ssrc")
    packet_type = 206
    fmt = 1

    def __init__(self, sender_ssrc: int, media_ssrc: int):
        self.sender_ssrc = sender_ssrc
        self.media_ssrc = media_ssrc

    @classmethod
    def _from_body(cls, count: int, body: bytes) -> "PictureLossIndication":
        if len(body) < 8:
            raise PacketError("RTCP PLI is truncated")
        return cls(*_II.unpack_from(body))

    def _count_and_body(self):
        return self.fmt, _II.pack(self.sender_ssrc, self.media_ssrc)


class FullIntraRequest(_Rtcp):
    """FIR: PT 206, FMT 4 (RFC 5104 §4.3.1); the media source SSRC field is 0 and each FCI
    entry is (ssrc, command sequence number)."""

    __slots__ = ("sender_ssrc", "entries")
    packet_type = 206
    fmt = 4

    def __init__(self, sender_ssrc: int, entries: list[tuple[int, int]] | None = None):
        self.sender_ssrc = sender_ssrc
        self.entries = [] if entries is None else entries

    @classmethod
    def _from_body(cls, count: int, body: bytes) -> "FullIntraRequest":
        if len(body) < 8:
            raise PacketError("RTCP FIR is truncated")
        if (len(body) - 8) % 8:
            raise PacketError("RTCP FIR entries are not 8 bytes each")
        entries = [_FIR_ENTRY.unpack_from(body, pos) for pos in range(8, len(body), 8)]
        return cls(_I.unpack_from(body)[0], entries)

    def _count_and_body(self):
        return self.fmt, b"".join([_II.pack(self.sender_ssrc, 0)]
                                  + [_FIR_ENTRY.pack(s, n) for s, n in self.entries])


class RtcpUnknown(_Rtcp):
    """Any other RTCP packet (e.g. RTPFB NACK, XR, APP), kept as its header fields and body."""

    __slots__ = ("packet_type", "fmt", "body")

    def __init__(self, packet_type: int, fmt: int, body: bytes):
        self.packet_type = packet_type
        self.fmt = fmt
        self.body = body

    def _count_and_body(self):
        return self.fmt, self.body


_RTCP_TYPES = {200: SenderReport, 201: ReceiverReport, 202: SourceDescription, 203: Bye}
_PSFB = {1: PictureLossIndication, 4: FullIntraRequest}


def parse_rtcp(data: bytes) -> list:
    """Split a compound RTCP packet by its length fields (RFC 3550 §6.1) and parse each part.
    Unknown packet types come back as ``RtcpUnknown``; truncated or garbled data raises."""
    packets = []
    pos, n = 0, len(data)
    if n == 0:
        raise PacketError("RTCP packet is empty")
    while pos < n:
        if n - pos < 4:
            raise PacketError("RTCP header is truncated")
        b0, packet_type, words = struct.unpack_from("!BBH", data, pos)
        if b0 >> 6 != 2:
            raise PacketError(f"RTCP version {b0 >> 6} is not 2")
        end = pos + 4 + 4 * words
        if end > n:
            raise PacketError("RTCP length field past the end of the packet")
        body_end = end
        if b0 & 0x20:  # RFC 3550 §6.4.1: last octet counts padding octets, itself included
            padding = data[end - 1]
            if padding == 0 or padding > 4 * words:
                raise PacketError("RTCP padding length is invalid")
            body_end -= padding
        count = b0 & 0x1F
        body = bytes(data[pos + 4:body_end])
        if packet_type == 206 and count in _PSFB:
            packets.append(_PSFB[count]._from_body(count, body))
        elif packet_type in _RTCP_TYPES:
            packets.append(_RTCP_TYPES[packet_type]._from_body(count, body))
        else:
            packets.append(RtcpUnknown(packet_type, count, body))
        pos = end
    return packets
