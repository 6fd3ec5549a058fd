"""The push's send order: video waits for the audio of its time, never longer than max_hold."""
from sipgw.media.interleave import Interleaver


def test_video_goes_out_once_audio_of_its_time_has():
    order = Interleaver(has_audio=True, max_hold=0.5)
    assert order.video(0.00, "v0") == [] and order.video(0.04, "v1") == []
    assert order.audio(0.00, "a0") == ["v0", "a0"]
    assert order.audio(0.064, "a1") == ["v1", "a1"]
    assert order.flush() == []


def test_video_is_let_go_when_audio_stalls_and_never_held_without_audio():
    order = Interleaver(has_audio=True, max_hold=0.5)
    assert [order.video(t / 25, f"v{t}") for t in range(13)][-1] == []
    assert order.video(13 / 25, "v13") == ["v0"]  # 0.52 s ahead of the oldest held
    assert order.flush()[0] == "v1"
    assert Interleaver(has_audio=False).video(0.0, "v0") == ["v0"]
