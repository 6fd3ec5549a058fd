"""FLV tag bodies (the payloads RTMP carries as audio/video/data messages) and AMF0.

Pure: no I/O.  FLV 10.1 spec: video tags for AVC are ``frame type | codec 7``, an AVC
packet type (0 sequence header = avcC, 1 NAL units) and a composition time; audio tags
for AAC are ``0xAF`` then an AAC packet type (0 AudioSpecificConfig, 1 raw frame).
"""
from __future__ import annotations

import math
import struct

TAG_AUDIO = 8
TAG_VIDEO = 9
TAG_SCRIPT = 18

_AAC_HEADER = 0xAF  # AAC, 44 kHz flag (always for AAC), 16 bit, stereo flag (always for AAC)


# -- AMF0 --------------------------------------------------------------------
class Amf0Undefined:
    pass


def amf0(value) -> bytes:
    """One AMF0 value: None, bool, number, str, dict (object) or list of pairs (ECMA array)."""
    if value is None:
        return b"\x05"
    if isinstance(value, bool):
        return b"\x01" + (b"\x01" if value else b"\x00")
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError("AMF0 numbers must be finite")
        return b"\x00" + struct.pack(">d", float(value))
    if isinstance(value, str):
        raw = value.encode("utf-8")
        if len(raw) > 0xFFFF:
            return b"\x0c" + struct.pack(">I", len(raw)) + raw
        return b"\x02" + struct.pack(">H", len(raw)) + raw
    if isinstance(value, dict):
        return b"\x03" + _properties(value.items()) + b"\x00\x00\x09"
    if isinstance(value, list):  # ECMA array of (key, value) pairs, order kept
        return b"\x08" + struct.pack(">I", len(value)) + _properties(value) + b"\x00\x00\x09"
    raise TypeError(f"no AMF0 form for {type(value).__name__}")


def _properties(items) -> bytes:
    out = bytearray()
    for key, item in items:
        raw = key.encode("utf-8")
        out += struct.pack(">H", len(raw)) + raw + amf0(item)
    return bytes(out)


def amf0_decode(data: bytes) -> list:
    """Every AMF0 value in ``data`` (the types an RTMP server answers with)."""
    values = []
    pos = 0
    while pos < len(data):
        value, pos = _decode(data, pos)
        values.append(value)
    return values


MAX_DEPTH = 32  # objects in objects: deeper is an attack, not a server's answer


def _decode(data: bytes, pos: int, depth: int = 0):
    if depth > MAX_DEPTH:
        raise ValueError(f"AMF0 values nested deeper than {MAX_DEPTH}")
    try:
        marker = data[pos]
        pos += 1
        if marker == 0x00:
            return struct.unpack_from(">d", data, pos)[0], pos + 8
        if marker == 0x01:
            return data[pos] != 0, pos + 1
        if marker == 0x02:
            (n,) = struct.unpack_from(">H", data, pos)
            return data[pos + 2:pos + 2 + n].decode("utf-8", "replace"), pos + 2 + n
        if marker == 0x0C:
            (n,) = struct.unpack_from(">I", data, pos)
            return data[pos + 4:pos + 4 + n].decode("utf-8", "replace"), pos + 4 + n
        if marker in (0x03, 0x08):
            if marker == 0x08:
                pos += 4
            obj = {}
            while True:
                (n,) = struct.unpack_from(">H", data, pos)
                key = data[pos + 2:pos + 2 + n].decode("utf-8", "replace")
                pos += 2 + n
                if data[pos] == 0x09:
                    return obj, pos + 1
                obj[key], pos = _decode(data, pos, depth + 1)
        if marker in (0x05, 0x06):
            return None, pos
        if marker == 0x0A:  # strict array
            (n,) = struct.unpack_from(">I", data, pos)
            pos += 4
            items = []
            for _ in range(n):
                item, pos = _decode(data, pos, depth + 1)
                items.append(item)
            return items, pos
    except (IndexError, struct.error):
        raise ValueError("truncated AMF0 value") from None
    raise ValueError(f"unsupported AMF0 type 0x{marker:02x}")


# -- tag bodies ----------------------------------------------------------------
def avc_sequence_header(avcc: bytes) -> bytes:
    return b"\x17\x00\x00\x00\x00" + avcc


def avc_nalus(payload: bytes, keyframe: bool, composition_ms: int = 0) -> bytes:
    return (b"\x17" if keyframe else b"\x27") + b"\x01" + composition_ms.to_bytes(3, "big") + payload


def aac_sequence_header(audio_specific_config: bytes) -> bytes:
    return bytes([_AAC_HEADER, 0]) + audio_specific_config


def aac_frame(raw: bytes) -> bytes:
    return bytes([_AAC_HEADER, 1]) + raw


def metadata(*, width: int, height: int, has_video: bool, has_audio: bool,
             audio_rate: int = 0, audio_channels: int = 1, with_set_data_frame: bool) -> bytes:
    """``onMetaData`` (a file) or ``@setDataFrame onMetaData`` (RTMP publish)."""
    props: list = []
    if has_video:
        props += [("width", width), ("height", height), ("videocodecid", 7)]
    if has_audio:
        props += [("audiocodecid", 10), ("audiosamplerate", audio_rate),
                  ("stereo", audio_channels > 1)]
    props.append(("encoder", "sipgw"))
    head = amf0("@setDataFrame") if with_set_data_frame else b""
    return head + amf0("onMetaData") + amf0(props)


# -- FLV file -------------------------------------------------------------------
def file_header(has_audio: bool, has_video: bool) -> bytes:
    flags = (4 if has_audio else 0) | (1 if has_video else 0)
    return b"FLV\x01" + bytes([flags]) + b"\x00\x00\x00\x09" + b"\x00\x00\x00\x00"


def file_tag(kind: int, timestamp_ms: int, body: bytes) -> bytes:
    """One tag with its trailing PreviousTagSize."""
    ts = timestamp_ms & 0xFFFFFFFF
    head = (bytes([kind]) + len(body).to_bytes(3, "big") + (ts & 0xFFFFFF).to_bytes(3, "big")
            + bytes([ts >> 24]) + b"\x00\x00\x00")
    return head + body + (len(body) + 11).to_bytes(4, "big")
