"""A push of synthetic frames: FLV tags over RTMP, starting on a keyframe, reconnecting
when the server drops it, ending with its stream."""
import av
import numpy
import pytest

from fake_rtmp import FakeRtmpServer
from synthetic import ClockedCalls, FakeClock, ThreadCalls, ffprobe, frames, publish
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


def _decoded_audio(server) -> list:
    """The pushed AAC frames decoded with PyAV: one mono float array per FLV audio tag."""
    tags = server.media(flv.TAG_AUDIO)
    decoder = av.CodecContext.create("aac", "r")
    decoder.extradata = tags[0][2:]
    out = []
    for tag in tags[1:]:
        frames_ = decoder.decode(av.Packet(tag[2:]))
        out.append(numpy.concatenate([f.to_ndarray().reshape(-1) for f in frames_])
                   if frames_ else numpy.zeros(0))
    return out


def _pitch(samples, rate=16000) -> float:
    spectrum = numpy.abs(numpy.fft.rfft(samples))
    return numpy.argmax(spectrum) * rate / len(samples)


def _push_in_two_halves(job, stream, server, calls, between):
    """Publish 1.5 s, wait for the worker to send it, call ``between()``, publish 1.5 s
    more and end the stream; the number of audio tags sent before ``between``."""
    import time
    clock = FakeClock()
    job.clock = clock
    job.start()
    calls.run_until(lambda: job.state == "PUBLISHING", what="publishing")
    timed = frames(3.0, gop=25)
    publish(stream, [t for t in timed if t[0] < 1.5], clock, calls=calls)
    calls.run_until(lambda: not job.queue._items and len(server.media(flv.TAG_AUDIO)) > 15,
                    what="the first half")
    time.sleep(0.3)
    sent = len(server.media(flv.TAG_AUDIO))
    between()
    clock.now += 1.5
    publish(stream, [(at - 1.5, f) for at, f in timed if at >= 1.5], clock, calls=calls)
    stream.end()
    calls.run_until(lambda: job.finished, what="the push to end")
    return sent - 1  # the AAC sequence header is not a frame


def test_push_started_muted_sends_silent_aac_until_unmuted():
    """options.action mute: the AAC frames decode to silence; after unmute they carry the
    call's audio (its 440 Hz tone), as the SIP-as-RTMP pages' Mute checkbox expects."""
    server = FakeRtmpServer()
    calls = ThreadCalls()
    stream = _stream()
    try:
        job = _push(calls, stream, server)
        job.set_audio(muted=True)
        assert job.to_json()["muted"] is True
        muted = _push_in_two_halves(job, stream, server, calls, lambda: job.set_audio(muted=False))
        decoded = _decoded_audio(server)
        assert muted > 15 and len(decoded) > muted + 15
        assert all(numpy.abs(d).max(initial=0) < 1e-4 for d in decoded[:muted - 2])
        live = numpy.concatenate(decoded[muted + 3:])
        assert numpy.abs(live).max() > 0.1 and abs(_pitch(live) - 440) < 20
        assert job.to_json()["muted"] is False
    finally:
        server.stop()


def _tone_wav(path):
    """A 0.3 s 1000 Hz mono WAV at 8 kHz written at ``path``."""
    with av.open(str(path), "w") as out:
        audio = out.add_stream("pcm_s16le", rate=8000, layout="mono")
        tone = (numpy.sin(2 * numpy.pi * 1000 * numpy.arange(2400) / 8000) * 16000)
        frame = av.AudioFrame.from_ndarray(tone.astype("<i2").reshape(1, -1), format="s16",
                                           layout="mono")
        frame.sample_rate = 8000
        for packet in audio.encode(frame):
            out.mux(packet)
        for packet in audio.encode(None):
            out.mux(packet)
    return path


def test_a_sound_file_over_its_size_bound_is_refused_before_decoding(tmp_path):
    """SoundLoop refuses a file larger than ``max_bytes`` (ValueError, which the push turns
    into silence) without opening it; within the bound it decodes 0.3 s at the rate asked."""
    from sipgw.media.audio import SoundLoop
    path = _tone_wav(tmp_path / "sample.wav")
    with pytest.raises(ValueError, match="over"):
        SoundLoop(str(path), 16000, max_bytes=100)
    assert abs(len(SoundLoop(str(path), 16000).samples) - 4800) < 100


def test_push_sound_on_plays_the_file_looped_instead_of_the_call(tmp_path):
    """sound_on: a 0.3 s 1000 Hz sound file (decoded with PyAV on the push's worker) is
    played looped in place of the call's 440 Hz audio; sound_off brings the call back."""
    path = _tone_wav(tmp_path / "sample.wav")
    server = FakeRtmpServer()
    calls = ThreadCalls()
    stream = _stream()
    try:
        job = _push(calls, stream, server)
        job.set_audio(sound=(str(path), True))
        assert job.to_json()["soundEnabled"] is True
        played = _push_in_two_halves(job, stream, server, calls,
                                     lambda: job.set_audio(sound=None))
        decoded = _decoded_audio(server)
        sound = numpy.concatenate(decoded[2:played - 2])
        assert len(sound) > 16000 and abs(_pitch(sound) - 1000) < 20  # over 1 s: looped
        assert numpy.abs(sound[-4000:]).max() > 0.1  # still playing after the file's 0.3 s
        live = numpy.concatenate(decoded[played + 3:])
        assert abs(_pitch(live) - 440) < 20
    finally:
        server.stop()
