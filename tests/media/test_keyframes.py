"""Periodic keyframe requests (WCS periodic_fir_request) on a task.Clock: one every
interval while a push or a recording takes a stream, none otherwise."""
from twisted.internet.task import Clock

from fake_rtmp import FakeRtmpServer
from synthetic import ClockedCalls
from sipgw.media.keyframes import PeriodicKeyframes
from sipgw.media.push import PushManager
from sipgw.media.recorder import RecorderManager
from sipgw.streams.registry import StreamRegistry
from sipgw.streams.stream import Stream


def test_a_keyframe_is_requested_every_interval_while_a_push_or_recording_runs(tmp_path):
    """No request for a stream nobody pushes or records; one every 5 s while a push runs,
    still one (not two) when a recording joins it, and none once both have ended."""
    server = FakeRtmpServer()
    calls = ClockedCalls()
    registry = StreamRegistry()
    stream = registry.add(Stream("call1"))
    stream.video_codec = "H264"
    asked = []
    stream._on_keyframe_request = lambda: asked.append(calls.clock.seconds())
    keyframes = PeriodicKeyframes(calls, 5)
    pushes = PushManager(calls, registry, keyframes=keyframes)
    recorders = RecorderManager(calls, registry, str(tmp_path), "{streamName}",
                                keyframes=keyframes)
    try:
        calls.advance(20)
        assert asked == []
        push = pushes.startup("call1", server.url())
        for _ in range(3):
            calls.advance(5)
        assert asked == [20, 25, 30, 35]  # the push's own at its start, then every 5 s
        recording = recorders.start(stream)
        del asked[:]
        calls.advance(5)
        assert asked == [40]
        pushes.terminate(push.media_session_id)
        calls.run_until(lambda: push.finished, what="the push to end")
        calls.advance(5)
        assert asked == [40, 45]  # the recording still runs
        recorders.stop(recording.media_session_id)
        calls.run_until(lambda: recording.finished, what="the recording to end")
        calls.advance(30)
        assert asked == [40, 45]
    finally:
        server.stop()


def test_off_and_audio_only():
    """interval 0 (periodic_fir_request=false) asks nothing; an audio-only stream is never
    asked; an ended stream's timer stops."""
    clock = Clock()
    audio = Stream("a", has_video=False)
    asked = []
    audio._on_keyframe_request = lambda: asked.append("a")
    video = Stream("v")  # its requests land in ``asked`` too: "off" is checked, not assumed
    video._on_keyframe_request = lambda: asked.append("v")
    off = PeriodicKeyframes(clock, 0)
    off.hold(video)
    on = PeriodicKeyframes(clock, 5)
    on.hold(audio)
    clock.advance(20)
    assert asked == [] and clock.getDelayedCalls()  # the audio stream's timer runs
    audio.end()
    clock.advance(5)
    assert clock.getDelayedCalls() == []


def test_the_daemon_wires_the_setting_into_pushes_and_recordings(tmp_path):
    """make_media gives pushes and recordings one PeriodicKeyframes of
    periodic_fir_request_interval (ms), or of 0 with periodic_fir_request=false."""
    from sipgw.config import Config
    from sipgw.service import make_media
    on = make_media(Config(record_dir=str(tmp_path), periodic_fir_request_interval=2000),
                    Clock(), StreamRegistry())
    assert on.pushes.keyframes is on.recorders.keyframes and on.pushes.keyframes.interval == 2
    off = make_media(Config(record_dir=str(tmp_path), periodic_fir_request=False), Clock(),
                     StreamRegistry())
    assert off.pushes.keyframes.interval == 0
