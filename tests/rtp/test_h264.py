"""H.264 RTP depacketization (RFC 6184) on real libx264 output, and SPS parsing (H.264 §7.3.2.1.1).

PyAV encodes the clips and decodes the rebuilt access units; the packetizer below is the test's
own, following RFC 6184 §5.6 (single NAL unit), §5.7.1 (STAP-A) and §5.8 (FU-A).
"""
import fractions
import functools
import re

import av
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sipgw.rtp.h264 import AccessUnit, H264Depacketizer, parse_sps
from sipgw.rtp.jitter import ReorderBuffer
from sipgw.rtp.packet import RtpPacket

START = b"\x00\x00\x00\x01"
MTU = 1200


def split_annexb(data: bytes) -> list[bytes]:
    """NAL units of an Annex-B byte stream (3- or 4-byte start codes)."""
    return [nal.rstrip(b"\x00") for nal in re.split(b"\x00\x00\x01", data)[1:]]


def moving_ramps(width: int, height: int, index: int, pix_fmt: str) -> av.VideoFrame:
    """Diagonal ramps that move with ``index``, written straight into the frame's planes."""
    frame = av.VideoFrame(width, height, pix_fmt)
    ramp = bytes(range(256)) * (4 + width // 256)
    for n, plane in enumerate(frame.planes):
        rows = []
        for y in range(plane.height):
            start = (y * (n + 1) + index * 6) % 256
            rows.append(ramp[start:start + plane.line_size])
        plane.update(b"".join(rows))
    frame.pts = index
    return frame


def encode(width, height, frames, *, pix_fmt="yuv420p", preset="ultrafast", gop=10,
           profile=None, params=None) -> list[bytes]:
    """Annex-B access units from libx264 (zerolatency: two slices per frame, no B frames)."""
    codec = av.CodecContext.create("libx264", "w")
    codec.width, codec.height, codec.pix_fmt = width, height, pix_fmt
    codec.time_base = fractions.Fraction(1, 30)
    codec.gop_size = gop
    if profile:
        codec.profile = profile
    codec.options = {"preset": preset, "tune": "zerolatency",
                     **({"x264-params": params} if params else {})}
    out = []
    for i in range(frames):
        out += [bytes(p) for p in codec.encode(moving_ramps(width, height, i, pix_fmt))]
    out += [bytes(p) for p in codec.encode(None)]
    return out


@functools.lru_cache(maxsize=None)
def clip() -> tuple[bytes, ...]:
    """30 frames of 320x240 baseline, an IDR every 10 frames, two slices per frame."""
    return tuple(encode(320, 240, 30, profile="baseline"))


def packetize(au: bytes, timestamp: int, seq: int, mtu: int = MTU) -> list[RtpPacket]:
    """One access unit as RTP: SPS+PPS in a STAP-A, small NAL units alone, big ones as FU-A."""
    nals = split_annexb(au)
    payloads = []
    params = [n for n in nals if n[0] & 0x1F in (7, 8)]
    if params:
        payloads.append(b"\x78" + b"".join(len(n).to_bytes(2, "big") + n for n in params))
    for nal in nals:
        if nal[0] & 0x1F in (7, 8):
            continue
        if len(nal) <= mtu:
            payloads.append(nal)
            continue
        indicator = (nal[0] & 0xE0) | 28
        body = nal[1:]
        chunks = [body[i:i + mtu - 2] for i in range(0, len(body), mtu - 2)]
        for i, chunk in enumerate(chunks):
            fu_header = (0x80 if i == 0 else 0) | (0x40 if i == len(chunks) - 1 else 0) | (nal[0] & 0x1F)
            payloads.append(bytes([indicator, fu_header]) + chunk)
    return [RtpPacket(payload_type=96, marker=i == len(payloads) - 1, sequence_number=(seq + i) & 0xFFFF,
                      timestamp=timestamp & 0xFFFFFFFF, ssrc=0x1234, payload=p)
            for i, p in enumerate(payloads)]


def packetize_clip(aus, seq=0, ts=0) -> list[RtpPacket]:
    packets = []
    for i, au in enumerate(aus):
        packets += packetize(au, ts + 3000 * i, seq + len(packets))
    return packets


def canonical(au: bytes) -> bytes:
    """The access unit with every start code made 4 bytes long, as the depacketizer writes it."""
    return b"".join(START + nal for nal in split_annexb(au))


def decode(units) -> list:
    codec = av.CodecContext.create("h264", "r")
    frames = []
    for unit in units:
        frames += codec.decode(av.Packet(unit.data))
    frames += codec.decode(None)
    return frames


def push_all(depacketizer, packets) -> list[AccessUnit]:
    out = []
    for packet in packets:
        out += depacketizer.push(packet)
    return out


# --- real streams --------------------------------------------------------------------------------

def test_clip_uses_every_packet_kind():
    """The fixture really exercises STAP-A, FU-A and single NAL unit packets, IDRs and slices."""
    kinds = {p.payload[0] & 0x1F for p in packetize_clip(clip())}
    assert {24, 28, 1} <= kinds
    assert [i for i, au in enumerate(clip()) if 5 in {n[0] & 0x1F for n in split_annexb(au)}] == [0, 10, 20]


def test_rebuilt_access_units_are_the_encoded_ones_and_decode():
    """Every access unit comes back byte for byte and PyAV decodes all 30 frames at 320x240."""
    depacketizer = H264Depacketizer()
    units = push_all(depacketizer, packetize_clip(clip(), seq=65500, ts=0xFFFFFFFF - 6000))
    assert [u.data for u in units] == [canonical(au) for au in clip()]
    assert [u.keyframe for u in units] == [i % 10 == 0 for i in range(30)]
    assert units[0].nal_types[:2] == (7, 8) and 5 in units[0].nal_types
    assert [u.timestamp for u in units[:4]] == [0xFFFFFFFF - 6000, 0xFFFFFFFF - 3000, 0xFFFFFFFF, 2999]
    frames = decode(units)
    assert len(frames) == 30
    assert {(f.width, f.height) for f in frames} == {(320, 240)}
    assert (depacketizer.frames, depacketizer.keyframes, depacketizer.dropped_frames) == (30, 3, 0)
    assert depacketizer.bad_packets == depacketizer.unsupported == 0
    assert not depacketizer.needs_keyframe


def test_parameter_sets_and_size_are_kept():
    """The last SPS and PPS seen are kept, and the SPS gives the picture size."""
    depacketizer = H264Depacketizer()
    push_all(depacketizer, packetize_clip(clip()[:1]))
    nals = split_annexb(clip()[0])
    assert depacketizer.sps == next(n for n in nals if n[0] & 0x1F == 7)
    assert depacketizer.pps == next(n for n in nals if n[0] & 0x1F == 8)
    assert (depacketizer.width, depacketizer.height) == (320, 240)


def test_access_unit_ends_on_timestamp_change_without_marker():
    """A sender that never sets the marker bit still gets each access unit out, one late."""
    packets = packetize_clip(clip()[:5])
    for packet in packets:
        packet.marker = False
    units = push_all(H264Depacketizer(), packets)
    assert [u.data for u in units] == [canonical(au) for au in clip()[:4]]


def test_stream_starting_mid_gop_waits_for_the_first_idr():
    """Joining after the IDR drops the P frames until the next IDR, asking for a keyframe."""
    depacketizer = H264Depacketizer()
    packets = packetize_clip(clip())
    units = []
    for packet in packets[len(packetize_clip(clip()[:3])):]:
        units += depacketizer.push(packet)
        if not units:
            assert depacketizer.needs_keyframe
    assert units[0].keyframe and units[0].data == canonical(clip()[10])
    assert len(units) == 20 and depacketizer.dropped_frames == 7


def test_lost_fragment_drops_frames_until_next_idr():
    """Losing one FU-A fragment of the first IDR drops frames 0-9 and resumes, decodable, at 10."""
    packets = packetize_clip(clip())
    lost = next(i for i, p in enumerate(packets) if p.payload[0] & 0x1F == 28 and not p.payload[1] & 0xC0)
    depacketizer = H264Depacketizer()
    units = push_all(depacketizer, packets[:lost] + packets[lost + 1:])
    assert [u.data for u in units] == [canonical(au) for au in clip()[10:]]
    assert depacketizer.dropped_frames == 10
    assert len(decode(units)) == 20


def test_reorder_buffer_in_front_repairs_reordering_and_duplicates():
    """Swapped and duplicated packets, put back in order by ReorderBuffer, rebuild every frame."""
    packets = packetize_clip(clip())
    arrival = packets[:1]
    for i in range(1, len(packets) - 1, 2):
        arrival += [packets[i + 1], packets[i], packets[i + 1]]
    arrival += packets[len(arrival) // 3 * 2 + 1:]
    assert sorted({p.sequence_number for p in arrival}) == list(range(len(packets)))
    buffer, depacketizer = ReorderBuffer(), H264Depacketizer()
    units = []
    for packet in arrival:
        for ordered in buffer.push(packet):
            units += depacketizer.push(ordered)
    assert [u.data for u in units] == [canonical(au) for au in clip()]


MUTATION = st.sampled_from(["keep"] * 12 + ["drop", "dup", "swap"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(MUTATION, min_size=120, max_size=120))
def test_random_loss_reorder_duplication_never_emits_a_broken_frame(mutations):
    """Whatever is lost, duplicated or swapped, push never raises, every unit it emits is an
    original access unit, and after any discontinuity the next unit emitted is an IDR."""
    packets = packetize_clip(clip())
    arrival, i = [], 0
    while i < len(packets):
        action = mutations[i % len(mutations)]
        if action == "drop":
            i += 1
        elif action == "dup":
            arrival += [packets[i], packets[i]]
            i += 1
        elif action == "swap" and i + 1 < len(packets):
            arrival += [packets[i + 1], packets[i]]
            i += 2
        else:
            arrival.append(packets[i])
            i += 1
    originals = {3000 * n: canonical(au) for n, au in enumerate(clip())}
    depacketizer = H264Depacketizer()
    waiting, previous = True, None
    for packet in arrival:
        if previous is not None and packet.sequence_number != previous + 1:
            waiting = True
        previous = packet.sequence_number
        for unit in depacketizer.push(packet):
            assert unit.data == originals[unit.timestamp]
            if waiting:
                assert unit.keyframe
                waiting = False


# --- malformed payloads --------------------------------------------------------------------------

def rtp(payload: bytes, seq: int = 0, ts: int = 0, marker: bool = True) -> RtpPacket:
    return RtpPacket(payload_type=96, marker=marker, sequence_number=seq, timestamp=ts, payload=payload)


@pytest.mark.parametrize("payload", [
    b"",                                    # empty
    b"\x85\x88",                            # forbidden_zero_bit set on a single NAL unit
    b"\xfc\x85\x88",                        # forbidden_zero_bit set on a FU-A indicator
    b"\x7c",                                # FU-A without its FU header
    b"\x78",                                # STAP-A without any NAL unit
    b"\x78\x00",                            # STAP-A size field cut short
    b"\x78\x00\x10\x67",                    # STAP-A size past the end
    b"\x78\x00\x00",                        # STAP-A zero size
    b"\x78\x00\x01\x68\x00",                # STAP-A size field cut short after one NAL unit
    b"\x78\x00\x01\xe8",                    # STAP-A inner forbidden_zero_bit
], ids=lambda p: p.hex() or "empty")
def test_malformed_payload_is_counted_not_raised(payload):
    """Each malformed payload only bumps bad_packets; nothing is emitted."""
    depacketizer = H264Depacketizer()
    assert depacketizer.push(rtp(payload)) == []
    assert depacketizer.bad_packets == 1 and depacketizer.frames == 0


@pytest.mark.parametrize("nal_type", [0, 25, 26, 27, 29, 30, 31])
def test_unsupported_packet_types_are_ignored(nal_type):
    """STAP-B, MTAP16/24, FU-B (interleaved mode) and undefined types are counted and ignored."""
    depacketizer = H264Depacketizer()
    assert depacketizer.push(rtp(bytes([0x60 | nal_type, 0, 1, 2]))) == []
    assert depacketizer.unsupported == 1 and depacketizer.bad_packets == 0


def test_bad_sps_is_counted_and_size_unknown():
    """An SPS that does not parse is kept as the last SPS but counted as bad."""
    depacketizer = H264Depacketizer()
    depacketizer.push(rtp(b"\x67\x42"))
    assert depacketizer.sps == b"\x67\x42" and depacketizer.bad_packets == 1
    assert depacketizer.width is None


SPS_320x240 = bytes.fromhex("6742c00dda0507e840000003004000000f23c50aa8")
PPS = bytes.fromhex("68ce0fc8")


def idr_packets(seq=0, ts=0):
    """A fake IDR access unit: SPS+PPS in a STAP-A, then a 3074-byte IDR slice in three FU-As."""
    data = START + SPS_320x240 + START + PPS + START + b"\x65\x88" + bytes(range(256)) * 12
    return packetize(data, ts, seq), data


def test_fu_a_continuation_without_start_is_a_loss():
    """Fragments after a lost start are dropped and a keyframe is wanted."""
    packets, data = idr_packets()
    depacketizer = H264Depacketizer()
    assert push_all(depacketizer, packets[1:]) == []
    assert depacketizer.dropped_frames == 1 and depacketizer.needs_keyframe
    units = push_all(depacketizer, idr_packets(seq=len(packets), ts=3000)[0])
    assert [u.data for u in units] == [data]


def test_access_unit_ending_inside_a_fragment_is_dropped():
    """A marker on a FU-A fragment without the end bit leaves the NAL unit incomplete."""
    packets, _ = idr_packets()
    packets[1].marker = True
    depacketizer = H264Depacketizer()
    assert push_all(depacketizer, packets[:2]) == []
    assert depacketizer.dropped_frames == 1


def test_loss_just_before_an_idr_that_starts_with_its_sps_spares_it():
    """A gap at a timestamp change breaks the new unit unless its first NAL unit is an SPS."""
    a, _ = idr_packets(seq=0, ts=0)
    b, data_b = idr_packets(seq=len(a) + 5, ts=3000)
    depacketizer = H264Depacketizer()
    assert [u.data for u in push_all(depacketizer, a[:-1] + b)] == [data_b]
    assert depacketizer.dropped_frames == 1 and not depacketizer.needs_keyframe
    c, _ = idr_packets(seq=len(a) + len(b) + 10, ts=6000)
    assert push_all(depacketizer, c[1:]) == []  # the STAP-A with SPS+PPS is what was lost
    assert depacketizer.needs_keyframe


def test_first_unit_of_a_stream_must_start_with_its_sps():
    """Joining on an IDR whose SPS/PPS packet was missed does not emit an undecodable unit."""
    a, _ = idr_packets(seq=0, ts=0)
    depacketizer = H264Depacketizer()
    assert push_all(depacketizer, a[1:]) == []
    assert depacketizer.needs_keyframe and depacketizer.dropped_frames == 1


def test_oversized_nal_is_dropped_like_a_loss():
    """A NAL unit over max_nal_size is dropped, counted, and the stream waits for an IDR."""
    packets, data = idr_packets()
    depacketizer = H264Depacketizer(max_nal_size=2000)
    assert push_all(depacketizer, packets) == []
    assert depacketizer.oversized == 1 and depacketizer.needs_keyframe
    single = H264Depacketizer(max_nal_size=10)
    assert single.push(rtp(b"\x65" + bytes(20))) == [] and single.oversized == 1
    roomy = H264Depacketizer(max_nal_size=4000)
    assert [u.data for u in push_all(roomy, packets)] == [data]


def test_oversized_access_unit_is_dropped_like_a_loss():
    """An access unit over max_au_size is dropped and counted."""
    depacketizer = H264Depacketizer(max_au_size=100)
    depacketizer.push(rtp(SPS_320x240, seq=0, marker=False))
    for seq in range(1, 4):
        depacketizer.push(rtp(b"\x65\x88" + bytes(40), seq=seq, marker=seq == 3))
    assert depacketizer.oversized == 1 and depacketizer.frames == 0
    assert depacketizer.dropped_frames == 1


def test_padding_only_packet_does_not_break_the_stream():
    """An empty (padding-only) packet between access units is counted, not taken as a loss."""
    a, data_a = idr_packets(seq=0, ts=0)
    probe = rtp(b"", seq=len(a), ts=0, marker=False)
    b, data_b = idr_packets(seq=len(a) + 1, ts=3000)
    depacketizer = H264Depacketizer()
    units = push_all(depacketizer, a + [probe] + b)
    assert [u.data for u in units] == [data_a, data_b]
    assert depacketizer.bad_packets == 1 and depacketizer.dropped_frames == 0


def test_gap_behind_a_padding_packet_is_still_a_loss():
    """A sequence gap just before an empty packet still breaks the next access unit."""
    a, _ = idr_packets(seq=0, ts=0)
    depacketizer = H264Depacketizer()
    assert len(push_all(depacketizer, a)) == 1 and not depacketizer.needs_keyframe
    probe = rtp(b"", seq=len(a) + 1, marker=False)
    p_frame = rtp(b"\x41\x9a" + bytes(30), seq=len(a) + 2, ts=3000)
    assert push_all(depacketizer, [probe, p_frame]) == []
    assert depacketizer.needs_keyframe and depacketizer.dropped_frames == 1


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.binary(max_size=12), st.booleans(), st.integers(0, 3),
                          st.integers(0, 2)), max_size=30))
