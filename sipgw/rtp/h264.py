"""H.264 over RTP (RFC 6184): depacketize into Annex-B access units, and read the SPS.

Pure: no I/O, no Twisted. ``H264Depacketizer.push`` never raises on bad input: malformed
packets are counted and treated as a loss. ``parse_sps`` raises ``ValueError``.
"""
from __future__ import annotations

from typing import NamedTuple

from .packet import RtpPacket

__all__ = ["AccessUnit", "H264Depacketizer", "SpsInfo", "parse_sps"]

START_CODE = b"\x00\x00\x00\x01"
# RFC 6184 §5.2 payload structures (the NAL unit type field of the first payload byte).
STAP_A, STAP_B, MTAP16, MTAP24, FU_A, FU_B = 24, 25, 26, 27, 28, 29
NAL_IDR, NAL_SEI, NAL_SPS, NAL_PPS, NAL_AUD = 5, 6, 7, 8, 9


class AccessUnit:
    """One coded picture as Annex-B bytes (every NAL unit prefixed with 00 00 00 01)."""

    __slots__ = ("timestamp", "data", "keyframe", "nal_types")

    def __init__(self, timestamp: int, data: bytes, keyframe: bool, nal_types: tuple[int, ...]):
        self.timestamp = timestamp
        self.data = data
        self.keyframe = keyframe
        self.nal_types = nal_types

    def __repr__(self):
        return (f"AccessUnit(ts={self.timestamp}, {len(self.data)} bytes, "
                f"keyframe={self.keyframe}, nal_types={self.nal_types})")


