"""Stream fan-out: bounded sinks, drop-to-keyframe, GOP burst, end of stream; the registry."""
import pytest

from sipgw.streams.registry import StreamExists, StreamRegistry
from sipgw.streams.stream import MediaFrame, Stream, StreamStatus


def _video(ts, key=False):
    return MediaFrame("video", "H264", 90000, ts, b"\x00\x00\x00\x01" + bytes([0x65 if key else 0x41]), key)


def _audio(ts):
    return MediaFrame("audio", "PCMU", 8000, ts, b"\xff" * 160)


def _drain(sink):
    """Everything a consumer calling get() would receive right now."""
    out = []
    while sink.queue:
        out.append(sink.get().result)
    return out


def test_publishing_status_and_fan_out_to_every_sink():
    """The first frame makes the stream PUBLISHING; every sink gets every frame."""
    stream = Stream("s")
    a, b = stream.subscribe(name="a"), stream.subscribe(name="b")
    assert stream.status == StreamStatus.PENDING
    stream.publish(_video(1, key=True))
    stream.publish(_audio(2))
    assert stream.status == StreamStatus.PUBLISHING
    assert [f.timestamp for f in _drain(a)] == [1, 2]
    assert [f.timestamp for f in _drain(b)] == [1, 2]


def test_new_sink_waits_for_a_keyframe_and_asks_for_one():
    """A sink joining a video stream with no cached GOP skips delta frames and requests an IDR."""
    asked = []
    stream = Stream("s", on_keyframe_request=lambda: asked.append(1))
    sink = stream.subscribe()
    assert asked == [1]
    stream.publish(_video(1))
    stream.publish(_audio(2))
    stream.publish(_video(3, key=True))
    assert [f.timestamp for f in _drain(sink)] == [2, 3]


def test_late_subscriber_gets_the_cached_gop_first():
    """A sink joining mid-GOP starts with the frames since the last keyframe."""
    stream = Stream("s")
    for ts, key in ((1, False), (2, True), (3, False), (4, False)):
        stream.publish(_video(ts, key))
    sink = stream.subscribe()
    assert [f.timestamp for f in _drain(sink)] == [2, 3, 4]


def test_a_long_gop_is_not_replayed_but_a_keyframe_requested():
    """A cached GOP spanning more than 2 s is not burst; the sink waits for a fresh IDR."""
    asked = []
    stream = Stream("s", on_keyframe_request=lambda: asked.append(1))
    stream.publish(_video(0, key=True))
    stream.publish(_video(3 * 90000))
    sink = stream.subscribe()
    assert _drain(sink) == [] and asked == [1]
    stream.publish(_video(3 * 90000 + 3000, key=True))
    assert [f.timestamp for f in _drain(sink)] == [3 * 90000 + 3000]


def test_slow_sink_drops_to_next_keyframe_and_others_are_unaffected():
    """A sink whose queue is full is emptied and restarts on a keyframe; a fast one loses nothing."""
    asked = []
    stream = Stream("s", on_keyframe_request=lambda: asked.append(1))
    stream.publish(_video(0, key=True))
    slow = stream.subscribe(maxlen=4, name="slow")
    fast = stream.subscribe(maxlen=100, name="fast")
    asked.clear()
    for ts in range(1, 10):
        stream.publish(_video(ts))
    assert len(slow.queue) < 4 and slow.waiting_keyframe and asked
    assert slow.dropped > 0
    stream.publish(_video(10, key=True))
    assert [f.timestamp for f in _drain(slow)][-1] == 10 and not slow.waiting_keyframe
    assert [f.timestamp for f in _drain(fast)] == list(range(0, 11))


def test_pending_get_fires_on_publish_and_none_at_end():
    """A waiting consumer is woken by the next frame, and by None when the stream ends."""
    stream = Stream("s", has_video=False)
    sink = stream.subscribe()
    d = sink.get()
    assert not d.called
    stream.publish(_audio(5))
    assert d.result.timestamp == 5
    d = sink.get()
    stream.end(StreamStatus.FAILED, "Failed by RTP activity")
    assert d.result is None and stream.info == "Failed by RTP activity"
    assert stream.subscribe().get().result is None  # subscribing to an ended stream
    stream.publish(_audio(6))  # ignored after the end
    assert sink.closed and not stream.sinks


def test_close_removes_the_sink():
    """A consumer that leaves is no longer fed."""
    stream = Stream("s", has_video=False)
    sink = stream.subscribe()
    sink.close()
    stream.publish(_audio(1))
    assert not sink.queue and sink.get().result is None


