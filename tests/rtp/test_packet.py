"""Bytes to RTP/RTCP packets and back (RFC 3550 §5, §6; RFC 4585 §6.3.1; RFC 5104 §4.3.1; RFC 5761 §4)."""
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipgw.rtp.packet import (
    Bye, FullIntraRequest, PacketError, PictureLossIndication, ReceiverReport, ReceptionReport,
    RtcpUnknown, RtpPacket, SenderReport, SourceDescription, is_rtcp, ntp_short, ntp_time,
    parse_rtcp,
)

U32 = st.integers(0, 0xFFFFFFFF)


def _full_rtp() -> RtpPacket:
    return RtpPacket(payload_type=96, marker=True, sequence_number=0xFFFE, timestamp=0xDEADBEEF,
                     ssrc=0x12345678, payload=b"\x7c\x85hello", csrc=[1, 2, 3],
                     extension=(0xBEDE, b"\x10\xff\x00\x00"), padding_size=3)


REPORT = ReceptionReport(ssrc=0xCAFE, fraction_lost=25, packets_lost=-3, highest_sequence=70000,
                         jitter=123, lsr=0x11223344, dlsr=0x00010000)
RTCP_EXAMPLES = [
    SenderReport(0x1111, ntp_timestamp=0xE1234567_89ABCDEF, rtp_timestamp=90000, packet_count=10,
                 octet_count=12000, reports=[REPORT]),
    SenderReport(0x1111),
    ReceiverReport(0x2222, [REPORT, ReceptionReport(7, packets_lost=0x7FFFFF)]),
    ReceiverReport(0x2222),
    SourceDescription([(0x3333, [(1, b"user@host"), (6, b"sipgw")]), (0x4444, [])]),
    Bye([0x5555, 0x6666], b"hangup"),
    Bye([0x5555]),
    Bye([], b""),
    PictureLossIndication(0x7777, 0x8888),
    FullIntraRequest(0x7777, [(0x8888, 3), (0x9999, 255)]),
    RtcpUnknown(205, 1, b"\x00\x00\x00\x01\x00\x02\x00\x00\x00\x01\x00\x00"),  # RTPFB generic NACK
    RtcpUnknown(204, 3, b"abcde"),  # APP, padded on the wire
]


# --- RTP -----------------------------------------------------------------------------------------

def test_rtp_round_trip_with_every_header_field():
    """CSRCs, a header extension, padding and the marker survive bytes and back."""
    packet = _full_rtp()
    data = bytes(packet)
    assert data[0] == 0x80 | 0x20 | 0x10 | 3
    assert data[-3:] == b"\x00\x00\x03"
    assert RtpPacket.parse(data) == packet


def test_rtp_parse_known_bytes():
    """The fixed header fields come from the right bits (RFC 3550 §5.1)."""
    data = bytes.fromhex("80e0 0102 00000003 00000004") + b"xyz"
    packet = RtpPacket.parse(data)
    assert (packet.version, packet.marker, packet.payload_type) == (2, True, 96)
    assert (packet.sequence_number, packet.timestamp, packet.ssrc) == (0x0102, 3, 4)
    assert packet.payload == b"xyz" and packet.csrc == [] and packet.extension is None
    assert packet.padding_size == 0
    assert bytes(packet) == data


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_rtp_plain_header_fast_path_gives_the_same_packet(kind):
    """A version 2 header without padding, extension or CSRCs (the common case, parsed on a
    shorter path) gives the fields, a bytes payload and the same bytes back, whatever buffer
    type it came in."""
    data = bytes.fromhex("8060 fffe 01020304 0a0b0c0d") + b"payload"
    packet = RtpPacket.parse(kind(data))
    assert (packet.version, packet.marker, packet.payload_type) == (2, False, 96)
    assert (packet.sequence_number, packet.timestamp, packet.ssrc) == (0xFFFE, 0x01020304,
                                                                        0x0A0B0C0D)
    assert type(packet.payload) is bytes and packet.payload == b"payload"
    assert (packet.csrc, packet.extension, packet.padding_size) == ([], None, 0)
    assert bytes(packet) == data
    assert packet == RtpPacket(96, False, 0xFFFE, 0x01020304, 0x0A0B0C0D, b"payload")
    assert RtpPacket.parse(data[:12]).payload == b""


def test_rtp_too_short():
    """Fewer than 12 bytes is not an RTP packet."""
    with pytest.raises(PacketError, match="^RTP packet is shorter than 12 bytes$"):
        RtpPacket.parse(bytes(11))