class H264Depacketizer:
    """Rebuilds access units from one SSRC's RTP packets, given in sequence order (gaps allowed).

    Packetization modes 0 and 1 (RFC 6184 §6.2, §6.3): single NAL unit packets, STAP-A and FU-A.
    STAP-B, MTAP and FU-B (interleaved mode only) and the undefined types 0, 30, 31 are ignored
    and counted in ``unsupported`` (§5.2, §5.4).

    An access unit ends on the marker bit (§5.1) or when the timestamp changes. After a loss
    (sequence gap, FU-A without its start, a bad packet, a NAL or AU over its cap) the broken
    access unit and every following one is dropped until one with an IDR slice arrives;
    ``needs_keyframe`` is true meanwhile, and also from the start, so that the caller asks the
    sender for one (PLI/FIR). A loss just before a new timestamp (or the start of the stream)
    spares the new access unit only if its first NAL unit is an SPS or an access unit delimiter,
    i.e. nothing of it can be missing (H.264 §7.4.1.2.3 order).
    """

    def __init__(self, max_nal_size: int = 1_000_000, max_au_size: int = 4_000_000):
        self.max_nal_size = max_nal_size
        self.max_au_size = max_au_size
        self.packets = 0
        self.frames = 0
        self.keyframes = 0
        self.dropped_frames = 0
        self.bad_packets = 0
        self.unsupported = 0
        self.oversized = 0
        self.needs_keyframe = True
        self.sps: bytes | None = None
        self.pps: bytes | None = None
        self.width: int | None = None
        self.height: int | None = None
        self._last_seq: int | None = None
        self._gap = True  # the stream's start is a discontinuity too
        self._ts: int | None = None  # timestamp of the open access unit, None when closed
        # The open access unit, Annex-B, as the pieces joined once when it is complete
        # (start codes, NAL units, FU-A fragments: slices of the packets, not copies).
        self._parts: list = []
        self._size = 0  # bytes in _parts
        self._types: list[int] = []
        self._fu_start: int | None = None  # index in _parts of the FU-A being reassembled
        self._fu_size = 0  # its NAL unit's bytes so far
        self._broken = False
        self._touched = False  # the open access unit got some payload

    # -- intake ---------------------------------------------------------------------------------

    def push(self, packet: RtpPacket) -> list[AccessUnit]:
        return self.push_payload(packet.payload, packet.sequence_number, packet.timestamp,
                                 packet.marker)

    def push_payload(self, payload: bytes, seq: int, ts: int, marker: bool,
                     offset: int = 0) -> list[AccessUnit]:
        """``push`` from a packet's fields: the payload is ``payload[offset:]`` (the datagram
        and 12 from the RTP intake, so that an FU-A fragment is cut out of it in one copy)."""
        if (not self._gap and seq == (self._last_seq + 1) & 0xFFFF
                and (ts == self._ts or self._ts is None) and len(payload) > offset + 2
                and payload[offset] & 0x9F == FU_A):
            # Most packets: an FU-A fragment, next in sequence, of the open access unit or
            # starting the next one. What the general path below does for it, without its
            # gap and boundary checks.
            self.packets += 1
            self._last_seq = seq
            self._ts = ts
            self._touched = True
            self._fu_a(payload, offset)
            if marker:
                out: list[AccessUnit] = []
                self._finish(out)
                return out
            return []
        if offset:
            payload = payload[offset:]
        self.packets += 1
        gap = self._gap or (self._last_seq is not None and seq != (self._last_seq + 1) & 0xFFFF)
        self._last_seq = seq
        if not payload:  # e.g. a padding-only probe: carries nothing, loses nothing
            self.bad_packets += 1
            self._gap = gap  # a gap before it is handled with the next packet that has media
            return []
        self._gap = False
        out: list[AccessUnit] = []
        if ts != self._ts:
            if self._ts is not None:
                if gap:
                    self._broken = True
                self._finish(out)
            self._ts = ts
            if gap:
                self.needs_keyframe = True
                first = payload[0] & 0x1F
                if first == STAP_A and len(payload) > 3:
                    first = payload[3] & 0x1F
                self._broken = first != NAL_SPS and first != NAL_AUD
        elif gap:
            self._loss()
        self._touched = True

        header = payload[0]
        nal_type = header & 0x1F
        if header & 0x80:  # forbidden_zero_bit (§5.3)
            self._bad()
        elif nal_type == FU_A:
            self._fu_a(payload)
        elif 1 <= nal_type <= 23:
            if self._fu_start is not None:
                self._loss()  # the FU-A in progress never got its end fragment
            self._add_nal(payload)
        elif nal_type == STAP_A:
            self._stap_a(payload)
        else:
            self.unsupported += 1

        if marker:
            self._finish(out)
        return out

    def _fu_a(self, payload: bytes, offset: int = 0) -> None:
        """RFC 6184 §5.8: FU indicator, FU header (S, E, R, type), fragment; the FU indicator
        at ``payload[offset]``."""
        if len(payload) - offset < 2:
            self._bad()
            return
        fu_header = payload[offset + 1]
        parts = self._parts
        if fu_header & 0x80:  # start
            if self._fu_start is not None:
                self._loss()
                parts = self._parts
            self._fu_start = len(parts)
            parts.append(START_CODE)
            parts.append(bytes(((payload[offset] & 0xE0) | (fu_header & 0x1F),)))
            self._fu_size = 1
            self._size += 5
        elif self._fu_start is None:
            self._loss()  # a continuation without its start: the start was lost
            return
        fragment = payload[offset + 2:]
        parts.append(fragment)
        n = len(fragment)
        self._fu_size += n
        self._size += n
        if self._fu_size > self.max_nal_size or self._size > self.max_au_size:
            self.oversized += 1
            self._loss()
            return
        if fu_header & 0x40:  # end
            start = self._fu_start + 1
            self._fu_start = None
            nal_type = fu_header & 0x1F
            self._types.append(nal_type)
            if nal_type == NAL_SPS or nal_type == NAL_PPS:
                self._parameter_set(nal_type, b"".join(parts[start:]))

    def _stap_a(self, payload: bytes) -> None:
        """RFC 6184 §5.7.1: 16-bit size, NAL unit, repeated; all checked before any is used."""
        n = len(payload)
        pos = 1
        spans = []
        while pos < n:
            if pos + 2 > n:
                self._bad()
                return
            size = (payload[pos] << 8) | payload[pos + 1]
            pos += 2
            if size == 0 or pos + size > n or payload[pos] & 0x80:
                self._bad()
                return
            spans.append((pos, pos + size))
            pos += size
        if not spans:
            self._bad()
            return
        if self._fu_start is not None:
            self._loss()
        for start, end in spans:
            self._add_nal(payload[start:end])

    def _add_nal(self, nal) -> None:
        n = len(nal)
        if n > self.max_nal_size or self._size + 4 + n > self.max_au_size:
            self.oversized += 1
            self._loss()
            return
        nal_type = nal[0] & 0x1F
        if nal_type == NAL_SPS or nal_type == NAL_PPS:
            self._parameter_set(nal_type, bytes(nal))
        if not self._broken:
            self._parts.append(START_CODE)
            self._parts.append(nal)
            self._size += 4 + n
            self._types.append(nal_type)

    def _parameter_set(self, nal_type: int, nal: bytes) -> None:
        if nal_type == NAL_PPS:
            self.pps = nal
        elif nal != self.sps:
            self.sps = nal
            try:
                info = parse_sps(nal)
            except ValueError:
                self.bad_packets += 1
            else:
                self.width, self.height = info.width, info.height

    # -- losses and access unit boundaries ------------------------------------------------------

    def _bad(self) -> None:
        self.bad_packets += 1
        self._loss()

    def _loss(self) -> None:
        """The open access unit is broken; wait for an IDR."""
        self._broken = True
        self.needs_keyframe = True
        self._fu_start = None
        self._parts = []
        self._size = 0
        self._types = []

    def _finish(self, out: list[AccessUnit]) -> None:
        """Close the open access unit: emit it, or drop it if broken or no keyframe yet."""
        if self._fu_start is not None:
            self._loss()  # ended inside a fragmented NAL unit
        if self._broken or not self._types:
            if self._touched:
                self.dropped_frames += 1
        else:
            keyframe = NAL_IDR in self._types
            if keyframe or not self.needs_keyframe:
                self.needs_keyframe = False
                self.frames += 1
                if keyframe:
                    self.keyframes += 1
                out.append(AccessUnit(self._ts, b"".join(self._parts), keyframe,
                                      tuple(self._types)))
            else:
                self.dropped_frames += 1
        self._ts = None
        self._parts = []
        self._size = 0
        self._types = []
        self._broken = False
        self._touched = False


