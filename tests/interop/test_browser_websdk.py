"""The WebSDK's own Player page (npm @flashphoner/websdk, served unchanged) plays the stream
of a baresip call in headless Chromium, as a person would drive it."""
import time

from selenium.webdriver.common.by import By


PLAYER_PAGE = "examples/demo/streaming/player/player.html"


def _type(driver, element_id, text):
    field = driver.find_element(By.ID, element_id)
    field.clear()
    field.send_keys(text)


def play_with_player_page(chromium, websdk_site, ws_port: int, stream: str):
    """The unchanged Player page pointed at ``ws_port`` plays ``stream``: PLAYING, 320x240
    video and audio flowing (asserted); returns the driver."""
    chromium.open(websdk_site.url(PLAYER_PAGE))
    driver = chromium.driver
    chromium.wait(lambda: driver.find_element(By.ID, "playBtn").text == "Start", 10,
                  "the Player page to initialise")
    _type(driver, "url", f"ws://127.0.0.1:{ws_port}")
    _type(driver, "streamName", stream)
    driver.find_element(By.ID, "playBtn").click()
    chromium.wait_text("status", "PLAYING", timeout=20)
    assert chromium.wait(lambda: chromium.video_size("#remoteVideo video") == (320, 240), 10,
                         "the video to be 320x240")
    rows = chromium.wait_media_flowing(timeout=20, frames=25, packets=25)
    assert len(rows) == 1 and rows[0]["video"]["frameWidth"] == 320, rows
    return driver


def test_websdk_player_plays_a_call_then_shows_stopped(daemon, kamailio, baresip, chromium,
                                                       websdk_site):
    """The unchanged WebSDK Player shows PLAYING with 320x240 video and audio arriving, and
    STOPPED once the call is terminated over REST."""
    daemon.call_bob(kamailio.port, "sdk1")
    driver = play_with_player_page(chromium, websdk_site, daemon.settings["ws_port"],
                                   "stream-sdk1")
    assert driver.find_element(By.ID, "playBtn").text == "Stop"

    daemon.rest("/call/terminate", {"callId": "sdk1"})
    chromium.wait_text("status", "STOPPED", timeout=10)
    assert driver.find_element(By.ID, "playBtn").text == "Start"


SIP_AS_RTMP_PAGE = "examples/demo/sip/sip-as-rtmp-2/sip-as-rtmp-2.html"


def _call_from_sip_as_rtmp_page(chromium, url, daemon, kamailio, nginx_rtmp, rtmp_stream):
    """Open a SIP-as-RTMP page, fill its forms for alice calling bob, tick audio and video,
    click Call; the driver."""
    chromium.open(url)
    driver = chromium.driver
    chromium.wait(lambda: driver.find_element(By.ID, "callBtn").text == "Call", 10,
                  "the SIP-as-RTMP page to initialise")
    fields = {"restUrl": f"http://127.0.0.1:{daemon.rest_port}/rest-api",
              "sipLogin": "alice", "sipAuthenticationName": "alice", "sipPassword": "alicepw",
              "sipDomain": "127.0.0.1", "sipOutboundProxy": f"127.0.0.1:{kamailio.port}",
              "sipPort": str(kamailio.port), "callee": "bob", "rtmpUrl": nginx_rtmp.url(),
              "rtmpStream": rtmp_stream}
    for element_id, value in fields.items():
        _type(driver, element_id, value)
    for box in ("hasAudio", "hasVideo"):  # the page turns a ticked box's value into "true"
        driver.find_element(By.ID, box).click()
    driver.find_element(By.ID, "callBtn").click()
    return driver


def test_websdk_sip_as_rtmp_page_calls_pushes_and_hangs_up(daemon, kamailio, baresip, chromium,
                                                           websdk_site, nginx_rtmp):
    """The unchanged WebSDK SIP-as-RTMP page drives sipgw over REST from another origin: Call
    shows ESTABLISHED, Start republishes to nginx-rtmp as rtmp_<stream>, Hangup shows the end."""
    driver = _call_from_sip_as_rtmp_page(chromium, websdk_site.url(SIP_AS_RTMP_PAGE), daemon,
                                         kamailio, nginx_rtmp, "sdkrtmp")

    chromium.wait_text("callStatus", "ESTABLISHED", timeout=30)
    assert driver.find_element(By.ID, "callBtn").text == "Hangup"
    (call,) = [c for c in daemon.rest("/call/find_all") if c["streamName"] == "sdkrtmp"]
    assert call["hasVideo"] is True and call["caller"] == "alice"

    chromium.wait(lambda: driver.find_element(By.ID, "startRtmp").is_enabled(), 10,
                  "the RTMP Start button")
    driver.find_element(By.ID, "startRtmp").click()
    chromium.wait(lambda: driver.find_element(By.ID, "startRtmp").text == "Stop", 15,
                  "/push/startup to answer with a mediaSessionId")
    push = chromium.wait(
        lambda: [p for p in daemon.rest("/push/find_all") if p["status"] == "PUBLISHING"], 30,
        "the push to publish")
    assert push[0]["streamName"] == "rtmp_sdkrtmp"

    driver.find_element(By.ID, "callBtn").click()  # Hangup
    chromium.wait_text("callStatus", "FINISH", "FINISHED", timeout=20)
    assert daemon.call(call["callId"]) is None or \
        daemon.call(call["callId"])["status"] == "FINISH"


SIP_AS_RTMP_3_PAGE = "examples/demo/sip/sip-as-rtmp-3/sip-as-rtmp-3.html"


def test_websdk_sip_as_rtmp_3_page_republishes_the_call(daemon, kamailio, baresip, chromium,
                                                        websdk_site, nginx_rtmp):
    """The unchanged sip-as-rtmp-3 page sends rtmpUrl + rtmpStream on /call/startup (no
    toStream): Call shows ESTABLISHED and the call is republished to nginx-rtmp as
    rtmp_<rtmpStream>; DTMF the call refuses leaves the page polling (ESTABLISHED, not
    FINISHED); Hangup shows the end."""
    driver = _call_from_sip_as_rtmp_page(chromium, websdk_site.url(SIP_AS_RTMP_3_PAGE), daemon,
                                         kamailio, nginx_rtmp, "sdk3")

    chromium.wait_text("callStatus", "ESTABLISHED", timeout=30)
    (call,) = [c for c in daemon.rest("/call/find_all") if c["streamName"] == "sdk3"]
    assert (call["rtmpStream"], call["rtmpUrl"]) == ("sdk3", nginx_rtmp.url())
    chromium.wait(lambda: daemon.call(call["callId"])["rtmpStreamStatus"] == "PUBLISHING", 30,
                  "the call's push to publish")
    assert [p["streamName"] for p in daemon.rest("/push/find_all")] == ["rtmp_sdk3"]

    _type(driver, "dtmf", "x")  # not a DTMF digit: refused, the call goes on
    driver.find_element(By.ID, "dtmfBtn").click()
    time.sleep(4)  # one status poll (3 s) after the answer
    assert driver.find_element(By.ID, "callStatus").text == "ESTABLISHED"
    assert driver.find_element(By.ID, "callBtn").text == "Hangup"

    driver.find_element(By.ID, "callBtn").click()  # Hangup
    chromium.wait_text("callStatus", "FINISH", "FINISHED", timeout=20)
