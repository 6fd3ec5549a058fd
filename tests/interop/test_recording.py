"""A real baresip call recorded (sip_record_stream=true) to MP4: h264 + aac, as long as
the call, audio and video starting together; SIGTERM of the daemon mid-call leaves a
file that plays."""
import json
import os
import subprocess
import time

import av
import pytest

from peers import require_program, wait_for
from sipgw_daemon import Sipgw


@pytest.fixture
def records(tmp_path):
    folder = tmp_path / "records"
    folder.mkdir()
    return folder


@pytest.fixture
def daemon(tmp_path, records):
    gw = Sipgw(str(tmp_path), rtp_activity_timeout=10, sip_record_stream="true",
               record_dir=str(records), record_file_template="{streamName}-{startTimeMillis}")
    yield gw
    gw.stop()


def _recordings(daemon):
    return daemon.found("/recorder/find_all")


def _recording(daemon, status):
    found = [r for r in _recordings(daemon) if r["status"] == status]
    return found[0] if found else None


def _probe(path) -> dict:
    result = subprocess.run([require_program("ffprobe"), "-v", "error", "-show_streams",
                             "-show_format", "-of", "json", str(path)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout)


def test_a_ten_second_call_is_recorded_whole(daemon, kamailio, baresip, records):
    """~10 s of call → an MP4 of h264 320x240 + aac lasting the call (±10 %), audio and
    video starting within 100 ms of each other."""
    daemon.start()
    daemon.call_bob(kamailio.port, "c1", toStream="rec-c1")
    wait_for(lambda: _recording(daemon, "RECORDING"), 20, "the recording to start")
    started = time.monotonic()
    time.sleep(10)
    daemon.rest("/call/terminate", {"callId": "c1"})
    length = time.monotonic() - started
    daemon.wait_status("c1", "FINISH")
    done = wait_for(lambda: _recording(daemon, "FINISHED"), 20, "the recording to finish")
    assert done["fileName"].startswith("rec-c1-") and done["fileName"].endswith(".mp4")
    info = _probe(records / done["fileName"])
    streams = {s["codec_type"]: s for s in info["streams"]}
    video, audio = streams["video"], streams["audio"]
    assert (video["codec_name"], video["width"], video["height"]) == ("h264", 320, 240)
    assert audio["codec_name"] == "aac"
    assert float(info["format"]["duration"]) == pytest.approx(length, rel=0.10)
    assert abs(float(video["start_time"]) - float(audio["start_time"])) < 0.100
    with av.open(str(records / done["fileName"])) as container:
        decoded = sum(1 for _ in container.decode(video=0))
    assert decoded >= 200  # 25 fps


def test_sigterm_during_a_recording_leaves_a_file_that_plays(daemon, kamailio, baresip, records):
    """SIGTERM of the daemon while recording: the recording is finalized and plays."""
    daemon.start()
    daemon.call_bob(kamailio.port, "c2", toStream="rec-c2")
    wait_for(lambda: _recording(daemon, "RECORDING"), 20, "the recording to start")
    time.sleep(4)
    # twistd shuts down, then re-raises the SIGTERM it got: -15 is a clean exit here
    assert daemon.stop() in (0, -15)
    assert "FINISHED" in daemon.log().split("Received SIGTERM")[-1]
    files = [f for f in os.listdir(records) if f.endswith(".mp4")]
    assert len(files) == 1 and files[0].startswith("rec-c2-")
    info = _probe(records / files[0])
    assert {s["codec_name"] for s in info["streams"]} == {"h264", "aac"}
    assert float(info["format"]["duration"]) > 3.0
    with av.open(str(records / files[0])) as container:
        decoded = sum(1 for _ in container.decode(video=0))
    assert decoded >= 75
