"""HLS: the in-memory playlist and segment store (bounded, numbered, discontinuities), a
synthetic stream muxed to fMP4 segments that ffprobe reads, and the manager that starts a
job at a player's first request and stops it when no player asks any more."""
import io

import av

import pytest
from twisted.internet import defer, task

from synthetic import ClockedCalls, FakeClock, ThreadCalls, ffprobe, frames, publish
from sipgw.media.hls import HlsJob, HlsManager, SegmentStore
from sipgw.streams.registry import StreamRegistry
from sipgw.streams.stream import Stream


def _stream(name="s1", **kw):
    stream = Stream(name, **kw)
    stream.audio_codec, stream.video_codec, stream.width, stream.height = "PCMU", "H264", 320, 240
    return stream


def _tags(playlist: str, tag: str) -> list[str]:
    return [line.split(":", 1)[1] for line in playlist.splitlines() if line.startswith(tag + ":")]


def test_store_keeps_the_last_segments_and_moves_the_media_sequence():
    """Past ``count`` segments the oldest go and EXT-X-MEDIA-SEQUENCE is the first kept."""
    store = SegmentStore(2.0, 3, 1 << 20)
    store.restart(b"init")
    for n in range(5):
        store.add(2.0, b"x" * 10)
    playlist = store.playlist()
    assert [s.sequence for s in store.segments] == [2, 3, 4]
    assert _tags(playlist, "#EXT-X-MEDIA-SEQUENCE") == ["2"]
    assert _tags(playlist, "#EXT-X-TARGETDURATION") == ["2"]
    assert [line for line in playlist.splitlines() if line.startswith("seg-")] == [
        "seg-2.m4s", "seg-3.m4s", "seg-4.m4s"]
    assert _tags(playlist, "#EXT-X-MAP") == ['URI="init-1.mp4"']
    assert store.segment(1) is None and store.segment(4).data == b"x" * 10
    assert "#EXT-X-ENDLIST" not in playlist


def test_store_is_bounded_in_bytes_but_keeps_the_newest_segment():
    """Segments go, oldest first, while the store holds more than ``max_bytes``."""
    store = SegmentStore(2.0, 10, 250)
    store.restart(b"i" * 50)
    for n in range(4):
        store.add(2.0, b"x" * 90)
    assert [s.sequence for s in store.segments] == [2, 3]
    assert store.size <= 250
    store.add(2.0, b"y" * 1000)
    assert [s.sequence for s in store.segments] == [4]


def test_a_restarted_stream_follows_a_discontinuity_with_its_own_init_section():
    """A new muxing job (the stream restarted) adds EXT-X-DISCONTINUITY and a new EXT-X-MAP;
    once the old segments slide out, EXT-X-DISCONTINUITY-SEQUENCE counts it."""
    store = SegmentStore(2.0, 3, 1 << 20)
    store.restart(b"a")
    store.add(2.0, b"1")
    store.add(2.0, b"2")
    store.end()
    assert store.playlist().rstrip().endswith("#EXT-X-ENDLIST")
    store.restart(b"b")
    store.add(2.5, b"3")
    playlist = store.playlist()
    assert "#EXT-X-ENDLIST" not in playlist
    lines = playlist.splitlines()
    assert lines.index("#EXT-X-DISCONTINUITY") == lines.index("seg-2.m4s") - 3
    assert _tags(playlist, "#EXT-X-MAP") == ['URI="init-1.mp4"', 'URI="init-2.mp4"']
    assert _tags(playlist, "#EXT-X-TARGETDURATION") == ["3"]
    assert _tags(playlist, "#EXT-X-DISCONTINUITY-SEQUENCE") == ["0"]
    store.add(2.0, b"4")
    store.add(2.0, b"5")
    playlist = store.playlist()
    assert _tags(playlist, "#EXT-X-DISCONTINUITY-SEQUENCE") == ["1"]
    assert "#EXT-X-DISCONTINUITY\n" not in playlist
    assert sorted(store.inits) == [2]


