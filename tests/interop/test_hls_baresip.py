"""A real baresip call (through Kamailio) played over HLS from the daemon's own port:
ffprobe reads http://127.0.0.1:PORT/NAME/index.m3u8 as h264 320x240 + aac, and the live
playlist moves on while the call lasts; hls.js in Chromium plays it in low-latency mode
(parts, blocking playlist reloads)."""
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


PAGE = """<!doctype html><html><body>
<video id="video" muted autoplay playsinline></video><div id="status">loading</div>
<script src="hls.min.js"></script>
<script>
const status = document.getElementById("status"), video = document.getElementById("video");
if (!Hls.isSupported()) { status.textContent = "hls.js unsupported"; }
const params = new URLSearchParams(location.search);
const hls = new Hls({lowLatencyMode: params.get("ll") !== "0"});
window.hls = hls;
window.loaded = {parts: 0, fragments: 0};
hls.on(Hls.Events.FRAG_LOADED, (e, d) => { if (d.part) loaded.parts++; else loaded.fragments++; });
hls.on(Hls.Events.ERROR, (e, d) => { if (d.fatal) status.textContent = "error " + d.details; });
video.addEventListener("playing", () => { status.textContent = "playing"; });
hls.loadSource(params.get("src"));
hls.attachMedia(video);
</script></body></html>
"""


def test_hls_js_in_chromium_plays_a_real_call(daemon, kamailio, baresip, chromium, tmp_path):
    """hls.js (npm) in headless Chromium, on a page of another origin (CORS), plays the
    call's HLS in low-latency mode: 320x240, its clock advancing by 3 s, from parts
    (EXT-X-PART) it learns of by blocking playlist reloads (_HLS_msn/_HLS_part); /metrics
    counts the player, the parts and the reloads.  Baseline in the same run: hls.js without
    low-latency mode plays the same stream from segments, further behind the live edge."""
    import shutil
    from peers import PeerMissing, StaticSite, hlsjs_dir
    try:
        dist = hlsjs_dir()
    except PeerMissing as missing:
        pytest.fail(str(missing), pytrace=False)
    site_dir = tmp_path / "site"
    site_dir.mkdir()
    shutil.copy(dist / "hls.min.js", site_dir)
    (site_dir / "hls.html").write_text(PAGE)
    site = StaticSite(site_dir).start()
    try:
        daemon.start()
        daemon.call_bob(kamailio.port, "c1", toStream="hls-c1")
        src = f"http://127.0.0.1:{daemon.hls_port}/hls-c1/index.m3u8"
        chromium.open(f"http://127.0.0.1:{site.port}/hls.html?src={src}")
        chromium.wait_text("status", "playing", timeout=30)
        chromium.wait(lambda: chromium.video_size("#video") == (320, 240), 10,
                      "the video to be 320x240")
        start = chromium.driver.execute_script("return document.getElementById('video').currentTime")
        chromium.wait(lambda: chromium.driver.execute_script(
            "return document.getElementById('video').currentTime") > start + 3, 20,
            "the video clock to advance 3 s")
        assert chromium.text("status") == "playing"
        script = chromium.driver.execute_script
        details = script("const d = hls.levels[hls.currentLevel].details;"
                         "return {block: d.canBlockReload, parts: d.partList ? d.partList.length"
                         " : 0, partTarget: d.partTarget, live: d.live}")
        assert details["block"] is True and details["parts"] > 0 and details["live"], details
        assert details["partTarget"] == pytest.approx(0.5, abs=0.06), details
        loaded = script("return window.loaded")
        assert loaded["parts"] > 0, loaded
        latency = script("return hls.latency")
        print(f"\nhls.js low-latency mode: latency {latency:.2f} s, target "
              f"{script('return hls.targetLatency'):.2f} s, loaded {loaded}")
        from test_whep_metrics import scrape  # the /metrics reader of the WHEP test
        samples = scrape(daemon)
        assert samples["sipgw_hls_blocking_reloads_total", (("result", "answered"),)] > 0
        assert samples["sipgw_hls_requests_total", (("kind", "part"),)] > 0
        assert samples["sipgw_viewers", (("kind", "hls"),)] == 1
        assert samples["sipgw_hls_streams", ()] == 1
        chromium.open(f"http://127.0.0.1:{site.port}/hls.html?ll=0&src={src}")
        chromium.wait_text("status", "playing", timeout=30)
        start = script("return document.getElementById('video').currentTime")
        chromium.wait(lambda: script("return document.getElementById('video').currentTime")
                      > start + 3, 20, "the segments-only player's clock to advance 3 s")
        plain = script("return hls.latency")
        print(f"hls.js without low-latency mode (baseline): latency {plain:.2f} s, "
              f"loaded {script('return window.loaded')}")
        assert script("return window.loaded.parts") == 0
        assert latency < plain
    finally:
        site.stop()