def test_rtp_version_must_be_2():
    """Version 1 (and 0, 3) is refused."""
    data = bytearray(bytes(_full_rtp()))
    data[0] = (data[0] & 0x3F) | 0x40
    with pytest.raises(PacketError, match="^RTP version 1 is not 2$"):
        RtpPacket.parse(bytes(data))


def test_rtp_csrc_count_past_the_end():
    """A CSRC count that claims more identifiers than the packet holds is refused."""
    data = bytes([0x8F, 0]) + bytes(10) + bytes(4 * 14)
    with pytest.raises(PacketError, match="^RTP CSRC count past the end of the packet$"):
        RtpPacket.parse(data)


@pytest.mark.parametrize("ext", [b"\xbe\xde", b"\xbe\xde\x00\x02" + bytes(7)])
def test_rtp_extension_past_the_end(ext):
    """An extension header, or its announced length, that runs past the packet is refused."""
    with pytest.raises(PacketError, match="^RTP header extension past the end of the packet$"):
        RtpPacket.parse(bytes([0x90, 96]) + bytes(10) + ext)


@pytest.mark.parametrize("last", [0, 6, 255])
def test_rtp_lying_padding(last):
    """A padding count of 0, or one larger than what follows the header, is refused."""
    data = bytes([0xA0, 96]) + bytes(10) + b"abcd" + bytes([last])
    with pytest.raises(PacketError, match="^RTP padding length is invalid$"):
        RtpPacket.parse(data)


def test_rtp_padding_may_fill_the_whole_payload():
    """A padding-only packet (RFC 3550 §5.1, used for bandwidth probes) has an empty payload."""
    packet = RtpPacket.parse(bytes([0xA0, 96]) + bytes(10) + bytes(3) + b"\x04")
    assert packet.payload == b"" and packet.padding_size == 4


def test_rtp_every_truncation_of_the_header_raises():
    """Cutting into the fixed header, CSRC list or extension raises PacketError only."""
    data = bytes(_full_rtp())
    header_end = 12 + 4 * 3 + 4 + 4
    for length in range(header_end):
        with pytest.raises(PacketError):
            RtpPacket.parse(data[:length])
    for length in range(header_end, len(data)):
        try:  # no length field covers the payload: a shorter payload may still parse
            RtpPacket.parse(data[:length])
        except PacketError:
            pass


def test_rtp_equality():
    """Packets compare by every field."""
    assert _full_rtp() == _full_rtp()
    other = _full_rtp()
    other.sequence_number = 1
    assert other != _full_rtp()
    assert _full_rtp() != object()


def test_rtp_unserializable_extension():
    """Extension data must be whole 32-bit words (RFC 3550 §5.3.1)."""
    with pytest.raises(PacketError, match="^RTP header extension is not a multiple of 4 bytes$"):
        bytes(RtpPacket(extension=(1, b"abc")))


rtp_packets = st.builds(
    RtpPacket,
    payload_type=st.integers(0, 127), marker=st.booleans(),
    sequence_number=st.integers(0, 0xFFFF), timestamp=U32, ssrc=U32,
    payload=st.binary(max_size=40), csrc=st.lists(U32, max_size=15),
    extension=st.none() | st.tuples(st.integers(0, 0xFFFF),
                                    st.binary(max_size=12).map(lambda b: b + bytes(-len(b) % 4))),
    padding_size=st.integers(0, 255),
)


@given(rtp_packets)
def test_rtp_round_trip_property(packet):
    """parse(bytes(p)) == p for any RTP packet."""
    assert RtpPacket.parse(bytes(packet)) == packet


@given(st.binary(max_size=80))
def test_rtp_random_bytes_raise_only_packet_error(data):
    """Arbitrary bytes either parse or raise PacketError."""
    try:
        RtpPacket.parse(data)
    except PacketError:
        pass


def test_is_rtcp_demux():
    """RFC 5761 §4: second octet 192-223 is RTCP, anything else RTP."""
    assert is_rtcp(bytes(SenderReport(1)))
    assert is_rtcp(bytes(PictureLossIndication(1, 2)))
    assert not is_rtcp(bytes(RtpPacket(payload_type=96, marker=True)))
    assert not is_rtcp(bytes(RtpPacket(payload_type=0)))
    assert not is_rtcp(b"\x80")
    assert [b for b in range(256) if is_rtcp(bytes([0x80, b]))] == list(range(192, 224))


def test_ntp_time():
    """64-bit NTP time is seconds since 1900 in 32.32 fixed point (RFC 3550 §4)."""
    assert ntp_time(0) == 2208988800 << 32
    assert ntp_time(1.5) == ((2208988801 << 32) | 0x80000000)
    assert ntp_short(ntp_time(1.5)) == ((2208988801 & 0xFFFF) << 16) | 0x8000
    assert ntp_time(1.0) - ntp_time(0.0) == 1 << 32