def test_arbitrary_payloads_never_raise(items):
    """Random payloads, markers, timestamps and sequence steps are only ever counted."""
    depacketizer = H264Depacketizer(max_nal_size=20, max_au_size=40)
    seq = 0
    for payload, marker, ts, step in items:
        seq += step
        for unit in depacketizer.push(rtp(payload, seq=seq & 0xFFFF, ts=ts, marker=marker)):
            assert unit.data.startswith(START) and len(unit.nal_types) >= 1
    assert depacketizer.packets == len(items)


# --- SPS -----------------------------------------------------------------------------------------

def sps_of(au: bytes) -> bytes:
    return next(n for n in split_annexb(au) if n[0] & 0x1F == 7)


@pytest.mark.parametrize("width, height, pix_fmt, preset, params, profile_idc", [
    (320, 240, "yuv420p", "ultrafast", None, 66),
    (1280, 720, "yuv420p", "veryfast", None, 100),
    (1920, 1080, "yuv420p", "veryfast", None, 100),     # coded 1088, cropped by 4 chroma rows
    (1920, 1080, "yuv422p", "ultrafast", None, 122),    # 4:2:2 crop units
    (1920, 1080, "yuv444p", "ultrafast", None, 244),    # 4:4:4: chroma_format_idc 3, crop unit 1
    (640, 480, "yuv420p", "veryfast", "interlaced=1", 100),  # frame_mbs_only_flag 0
    (176, 144, "yuv420p", "ultrafast", None, 66),
])
def test_parse_sps_from_libx264(width, height, pix_fmt, preset, params, profile_idc):
    """The SPS libx264 writes gives back the encoded size, profile and level."""
    sps = sps_of(encode(width, height, 1, pix_fmt=pix_fmt, preset=preset, params=params)[0])
    info = parse_sps(sps)
    assert (info.width, info.height, info.profile_idc) == (width, height, profile_idc)
    assert info.level_idc == sps[3]