def test_ready_fires_at_the_first_segment():
    """A player's first request waits for the first segment."""
    store = SegmentStore(2.0, 3, 1 << 20)
    ready = store.ready()
    assert not ready.called
    store.restart(b"i")
    store.add(2.0, b"s")
    assert ready.called


def _started_job(store: SegmentStore, stream=None):
    """An HLS job of ``stream`` (a video and PCMU one by default) into ``store``, running
    on its worker thread with a fake arrival clock: (calls, stream, job, clock)."""
    calls = ThreadCalls()
    stream = stream or _stream()
    job = HlsJob(calls, stream, store, queue_frames=5000)
    clock = FakeClock()
    job.clock = clock
    job.start()
    return calls, stream, job, clock


def _mux(tmp_path, timed, target=2.0, audio_only=False):
    store = SegmentStore(target, 100, 64 << 20)
    calls, stream, job, clock = _started_job(
        store, _stream(has_video=False) if audio_only else None)
    publish(stream, timed, clock, calls=calls)
    stream.end()
    calls.run_until(lambda: job.finished, what="the HLS job to end")
    store.end()
    for number, init in store.inits.items():
        (tmp_path / f"init-{number}.mp4").write_bytes(init)
    for segment in store.segments:
        (tmp_path / f"seg-{segment.sequence}.m4s").write_bytes(segment.data)
    (tmp_path / "index.m3u8").write_text(store.playlist())
    return job, store


def test_a_synthetic_stream_becomes_fmp4_segments_that_ffprobe_reads(tmp_path):
    """6 s of H.264 (a keyframe a second) and PCMU: segments of 2 s, each starting with a
    keyframe; ffprobe reads the playlist as h264 320x240 and aac, about 6 s long."""
    job, store = _mux(tmp_path, frames(6.0))
    assert job.state == "FINISHED", job.info
    assert [s.duration for s in store.segments] == pytest.approx([2, 2, 2], abs=0.11)
    for segment in store.segments:  # each one plays on its own from a keyframe
        with av.open(io.BytesIO(store.inits[1] + segment.data)) as container:
            first = next(container.demux(video=0))
            assert first.is_keyframe
    info = ffprobe(str(tmp_path / "index.m3u8"))
    streams = {s["codec_type"]: s for s in info["streams"]}
    assert (streams["video"]["codec_name"], streams["video"]["width"]) == ("h264", 320)
    assert streams["audio"]["codec_name"] == "aac"
    assert float(info["format"]["duration"]) == pytest.approx(6.0, abs=0.3)


def test_the_first_playlist_request_starts_muxing_and_idleness_stops_it():
    """A playlist request for a live stream starts its HLS job and answers once a segment
    exists; segments are served by name; ``idle`` seconds (task.Clock) without a request
    stop the job and forget the segments; an unknown stream gets None."""
    calls = ClockedCalls()
    registry = StreamRegistry()
    stream = registry.add(_stream())
    manager = HlsManager(calls, registry, target=1.0, count=4, max_bytes=1 << 20, idle=10)
    assert manager.part("s1", "seg-0.m4s") is None  # no player asked: nothing started
    asked = defer.ensureDeferred(manager.playlist("s1"))
    assert not asked.called
    live = manager.live["s1"]
    clock = FakeClock()
    live.job.clock = clock
    publish(stream, frames(3.0), clock, calls=calls)
    calls.run_until(lambda: asked.called, what="the first playlist")
    playlist = asked.result
    assert "#EXT-X-MAP:URI=\"init-1.mp4\"" in playlist and "seg-0.m4s" in playlist
    assert manager.part("s1", "init-1.mp4").startswith(b"\x00\x00\x00")
    assert manager.part("s1", "seg-0.m4s") == live.store.segment(0).data
    assert manager.part("s1", "seg-99.m4s") is None
    assert manager.part("s1", "../x") is None
    assert manager.part("s1", "seg-\u00b2.m4s") is None  # a digit to isdigit(), not to int()
    assert manager.part("s1", "seg-" + "9" * 5000 + ".m4s") is None
    calls.advance(9)
    manager.part("s1", "seg-0.m4s")  # a request: the job goes on
    calls.advance(9)
    assert manager.live["s1"] is live and not live.job._stopping
    job = live.job
    calls.advance(1.5)
    assert "s1" not in manager.live and job._stopping
    calls.run_until(lambda: job.finished, what="the job to stop")
    missing = defer.ensureDeferred(manager.playlist("nope"))
    assert missing.result is None