# --- RTCP ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("packet", RTCP_EXAMPLES, ids=lambda p: type(p).__name__)
def test_rtcp_round_trip(packet):
    """Every RTCP class survives bytes and back, alone and via parse_rtcp."""
    data = bytes(packet)
    assert len(data) % 4 == 0
    assert type(packet).parse(data) == packet
    assert parse_rtcp(data) == [packet]


def test_rtcp_packet_types():
    """Each class names its RTCP packet type (RFC 3550 §12.1, RFC 4585 §6.1)."""
    assert [SenderReport.packet_type, ReceiverReport.packet_type, SourceDescription.packet_type,
            Bye.packet_type, PictureLossIndication.packet_type,
            FullIntraRequest.packet_type] == [200, 201, 202, 203, 206, 206]
    assert (PictureLossIndication.fmt, FullIntraRequest.fmt) == (1, 4)


def test_pli_and_fir_wire_format():
    """PLI is 12 bytes with FMT 1; FIR has media SSRC 0 and 8-byte FCI entries (RFC 5104 §4.3.1)."""
    assert bytes(PictureLossIndication(1, 2)) == bytes.fromhex("81ce0002 00000001 00000002")
    assert bytes(FullIntraRequest(1, [(2, 9)])) == bytes.fromhex(
        "84ce0004 00000001 00000000 00000002 09000000")


def test_sender_report_wire_format():
    """SR sender info layout (RFC 3550 §6.4.1) and the signed 24-bit cumulative loss."""
    data = bytes(SenderReport(1, 2, 3, 4, 5, [ReceptionReport(6, 7, -1, 8, 9, 10, 11)]))
    assert data[:4] == bytes.fromhex("81c8000c")
    assert struct.unpack("!IQIII", data[4:28]) == (1, 2, 3, 4, 5)
    assert data[28:36] == bytes.fromhex("00000006 07ffffff")


def test_report_block_clamps_loss():
    """RFC 3550 A.3: a loss outside the signed 24-bit range is clamped when serialized."""
    assert ReceptionReport.parse(bytes(ReceptionReport(1, packets_lost=10**9))).packets_lost == 0x7FFFFF
    assert ReceptionReport.parse(bytes(ReceptionReport(1, packets_lost=-10**9))).packets_lost == -0x800000


def test_rtcp_compound_split_by_length():
    """A compound packet (RFC 3550 §6.1) splits into its parts in order."""
    data = b"".join(bytes(p) for p in RTCP_EXAMPLES)
    assert parse_rtcp(data) == RTCP_EXAMPLES


def test_rtcp_padding_on_the_last_packet():
    """RTCP padding (P bit, RFC 3550 §6.4.1) is removed from the body."""
    rr = bytes(ReceiverReport(9))
    padded = bytes([rr[0] | 0x20, rr[1], 0, 2]) + rr[4:] + b"\x00\x00\x00\x04"
    assert parse_rtcp(padded) == [ReceiverReport(9)]


def test_rtcp_unknown_is_kept():
    """An unknown type, or PSFB with another FMT, comes back as RtcpUnknown with its body."""
    assert parse_rtcp(bytes.fromhex("8fce0002 00000001 00000002")) == [
        RtcpUnknown(206, 15, bytes.fromhex("00000001 00000002"))]
    assert parse_rtcp(bytes.fromhex("80cf0000")) == [RtcpUnknown(207, 0, b"")]


@pytest.mark.parametrize("packet", RTCP_EXAMPLES, ids=lambda p: type(p).__name__)
def test_rtcp_every_truncation_raises(packet):
    """Every proper prefix of an RTCP packet raises PacketError, never IndexError/struct.error."""
    data = bytes(packet)
    for length in range(len(data)):
        with pytest.raises(PacketError):
            parse_rtcp(data[:length])


