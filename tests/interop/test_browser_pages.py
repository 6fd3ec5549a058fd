"""sipgw's own pages in headless Chromium: the "SIP as stream" page drives a whole baresip
call by clicks and plays its stream; the Player page plays one stream in four windows."""
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select


def _page(daemon, name, **params):
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return f"http://127.0.0.1:{daemon.rest_port}/{name}" + (f"?{query}" if query else "")


def _ws(daemon):
    return f"ws://127.0.0.1:{daemon.settings['ws_port']}"


def _type(driver, element_id, text):
    field = driver.find_element(By.ID, element_id)
    field.clear()
    field.send_keys(text)


def test_sip_as_stream_page_drives_a_call_by_clicks(daemon, kamailio, baresip, chromium):
    """Fill the form, click Call: ESTABLISHED, the embedded player plays 320x240 with frames
    advancing, DTMF is sent; click Hang up: FINISH and the player STOPPED."""
    chromium.open(_page(daemon, "sip-as-stream.html", ws=_ws(daemon)))
    driver = chromium.driver
    for element_id, text in (("sipLogin", "alice"), ("sipPassword", "alicepw"),
                             ("sipDomain", "127.0.0.1"), ("sipPort", str(kamailio.port)),
                             ("callee", "bob"), ("toStream", "page-stream")):
        _type(driver, element_id, text)
    driver.find_element(By.ID, "callBtn").click()

    chromium.wait_text("callStatus", "ESTABLISHED", timeout=20)
    call_id = chromium.text("callId")
    assert daemon.call(call_id)["streamName"] == "page-stream"
    chromium.wait_text("playerStatus", "PLAYING", timeout=20)
    chromium.wait(lambda: chromium.video_size("#video") == (320, 240), 10,
                  "the embedded video to be 320x240")
    chromium.wait_media_flowing(timeout=20, frames=25, packets=25)

    _type(driver, "dtmf", "12#")
    Select(driver.find_element(By.ID, "dtmfType")).select_by_value("INFO")
    driver.find_element(By.ID, "dtmfBtn").click()
    chromium.wait_text("dtmfResult", "DTMF 12# sent (INFO)", timeout=10)
    assert chromium.text("error") == ""

    driver.find_element(By.ID, "hangupBtn").click()
    chromium.wait_text("callStatus", "FINISH", timeout=10)
    chromium.wait_text("playerStatus", "STOPPED", timeout=10)
    assert daemon.call(call_id)["status"] == "FINISH"
    assert driver.find_element(By.ID, "callBtn").is_enabled()


def test_sip_as_stream_page_shows_rest_errors(daemon, chromium):
    """A call the REST API refuses shows the error body's message, and the form stays usable."""
    chromium.open(_page(daemon, "sip-as-stream.html", ws=_ws(daemon)))
    driver = chromium.driver
    for element_id, text in (("sipLogin", "alice"), ("sipDomain", "-bad-"),
                             ("callee", "bob")):
        _type(driver, element_id, text)
    driver.find_element(By.ID, "callBtn").click()
    error = chromium.wait(lambda: chromium.text("error"), 10, "an error to show")
    assert "sipDomain must be a host name or IP address" in error
    assert "HTTP 400" in error
    assert chromium.text("callStatus") == "FAILED"
    assert driver.find_element(By.ID, "callBtn").is_enabled()


def test_player_page_plays_one_stream_in_four_windows(daemon, kamailio, baresip, chromium):
    """Four Player pages play one call's stream at once, each 320x240 with frames advancing;
    Stop in one leaves the others playing; terminating the call moves the rest to STOPPED."""
    daemon.call_bob(kamailio.port, "four")

    windows = []
    for _ in range(4):
        windows.append(chromium.open(_page(daemon, "player.html", ws=_ws(daemon))))
        _type(chromium.driver, "streamName", "stream-four")
        chromium.driver.find_element(By.ID, "playBtn").click()
    for window in windows:
        chromium.driver.switch_to.window(window)
        chromium.wait_text("status", "PLAYING", timeout=20)
        chromium.wait(lambda: chromium.video_size("#video") == (320, 240), 10,
                      "the video to be 320x240")
    for window in windows:
        chromium.driver.switch_to.window(window)
        chromium.wait_media_flowing(timeout=20, frames=25, packets=25)
    assert daemon.rest("/stream/find", {"name": "stream-four"})

    # Stop in one window (stopStream): that one shows STOPPED, the other three play on.
    chromium.driver.switch_to.window(windows[-1])
    chromium.driver.find_element(By.ID, "stopBtn").click()
    chromium.wait_text("status", "STOPPED", timeout=10)
    assert chromium.driver.find_element(By.ID, "playBtn").is_enabled()
    chromium.driver.switch_to.window(windows[0])
    chromium.wait_media_flowing(timeout=20, frames=10, packets=10)

    daemon.rest("/call/terminate", {"callId": "four"})
    for window in windows[:-1]:
        chromium.driver.switch_to.window(window)
        chromium.wait_text("status", "STOPPED", timeout=10)
