"""Low-latency HLS (RFC 8216bis): parts in the store and the playlist, blocking playlist
reloads and hinted parts held in bounded number and time (task.Clock), and a synthetic
stream muxed to parts that start at keyframes and add up to their segments."""
import io

import av
import pytest
from twisted.internet import defer, task

from synthetic import ClockedCalls, ffprobe, frames, publish
from sipgw.media.hls import (Busy, HeldRequests, HlsManager, SegmentStore, TooFar, Unavailable,
                             fragment_tracks)
from sipgw.streams.registry import StreamRegistry
from test_hls import _started_job, _stream


def _store(count=10, max_bytes=1 << 20, target=2.0, part=0.5) -> SegmentStore:
    store = SegmentStore(target, count, max_bytes, part)
    store.restart(b"init")
    return store


def _segment(store: SegmentStore, parts=4, duration=0.5, data=b"p") -> None:
    """One segment of ``parts`` parts, the first independent."""
    for n in range(parts):
        store.add_part(duration, data * 10, n == 0)
    store.close_segment()


def _lines(playlist: str, prefix: str) -> list[str]:
    return [line for line in playlist.splitlines() if line.startswith(prefix)]


def test_the_playlist_lists_parts_near_the_live_edge_and_hints_the_next():
    """EXT-X-SERVER-CONTROL (blocking reloads, PART-HOLD-BACK of three parts), PART-INF, the
    parts of the segments within three target durations of the end and of the open segment
    (INDEPENDENT=YES on a keyframe's), and EXT-X-PRELOAD-HINT naming the next part."""
    store = _store()
    for _ in range(5):
        _segment(store)
    store.add_part(0.5, b"open", True)
    store.add_part(0.5, b"open2", False)
    playlist = store.playlist()
    assert _lines(playlist, "#EXT-X-SERVER-CONTROL") == [
        "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=1.500"]
    assert _lines(playlist, "#EXT-X-PART-INF") == ["#EXT-X-PART-INF:PART-TARGET=0.500"]
    parts = _lines(playlist, "#EXT-X-PART:")
    # 6 s back from the end: the open segment's 1 s, then segments 4, 3 and the half of 2
    assert [p.split('URI="part-')[1].split(".")[0] for p in parts] == [
        str(n) for n in range(8, 22)]
    assert parts[0] == '#EXT-X-PART:DURATION=0.500,URI="part-8.m4s",INDEPENDENT=YES'
    assert parts[-1] == '#EXT-X-PART:DURATION=0.500,URI="part-21.m4s"'
    lines = playlist.splitlines()
    assert lines.index("seg-1.m4s") < lines.index(parts[0]) < lines.index("seg-2.m4s")
    assert lines[-1] == '#EXT-X-PRELOAD-HINT:TYPE=PART,URI="part-22.m4s"'
    store.end()
    ended = store.playlist().splitlines()
    assert ended[-1] == "#EXT-X-ENDLIST" and not _lines(store.playlist(), "#EXT-X-PRELOAD")
    assert ended[-2] == "seg-5.m4s"  # the open parts became the last segment


def test_parts_share_their_segments_bytes_and_go_with_them():
    """A complete segment is its parts' bytes; each part is served from them by number until
    the segment leaves the store; open parts count against max_bytes."""
    store = _store(count=2)
    store.add_part(0.5, b"a" * 10, True)
    store.add_part(0.5, b"b" * 10, False)
    assert store.part(1).data == b"b" * 10
    segment = store.close_segment()
    assert segment.data == b"a" * 10 + b"b" * 10
    assert [bytes(p.data) for p in segment.parts] == [b"a" * 10, b"b" * 10]
    assert bytes(store.part(0).data) == b"a" * 10 and store.part(2) is None
    _segment(store)
    _segment(store)
    assert store.part(0) is None and store.part(1) is None and store.part(2) is not None
    small = _store(count=10, max_bytes=200)
    _segment(small, data=b"x")  # 40 bytes, + 4 of init
    _segment(small, data=b"y")
    for _ in range(12):
        small.add_part(0.5, b"z" * 10, False)
    assert small.size <= 200 and [s.sequence for s in small.segments] == [1]


def test_a_restart_closes_the_open_parts_and_the_next_follow_a_discontinuity():
    """A new muxing job: the open parts become a segment of the old init section; the new
    parts follow EXT-X-DISCONTINUITY and their own EXT-X-MAP."""
    store = _store()
    _segment(store)
    store.add_part(0.5, b"old", True)
    store.restart(b"init2")
    assert [s.sequence for s in store.segments] == [0, 1] and store.segments[1].init == 1
    store.add_part(0.5, b"new", True)
    lines = store.playlist().splitlines()
    hint = lines.index('#EXT-X-PRELOAD-HINT:TYPE=PART,URI="part-6.m4s"')
    assert lines[hint - 3:hint] == ["#EXT-X-DISCONTINUITY", '#EXT-X-MAP:URI="init-2.mp4"',
                                    '#EXT-X-PART:DURATION=0.500,URI="part-5.m4s",INDEPENDENT=YES']


