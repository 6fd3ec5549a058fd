"""A real call's stream (baresip through Kamailio) played by WHEP clients (aiortc, written
from the spec: POST the offer, read the 201's answer, DELETE the Location; and the daemon's
whep.html page in Chromium), and the daemon scraped as Prometheus would (/metrics parsed by
prometheus_client's parser, /health)."""
import asyncio
import json
import urllib.error
import urllib.request

import aioice.ice
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from prometheus_client.parser import text_string_to_metric_families
from selenium.webdriver.common.by import By

from peers import wait_for


def http(daemon, method: str, path: str, body: bytes = b"", content_type: str = ""):
    """(status, headers, body) of one request to the daemon's REST port."""
    headers = {"Content-Type": content_type} if content_type else {}
    request = urllib.request.Request(f"http://127.0.0.1:{daemon.rest_port}{path}",
                                     data=body or None, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def scrape(daemon) -> dict:
    status, headers, body = http(daemon, "GET", "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode())
            for s in family.samples}


def test_a_whep_player_plays_a_calls_stream_and_prometheus_sees_it(daemon, kamailio, baresip,
                                                                   monkeypatch):
    """The WHEP client decodes the call's 320x240 video and its audio, counts as a WHEP viewer,
    DELETE ends its session; /metrics shows the established call, its setup time, SIP messages
    and RTP packets; /health is 200."""
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])
    daemon.call_bob(kamailio.port, "h1")

    async def scenario():
        loop = asyncio.get_running_loop()
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.addTransceiver("video", direction="recvonly")
        pc.addTransceiver("audio", direction="recvonly")
        frames, sizes = {"video": 0, "audio": 0}, set()

        async def consume(track):
            while True:
                frame = await track.recv()
                frames[track.kind] += 1
                if track.kind == "video":
                    sizes.add((frame.width, frame.height))
        pc.on("track", lambda track: asyncio.ensure_future(consume(track)))
        await pc.setLocalDescription(await pc.createOffer())
        status, headers, answer = await loop.run_in_executor(None, lambda: http(
            daemon, "POST", "/whep/stream-h1", pc.localDescription.sdp.encode(),
            "application/sdp"))
        assert status == 201, answer
        await pc.setRemoteDescription(RTCSessionDescription(answer.decode(), "answer"))
        deadline = loop.time() + 20
        while frames["video"] < 10 or frames["audio"] < 10:
            assert loop.time() < deadline, frames
            await asyncio.sleep(0.1)
        during = await loop.run_in_executor(None, scrape, daemon)
        deleted = await loop.run_in_executor(None, lambda: http(daemon, "DELETE",
                                                                headers["Location"]))
        await pc.close()
        return headers, sizes, during, deleted

    headers, sizes, during, deleted = asyncio.run(asyncio.wait_for(scenario(), 90))
    assert headers["Content-Type"] == "application/sdp" and headers["ETag"]
    assert sizes == {(320, 240)}
    assert deleted[0] == 200
    assert during["sipgw_viewers", (("kind", "whep"),)] == 1
    assert during["sipgw_calls", (("status", "ESTABLISHED"),)] == 1
    assert during["sipgw_call_setup_seconds_count", ()] == 1
    assert during["sipgw_sip_messages_sent_total", (("code", ""), ("method", "INVITE"))] >= 1
    assert during["sipgw_rtp_packets_total", (("kind", "video"),)] > 0
    assert during["sipgw_rtp_packets_total", (("kind", "audio"),)] > 0
    assert json.loads(http(daemon, "GET", "/health")[2]) == {"status": "up", "sip": True,
                                                             "rest": True}
    wait_for(lambda: scrape(daemon)["sipgw_viewers", (("kind", "whep"),)] == 0, 5,
             "no WHEP viewer after DELETE")
    daemon.rest("/call/terminate", {"callId": "h1"})
    daemon.wait_status("h1", "FINISH")
    assert scrape(daemon)["sipgw_calls_ended_total", (("status", "FINISH"),)] == 1


def test_the_whep_page_plays_a_calls_stream_in_chromium(daemon, kamailio, baresip, chromium):
    """whep.html in Chromium plays a baresip call's stream: PLAYING, 320x240 video and audio
    flowing, one WHEP viewer; Stop DELETEs the session."""
    daemon.call_bob(kamailio.port, "h2")
    chromium.open(f"http://127.0.0.1:{daemon.rest_port}/whep.html?streamName=stream-h2&autoplay")
    chromium.wait_text("status", "PLAYING", timeout=20)
    chromium.wait(lambda: chromium.video_size("#video") == (320, 240), 10,
                  "the video to be 320x240")
    chromium.wait_media_flowing(timeout=20, frames=25, packets=25)
    assert scrape(daemon)["sipgw_viewers", (("kind", "whep"),)] == 1
    chromium.driver.find_element(By.ID, "stopBtn").click()
    chromium.wait_text("status", "STOPPED", timeout=10)
    wait_for(lambda: scrape(daemon)["sipgw_viewers", (("kind", "whep"),)] == 0, 5,
             "the WHEP session to end with Stop")
    daemon.rest("/call/terminate", {"callId": "h2"})