def test_a_stream_published_again_goes_on_after_a_discontinuity():
    """The stream ends (EXT-X-ENDLIST), one of the same name is published and a player asks
    again: a new job's segments follow EXT-X-DISCONTINUITY with their own init section."""
    calls = ClockedCalls()
    registry = StreamRegistry()
    manager = HlsManager(calls, registry, target=1.0, count=10, max_bytes=1 << 20, idle=10)
    for round_ in (1, 2):
        stream = registry.add(_stream())
        asked = defer.ensureDeferred(manager.playlist("s1"))
        job = manager.live["s1"].job
        clock = FakeClock()
        job.clock = clock
        publish(stream, frames(2.5), clock, calls=calls)
        stream.end()
        registry.remove(stream)
        calls.run_until(lambda: job.finished, what="the job to end")
        assert asked.called
    playlist = defer.ensureDeferred(manager.playlist("s1")).result
    lines = playlist.splitlines()
    assert lines.count("#EXT-X-DISCONTINUITY") == 1
    assert _tags(playlist, "#EXT-X-MAP") == ['URI="init-1.mp4"', 'URI="init-2.mp4"']
    assert lines.index('#EXT-X-MAP:URI="init-2.mp4"') == lines.index("#EXT-X-DISCONTINUITY") + 1
    assert lines[-1] == "#EXT-X-ENDLIST"


def test_a_segment_past_its_target_asks_for_a_keyframe():
    """With keyframes 3 s apart and a 1 s target, the job asks the source for a keyframe
    once per overlong segment."""
    store = SegmentStore(1.0, 10, 1 << 20)
    calls, stream, job, clock = _started_job(store)
    before = stream.keyframe_requests  # the subscription's own
    publish(stream, frames(6.0, gop=75), clock, calls=calls)
    stream.end()
    calls.run_until(lambda: job.finished, what="the HLS job to end")
    assert stream.keyframe_requests - before == 2


def test_an_audio_only_stream_becomes_aac_segments(tmp_path):
    """A stream without video: AAC segments of the target duration that ffprobe reads."""
    job, store = _mux(tmp_path, frames(5.0, video=False), audio_only=True)
    assert job.state == "FINISHED", job.info
    durations = [s.duration for s in store.segments]
    assert len(durations) >= 2
    assert durations[:-1] == pytest.approx([2.0] * (len(durations) - 1), abs=0.15)
    info = ffprobe(str(tmp_path / "index.m3u8"))
    assert [s["codec_name"] for s in info["streams"]] == ["aac"]


def test_a_segment_is_listed_once_its_last_fragment_is_out_not_a_gop_later():
    """With a keyframe every second and a 1 s target, frames up to 2.5 s give two segments
    (0-1 s, 1-2 s): the second is listed once the keyframe at 2 s ends it (and the AAC
    encoder's delay has passed), not at the keyframe at 3 s."""
    store = SegmentStore(1.0, 10, 1 << 20)
    calls, stream, job, clock = _started_job(store)
    publish(stream, [(at, f) for at, f in frames(4.0) if at < 2.5], clock, calls=calls)
    calls.run_until(lambda: len(store.segments) >= 2, timeout=10, what="two segments")
    assert [s.duration for s in store.segments] == pytest.approx([1.0, 1.0], abs=0.07)
    stream.end()
    calls.run_until(lambda: job.finished, what="the HLS job to end")