def test_without_a_part_target_the_playlist_has_no_low_latency_tag():
    """hls_part_duration=0: whole segments, no EXT-X-PART, PART-INF, SERVER-CONTROL, hint."""
    store = _store(part=0.0)
    _segment(store)
    store.add_part(0.5, b"open", True)
    playlist = store.playlist()
    assert "PART" not in playlist and "SERVER-CONTROL" not in playlist
    assert playlist.splitlines()[-1] == "seg-0.m4s"


def test_parts_without_a_keyframe_are_bounded():
    """A source that never sends another keyframe: the open segment is closed past 3 target
    durations, so parts cannot grow past hls_max_bytes (they are trimmed as segments)."""
    store = _store(count=100, max_bytes=2000, target=1.0)
    for n in range(200):  # 100 s of 0.5 s parts, only the first independent
        store.add_part(0.5, b"x" * 100, n == 0)
    assert len(store.parts) < 6
    assert store.size <= 2000 + 100 * 6


def test_a_part_longer_than_the_target_raises_part_target():
    """PART-TARGET is never below a part listed (and PART-HOLD-BACK three times it)."""
    store = _store()
    store.add_part(0.512, b"a", True)
    assert _lines(store.playlist(), "#EXT-X-PART-INF") == ["#EXT-X-PART-INF:PART-TARGET=0.512"]
    assert "PART-HOLD-BACK=1.536" in store.playlist()


def test_has_answers_blocking_reloads_as_rfc_8216bis_says():
    """§6.2.5.2: _HLS_msn alone waits for that segment; with _HLS_part for that part; a part
    past a segment's final one is part 0 of the next; a segment no longer kept and an ended
    stream answer at once."""
    store = _store(count=2)
    _segment(store, parts=3)  # segment 0: parts 0-2
    store.add_part(0.5, b"o", True)  # segment 1, part 0 (open)
    assert store.has(0) and not store.has(1)
    assert store.has(0, 2) and store.has(1, 0) and not store.has(1, 1)
    assert store.has(0, 3)  # past segment 0's final part: (1, 0), listed
    fresh = _store()
    _segment(fresh, parts=3)
    assert not fresh.has(0, 3)  # part 0 of segment 1: not there yet
    fresh.add_part(0.5, b"o", True)
    assert fresh.has(0, 3) and fresh.has(0, 99) and not fresh.has(1, 1)
    for _ in range(3):
        _segment(store)
    assert store.segment(0) is None and store.has(0, 7)  # gone: answered with the playlist
    assert not store.has(9)
    store.end()
    assert store.has(9) and store.has(9, 9)


def test_check_ahead_refuses_what_is_too_far():
    """More than two segments past the last listed, or more parts past the last part than
    the Advance Part Limit (3 / PART-TARGET below 1 s: 6 at 0.5 s), is TooFar."""
    store = _store()
    _segment(store)  # last segment: 0
    store.add_part(0.5, b"o", True)  # (1, 0)
    store.check_ahead(2)
    with pytest.raises(TooFar, match="_HLS_msn=3 is more than two segments") as info:
        store.check_ahead(3)
    assert info.value.field == "_HLS_msn"
    store.check_ahead(1, 6)  # 6 parts past (1, 0)
    with pytest.raises(TooFar) as info:
        store.check_ahead(1, 7)
    assert info.value.field == "_HLS_part"
    store.check_ahead(2, 5)
    with pytest.raises(TooFar):
        store.check_ahead(2, 6)
    store.check_ahead(0, 1000)  # a complete segment: past its final part is the next's 0
    store.end()
    store.check_ahead(99, 99)  # ended: directives are ignored


def test_held_requests_fire_when_ready_expire_and_are_bounded():
    """A hold fires True once its condition holds after a change of its store, False at its
    timeout; at the limit a new one raises Busy; a cancelled one frees its place."""
    clock = task.Clock()
    held = HeldRequests(clock, limit=2)
    store = _store()
    assert held.hold(store, lambda: True, 5).result is True  # ready: never held
    first = held.hold(store, lambda: bool(store.segments), 5)
    second = held.hold(store, lambda: len(store.segments) > 1, 5)
    assert held.count == 2 and store.listeners == [held._changed]
    with pytest.raises(Busy):
        held.hold(store, lambda: False, 5)
    _segment(store)
    assert first.result is True and not second.called and held.count == 1
    clock.advance(5)
    assert second.result is False and held.count == 0 and store.listeners == []
    third = held.hold(store, lambda: False, 5)
    third.cancel()
    assert held.count == 0 and clock.getDelayedCalls() == []
    assert isinstance(third.result.value, defer.CancelledError)
    third.addErrback(lambda _: None)


