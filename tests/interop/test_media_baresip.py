"""A real baresip call's media becomes a correct, counted stream that ends every way a
call can end."""
import json
import os
import signal
import subprocess
import sys

import av
import pytest

from peers import wait_for
from sipgw_daemon import Sipgw

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture
def daemon(tmp_path):
    gw = Sipgw(str(tmp_path), rtp_activity_timeout=3).start()
    yield gw
    gw.stop()


def test_stream_is_listed_with_size_and_growing_counters(daemon, kamailio, baresip):
    """/stream/find shows the call's stream PUBLISHING at 320x240 with counters that grow."""
    daemon.call_bob(kamailio.port, "m1")
    first = wait_for(lambda: (s := daemon.stream("stream-m1")) and s["width"] and
                     s["counters"].get("video", {}).get("packets") and s, 20, "video counters")
    assert (first["width"], first["height"]) == (320, 240)
    assert first["status"] == "PUBLISHING" and first["videoCodec"] == "H264"
    assert first["audioCodec"] in ("PCMU", "PCMA", "opus")
    packets = first["counters"]["video"]["packets"]
    later = wait_for(lambda: (s := daemon.stream("stream-m1"))["counters"]["video"]["packets"]
                     > packets and s, 20, "video packets to grow")
    assert later["counters"]["audio"]["packets"] > 0
    assert later["counters"]["video"]["keyframes"] >= 1
    daemon.rest("/stream/terminate", {"name": "stream-m1"})
    assert daemon.wait_status("m1", "FINISH")["info"] == "Stopped by rest /terminate"
    assert daemon.stream("stream-m1") is None


def test_callee_bye_removes_the_stream(daemon, kamailio, baresip):
    """When the callee hangs up the call is FINISH and the stream is gone."""
    daemon.call_bob(kamailio.port, "m2")
    wait_for(lambda: daemon.stream("stream-m2"), 10, "the stream")
    baresip.stop()
    call = daemon.wait_status("m2", "FINISH", timeout=20)
    assert call["info"] == "Normal call clearing"
    assert daemon.stream("stream-m2") is None


def test_rtp_stopping_fails_the_call(daemon, kamailio, baresip):
    """A callee that stops sending RTP is hung up: FAILED 'Failed by RTP activity'."""
    daemon.call_bob(kamailio.port, "m3")
    wait_for(lambda: (s := daemon.stream("stream-m3")) and s["counters"].get("audio", {})
             .get("packets"), 20, "audio to flow")
    os.kill(baresip.pid, signal.SIGSTOP)
    try:
        call = daemon.wait_status("m3", "FAILED", timeout=20)
    finally:
        os.kill(baresip.pid, signal.SIGCONT)
    assert call["info"] == "Failed by RTP activity"
    assert daemon.stream("stream-m3") is None


def test_access_units_decode_to_frames_of_the_sps_size(kamailio, baresip, tmp_path):
    """The access units sipgw rebuilds from baresip's RTP decode with PyAV at 320x240."""
    out = tmp_path / "capture.h264"
    result = subprocess.run([sys.executable, os.path.join(HERE, "capture_stream.py"),
                             str(kamailio.port), str(out), "50"],
                            capture_output=True, text=True, timeout=90)
    info = json.loads(result.stdout.strip().splitlines()[-1])
    assert "error" not in info, info.get("error")
    assert info["frames"] == 50 and info["keyframes"] >= 1
    assert (info["width"], info["height"]) == (320, 240)
    with av.open(str(out), format="h264") as container:
        decoded = [f for f in container.decode(video=0)]
    assert len(decoded) >= 45
    assert {(f.width, f.height) for f in decoded} == {(320, 240)}
