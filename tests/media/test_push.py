"""A push of synthetic frames: FLV tags over RTMP, starting on a keyframe, reconnecting
when the server drops it, ending with its stream."""
import av
import pytest

from fake_rtmp import FakeRtmpServer
from synthetic import FakeClock, ThreadCalls, ffprobe, frames, publish
from sipgw.media import flv
from sipgw.media.push import PushError, PushManager, RtmpPush
from sipgw.media.rtmp import target
from sipgw.streams.registry import StreamRegistry
from sipgw.streams.stream import Stream


def _stream(name="s1"):
    stream = Stream(name)
    stream.audio_codec, stream.video_codec, stream.width, stream.height = "PCMU", "H264", 320, 240
    return stream


def _push(calls, stream, server, **kw):
    job = RtmpPush(calls, stream, target(server.url(), "rtmp_" + stream.name),
                   rtmp_url=server.url(), published_name="rtmp_" + stream.name,
                   queue_frames=5000, **kw)
    job.clock = kw.pop("clock", None) or job.clock
    return job


def test_push_sends_sequence_headers_then_keyframe_first_and_aac(tmp_path):
    """The server gets metadata, the avcC and AAC headers, video starting on a keyframe
    and AAC audio (as an FLV file, ffprobe and PyAV read h264 320x240 + aac and decode every
    picture); the push ends UNPUBLISHED with its stream."""
    server = FakeRtmpServer()
    calls = ThreadCalls()
    stream = _stream()
    clock = FakeClock()
    try:
        job = _push(calls, stream, server)
        job.clock = clock
        job.start()
        calls.run_until(lambda: job.state == "PUBLISHING", what="publishing")
        timed = frames(2.0, gop=25)
        publish(stream, timed[3:], clock, calls=calls)  # starts mid-GOP: first frames skipped
        stream.end()
        calls.run_until(lambda: job.finished, what="the push to end")
        assert job.state == "UNPUBLISHED"
        assert server.published == ["rtmp_s1"]
        video = server.media(flv.TAG_VIDEO)
        audio = server.media(flv.TAG_AUDIO)
        script = server.media(flv.TAG_SCRIPT)
        assert flv.amf0_decode(script[0])[:2] == ["@setDataFrame", "onMetaData"]
        assert video[0][:2] == b"\x17\x00" and video[0][5] == 1  # avcC version 1
        assert video[1][:2] == b"\x17\x01"  # the first picture is a keyframe
        assert all(v[:2] == b"\x27\x01" for v in video[2:] if v[0] != 0x17)
        assert audio[0][:2] == b"\xaf\x00" and all(a[:2] == b"\xaf\x01" for a in audio[1:])
        assert len(video) == 26 and len(audio) >= 14  # from the keyframe at 1 s: 1 s of media
        path = tmp_path / "pushed.flv"
        path.write_bytes(server.flv())
        streams = {s["codec_type"]: s for s in ffprobe(str(path))["streams"]}
        assert (streams["video"]["codec_name"], streams["video"]["width"]) == ("h264", 320)
        assert (streams["audio"]["codec_name"], streams["audio"]["sample_rate"]) == ("aac", "16000")
        with av.open(str(path)) as container:
            assert sum(1 for _ in container.decode(video=0)) == 25
    finally:
        server.stop()


def test_push_waiting_for_media_connects_on_the_first_frame():
    """With wait_for_media (SIP as RTMP) the push connects to the RTMP server only once its
    stream has a frame; a stream that ends first never connects and the push is UNPUBLISHED."""
    import time
    server = FakeRtmpServer()
    calls = ThreadCalls()
    try:
        quiet = _stream("quiet")
        idle = _push(calls, quiet, server, wait_for_media=True).start()
        stream = _stream()
        clock = FakeClock()
        job = _push(calls, stream, server, wait_for_media=True)
        job.clock = clock
        job.start()
        time.sleep(0.3)
        calls.run_pending()
        assert (server.sessions, job.state) == (0, "PENDING")
        quiet.end()
        calls.run_until(lambda: idle.finished, what="the idle push to end")
        assert (idle.state, server.sessions) == ("UNPUBLISHED", 0)
        publish(stream, frames(1.0, gop=25), clock, calls=calls)
        stream.end()
        calls.run_until(lambda: job.finished, what="the push to end")
        assert server.published == ["rtmp_s1"] and server.media(flv.TAG_VIDEO)
    finally:
        server.stop()


