"""A real baresip call (through Kamailio) played over HLS from the daemon's own port:
ffprobe reads http://127.0.0.1:PORT/NAME/index.m3u8 as h264 320x240 + aac, and the live
playlist moves on while the call lasts."""
import json
import re
import subprocess
import urllib.request

import pytest

from peers import require_program, wait_for
from sipgw_daemon import Sipgw


@pytest.fixture
def daemon(tmp_path):
    gw = Sipgw(str(tmp_path), rtp_activity_timeout=10, hls_target_duration=1,
               hls_idle_timeout=5)
    yield gw
    gw.stop()


def _playlist(url: str) -> str:
    with urllib.request.urlopen(url, timeout=20) as answer:
        assert answer.headers["Content-Type"] == "application/vnd.apple.mpegurl"
        return answer.read().decode("ascii")


def test_ffprobe_reads_the_hls_of_a_real_call(daemon, kamailio, baresip):
    """The first playlist request starts the muxing and is answered with a segment; ffprobe
    reads the stream as h264 320x240 and aac; a later playlist has a later segment."""
    daemon.start()
    daemon.call_bob(kamailio.port, "c1", toStream="hls-c1")
    url = f"http://127.0.0.1:{daemon.hls_port}/hls-c1/index.m3u8"
    first = _playlist(url)
    assert first.startswith("#EXTM3U") and '#EXT-X-MAP:URI="init-1.mp4"' in first
    result = subprocess.run([require_program("ffprobe"), "-v", "error", "-show_streams",
                             "-of", "json", url], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    streams = {s["codec_type"]: s for s in json.loads(result.stdout)["streams"]}
    video, audio = streams["video"], streams["audio"]
    assert (video["codec_name"], video["width"], video["height"]) == ("h264", 320, 240)
    assert audio["codec_name"] == "aac"

    def last_segment(text):
        return max(int(n) for n in re.findall(r"^seg-(\d+)\.m4s$", text, re.MULTILINE))
    before = last_segment(first)
    wait_for(lambda: last_segment(_playlist(url)) >= before + 2, 20, "new segments")
    daemon.rest("/call/terminate", {"callId": "c1"})
    daemon.wait_status("c1", "FINISH")
    wait_for(lambda: "#EXT-X-ENDLIST" in _playlist(url), 20, "the playlist to end")
