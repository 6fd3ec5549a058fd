"""Recording synthetic frames to MP4: H.264 passed through, AAC, aligned starts, file
names from templates, a full disk, a crash, and the manager."""
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import av
import pytest

from synthetic import FakeClock, ThreadCalls, ffprobe, frames, publish
from sipgw.media import recorder
from sipgw.media.recorder import (MB, BadFileName, Limits, RecorderManager, Recording,
                                  RecordingError, check_template, render)
from sipgw.streams.registry import StreamRegistry
from sipgw.streams.stream import Stream

HERE = os.path.dirname(os.path.abspath(__file__))


def _stream(name="s1", **kw):
    stream = Stream(name, **kw)
    stream.audio_codec, stream.video_codec, stream.width, stream.height = "PCMU", "H264", 320, 240
    return stream


def _record(tmp_path, timed, template="{streamName}", opener=None, stream=None, **kw):
    calls = ThreadCalls()
    stream = stream or _stream()
    clock = FakeClock()
    job = Recording(calls, stream, str(tmp_path), template, opener=opener, queue_frames=5000,
                    **kw)
    job.clock = clock
    job.start()
    publish(stream, timed, clock, calls=calls)
    stream.end()
    calls.run_until(lambda: job.finished, what="the recording to end")
    return job


def _by_kind(info):
    return {s["codec_type"]: s for s in info["streams"]}


def test_recording_is_h264_320x240_and_aac_with_aligned_starts(tmp_path):
    """A 4 s stream becomes an MP4 with h264 320x240 and aac, both starting at 0 and
    lasting about 4 s; every picture decodes."""
    job = _record(tmp_path, frames(4.0))
    assert job.state == "FINISHED", job.info
    info = ffprobe(job.path)
    streams = _by_kind(info)
    video, audio = streams["video"], streams["audio"]
    assert (video["codec_name"], video["width"], video["height"]) == ("h264", 320, 240)
    assert audio["codec_name"] == "aac"
    assert abs(float(video["start_time"]) - float(audio["start_time"])) < 0.1
    assert float(info["format"]["duration"]) == pytest.approx(4.0, abs=0.2)
    with av.open(job.path) as container:
        pictures = list(container.decode(video=0))
    assert len(pictures) == 100


def test_audio_starting_late_keeps_its_place(tmp_path):
    """Audio whose first frame arrives 0.5 s after the first keyframe starts 0.5 s in."""
    timed = [(t, f) for t, f in frames(3.0) if f.kind == "video" or t >= 0.5]
    job = _record(tmp_path, timed)
    audio = _by_kind(ffprobe(job.path))["audio"]
    assert float(audio["start_time"]) == pytest.approx(0.5, abs=0.1)


def test_recording_starts_at_the_first_keyframe(tmp_path):
    """Frames before the first keyframe are not recorded; the file starts with a keyframe."""
    timed = frames(3.0, gop=25)[10:]
    job = _record(tmp_path, timed)
    with av.open(job.path) as container:
        packets = [p for p in container.demux(video=0) if p.size]
    assert packets[0].is_keyframe
    assert len(packets) == 50  # the keyframes at 1 s and 2 s and what follows them


def test_template_tokens_and_the_rename_at_the_end(tmp_path):
    """End tokens are filled in when the recording ends (the file is renamed)."""
    job = _record(tmp_path, frames(1.0), template="{streamName}_{startTimeMillis}_{duration}")
    assert job.state == "FINISHED", job.info
    name, start, duration = job.file_name[:-4].split("_")
    assert name == "s1" and int(start) > 0 and int(duration) >= 0
    assert os.listdir(tmp_path) == [job.file_name]


@pytest.mark.parametrize("template", ["../evil", "a/b", "{streamName}/x", ".hidden", "x\\y",
                                      "{nope}", ""])
def test_names_that_would_leave_the_folder_are_refused(template):
    """A template with a path separator, a leading dot or an unknown token is refused."""
    with pytest.raises(BadFileName):
        check_template(template)


def test_a_stream_name_cannot_make_a_hidden_or_parent_name():
    """Rendering refuses names that end up starting with a dot."""
    with pytest.raises(BadFileName):
        render("{streamName}", {"streamName": ".."})


class _FullDisk:
    """A file that accepts ``room`` bytes, then fails like a full disk."""

    def __init__(self, path, room):
        self.handle = open(path, "xb")
        self.room = room

    def write(self, data):
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.handle.write(data)

    def __getattr__(self, name):
        return getattr(self.handle, name)