class _Manager:
    """An HlsManager on a task.Clock with stream s1; its store is fed by the test (the job
    started by the first playlist request gets no frame)."""

    def __init__(self, **kw):
        self.calls = ClockedCalls()
        self.registry = StreamRegistry()
        self.stream = self.registry.add(_stream())
        kw = {"target": 2.0, "count": 6, "max_bytes": 1 << 20, "idle": 20, "part": 0.5, **kw}
        self.manager = HlsManager(self.calls, self.registry, **kw)

    def first_playlist(self) -> SegmentStore:
        asked = defer.ensureDeferred(self.manager.playlist("s1"))
        store = self.manager.live["s1"].store
        store.restart(b"init")
        _segment(store)
        assert asked.called
        return store

    def close(self):
        jobs = [live.job for live in self.manager.live.values()]
        self.manager.close()
        self.calls.run_until(lambda: all(job.finished for job in jobs), what="the jobs")


@pytest.fixture
def hls():
    made = _Manager()
    yield made
    made.close()


def test_a_blocking_reload_is_answered_when_its_part_comes(hls):
    """_HLS_msn=1&_HLS_part=1 waits until part 1 of segment 1 is listed, then gets the
    playlist that lists it; a request for what is there is answered at once."""
    store = hls.first_playlist()
    now = defer.ensureDeferred(hls.manager.playlist("s1", 0, 3))
    assert 'URI="part-3.m4s"' in now.result
    asked = defer.ensureDeferred(hls.manager.playlist("s1", 1, 1, client="192.0.2.1"))
    store.add_part(0.5, b"o", True)
    assert not asked.called and hls.manager.held.count == 1
    store.add_part(0.5, b"o", False)
    assert 'URI="part-5.m4s"' in asked.result and hls.manager.held.count == 0
    assert hls.manager.reloads == {"answered": 2}
    assert hls.manager.players() == 1


def test_a_blocking_reload_that_does_not_come_is_unavailable(hls):
    """Held for block_timeout (three target durations by default): then Unavailable (503);
    too far ahead is TooFar (400) at once; over the limit is Busy (503) at once."""
    hls.first_playlist()
    asked = defer.ensureDeferred(hls.manager.playlist("s1", 1, 0))
    hls.calls.advance(5.9)
    assert not asked.called
    hls.calls.advance(0.1)
    assert isinstance(asked.result.value, Unavailable)
    asked.addErrback(lambda _: None)
    far = defer.ensureDeferred(hls.manager.playlist("s1", 5))
    assert isinstance(far.result.value, TooFar)
    far.addErrback(lambda _: None)
    hls.manager.held.limit = 1
    one = defer.ensureDeferred(hls.manager.playlist("s1", 1))
    two = defer.ensureDeferred(hls.manager.playlist("s1", 1))
    assert isinstance(two.result.value, Busy)
    two.addErrback(lambda _: None)
    one.cancel()  # the player went away
    one.addErrback(lambda _: None)
    assert hls.manager.held.count == 0
    assert hls.manager.reloads == {"timed_out": 1, "too_far": 1, "refused": 1}


def test_the_hinted_part_is_answered_once_it_exists(hls):
    """A request for the part EXT-X-PRELOAD-HINT names is held until the part is made; a
    part further ahead is not found at once; one held past block_timeout is Unavailable."""
    store = hls.first_playlist()
    assert store.hint == 4
    hinted = defer.ensureDeferred(hls.manager.fetch("s1", "part-4.m4s"))
    later = defer.ensureDeferred(hls.manager.fetch("s1", "part-5.m4s"))
    assert later.result is None and not hinted.called
    store.add_part(0.5, b"hinted", True)
    assert hinted.result == b"hinted"
    assert defer.ensureDeferred(hls.manager.fetch("s1", "part-1.m4s")).result == b"p" * 10
    assert defer.ensureDeferred(hls.manager.fetch("s1", "seg-0.m4s")).result == b"p" * 40
    again = defer.ensureDeferred(hls.manager.fetch("s1", "part-5.m4s"))
    hls.calls.advance(6)
    assert isinstance(again.result.value, Unavailable)
    again.addErrback(lambda _: None)
    assert hls.manager.requests["part"] == 4 and hls.manager.requests["segment"] == 1


def test_held_requests_keep_the_stream_muxed():
    """A player blocked on a reload counts as asking: the idle timer does not stop the job."""
    made = _Manager(idle=5, block_timeout=30)
    try:
        made.first_playlist()
        asked = defer.ensureDeferred(made.manager.playlist("s1", 1))
        made.calls.advance(12)
        assert "s1" in made.manager.live and made.manager.streams_muxed() == 1
        made.calls.advance(18)
        asked.addErrback(lambda _: None)
    finally:
        made.close()


