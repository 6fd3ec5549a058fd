"""A browser that is not on loopback: headless Chromium with its DEFAULT WebRTC settings (no
mDNS switch, no loopback flag) in a second network namespace, joined to the daemon's by a veth
pair (10.77.0.1/30 here, 10.77.0.2/30 there), plays a baresip call's stream with the unchanged
WebSDK Player page:

* served over https with a test CA (Chromium trusts the leaf's key), the page is a secure
  context and plays over WebRTC (wss signalling; aiortc learns the browser's address as a
  peer-reflexive candidate, the browser hides its own behind mDNS);
* served over plain http from the daemon's veth address, it is not a secure context: the
  WebSDK plays over MSE (media as tags over a second websocket, H.264 + AAC).
"""
import base64
import hashlib
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from selenium.webdriver.common.by import By

import peers
from certs import TestCA
from conftest import require
from sipgw_daemon import Sipgw

PLAYER_PAGE = "examples/demo/streaming/player/player.html"
NEAR, FAR = "10.77.0.1", "10.77.0.2"
#: the harness's flags without the two that change WebRTC's defaults
DEFAULT_WEBRTC_FLAGS = tuple(f for f in peers.CHROMIUM_FLAGS
                             if f not in ("--allow-loopback-in-peer-connection",
                                          "--disable-features=WebRtcHideLocalIpsWithMdns"))


@pytest.fixture
def veth():
    """The browser's namespace and the veth pair to it; both gone afterwards."""
    require("unshare", "nsenter", "ip")
    pair = peers.VethNamespace(NEAR, FAR)
    try:
        yield pair.start()
    finally:
        pair.stop()


@pytest.fixture
def tls(tmp_path):
    """A test CA and a certificate for the daemon's veth address: (cert, key, spki hash)."""
    ca = TestCA(tmp_path)
    cert, key = ca.issue([NEAR], tmp_path)
    leaf = x509.load_pem_x509_certificate(cert.read_bytes())
    spki = leaf.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    return cert, key, base64.b64encode(hashlib.sha256(spki).digest()).decode()


@pytest.fixture
def daemon(tmp_path, veth, tls):
    """sipgw with its websockets (ws and wss) and ICE on the veth address; REST and SIP stay
    on loopback for the test and the callee."""
    gw = Sipgw(str(tmp_path), ws_bind_address=NEAR, webrtc_ice_address=NEAR,
               wss_port=peers.free_port("tcp"), wss_certificate=str(tls[0]),
               wss_private_key=str(tls[1]),
               trusted_networks=f"127.0.0.0/8,{NEAR}/30").start()
    try:
        yield gw
    finally:
        gw.stop()


@pytest.fixture
def far_chromium(tmp_path, veth, tls):
    """Chromium in the far namespace, default WebRTC, trusting the daemon's certificate key."""
    require("chromium", "chromedriver")
    browser = peers.Chromium(tmp_path, netns=veth, flags=DEFAULT_WEBRTC_FLAGS + (
        f"--ignore-certificate-errors-spki-list={tls[2]}",))
    try:
        yield browser.start()
    finally:
        browser.stop()


def _site(tls=None):
    return peers.StaticSite(peers.websdk_dir(), host=NEAR, tls=tls).start()


def _play(chromium, page_url, ws_url, stream_name):
    chromium.open(page_url)
    driver = chromium.driver
    chromium.wait(lambda: driver.find_element(By.ID, "playBtn").text == "Start", 15,
                  "the Player page to initialise")
    for element_id, text in (("url", ws_url), ("streamName", stream_name)):
        field = driver.find_element(By.ID, element_id)
        field.clear()
        field.send_keys(text)
    driver.find_element(By.ID, "playBtn").click()
    started = time.monotonic()
    chromium.wait_text("status", "PLAYING", timeout=30)
    chromium.wait(lambda: chromium.video_size("#remoteVideo video")[0] > 0, 30,
                  "a first decoded picture")
    print(f"{stream_name}: Start to first picture {time.monotonic() - started:.2f} s "
          f"(polled every 0.1 s)")
    return driver


def _provider(driver):
    return driver.execute_script("return Flashphoner.getMediaProviders()[0]")