def test_a_full_disk_fails_the_recording_with_a_reason_and_the_stream_goes_on(tmp_path):
    """Writes failing with ENOSPC end the recording FAILED 'No space left on device';
    the stream keeps publishing to its other consumers."""
    stream = _stream()
    viewer = stream.subscribe(maxlen=10000, burst=False)
    job = _record(tmp_path, frames(3.0), opener=lambda p: _FullDisk(p, 20000), stream=stream)
    assert job.state == "FAILED"
    assert "No space left on device" in job.info
    assert len(viewer.queue) > 200  # the viewer got every frame


def _pictures(path) -> int:
    with av.open(str(path)) as container:
        return len(list(container.decode(video=0)))


def test_a_full_disk_keeps_the_complete_fragments_under_the_final_name(tmp_path):
    """ENOSPC in the middle: the file is cut back to its last complete fragment and renamed
    from .recording.mp4 to its final name; it plays; the reason says what was kept."""
    job = _record(tmp_path, frames(4.0), template="{streamName}_{duration}",
                  opener=lambda p: _FullDisk(p, 120000))
    assert job.state == "FAILED" and "No space left on device" in job.info
    assert "kept s1_" in job.info and "last complete fragment" in job.info
    assert os.listdir(tmp_path) == [job.file_name] and ".recording" not in job.file_name
    assert 0 < _pictures(tmp_path / job.file_name) < 100


def test_a_full_disk_before_one_fragment_removes_the_file(tmp_path):
    """ENOSPC before any fragment is complete: nothing playable, the file is removed."""
    job = _record(tmp_path, frames(2.0), template="{streamName}_{duration}",
                  opener=lambda p: _FullDisk(p, 2000))
    assert job.state == "FAILED" and "file removed" in job.info
    assert os.listdir(tmp_path) == []