def _mux(store: SegmentStore, timed, stream=None):
    calls, stream, job, clock = _started_job(store, stream)
    publish(stream, timed, clock, calls=calls)
    stream.end()
    calls.run_until(lambda: job.finished, what="the HLS job to end")
    store.end()
    return job


def test_a_synthetic_stream_becomes_parts_that_start_segments_at_keyframes(tmp_path):
    """6 s of H.264 (a keyframe a second) and PCMU, 2 s target, 0.5 s parts: segments of
    2 s that are their parts' bytes, each part at most 0.5 s, a segment's first part (and
    only a keyframe's) INDEPENDENT; ffprobe reads the parts alone as h264 + aac."""
    store = SegmentStore(2.0, 100, 64 << 20, 0.5)
    job = _mux(store, frames(6.0))
    assert job.state == "FINISHED", job.info
    assert [s.duration for s in store.segments] == pytest.approx([2, 2, 2], abs=0.1)
    for segment in store.segments:
        assert segment.data == b"".join(bytes(p.data) for p in segment.parts)
        assert segment.parts[0].independent
        assert sum(p.duration for p in segment.parts) == pytest.approx(segment.duration)
        for part in segment.parts:
            assert 0 < part.duration <= 0.5
            with av.open(io.BytesIO(store.inits[1] + bytes(part.data))) as container:
                first = next(container.demux(video=0))
                assert first.is_keyframe == part.independent
    assert sum(p.independent for s in store.segments for p in s.parts) == 6  # a keyframe a s
    assert store.longest_part == 0.5
    parts = [p for s in store.segments for p in s.parts]
    (tmp_path / "init.mp4").write_bytes(store.inits[1])
    lines = ["#EXTM3U", "#EXT-X-VERSION:7", "#EXT-X-TARGETDURATION:1",
             '#EXT-X-MAP:URI="init.mp4"']
    for part in parts:  # the parts as segments of a playlist of their own
        (tmp_path / f"p{part.number}.m4s").write_bytes(bytes(part.data))
        lines += [f"#EXTINF:{part.duration:.3f},", f"p{part.number}.m4s"]
    (tmp_path / "parts.m3u8").write_text("\n".join(lines + ["#EXT-X-ENDLIST"]) + "\n")
    info = ffprobe(str(tmp_path / "parts.m3u8"))
    assert sorted(s["codec_name"] for s in info["streams"]) == ["aac", "h264"]
    assert float(info["format"]["duration"]) == pytest.approx(6.0, abs=0.3)


def test_an_audio_only_stream_becomes_parts_of_aac_frames():
    """Without video every part is independent and at most the part target long; segments
    end within half a part of the target."""
    store = SegmentStore(2.0, 100, 64 << 20, 0.5)
    _mux(store, frames(5.0, video=False), _stream(has_video=False))
    durations = [s.duration for s in store.segments]
    assert durations[:-1] == pytest.approx([1.92] * (len(durations) - 1), abs=0.1)
    parts = [p for s in store.segments for p in s.parts]
    assert all(p.independent and 0 < p.duration <= 0.5 for p in parts)


def test_fragment_tracks_reads_each_tracks_span_count_and_first_sample():
    """fragment_tracks: per track ID the decode time, duration, sample count and whether the
    first sample is a sync sample (first-sample-flags, else the tfhd default)."""
    def box(kind, payload):
        return (8 + len(payload)).to_bytes(4, "big") + kind + payload

    def traf(track, start, durations, first_flags=None, default_flags=0x01010000):
        tfhd = box(b"tfhd", (0x20).to_bytes(4, "big") + track.to_bytes(4, "big") +
                   default_flags.to_bytes(4, "big"))
        tfdt = box(b"tfdt", b"\x01\x00\x00\x00" + start.to_bytes(8, "big"))
        flags = 0x100 | (0x04 if first_flags is not None else 0)
        body = flags.to_bytes(4, "big") + len(durations).to_bytes(4, "big")
        if first_flags is not None:
            body += first_flags.to_bytes(4, "big")
        body += b"".join(d.to_bytes(4, "big") for d in durations)
        return box(b"traf", tfhd + tfdt + box(b"trun", body))

    moof = box(b"moof", traf(1, 9000, [3600, 3600], first_flags=0x02000000) +
               traf(2, 800, [1024], default_flags=0))
    assert fragment_tracks(moof) == {1: (9000, 7200, 2, True), 2: (800, 1024, 1, True)}
    plain = box(b"moof", traf(1, 0, [3600]))
    assert fragment_tracks(plain) == {1: (0, 3600, 1, False)}
    with pytest.raises(ValueError, match="moof without tfdt"):
        fragment_tracks(box(b"moof", box(b"traf", box(b"tfhd", bytes(8)))))
