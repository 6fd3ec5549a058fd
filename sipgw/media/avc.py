"""H.264 access units from Annex-B (RTP) to what FLV and MP4 carry (ISO/IEC 14496-15).

Pure: no I/O.  An access unit arrives as Annex-B (start codes, SPS/PPS in-band on
keyframes); FLV's AVC sequence header is the ``AVCDecoderConfigurationRecord`` (avcC,
§5.2.4.1) and its video tags hold 4-byte length-prefixed NAL units.
"""
from __future__ import annotations

NAL_IDR = 5
NAL_SPS = 7
NAL_PPS = 8
NAL_AUD = 9


def split_annexb(data: bytes) -> list[bytes]:
    """The NAL units of an Annex-B byte string (3- or 4-byte start codes), without start codes."""
    nals = []
    length = len(data)
    start = -1
    i = 0
    while i + 2 < length:
        if data[i] == 0 and data[i + 1] == 0 and data[i + 2] == 1:
            if start >= 0:
                end = i
                while end > start and data[end - 1] == 0:  # trailing zero of a 4-byte code
                    end -= 1
                if end > start:
                    nals.append(data[start:end])
            i += 3
            start = i
            continue
        i += 1
    if start >= 0 and start < length:
        nals.append(data[start:])
    elif start < 0 and data:
        raise ValueError("access unit has no Annex-B start code")
    return nals


def nal_type(nal: bytes) -> int:
    return nal[0] & 0x1F


def avcc_record(sps: bytes, pps: bytes) -> bytes:
    """AVCDecoderConfigurationRecord with one SPS and one PPS, 4-byte NAL lengths."""
    if len(sps) < 4:
        raise ValueError("SPS too short for an avcC record")
    return (bytes([1, sps[1], sps[2], sps[3], 0xFF, 0xE1]) + len(sps).to_bytes(2, "big") + sps
            + b"\x01" + len(pps).to_bytes(2, "big") + pps)


def length_prefixed(nals: list[bytes]) -> bytes:
    """NAL units with 4-byte big-endian lengths (AVCC), access unit delimiters left out."""
    return b"".join(len(n).to_bytes(4, "big") + n for n in nals if nal_type(n) != NAL_AUD)


class ParameterSets:
    """The latest SPS/PPS seen in-band; ``add`` reports whether they changed."""

    def __init__(self, sps: bytes | None = None, pps: bytes | None = None):
        self.sps = sps
        self.pps = pps

    @property
    def ready(self) -> bool:
        return bool(self.sps and self.pps)

    def add(self, nals: list[bytes]) -> bool:
        changed = False
        for nal in nals:
            kind = nal_type(nal)
            if kind == NAL_SPS and nal != self.sps:
                self.sps, changed = nal, True
            elif kind == NAL_PPS and nal != self.pps:
                self.pps, changed = nal, True
        return changed

    def record(self) -> bytes:
        if not self.ready:
            raise ValueError("no SPS/PPS seen yet")
        return avcc_record(self.sps, self.pps)

    def with_parameter_sets(self, nals: list[bytes]) -> list[bytes]:
        """``nals`` of a keyframe with SPS/PPS in front when it carries none."""
        kinds = {nal_type(n) for n in nals}
        if NAL_SPS in kinds and NAL_PPS in kinds or not self.ready:
            return nals
        return [self.sps, self.pps] + [n for n in nals if nal_type(n) not in (NAL_SPS, NAL_PPS)]