@pytest.mark.parametrize("data, message", [
    (b"", "RTCP packet is empty"),
    (b"\x80\xc9\x00", "RTCP header is truncated"),
    (b"\x40\xc9\x00\x01" + bytes(4), "RTCP version 1 is not 2"),
    (b"\x80\xc9\x00\x02" + bytes(4), "RTCP length field past the end of the packet"),
    (b"\xa0\xc9\x00\x01" + bytes(4), "RTCP padding length is invalid"),
    (b"\xa0\xc9\x00\x01" + bytes(3) + b"\x09", "RTCP padding length is invalid"),
    (b"\x80\xc8\x00\x01" + bytes(4), "RTCP sender report is truncated"),
    (b"\x80\xc9\x00\x00", "RTCP receiver report is truncated"),
    (b"\x81\xc9\x00\x01" + bytes(4), "RTCP report blocks past the end of the packet"),
    (b"\x81\xca\x00\x00", "RTCP SDES chunk is truncated"),
    (b"\x81\xca\x00\x01" + bytes(4), "RTCP SDES chunk is truncated"),
    (b"\x81\xca\x00\x02" + bytes(4) + b"\x01\x09ab", "RTCP SDES item is truncated"),
    (b"\x81\xca\x00\x02" + bytes(4) + b"\x01\x02ab", "RTCP SDES chunk is truncated"),
    (b"\x82\xcb\x00\x01" + bytes(4), "RTCP BYE sources past the end of the packet"),
    (b"\x81\xcb\x00\x02" + bytes(4) + b"\x05abc", "RTCP BYE reason past the end of the packet"),
    (b"\x81\xce\x00\x01" + bytes(4), "RTCP PLI is truncated"),
    (b"\x84\xce\x00\x01" + bytes(4), "RTCP FIR is truncated"),
    (b"\x84\xce\x00\x03" + bytes(12), "RTCP FIR entries are not 8 bytes each"),
])
def test_rtcp_garbage(data, message):
    """Each way an RTCP packet can be garbled has its own message."""
    with pytest.raises(PacketError, match=f"^{message}$"):
        parse_rtcp(data)


def test_rtcp_class_parse_wants_one_packet_of_its_type():
    """SenderReport.parse refuses a compound packet or another type."""
    with pytest.raises(PacketError, match="^RTCP data is not a single SenderReport$"):
        SenderReport.parse(bytes(ReceiverReport(1)))
    with pytest.raises(PacketError, match="^RTCP data is not a single SenderReport$"):
        SenderReport.parse(bytes(SenderReport(1)) * 2)


reports = st.builds(ReceptionReport, ssrc=U32, fraction_lost=st.integers(0, 255),
                    packets_lost=st.integers(-0x800000, 0x7FFFFF), highest_sequence=U32,
                    jitter=U32, lsr=U32, dlsr=U32)
rtcp_packets = st.one_of(
    st.builds(SenderReport, ssrc=U32, ntp_timestamp=st.integers(0, 2**64 - 1), rtp_timestamp=U32,
              packet_count=U32, octet_count=U32, reports=st.lists(reports, max_size=3)),
    st.builds(ReceiverReport, ssrc=U32, reports=st.lists(reports, max_size=3)),
    st.builds(SourceDescription, chunks=st.lists(st.tuples(U32, st.lists(st.tuples(
        st.integers(1, 255), st.binary(max_size=20)), max_size=3)), max_size=3)),
    st.builds(Bye, sources=st.lists(U32, max_size=4), reason=st.none() | st.binary(max_size=20)),
    st.builds(PictureLossIndication, sender_ssrc=U32, media_ssrc=U32),
    st.builds(FullIntraRequest, sender_ssrc=U32,
              entries=st.lists(st.tuples(U32, st.integers(0, 255)), max_size=3)),
    st.builds(RtcpUnknown, packet_type=st.integers(0, 255).filter(lambda t: not 200 <= t <= 203),
              fmt=st.integers(0, 31), body=st.binary(max_size=24))
    .filter(lambda p: p.packet_type != 206 or p.fmt not in (1, 4)),
)


@given(st.lists(rtcp_packets, min_size=1, max_size=4))
def test_rtcp_round_trip_property(packets):
    """parse_rtcp of a compound of any RTCP packets gives them back."""
    for packet in packets:
        assert type(packet).parse(bytes(packet)) == packet
    assert parse_rtcp(b"".join(bytes(p) for p in packets)) == packets


@given(st.binary(max_size=80))
def test_rtcp_random_bytes_raise_only_packet_error(data):
    """Arbitrary bytes either parse or raise PacketError."""
    try:
        parse_rtcp(data)
    except PacketError:
        pass


@settings(max_examples=300)
@given(st.lists(rtcp_packets, min_size=1, max_size=3), st.data())
def test_rtcp_corrupted_bytes_raise_only_packet_error(packets, data):
    """A valid compound with one byte changed either parses or raises PacketError."""
    raw = bytearray(b"".join(bytes(p) for p in packets))
    index = data.draw(st.integers(0, len(raw) - 1))
    raw[index] = data.draw(st.integers(0, 255))
    try:
        parse_rtcp(bytes(raw))
    except PacketError:
        pass