def test_https_player_across_a_veth_plays_over_webrtc_with_default_chromium(
        daemon, kamailio, baresip, far_chromium, tls):
    """From https://10.77.0.1 (a secure context) the Player picks WebRTC and, over wss,
    plays 320x240 with frames decoded and audio packets arriving; the browser is
    not on the daemon's loopback (its page origin and its peer are the veth addresses)."""
    daemon.call_bob(kamailio.port, "veth1")
    site = _site(tls=tls[:2])
    try:
        driver = _play(far_chromium, site.url(PLAYER_PAGE),
                       f"wss://{NEAR}:{daemon.settings['wss_port']}", "stream-veth1")
        assert _provider(driver) == "WebRTC"
        assert driver.execute_script("return window.isSecureContext") is True
        far_chromium.wait(lambda: far_chromium.video_size("#remoteVideo video") == (320, 240),
                          15, "the video to be 320x240")
        rows = far_chromium.wait_media_flowing(timeout=30, frames=25, packets=25)
        assert rows[0]["state"] == "connected" and rows[0]["video"]["frameWidth"] == 320
        remote = driver.execute_script("""return (async () => {
            const out = [];
            for (const pc of window.__peerConnections) {
              (await pc.getStats()).forEach(r => {
                if (r.type === 'candidate-pair' && r.state === 'succeeded' && r.nominated)
                  out.push(r.remoteCandidateId);
              });
              (await pc.getStats()).forEach(r => {
                if (out.includes(r.id)) out.push(r.address || r.ip);
              });
            }
            return out; })();""")
        assert NEAR in remote, remote
        daemon.rest("/call/terminate", {"callId": "veth1"})
        far_chromium.wait_text("status", "STOPPED", timeout=15)
    finally:
        site.stop()


def test_http_player_across_a_veth_plays_over_mse(daemon, kamailio, baresip, far_chromium):
    """From http://10.77.0.1 (not a secure context) the Player picks MSE: PLAYING, a
    320x240 video whose currentTime advances and whose audio is decoded; STOPPED after the
    call ends."""
    daemon.call_bob(kamailio.port, "veth2")
    site = _site()
    try:
        driver = _play(far_chromium, site.url(PLAYER_PAGE),
                       f"ws://{NEAR}:{daemon.settings['ws_port']}", "stream-veth2")
        assert _provider(driver) == "MSE"
        assert driver.execute_script("return window.isSecureContext") is False
        video = "#remoteVideo video"
        far_chromium.wait(lambda: far_chromium.video_size(video) == (320, 240), 20,
                          "the MSE video to be 320x240")
        state = ("const v = document.querySelector(arguments[0]);"
                 "return [v.currentTime, v.webkitAudioDecodedByteCount,"
                 " v.webkitVideoDecodedByteCount, v.paused];")
        first = driver.execute_script(state, video)
        later = far_chromium.wait(
            lambda: (s := driver.execute_script(state, video))[0] >= first[0] + 2 and
            s[1] > first[1] and s, 20, "currentTime to advance 2 s with audio decoded")
        assert later[1] > 0 and later[2] > 0 and later[3] is False, later
        assert "over MSE" in daemon.log()
        daemon.rest("/call/terminate", {"callId": "veth2"})
        far_chromium.wait_text("status", "STOPPED", timeout=15)
    finally:
        site.stop()


def test_wsplayer_is_refused_and_the_player_page_shows_why(daemon, kamailio, baresip,
                                                           far_chromium):
    """The Player page told to use WSPlayer (``?mediaProvider=WSPlayer``): FAILED with the
    reason in its info line; the page stays usable (Start again)."""
    daemon.call_bob(kamailio.port, "veth3")
    site = _site()
    try:
        far_chromium.open(site.url(PLAYER_PAGE + "?mediaProvider=WSPlayer"))
        driver = far_chromium.driver
        far_chromium.wait(lambda: driver.find_element(By.ID, "playBtn").text == "Start", 15,
                          "the Player page to initialise")
        assert _provider(driver) == "WSPlayer"
        for element_id, text in (("url", f"ws://{NEAR}:{daemon.settings['ws_port']}"),
                                 ("streamName", "stream-veth3")):
            field = driver.find_element(By.ID, element_id)
            field.clear()
            field.send_keys(text)
        driver.find_element(By.ID, "playBtn").click()
        far_chromium.wait_text("status", "FAILED", timeout=20)
        assert "WSPlayer is not supported by sipgw" in far_chromium.text("info")
        far_chromium.wait(lambda: driver.find_element(By.ID, "playBtn").text == "Start", 10,
                          "Start to come back")
    finally:
        site.stop()
