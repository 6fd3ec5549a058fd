"""Annex-B access units to avcC and length-prefixed NAL units."""
import pytest

from sipgw.media.avc import ParameterSets, avcc_record, length_prefixed, split_annexb

SPS = bytes.fromhex("6742c00dda0507e840")
PPS = bytes.fromhex("68ce0fc8")
IDR = b"\x65\x88\x84"


def test_split_handles_three_and_four_byte_start_codes():
    """NAL units come out without start codes whichever start code length was used."""
    data = b"\x00\x00\x00\x01" + SPS + b"\x00\x00\x01" + PPS + b"\x00\x00\x00\x01" + IDR
    assert split_annexb(data) == [SPS, PPS, IDR]


def test_split_refuses_data_without_start_code():
    """A payload that is not Annex-B raises ValueError."""
    with pytest.raises(ValueError, match="no Annex-B start code"):
        split_annexb(b"\x65\x88\x84")


def test_avcc_record_layout():
    """avcC: version 1, profile/compat/level from the SPS, 4-byte lengths, one SPS, one PPS."""
    record = avcc_record(SPS, PPS)
    assert record[:6] == bytes([1, 0x42, 0xC0, 0x0D, 0xFF, 0xE1])
    assert record[6:8] == len(SPS).to_bytes(2, "big") and record[8:8 + len(SPS)] == SPS
    assert record[8 + len(SPS):] == b"\x01" + len(PPS).to_bytes(2, "big") + PPS


def test_length_prefixed_leaves_out_access_unit_delimiters():
    """AVCC payloads carry 4-byte lengths and no AUD."""
    assert length_prefixed([b"\x09\xf0", IDR]) == b"\x00\x00\x00\x03" + IDR


def test_parameter_sets_track_changes_and_complete_keyframes():
    """New SPS/PPS are reported as a change; a keyframe without them gets the last ones."""
    params = ParameterSets()
    assert not params.ready
    assert params.add([SPS, PPS, IDR]) is True
    assert params.add([SPS, PPS, IDR]) is False
    assert params.record() == avcc_record(SPS, PPS)
    assert params.with_parameter_sets([IDR]) == [SPS, PPS, IDR]
