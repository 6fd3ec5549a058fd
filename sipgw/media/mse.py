"""Media for the WebSDK's MSE player (``media-source-media-provider.js``, WCS's
``msePacketizationVersion`` 2): a stream's frames as the tags its demuxer reads.

Each binary websocket message holds one or more tags: a type byte (9 video, 8 audio), the
timestamp in milliseconds (32-bit big-endian), the body's length (32-bit big-endian), then the
body.  A video body is an FLV AVC video tag body (``0x17``/``0x27``, AVC packet type,
composition time; NAL units with 4-byte lengths).  The demuxer takes an AVC sequence header as
the mark of a keyframe (it cuts fragments there), so one goes in front of every keyframe.  An
audio body is the AAC packet type (0: AudioSpecificConfig, 1: a raw frame) and its data, without
FLV's sound-format byte; the AudioSpecificConfig goes with the first audio and with every
keyframe, so a viewer that dropped to a keyframe still has it.

``MseJob`` is a ``MediaJob``: on its worker thread the frames go through the same ``Pipeline``
as pushes and recordings (H.264 passed through, audio to AAC); each tag group is handed to the
reactor thread with ``deliver(chunk, keyframe)``.
"""
from __future__ import annotations

import struct

from . import flv
from .avc import length_prefixed
from .pipeline import Pipeline
from .worker import MediaJob

TAG_AUDIO = flv.TAG_AUDIO
TAG_VIDEO = flv.TAG_VIDEO
HEADER_SIZE = 9


def tag(kind: int, timestamp_ms: int, body: bytes) -> bytes:
    """One tag as the WebSDK's MSE demuxer reads it (``onData``: readByte, readInt, readInt)."""
    if kind not in (TAG_AUDIO, TAG_VIDEO):
        raise ValueError(f"tag type must be {TAG_AUDIO} or {TAG_VIDEO}, not {kind}")
    return struct.pack(">BiI", kind, timestamp_ms & 0x7FFFFFFF, len(body)) + body


def parse_tags(data: bytes) -> list[tuple[int, int, bytes]]:
    """(type, timestamp ms, body) of every tag of one message; ValueError if truncated."""
    tags, pos = [], 0
    while pos < len(data):
        if len(data) - pos < HEADER_SIZE:
            raise ValueError("truncated tag header")
        kind, ms, size = struct.unpack_from(">BiI", data, pos)
        pos += HEADER_SIZE
        if len(data) - pos < size:
            raise ValueError("truncated tag body")
        tags.append((kind, ms, data[pos:pos + size]))
        pos += size
    return tags


def aac_config(audio_specific_config: bytes) -> bytes:
    return b"\x00" + audio_specific_config


def aac_frame(raw: bytes) -> bytes:
    return b"\x01" + raw


class MseJob(MediaJob):
    """One MSE viewer's frames to tags (worker thread), handed to ``deliver`` (reactor)."""

    kind = "mse"

    def __init__(self, reactor, stream, deliver, *, audio: bool = True, video: bool = True,
                 **kwargs):
        super().__init__(reactor, stream, **kwargs)
        self.deliver = deliver  # reactor thread: deliver(chunk: bytes, keyframe: bool)
        self.audio = audio and stream.has_audio
        self.video = video and stream.has_video
        self.sent = {"audio": 0, "video": 0}

    def work(self) -> tuple[str, str]:
        pipe = Pipeline(self.video, self.audio)
        audio_config = b""
        while True:
            item = self.next_frame()
            if item is not None and item[0].kind == "video" and not self.video:
                continue
            events = pipe.feed(*item) if item is not None else pipe.flush()
            for event in events:
                if event[0] == "video":
                    _, position, nals, keyframe, _changed = event
                    ms = round(position * 1000)
                    chunk = tag(TAG_VIDEO, ms, flv.avc_nalus(length_prefixed(nals), keyframe))
                    if keyframe:
                        chunk = (tag(TAG_VIDEO, ms, flv.avc_sequence_header(pipe.params.record()))
                                 + audio_config + chunk)
                    self.sent["video"] += 1
                    self.call(self.deliver, chunk, keyframe)
                else:
                    _, pts, raw = event
                    ms = max(0, round(pts * 1000 / pipe.aac.rate))
                    chunk = tag(TAG_AUDIO, ms, aac_frame(raw))
                    if not audio_config:
                        audio_config = tag(TAG_AUDIO, 0, aac_config(pipe.aac.extradata))
                        chunk = audio_config + chunk
                    self.sent["audio"] += 1
                    self.call(self.deliver, chunk, False)
            if item is None:
                return "STOPPED", pipe.audio_problem
