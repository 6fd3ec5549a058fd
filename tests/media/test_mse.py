"""Media for the WebSDK's MSE player: the tag framing its demuxer reads, and a synthetic
stream turned into tags that hold H.264 passed through and AAC, keyframes marked the way the
demuxer finds them, audio and video on one clock."""
import pytest

from synthetic import FakeClock, ThreadCalls, ffprobe, frames, publish
from sipgw.media import flv
from sipgw.media.mse import TAG_AUDIO, TAG_VIDEO, MseJob, parse_tags, tag
from sipgw.streams.stream import Stream


def test_a_tag_is_type_timestamp_length_then_body():
    """9-byte header as ``feedDemuxer``/``onData`` read it: type byte, int32 ms, int32 size."""
    assert tag(TAG_VIDEO, 0x01020304, b"abc") == b"\x09\x01\x02\x03\x04\x00\x00\x00\x03abc"
    assert parse_tags(tag(8, 5, b"x") + tag(9, 6, b"")) == [(8, 5, b"x"), (9, 6, b"")]
    with pytest.raises(ValueError, match="tag type"):
        tag(18, 0, b"")
    with pytest.raises(ValueError, match="truncated tag body"):
        parse_tags(tag(8, 5, b"xyz")[:-1])
    with pytest.raises(ValueError, match="truncated tag header"):
        parse_tags(b"\x08\x00")


def _stream(**kw):
    stream = Stream("s1", **kw)
    stream.audio_codec, stream.video_codec, stream.width, stream.height = "PCMU", "H264", 320, 240
    return stream


def _run(timed, **kw):
    """The MSE job of a synthetic stream: every (chunk, keyframe) it delivered, in order."""
    calls, stream, clock = ThreadCalls(), _stream(**kw), FakeClock()
    delivered = []
    job = MseJob(calls, stream, lambda chunk, key: delivered.append((chunk, key)),
                 queue_frames=5000)
    job.clock = clock
    job.start()
    publish(stream, timed, clock, calls=calls)
    stream.end()
    calls.run_until(lambda: job.finished, what="the MSE job to end")
    return job, delivered


def _to_flv(tags) -> bytes:
    """The tags as an FLV file (audio bodies get FLV's AAC sound-format byte back)."""
    out = flv.file_header(True, True)
    for kind, ms, body in tags:
        out += flv.file_tag(kind, ms, bytes([0xAF]) + body if kind == TAG_AUDIO else body)
    return out


def test_a_stream_becomes_tags_of_h264_and_aac_that_ffprobe_reads(tmp_path):
    """4 s of H.264 (a keyframe a second) and PCMU: the first chunk is a keyframe; each
    keyframe chunk starts with an AVC sequence header (the demuxer's keyframe mark) and, once
    audio flows, carries the AudioSpecificConfig; the tags make an FLV ffprobe reads as
    h264 320x240 + aac of about 4 s; audio starts within 100 ms of video."""
    job, delivered = _run(frames(4.0))
    assert job.state == "STOPPED", job.info
    assert delivered[0][1] is True
    tags = []
    for chunk, keyframe in delivered:
        these = parse_tags(chunk)
        if keyframe:
            assert (these[0][0], these[0][2][:2]) == (TAG_VIDEO, b"\x17\x00")
            assert these[-1][2][:2] == b"\x17\x01"
        tags += these
    keyframes = [t for t in tags if t[0] == TAG_VIDEO and t[2][:2] == b"\x17\x01"]
    assert len(keyframes) == 4
    configs = [t for t in tags if t[0] == TAG_AUDIO and t[2][0] == 0]
    assert configs and len(configs) >= 3  # with the first audio and with later keyframes
    video_ms = [ms for kind, ms, body in tags if kind == TAG_VIDEO and body[1] == 1]
    audio_ms = [ms for kind, ms, body in tags if kind == TAG_AUDIO and body[0] == 1]
    assert video_ms == sorted(video_ms) and audio_ms == sorted(audio_ms)
    assert abs(audio_ms[0] - video_ms[0]) <= 100
    assert abs(audio_ms[-1] - video_ms[-1]) <= 150
    path = tmp_path / "mse.flv"
    path.write_bytes(_to_flv(tags))
    info = ffprobe(str(path))
    streams = {s["codec_type"]: s for s in info["streams"]}
    assert (streams["video"]["codec_name"], streams["video"]["width"],
            streams["video"]["height"]) == ("h264", 320, 240)
    assert streams["audio"]["codec_name"] == "aac"
    assert float(info["format"]["duration"]) == pytest.approx(4.0, abs=0.3)


def test_an_audio_only_stream_gives_aac_tags_only():
    """No video: tags of AAC from the first audio frame, the config first."""
    job, delivered = _run(frames(1.0, video=False), has_video=False)
    tags = [t for chunk, _ in delivered for t in parse_tags(chunk)]
    assert {kind for kind, _, _ in tags} == {TAG_AUDIO}
    assert tags[0][2][0] == 0 and len(tags) > 15  # 1 s of 16 kHz AAC: ~16 frames of 1024
