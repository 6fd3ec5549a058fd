"""The thread boundary: a bounded queue the reactor never waits on, reports back by
callFromThread."""
import threading

from synthetic import ThreadCalls
from sipgw.media.worker import FrameQueue, MediaJob
from sipgw.streams.stream import MediaFrame, Stream


def _video(ts, key=False):
    return MediaFrame("video", "H264", 90000, ts, b"\x00\x00\x01\x65" if key else b"\x00\x00\x01\x41", key)


def _audio(ts):
    return MediaFrame("audio", "PCMU", 8000, ts, b"\xff" * 160)


def test_full_queue_drops_everything_until_the_next_keyframe():
    """Overflow empties the queue, asks for a keyframe once, then skips delta frames and audio."""
    queue = FrameQueue(3, has_video=True)
    assert all(queue.put(f, 0.0) for f in (_video(0, True), _video(1), _audio(2)))
    assert queue.put(_video(3), 0.0) is False  # full: wants a keyframe
    assert len(queue) == 0
    assert queue.put(_audio(4), 0.0) is True and len(queue) == 0
    assert queue.put(_video(5, True), 0.0) is True
    assert [queue.get(0)[0].timestamp] == [5]
    assert queue.dropped == 5 and queue.overflows == 1


def test_closed_queue_gives_what_it_holds_then_none():
    """get() returns queued frames after close(), then None."""
    queue = FrameQueue(10, has_video=False)
    queue.put(_audio(1), 0.0)
    queue.close()
    assert queue.get(0)[0].timestamp == 1
    assert queue.get(0) is None


class _BlockedJob(MediaJob):
    """A worker stuck in a write until released (a stalled RTMP server)."""

    kind = "blocked"

    def __init__(self, reactor, stream):
        super().__init__(reactor, stream, queue_frames=10)
        self.release = threading.Event()
        self.taken = []

    def work(self):
        self.report("WORKING", "")
        first = self.next_frame()
        self.taken.append(first[0].timestamp)
        self.release.wait(10)
        while (item := self.next_frame()) is not None:
            self.taken.append(item[0].timestamp)
        return "DONE", "stream ended"


def test_a_blocked_worker_never_blocks_the_publisher():
    """While the worker is stuck, publish() returns at once; overflow asks for a keyframe;
    the worker's state and end come back through callFromThread."""
    calls = ThreadCalls()
    asked = []
    stream = Stream("s", on_keyframe_request=lambda: asked.append(1))
    job = _BlockedJob(calls, stream).start()
    stream.publish(_video(0, key=True))
    calls.run_until(lambda: job.taken, what="first frame taken")
    asked.clear()
    for ts in range(1, 40):
        stream.publish(_video(ts))
    assert asked == [1]  # one request per overflow, not per frame
    stream.publish(_video(40, key=True))
    job.release.set()
    stream.end()
    calls.run_until(lambda: job.finished, what="the job to end")
    assert job.state == "DONE" and job.info == "stream ended"
    assert job.taken[0] == 0 and job.taken[-1] == 40
    assert job.queue.dropped > 0
    assert job.done.called