ENOSPC_SCRIPT = """
import json, os, sys, time
sys.path.insert(0, {here!r})
from synthetic import FakeClock, ThreadCalls, frames, publish
from sipgw.media.recorder import Recording
from sipgw.streams.stream import Stream
folder = sys.argv[1]
first_error = []

class File:
    def __init__(self, path):
        self.handle = open(path, "xb")
    def write(self, data):
        try:
            return self.handle.write(data)
        except OSError:
            first_error.append(time.monotonic())
            raise
    def __getattr__(self, name):
        return getattr(self.handle, name)

stream = Stream("full")
stream.audio_codec, stream.video_codec, stream.width, stream.height = "PCMU", "H264", 320, 240
calls, clock = ThreadCalls(), FakeClock()
job = Recording(calls, stream, folder, "{{streamName}}_{{duration}}", queue_frames=5000,
                opener=File)
job.clock = clock
job.start()
ended = []
job.done.addCallback(lambda _: ended.append(time.monotonic()))
timed = frames(60.0)
publish(stream, timed, clock, calls=calls)
calls.run_until(lambda: ended, 10)
print(json.dumps({{"state": job.state, "info": job.info, "files": os.listdir(folder),
                  "delay": ended[0] - first_error[0]}}))
"""


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                    reason="needs root and unshare for a private 2 MB tmpfs")
def test_a_real_full_tmpfs_fails_the_recording_within_2_s(tmp_path):
    """On a 2 MB tmpfs the recording ends FAILED 'No space left on device' within 2 s of
    the first ENOSPC, and no .recording.mp4 is left."""
    folder = tmp_path / "full"
    folder.mkdir()
    script = tmp_path / "enospc.py"
    script.write_text(ENOSPC_SCRIPT.format(here=HERE))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    result = subprocess.run(
        ["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o size=2m tmpfs {folder} && "
                                      f"{sys.executable} {script} {folder}"],
        capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["state"] == "FAILED" and "No space left on device" in report["info"]
    assert report["delay"] < 2
    assert not [f for f in report["files"] if ".recording" in f]


def test_a_recording_stops_at_its_maximum_duration_and_size(tmp_path):
    """record_max_duration and record_max_size_mb end the recording FINISHED with the
    reason, at the first fragment past the limit."""
    job = _record(tmp_path, frames(4.0), limits=Limits(max_seconds=2))
    assert job.state == "FINISHED" and "record_max_duration reached (2 s)" in job.info
    assert float(ffprobe(job.path)["format"]["duration"]) == pytest.approx(2.0, abs=0.5)
    (tmp_path / "s1.mp4").unlink()
    job = _record(tmp_path, frames(4.0), limits=Limits(max_bytes=MB // 10))
    assert job.state == "FINISHED" and "record_max_size_mb reached" in job.info
    assert MB // 10 <= os.path.getsize(job.path) < MB // 10 + 100000
    assert _pictures(job.path) < 100


def test_the_free_space_floor_refuses_a_start_and_stops_a_running_recording(tmp_path,
                                                                            monkeypatch):
    """Below record_min_free_space_mb a recording cannot start (507) and a running one
    ends FAILED with the reason within a check period; its file is finalized."""
    registry = StreamRegistry()
    manager = RecorderManager(ThreadCalls(), registry, str(tmp_path), "{streamName}",
                              limits=Limits(min_free_bytes=100 * MB), free=lambda f: 50 * MB)
    with pytest.raises(RecordingError) as info:
        manager.start(registry.add(_stream("low")))
    assert info.value.code == 507 and "50 MB, below record_min_free_space_mb=100" in str(info.value)
    monkeypatch.setattr(recorder, "FREE_SPACE_CHECK", 0)
    room = iter([200 * MB] * 20 + [50 * MB] * 1000)
    job = _record(tmp_path, frames(4.0), limits=Limits(min_free_bytes=100 * MB),
                  free=lambda f: next(room))
    assert job.state == "FAILED" and "below record_min_free_space_mb=100" in job.info
    assert 0 < _pictures(job.path) < 100
    audio_only = [(t, f) for t, f in frames(1.0) if f.kind == "audio"]  # no keyframe: no file
    job = _record(tmp_path, audio_only, template="nokey",
                  limits=Limits(min_free_bytes=100 * MB), free=lambda f: 50 * MB)
    assert job.state == "FAILED" and "below record_min_free_space_mb" in job.info


def test_a_killed_recorder_leaves_a_playable_file(tmp_path):
    """SIGKILL of a process in the middle of a recording: the fragments written play."""
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {HERE!r})
        from synthetic import FakeClock, ThreadCalls, frames, publish
        from sipgw.media.recorder import Recording
        from sipgw.streams.stream import Stream
        stream = Stream("crash")
        stream.audio_codec, stream.width, stream.height = "PCMU", 320, 240
        calls, clock = ThreadCalls(), FakeClock()
        job = Recording(calls, stream, {str(tmp_path)!r}, "{{streamName}}", queue_frames=5000)
        job.clock = clock
        job.start()
        publish(stream, frames(4.0), clock, calls=calls)
        calls.run_until(lambda: len(job.queue) == 0 and job.duration > 3.5, 20)
        time.sleep(0.3)
        print("written", flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "written"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    path = tmp_path / "crash.mp4"
    with av.open(str(path)) as container:
        pictures = list(container.decode(video=0))
    assert len(pictures) >= 50  # whole fragments up to the kill


def test_manager_records_every_published_stream_and_finalizes_on_close(tmp_path):
    """With auto recording every stream added to the registry is recorded; close()
    finalizes the open ones; find_all lists the files."""
    calls = ThreadCalls()
    registry = StreamRegistry()
    manager = RecorderManager(calls, registry, str(tmp_path), "{streamName}", auto=True,
                              queue_frames=5000)
    stream = registry.add(_stream("auto1"))
    assert list(manager.active) == [stream.media_session_id]
    publish(stream, frames(1.0), calls=calls)
    closing = manager.close(timeout=0)
    calls.run_until(lambda: closing.called, what="recordings finalized")
    listed = [r.to_json() for r in manager.find_all()]
    assert [(r["fileName"], r["status"]) for r in listed] == [("auto1.mp4", "FINISHED")]
    assert _by_kind(ffprobe(str(tmp_path / "auto1.mp4")))["video"]["codec_name"] == "h264"


def test_login_and_session_id_tokens_come_from_the_stream_s_call(tmp_path):
    """{login} and {sessionId} (WCS's stream_record_policy_template default uses them) are
    the call's sipLogin and sessionId, given by the manager's owner; characters outside
    [A-Za-z0-9_.@+-] become _ and WCS's lengths (32, 60) are kept; no call: empty."""
    registry = StreamRegistry()
    owners = {"c1": {"login": "alice/../x", "sessionId": "a" * 70 + "@pbx"}}
    calls = ThreadCalls()
    manager = RecorderManager(calls, registry, str(tmp_path),
                              "stream-{mediaSessionId}-{login}-{sessionId}",
                              owner=lambda stream: owners.get(stream.call_id, {}))
    stream = registry.add(Stream("s1", call_id="c1"))
    recording = manager.start(stream)
    assert recording.file_name == f"stream-{stream.media_session_id}-alice_.._x-{'a' * 60}.mp4"
    bare = manager.start(registry.add(Stream("s2")), template="{streamName}-{login}{sessionId}")
    assert bare.file_name == "s2-.mp4"
    closing = manager.close(timeout=0)
    calls.run_until(lambda: closing.called, what="the recordings to end")


def test_the_daemon_names_recordings_by_the_call_s_login_and_session_id(tmp_path):
    """make_media's recordings take {login} and {sessionId} from the UA's call of the stream."""
    from types import SimpleNamespace
    from synthetic import ClockedCalls
    from sipgw.config import Config
    from sipgw.service import make_media
    registry = StreamRegistry()
    calls = ClockedCalls()
    call = SimpleNamespace(request=SimpleNamespace(sip_login="bob"), sip_call_id="abc@host")
    media = make_media(Config(record_dir=str(tmp_path),
                              record_file_template="{login}-{sessionId}"), calls, registry,
                       {"call7": call})
    recording = media.recorders.start(registry.add(Stream("s1", call_id="call7")))
    assert recording.file_name == "bob-abc@host.mp4"
    closing = media.recorders.close(timeout=0)
    calls.run_until(lambda: closing.called, what="the recording to end")


def test_rotation_by_duration_cuts_parts_at_keyframes_each_starting_at_0(tmp_path):
    """rotation 2 (seconds, WCS's syntax) on 7 s with a keyframe a second: parts of 2 s,
    each its own MP4 named -1, -2, ... (no start time token), starting with a keyframe at
    0 with its audio, every picture of the stream in exactly one part."""
    from sipgw.media.recorder import Rotation
    job = _record(tmp_path, frames(7.0), rotation=Rotation.parse("2"))
    assert job.state == "FINISHED", job.info
    names = ["s1-1.mp4", "s1-2.mp4", "s1-3.mp4", "s1-4.mp4"]
    assert job.to_json()["parts"] == names and sorted(os.listdir(tmp_path)) == names
    pictures = 0
    for name in names:
        info = ffprobe(str(tmp_path / name))
        streams = _by_kind(info)
        assert float(streams["video"]["start_time"]) == pytest.approx(0, abs=0.05)
        assert float(streams["audio"]["start_time"]) == pytest.approx(0, abs=0.1)
        with av.open(str(tmp_path / name)) as container:
            decoded = list(container.decode(video=0))
        assert decoded[0].key_frame
        pictures += len(decoded)
        if name != names[-1]:
            assert float(info["format"]["duration"]) == pytest.approx(2.0, abs=0.15)
    assert pictures == 175


def test_rotation_by_size_and_part_times_in_names(tmp_path):
    """rotation 1M cuts at the first keyframe past 1 MB; with {startTimeMillis} and
    {duration} each part is named by its own start and length, not numbered."""
    from sipgw.media.recorder import MB, Rotation
    assert (Rotation.parse("20M"), Rotation.parse(20), Rotation.parse("disabled")) == (
        Rotation(bytes=20 * MB), Rotation(seconds=20), None)
    for bad in ("20K", "-1", "M", "0M", "1.5"):
        with pytest.raises(ValueError):
            Rotation.parse(bad)
    wall = iter(range(1000, 2000, 1)).__next__
    job = _record(tmp_path, frames(6.0), template="{streamName}-{startTimeMillis}-{duration}",
                  rotation=Rotation(bytes=MB // 8), wall=wall)
    assert job.state == "FINISHED", job.info
    parts = job.to_json()["parts"]
    assert len(parts) >= 2 and sorted(os.listdir(tmp_path)) == sorted(parts)
    starts = [int(name.split("-")[1]) for name in parts]
    assert starts == sorted(set(starts))  # each part its own start
    for name in parts[:-1]:
        assert os.path.getsize(tmp_path / name) >= MB // 8


def test_record_rotation_setting_is_the_daemon_s_default(tmp_path):
    """record_rotation (WCS syntax) is every recording's rotation unless /recorder/startup
    gives one; a value that is not the syntax stops the daemon at start, naming it."""
    from twisted.internet.task import Clock
    from sipgw.config import Config, ConfigError
    from sipgw.media.recorder import Rotation
    from sipgw.service import make_media
    media = make_media(Config(record_dir=str(tmp_path), record_rotation="10M"), Clock(),
                       StreamRegistry())
    assert media.recorders.rotation == Rotation(bytes=10 * MB)
    assert make_media(Config(record_dir=str(tmp_path)), Clock(),
                      StreamRegistry()).recorders.rotation is None
    with pytest.raises(ConfigError, match="record_rotation"):
        make_media(Config(record_dir=str(tmp_path), record_rotation="ten"), Clock(),
                   StreamRegistry())
