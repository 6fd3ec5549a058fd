"""Audio and video of a real baresip call stay together in what sipgw pushes and records:
nginx-rtmp's own measure of its publisher (``avsync`` on its /stat page: the last audio
timestamp minus the last video one, in ms) stays within 100 ms while the push runs, and the
recording sipgw writes of the same call has audio and video starting and ending within 100 ms
of each other.  (tests/media/test_avsync.py checks a known flash + beep end to end.)"""
import re
import time

import av
import pytest

import peers
from conftest import require
from peers import wait_for
from sipgw_daemon import Sipgw

TOLERANCE_MS = 100


@pytest.fixture
def nginx_stat(tmp_path):
    """nginx-rtmp with its /stat page on an HTTP port."""
    require("nginx")
    server = peers.NginxRtmp(tmp_path, port=peers.free_port("tcp"),
                             stat_port=peers.free_port("tcp"))
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def daemon(tmp_path):
    gw = Sipgw(str(tmp_path), rtp_activity_timeout=10, record_dir=str(tmp_path / "records"),
               record_file_template="{streamName}")
    (tmp_path / "records").mkdir()
    gw.start()
    try:
        yield gw
    finally:
        gw.stop()


def _avsync(stat: str, name: str) -> int | None:
    stream = re.search(rf"<stream>\s*<name>{name}</name>(.*?)</stream>", stat, re.S)
    value = stream and re.search(r"<avsync>(-?\d+)</avsync>", stream.group(1))
    return int(value.group(1)) if value else None


def _spans(path) -> dict:
    """{kind: (first pts s, last pts s)} of a media file's packets."""
    spans = {}
    with av.open(str(path)) as container:
        for packet in container.demux():
            if packet.pts is None or packet.stream.type not in ("audio", "video"):
                continue
            t = float(packet.pts * packet.time_base)
            first, last = spans.get(packet.stream.type, (t, t))
            spans[packet.stream.type] = (min(first, t), max(last, t))
    return spans


def test_push_and_recording_of_a_call_keep_audio_and_video_within_100_ms(
        daemon, kamailio, baresip, nginx_stat, tmp_path):
    """10 s of a baresip call pushed to nginx-rtmp and recorded: nginx's avsync of the push
    stays within 100 ms at every look (once a second); the recording's audio and video start
    and end within 100 ms of each other (plus one frame of either kind)."""
    daemon.call_bob(kamailio.port, "av1")
    stream = daemon.stream("stream-av1")
    daemon.rest("/push/startup", {"streamName": "stream-av1", "rtmpUrl": nginx_stat.url()})
    daemon.rest("/recorder/startup", {"mediaSessionId": stream["mediaSessionId"]})
    wait_for(lambda: _avsync(nginx_stat.stat(), "rtmp_stream-av1") is not None, 20,
             "nginx to see the push's audio and video")
    seen = []
    for _ in range(10):
        time.sleep(1)
        seen.append(_avsync(nginx_stat.stat(), "rtmp_stream-av1"))
    print("nginx avsync (ms):", seen)
    assert all(v is not None and abs(v) <= TOLERANCE_MS for v in seen), seen

    daemon.rest("/call/terminate", {"callId": "av1"})
    done = wait_for(lambda: [r for r in daemon.found("/recorder/find_all")
                             if r["status"] == "FINISHED"], 20, "the recording to finish")
    spans = _spans(tmp_path / "records" / done[0]["fileName"])
    print("recording spans (s):", spans)
    (v0, v1), (a0, a1) = spans["video"], spans["audio"]
    assert v1 - v0 > 8
    assert abs(a0 - v0) <= 0.1 + 0.064 and abs(a1 - v1) <= 0.1 + 0.064, spans