# --- SPS (H.264 §7.3.2.1.1) ---------------------------------------------------------------------

class SpsInfo(NamedTuple):
    profile_idc: int
    level_idc: int
    width: int
    height: int


# Profiles whose SPS carries chroma_format_idc, bit depths and scaling lists (§7.3.2.1.1).
_HIGH_PROFILES = frozenset({100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135})


class _Bits:
    """MSB-first bit reader over an RBSP; reading past the end raises ValueError."""

    __slots__ = ("value", "left")

    def __init__(self, data: bytes):
        self.value = int.from_bytes(data, "big")
        self.left = 8 * len(data)

    def u(self, n: int) -> int:
        if n > self.left:
            raise ValueError("SPS is truncated")
        self.left -= n
        return (self.value >> self.left) & ((1 << n) - 1)

    def ue(self) -> int:
        """Exp-Golomb ue(v) (§9.1)."""
        zeros = 0
        while not self.u(1):
            zeros += 1
            if zeros > 31:
                raise ValueError("SPS has an exp-Golomb code longer than 32 bits")
        return (1 << zeros) - 1 + self.u(zeros)

    def se(self) -> int:
        """Exp-Golomb se(v) (§9.1.1)."""
        k = self.ue()
        return (k + 1) // 2 if k & 1 else -(k // 2)


