"""WHEP playback on the REST port of the whole daemon (service.make_service): an aiortc
client written from the spec plays a stream (a fake one, fed PCMU frames) and stops it with
DELETE; the limits are the websocket players'; the refusals are the REST API's."""
from __future__ import annotations

import asyncio

import aioice.ice
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription
from twisted.internet.address import IPv4Address

from fakes import UDPMemoryReactor
from sipgw.config import Config
from sipgw.rest.router import RestSite
from sipgw.rest.whep import NO_PATCH
from sipgw.streams.stream import MediaFrame, Stream

STRANGER = IPv4Address("TCP", "192.0.2.7", 40313)
STREAMS_TOKEN = "streams-token-0123456789ab"
CALLS_TOKEN = "calls-token-0123456789abcd"
SDP = {"Content-Type": "application/sdp"}


@pytest.fixture
def daemon(tmp_path, monkeypatch):
    """The daemon with a stream s1 (PCMU audio, no video) and ICE on 127.0.0.1 only."""
    from sipgw.service import make_service
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])
    clock = UDPMemoryReactor()
    config = Config(record_dir=str(tmp_path), max_viewers_per_stream=2,
                    rest_auth_tokens=f"{STREAMS_TOKEN}:streams,{CALLS_TOKEN}:calls")
    top = make_service(config, clock)
    top.site = RestSite(top.getServiceNamed("rest").args[1].resource, reactor=clock, timeout=None)
    top.whep = top.site.resource.children[b"whep"]
    top.stream = Stream("s1", has_video=False)
    top.stream.audio_codec = "PCMU"
    top.calls.streams.add(top.stream)
    return top