class BitWriter:
    def __init__(self):
        self.bits = ""

    def u(self, n, value):
        self.bits += format(value, f"0{n}b") if n else ""

    def ue(self, value):
        code = format(value + 1, "b")
        self.bits += "0" * (len(code) - 1) + code

    def se(self, value):
        self.ue(2 * value - 1 if value > 0 else -2 * value)

    def nal(self) -> bytes:
        bits = self.bits + "1"
        bits += "0" * (-len(bits) % 8)
        rbsp = int(bits, 2).to_bytes(len(bits) // 8, "big")
        out = bytearray(b"\x67")
        zeros = 0
        for byte in rbsp:  # §7.4.1 emulation prevention
            if zeros >= 2 and byte <= 3:
                out.append(3)
                zeros = 0
            out.append(byte)
            zeros = zeros + 1 if byte == 0 else 0
        return bytes(out)


def handmade_sps(*, profile=100, chroma=1, separate=0, scaling=(), poc_type=0, frame_mbs_only=1,
                 width_mbs=120, height_units=68, crop=None) -> bytes:
    w = BitWriter()
    w.u(8, profile), w.u(8, 0), w.u(8, 40), w.ue(0)
    if profile in (100, 122, 244):
        w.ue(chroma)
        if chroma == 3:
            w.u(1, separate)
        w.ue(0), w.ue(0), w.u(1, 0)
        w.u(1, 1 if scaling else 0)
        if scaling:
            for i in range(12 if chroma == 3 else 8):
                present = i in scaling
                w.u(1, int(present))
                if present:
                    for _ in range(16 if i < 6 else 64):
                        w.se(-3)  # a sloping matrix: every delta is read
    w.ue(0), w.ue(poc_type)
    if poc_type == 0:
        w.ue(2)
    elif poc_type == 1:
        w.u(1, 0), w.se(-2), w.se(1), w.ue(3), w.se(1), w.se(-1), w.se(0)
    w.ue(4), w.u(1, 0), w.ue(width_mbs - 1), w.ue(height_units - 1), w.u(1, frame_mbs_only)
    if not frame_mbs_only:
        w.u(1, 1)
    w.u(1, 1)
    w.u(1, 1 if crop else 0)
    if crop:
        for value in crop:
            w.ue(value)
    w.u(1, 0)  # vui_parameters_present_flag
    return w.nal()


@pytest.mark.parametrize("kwargs, size", [
    (dict(crop=(0, 0, 0, 4)), (1920, 1080)),
    (dict(scaling=(0, 3, 6, 7)), (1920, 1088)),
    (dict(chroma=3, scaling=(1, 8, 11), crop=(0, 0, 0, 8)), (1920, 1080)),
    (dict(chroma=3, separate=1, crop=(2, 2, 0, 8)), (1916, 1080)),
    (dict(chroma=0, crop=(1, 1, 1, 1)), (1918, 1086)),
    (dict(chroma=2, crop=(1, 0, 0, 4)), (1918, 1084)),
    (dict(poc_type=1, frame_mbs_only=0, height_units=34, crop=(0, 0, 0, 2)), (1920, 1080)),
    (dict(poc_type=2, profile=66, width_mbs=80, height_units=45), (1280, 720)),
])
def test_parse_sps_syntax_paths(kwargs, size):
    """Scaling lists, every chroma format, POC types 1 and 2 and field coding crop correctly."""
    assert parse_sps(handmade_sps(**kwargs))[2:] == size


def test_parse_sps_removes_emulation_prevention():
    """00 00 03 in the NAL unit is not part of the RBSP (§7.4.1)."""
    sps = sps_of(clip()[0])
    assert b"\x00\x00\x03" in sps
    assert parse_sps(sps)[2:] == (320, 240)


def test_parse_sps_truncated_raises_value_error():
    """Any prefix of an SPS either raises ValueError or, once it holds the crop fields, parses."""
    for sps in (sps_of(clip()[0]), handmade_sps(chroma=3, scaling=(1, 8, 11), crop=(0, 0, 0, 8))):
        full = parse_sps(sps)
        for length in range(len(sps)):
            try:
                assert parse_sps(sps[:length]) == full
            except ValueError:
                pass
        with pytest.raises(ValueError, match="^SPS is truncated$"):
            parse_sps(sps[:5])


@pytest.mark.parametrize("nal, message", [
    (b"", "not an SPS NAL unit"),
    (b"\x68\x42\x00\x1e", "not an SPS NAL unit"),
    (b"\x67\x42\x00\x1e\x00\x00\x00\x00\x01", "SPS has an exp-Golomb code longer than 32 bits"),
])
def test_parse_sps_errors(nal, message):
    """Non-SPS input and absurd exp-Golomb codes are refused with a message."""
    with pytest.raises(ValueError, match=f"^{message}$"):
        parse_sps(nal)


@given(st.binary(max_size=40))
def test_parse_sps_random_bytes_raise_only_value_error(data):
    """Arbitrary bytes after an SPS header either parse or raise ValueError."""
    try:
        parse_sps(b"\x67" + data)
    except ValueError:
        pass
