"""Audio and video stay in step in recordings and pushes: a flash in the picture and a
beep in the sound, sent at the same moment (with audio starting late, on its own random
RTP clock, arriving with jitter), come out of the MP4 and the FLV within 100 ms of each
other (issue 13: A/V sync within 100 ms)."""
import math
from fractions import Fraction

import av
import numpy
import pytest

from fake_rtmp import FakeRtmpServer
from synthetic import VIDEO_RATE, FakeClock, ThreadCalls, _ulaw, publish
from sipgw.media.push import RtmpPush
from sipgw.media.recorder import Recording
from sipgw.media.rtmp import target
from sipgw.streams.stream import MediaFrame, Stream

FPS, SECONDS, EVENT = 25, 5.0, 3.0  # the flash and the beep at 3.0 s


def _flash_video():
    """H.264 access units: dark pictures, one white picture at EVENT, a keyframe a second."""
    encoder = av.CodecContext.create("libx264", "w")
    encoder.width, encoder.height, encoder.pix_fmt = 160, 120, "yuv420p"
    encoder.time_base, encoder.framerate = Fraction(1, FPS), FPS
    encoder.options = {"preset": "ultrafast", "tune": "zerolatency", "profile": "baseline",
                       "x264-params": f"repeat-headers=1:keyint={FPS}:min-keyint={FPS}:scenecut=0"}
    units = []
    for i in range(int(SECONDS * FPS)):
        level = 235 if i == int(EVENT * FPS) else 20
        image = numpy.full((120, 160, 3), level, dtype=numpy.uint8)
        frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p")
        frame.pts = i
        units += [(bytes(p), bool(p.is_keyframe)) for p in encoder.encode(frame)]
    units += [(bytes(p), bool(p.is_keyframe)) for p in encoder.encode(None)]
    return units


def _timed_frames():
    """(arrival seconds, frame): video from 0, audio from 0.5 s (its own random RTP origin,
    10 ms of arrival jitter); a 1 kHz beep from EVENT to EVENT + 0.2 s, silence otherwise."""
    out = []
    for i, (data, key) in enumerate(_flash_video()):
        out.append((i / FPS, MediaFrame("video", "H264", VIDEO_RATE,
                                        (987654 + i * VIDEO_RATE // FPS) % (1 << 32), data, key)))
    rng = numpy.random.default_rng(7)
    silence = bytes([_ulaw(0)]) * 160
    for i in range(25, int(SECONDS * 50)):  # 20 ms frames from 0.5 s
        start = i * 0.02
        if EVENT <= start < EVENT + 0.2:
            payload = bytes(_ulaw(int(12000 * math.sin(2 * math.pi * 1000 * (start + k / 8000))))
                            for k in range(160))
        else:
            payload = silence
        arrival = start + 0.005 + float(rng.uniform(0, 0.010))
        out.append((arrival, MediaFrame("audio", "PCMU", 8000,
                                        (4_100_000_000 + i * 160) % (1 << 32), payload)))
    out.sort(key=lambda pair: pair[0])
    return out


def _event_times(path: str) -> tuple[float, float]:
    """(time of the white picture, time the beep starts) in the file, read with PyAV."""
    flash = beep = None
    with av.open(path) as container:
        for frame in container.decode(video=0):
            if flash is None and frame.to_ndarray(format="gray").mean() > 128:
                flash = float(frame.time)
    with av.open(path) as container:
        for frame in container.decode(audio=0):
            samples = frame.to_ndarray()[0]
            loud = numpy.flatnonzero(numpy.abs(samples) > 0.1)
            if beep is None and loud.size:
                beep = float(frame.time) + loud[0] / frame.sample_rate
    assert flash is not None and beep is not None, (flash, beep)
    return flash, beep


def _stream():
    stream = Stream("sync")
    stream.audio_codec, stream.video_codec, stream.width, stream.height = "PCMU", "H264", 160, 120
    return stream


def test_a_recording_keeps_audio_and_video_within_100_ms(tmp_path):
    """MP4: the beep starts within 100 ms of the flash."""
    calls, stream, clock = ThreadCalls(), _stream(), FakeClock()
    job = Recording(calls, stream, str(tmp_path), "{streamName}", queue_frames=5000)
    job.clock = clock
    job.start()
    publish(stream, _timed_frames(), clock, calls=calls)
    stream.end()
    calls.run_until(lambda: job.finished, what="the recording to end")
    flash, beep = _event_times(job.path)
    assert flash == pytest.approx(EVENT, abs=0.1)
    assert abs(beep - flash) <= 0.100, (flash, beep)


def test_a_push_keeps_audio_and_video_within_100_ms(tmp_path):
    """FLV over RTMP (as the server received it): the beep starts within 100 ms of the flash."""
    server, calls, stream, clock = FakeRtmpServer(), ThreadCalls(), _stream(), FakeClock()
    try:
        job = RtmpPush(calls, stream, target(server.url(), "sync"), rtmp_url=server.url(),
                       published_name="sync", queue_frames=5000)
        job.clock = clock
        job.start()
        calls.run_until(lambda: job.state == "PUBLISHING", what="publishing")
        publish(stream, _timed_frames(), clock, calls=calls)
        stream.end()
        calls.run_until(lambda: job.finished, what="the push to end")
        path = tmp_path / "pushed.flv"
        path.write_bytes(server.flv())
        flash, beep = _event_times(str(path))
        assert flash == pytest.approx(EVENT, abs=0.1)
        assert abs(beep - flash) <= 0.100, (flash, beep)
    finally:
        server.stop()
