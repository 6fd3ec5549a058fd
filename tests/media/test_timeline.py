"""RTP timestamps of audio and video placed on one timeline."""
import pytest

from sipgw.media.timeline import RtpClock, Timeline


def test_rtp_clock_follows_timestamps_across_the_wrap():
    """The 32-bit timestamp wraps; seconds keep growing."""
    clock = RtpClock(8000)
    start = (1 << 32) - 800
    assert clock.seconds(start, 10.0) == 10.0
    assert clock.seconds((start + 1600) % (1 << 32), 10.2) == pytest.approx(10.2)
    assert clock.seconds((start + 3200) % (1 << 32), 10.45) == pytest.approx(10.4)


def test_rtp_clock_anchors_again_after_a_jump():
    """A timestamp far from the arrival clock (new SSRC) restarts from the arrival time."""
    clock = RtpClock(90000, max_skew=1.0)
    clock.seconds(1000, 5.0)
    assert clock.seconds(1000 + 90000 * 100, 5.04) == 5.04
    assert clock.resets == 1
    assert clock.seconds(1000 + 90000 * 100 + 3600, 5.1) == pytest.approx(5.08)


def test_timeline_starts_at_the_first_written_frame():
    """Positions count from the origin; frames before it have none."""
    timeline = Timeline()
    video = timeline.when("video", 90000, 123, 100.0)
    audio = timeline.when("audio", 8000, 999, 99.98)
    assert timeline.position(video) is None
    timeline.start(video)
    assert timeline.position(audio) is None
    later = timeline.when("audio", 8000, 999 + 160 * 3, 100.04)
    assert timeline.position(later) == pytest.approx(0.04)