async def answered(pending, timeout: float = 10):
    """The response of an exchange the server answers later."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not pending.done:
        assert asyncio.get_running_loop().time() < deadline, "no answer"
        await asyncio.sleep(0.01)
    return pending.response


async def play(daemon, exchange, name: str = "s1"):
    """A recvonly audio offer POSTed to /whep/<name>: (peer connection, 201 response)."""
    pc = RTCPeerConnection()
    pc.addTransceiver("audio", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    response = await answered(exchange(daemon.site, f"/whep/{name}", SDP, method="POST",
                                       body=pc.localDescription.sdp.encode()))
    assert response.code == 201, response.body
    await pc.setRemoteDescription(RTCSessionDescription(response.body.decode(), "answer"))
    return pc, response


async def publish(stream, stop: asyncio.Event):
    """20 ms PCMU frames until ``stop``."""
    timestamp = 0
    while not stop.is_set():
        stream.publish(MediaFrame("audio", "PCMU", 8000, timestamp, b"\xff" * 160))
        timestamp += 160
        await asyncio.sleep(0.02)


def test_an_aiortc_player_plays_over_whep_then_deletes_its_session(daemon, http_get,
                                                                    http_exchange):
    """POST offer -> 201 with the answer, Location and ETag; audio frames arrive; the player
    counts as a viewer; DELETE Location -> 200 and the session and its viewer are gone."""
    async def scenario():
        stop = asyncio.Event()
        feeder = asyncio.ensure_future(publish(daemon.stream, stop))
        pc, response = await play(daemon, http_exchange)
        track = pc.getReceivers()[0].track
        frames = [await asyncio.wait_for(track.recv(), 10) for _ in range(10)]
        viewers = http_get(daemon.site, "/metrics").body.decode()
        deleted = http_get(daemon.site, response.headers["location"], method="DELETE")
        again = http_get(daemon.site, response.headers["location"], method="DELETE")
        stop.set()
        await feeder
        await pc.close()
        await asyncio.sleep(0.1)
        return response, frames, viewers, deleted, again

    response, frames, viewers, deleted, again = asyncio.run(scenario())
    assert response.headers["content-type"] == "application/sdp"
    assert "m=audio" in response.body.decode() and "PCMU/8000" in response.body.decode()
    session_id = response.headers["location"].rsplit("/", 1)[1]
    assert response.headers["location"] == f"/whep/s1/{session_id}"
    assert response.headers["etag"] == f'"{session_id}"'
    assert len(frames) == 10 and frames[0].sample_rate in (8000, 48000)
    assert 'sipgw_viewers{kind="whep"} 1.0' in viewers
    assert (deleted.code, deleted.body) == (200, b"")
    assert again.code == 404 and again.json()["error"] == "WHEP session not found"
    assert daemon.whep.sessions == {} and daemon.signalling.viewers_of(daemon.stream) == 0


def test_the_stream_ending_ends_the_whep_session(daemon, http_exchange):
    """When the call behind the stream ends, its WHEP sessions end too."""
    async def scenario():
        pc, _ = await play(daemon, http_exchange)
        assert len(daemon.whep.sessions) == 1
        daemon.stream.end()
        daemon.calls.streams.remove(daemon.stream)
        await pc.close()
        await asyncio.sleep(0.1)

    asyncio.run(scenario())
    assert daemon.whep.sessions == {} and daemon.signalling.viewers_of(daemon.stream) == 0


def test_a_player_gone_before_the_answer_leaves_no_session(daemon, http_exchange):
    """A client that disconnects while its answer is made leaves no session or viewer."""
    async def scenario():
        pc = RTCPeerConnection()
        pc.addTransceiver("audio", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        pending = http_exchange(daemon.site, "/whep/s1", SDP, method="POST",
                                body=pc.localDescription.sdp.encode())
        assert len(daemon.whep.sessions) == 1
        pending.disconnect()
        for _ in range(200):
            if not daemon.whep.sessions:
                break
            await asyncio.sleep(0.01)
        await pc.close()
        return pending.done

    assert asyncio.run(scenario()) is False
    assert daemon.whep.sessions == {} and daemon.signalling.viewers_of(daemon.stream) == 0


def test_whep_players_count_with_websocket_players(daemon, http_get):
    """max_viewers_per_stream counts websocket and WHEP players together: 429 beyond it."""
    daemon.signalling.watch(daemon.stream, object(), "ws1")
    daemon.signalling.watch(daemon.stream, object(), "ws2")
    refused = http_get(daemon.site, "/whep/s1", SDP, method="POST", body=b"v=0\r\n")
    assert (refused.code, refused.json()["error"]) == (
        429, "too many viewers of s1: 2 of max_viewers_per_stream=2")
    assert daemon.whep.sessions == {}


def test_refusals(daemon, http_get):
    """Unknown stream 404, not SDP 415 or 400, PATCH 405 (no trickle ICE) with Allow, other
    methods 405, OPTIONS names Accept-Post; strangers need a token with the streams scope."""
    assert http_get(daemon.site, "/whep/nope", SDP, method="POST", body=b"v=0\r\n").code == 404
    wrong_type = http_get(daemon.site, "/whep/s1", {"Content-Type": "application/json"},
                          method="POST", body=b"{}")
    assert (wrong_type.code, wrong_type.json()["error"]) == (
        415, "Content-Type must be application/sdp")
    assert http_get(daemon.site, "/whep/s1", SDP, method="POST", body=b"hello").code == 400
    patch = http_get(daemon.site, "/whep/s1/abc",
                     {"Content-Type": "application/trickle-ice-sdpfrag"}, method="PATCH",
                     body=b"a=end-of-candidates")
    assert (patch.code, patch.json()["error"], patch.headers["allow"]) == (
        405, NO_PATCH, "DELETE, OPTIONS")
    assert http_get(daemon.site, "/whep/s1").code == 405
    assert http_get(daemon.site, "/whep/s1/abc", method="DELETE").code == 404
    assert http_get(daemon.site, "/whep").code == 404
    options = http_get(daemon.site, "/whep/s1", method="OPTIONS")
    assert (options.code, options.headers["accept-post"]) == (204, "application/sdp")
    missing = http_get(daemon.site, "/whep/s1", SDP, STRANGER, method="POST", body=b"v=0\r\n")
    assert missing.code == 401 and missing.headers["www-authenticate"] == 'Bearer realm="sipgw"'
    calls = http_get(daemon.site, "/whep/nope", {**SDP, "Authorization": f"Bearer {CALLS_TOKEN}"},
                     STRANGER, method="POST", body=b"v=0\r\n")
    assert (calls.code, calls.json()["error"]) == (
        403, "the bearer token does not have the streams scope")
    streams = http_get(daemon.site, "/whep/nope", {**SDP, "Authorization":
                       f"Bearer {STREAMS_TOKEN}"}, STRANGER, method="POST", body=b"v=0\r\n")
    assert streams.code == 404