def test_registry_refuses_a_second_publisher_and_finds_by_both_keys():
    """One publisher per name (409); lookups by name and by mediaSessionId."""
    registry = StreamRegistry()
    events = []
    registry.listeners.append(lambda s, e: events.append((s.name, e)))
    first = registry.add(Stream("cam"))
    with pytest.raises(StreamExists):
        registry.add(Stream("cam"))
    assert registry.get(name="cam") is first
    assert registry.get(media_session_id=first.media_session_id) is first
    registry.remove(first)
    assert registry.get(name="cam") is None and registry.all() == []
    assert events == [("cam", "published"), ("cam", "ended")]


def _sized(ts, size, key=False):
    return MediaFrame("video", "H264", 90000, ts, bytes(size), key)


def test_gop_cache_is_bounded_in_bytes():
    """A GOP growing past gop_max_bytes is dropped from the cache: a late sink is not burst a
    truncated GOP but waits for the next keyframe (and asks for one), which is cached again."""
    asked = []
    stream = Stream("s", gop_max_bytes=10_000, on_keyframe_request=lambda: asked.append(1))
    stream.publish(_sized(0, 4000, key=True))
    for ts in (1, 2, 3):
        stream.publish(_sized(ts, 2000))
    assert [f.timestamp for f in _drain(stream.subscribe())] == [0, 1, 2, 3]  # 10,000 bytes
    stream.publish(_sized(4, 2000))
    stream.publish(_sized(5, 2000))
    assert stream.gop == []
    sink = stream.subscribe()
    assert _drain(sink) == [] and asked == [1]
    stream.publish(_sized(6, 4000, key=True))
    assert [f.timestamp for f in _drain(sink)] == [6]
    assert [f.timestamp for f in _drain(stream.subscribe())] == [6]
    stream.publish(_sized(7, 20_000, key=True))  # a keyframe over the bound is not cached
    assert stream.gop == []


def test_sink_queue_is_bounded_in_bytes():
    """A sink holding more than max_bytes drops to the next keyframe as when it holds too many
    frames; one that keeps up never drops, whatever it receives in total."""
    asked = []
    stream = Stream("s", on_keyframe_request=lambda: asked.append(1))
    stream.publish(_sized(0, 3000, key=True))
    slow = stream.subscribe(maxlen=100, max_bytes=10_000, name="slow")
    fast = stream.subscribe(maxlen=100, max_bytes=10_000, name="fast")
    asked.clear()
    assert _drain(fast)[0].timestamp == 0
    for ts in range(1, 20):
        stream.publish(_sized(ts, 3000))
        assert [f.timestamp for f in _drain(fast)] == [ts]
    assert slow.waiting_keyframe and slow.dropped and asked and not slow.queue
    stream.publish(_sized(20, 3000, key=True))
    assert [f.timestamp for f in _drain(slow)] == [20] and not slow.waiting_keyframe
    assert fast.dropped == 0 and [f.timestamp for f in _drain(fast)] == [20]


def test_audio_sink_is_bounded_in_bytes_too():
    """An audio-only sink over max_bytes is emptied and goes on with the next frame."""
    stream = Stream("s", has_video=False, sink_max_bytes=1000)
    sink = stream.subscribe()
    for ts in range(7):  # 160 bytes each: the seventh does not fit
        stream.publish(_audio(ts))
    assert [f.timestamp for f in _drain(sink)] == [6] and sink.dropped == 6


def test_push_mode_gets_the_queue_first_then_every_frame_at_once():
    """listen(deliver): the frames queued so far go first, in order, later ones at publish."""
    stream = Stream("s1")
    stream.publish(_video(0, key=True))
    sink = stream.subscribe(kinds=("video",))
    stream.publish(_video(3000))
    got = []
    sink.listen(lambda frame: got.append(frame.timestamp) or True)
    assert got == [0, 3000] and not sink.queue
    stream.publish(_video(6000))
    assert got == [0, 3000, 6000]


def test_push_consumer_full_drops_to_the_next_keyframe():
    """deliver() returning False (the viewer's socket backlog is full) skips to the next
    keyframe and asks the source for one, as a full queue does."""
    requests = []
    stream = Stream("s1", on_keyframe_request=lambda: requests.append(1))
    stream.publish(_video(0, key=True))
    sink = stream.subscribe(kinds=("video",))
    full = [False]
    got = []

    def deliver(frame):
        if full[0]:
            return False
        got.append(frame.timestamp)
        return True
    sink.listen(deliver)
    full[0] = True
    stream.publish(_video(3000))
    full[0] = False
    stream.publish(_video(6000))
    stream.publish(_video(9000, key=True))
    assert got == [0, 9000]
    assert requests and sink.dropped == 2