def test_push_reconnects_when_the_server_hangs_up():
    """A dropped connection makes the push RECONNECTING with the reason, then PUBLISHING
    again on a new connection that starts with sequence headers and a keyframe."""
    server = FakeRtmpServer()
    calls = ThreadCalls()
    asked = []
    stream = _stream()
    stream._on_keyframe_request = lambda: asked.append(1)
    try:
        job = _push(calls, stream, server, reconnect_min=0.05, reconnect_max=0.2)
        seen = []
        job.on_state = lambda state, info: seen.append((state, info))
        job.start()
        calls.run_until(lambda: job.state == "PUBLISHING", what="publishing")
        timed = frames(1.0)
        publish(stream, timed[:10], realtime=False, calls=calls)
        calls.run_until(lambda: len(server.media(flv.TAG_VIDEO)) >= 5, what="video")
        server.drop()
        # keep publishing (as the call does) until the push has a second session
        for _, frame in timed[10:] * 20:
            stream.publish(frame)
            calls.run_until(lambda: True)
            if server.sessions >= 2 and job.state == "PUBLISHING":
                break
        calls.run_until(lambda: server.sessions >= 2 and job.state == "PUBLISHING",
                        what="second session")
        states = [state for state, _ in seen]
        assert states[:3] == ["PUBLISHING", "RECONNECTING", "PUBLISHING"]
        assert "next try in" in seen[1][1]
        assert job.reconnects >= 1 and asked
        stream.publish(frames(1.0)[0][1])  # a keyframe for the new connection
        calls.run_until(lambda: server.media(flv.TAG_VIDEO)[-1][:2] == b"\x17\x01",
                        what="keyframe on the new connection")
        job.stop("Stopped by rest /terminate")
        calls.run_until(lambda: job.finished, what="the push to stop")
        assert job.state == "STOPPED" and job.info == "Stopped by rest /terminate"
    finally:
        server.stop()


def test_push_manager_refuses_duplicates_unknown_streams_and_bad_urls():
    """409 for the same stream to the same URL, 404 for an unknown stream, 400 for a bad URL;
    terminate removes the push."""
    server = FakeRtmpServer()
    calls = ThreadCalls()
    registry = StreamRegistry()
    stream = registry.add(_stream("call1"))
    manager = PushManager(calls, registry)
    try:
        push = manager.startup("call1", server.url())
        assert push.published_name == "rtmp_call1"
        with pytest.raises(PushError) as dup:
            manager.startup("call1", server.url())
        assert dup.value.code == 409
        with pytest.raises(PushError) as unknown:
            manager.startup("nope", server.url())
        assert unknown.value.code == 404
        with pytest.raises(PushError) as bad:
            manager.startup("call1", "http://example.com/live")
        assert bad.value.code == 400
        assert manager.find(stream_name="rtmp_call1") == [push]
        full = manager.startup("call1", server.url("live/custom"), full_url=True)
        assert full.published_name == "custom"
        manager.terminate(push.media_session_id)
        calls.run_until(lambda: push.finished, what="terminated")
        assert push.media_session_id not in manager.pushes
        stream.end()
        calls.run_until(lambda: not manager.pushes, what="the other push to end")
    finally:
        server.stop()


def test_close_aborts_a_push_stuck_in_its_handshake_at_the_deadline():
    """PushManager.close(timeout) has a hard total deadline: a push stuck in a trickled
    handshake (rtmp_timeout 30 s) has its socket shut down then and its worker ends."""
    from twisted.internet.task import Clock

    class ClockedCalls(ThreadCalls):
        """ThreadCalls with a task.Clock for callLater."""

        def __init__(self):
            super().__init__()
            clock = Clock()
            self.callLater, self.advance = clock.callLater, clock.advance

    server = FakeRtmpServer(trickle=0.2)
    calls = ClockedCalls()
    registry = StreamRegistry()
    stream = registry.add(_stream())
    manager = PushManager(calls, registry, timeout=30)
    try:
        push = manager.startup(stream.name, server.url())
        calls.run_until(lambda: push._publisher is not None and push._publisher.connected, what="connecting")
        closing = manager.close(timeout=2)
        calls.advance(1.9)
        assert not closing.called
        calls.advance(0.1)
        assert closing.result == (1, 1)
        calls.run_until(lambda: push.finished, timeout=3, what="the worker to end")
        assert push.state == "STOPPED"
    finally:
        server.stop()