def _skip_scaling_list(bits: _Bits, size: int) -> None:
    """§7.3.2.1.1.1 scaling_list(): only the delta_scale reads matter here."""
    last = nxt = 8
    for _ in range(size):
        if nxt:
            nxt = (last + bits.se() + 256) % 256
        last = nxt or last


def parse_sps(nal: bytes) -> SpsInfo:
    """Profile, level and display size (after frame cropping) from an SPS NAL unit (with its
    one-byte NAL header, without a start code)."""
    if not nal or nal[0] & 0x1F != NAL_SPS:
        raise ValueError("not an SPS NAL unit")
    # §7.4.1: drop emulation_prevention_three_byte from every 00 00 03.
    bits = _Bits(bytes(nal[1:]).replace(b"\x00\x00\x03", b"\x00\x00"))
    profile_idc = bits.u(8)
    bits.u(8)  # constraint_set flags, reserved_zero_2bits
    level_idc = bits.u(8)
    bits.ue()  # seq_parameter_set_id
    chroma_format_idc = 1
    separate_colour_plane = 0
    if profile_idc in _HIGH_PROFILES:
        chroma_format_idc = bits.ue()
        if chroma_format_idc > 3:
            raise ValueError(f"SPS chroma_format_idc {chroma_format_idc} is invalid")
        if chroma_format_idc == 3:
            separate_colour_plane = bits.u(1)
        bits.ue()  # bit_depth_luma_minus8
        bits.ue()  # bit_depth_chroma_minus8
        bits.u(1)  # qpprime_y_zero_transform_bypass_flag
        if bits.u(1):  # seq_scaling_matrix_present_flag
            for i in range(8 if chroma_format_idc != 3 else 12):
                if bits.u(1):  # seq_scaling_list_present_flag[i]
                    _skip_scaling_list(bits, 16 if i < 6 else 64)
    bits.ue()  # log2_max_frame_num_minus4
    poc_type = bits.ue()
    if poc_type == 0:
        bits.ue()  # log2_max_pic_order_cnt_lsb_minus4
    elif poc_type == 1:
        bits.u(1)  # delta_pic_order_always_zero_flag
        bits.se()  # offset_for_non_ref_pic
        bits.se()  # offset_for_top_to_bottom_field
        cycle = bits.ue()
        if cycle > 255:
            raise ValueError(f"SPS num_ref_frames_in_pic_order_cnt_cycle {cycle} is invalid")
        for _ in range(cycle):
            bits.se()
    elif poc_type != 2:
        raise ValueError(f"SPS pic_order_cnt_type {poc_type} is invalid")
    bits.ue()  # max_num_ref_frames
    bits.u(1)  # gaps_in_frame_num_value_allowed_flag
    width_mbs = bits.ue() + 1
    height_map_units = bits.ue() + 1
    frame_mbs_only = bits.u(1)
    if not frame_mbs_only:
        bits.u(1)  # mb_adaptive_frame_field_flag
    bits.u(1)  # direct_8x8_inference_flag
    width = width_mbs * 16
    height = (2 - frame_mbs_only) * height_map_units * 16
    if bits.u(1):  # frame_cropping_flag; units from §7.4.2.1.1 (ChromaArrayType, Table 6-1)
        left, right, top, bottom = bits.ue(), bits.ue(), bits.ue(), bits.ue()
        chroma_array_type = 0 if separate_colour_plane else chroma_format_idc
        if chroma_array_type == 0:
            crop_x, crop_y = 1, 2 - frame_mbs_only
        else:
            sub_width = 1 if chroma_array_type == 3 else 2
            sub_height = 2 if chroma_array_type == 1 else 1
            crop_x, crop_y = sub_width, sub_height * (2 - frame_mbs_only)
        width -= crop_x * (left + right)
        height -= crop_y * (top + bottom)
        if width <= 0 or height <= 0:
            raise ValueError("SPS frame cropping leaves no picture")
    return SpsInfo(profile_idc, level_idc, width, height)
