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
from sipgw.rest.whep import NO_RESTART, parse_sdpfrag
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
    """Unknown stream 404, not SDP 415 or 400, PATCH of an unknown session 404, other
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
    assert (patch.code, patch.json()["error"]) == (404, "WHEP session not found")
    post_only = http_get(daemon.site, "/whep/s1")
    assert (post_only.code, post_only.headers["allow"]) == (405, "POST, OPTIONS")
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


TRICKLE = {"Content-Type": "application/trickle-ice-sdpfrag"}


def _without_candidates(sdp: str) -> tuple[str, list[str]]:
    """The offer as a trickling player sends it (no candidates yet), and its candidate lines."""
    lines = sdp.splitlines()
    candidates = [line for line in lines if line.startswith("a=candidate:")]
    kept = [line for line in lines if not line.startswith(("a=candidate:", "a=end-of-candidates"))]
    return "\r\n".join(kept) + "\r\n", candidates


def test_a_player_that_trickles_its_candidates_plays(daemon, http_exchange):
    """The offer without candidates gets its 201; the candidates PATCHed afterwards (with the
    session's ETag, ufrag and pwd) get 204, and only then does ICE connect and audio flow."""
    async def scenario():
        stop = asyncio.Event()
        feeder = asyncio.ensure_future(publish(daemon.stream, stop))
        pc = RTCPeerConnection()
        pc.addTransceiver("audio", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        offer, candidates = _without_candidates(pc.localDescription.sdp)
        assert candidates
        response = await answered(http_exchange(daemon.site, "/whep/s1", SDP, method="POST",
                                                body=offer.encode()))
        assert response.code == 201, response.body
        # the player applies the answer without our candidates, so neither side can check
        # until the PATCH (else we would learn it peer-reflexive from its checks)
        answer, ours = _without_candidates(response.body.decode())
        assert ours
        await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        viewer = next(iter(daemon.whep.sessions.values()))
        await asyncio.sleep(1.0)
        state_before = viewer.pc.iceConnectionState  # nothing to check against yet
        ice = [line for line in offer.splitlines() if line.startswith(("a=ice-ufrag", "a=ice-pwd"))]
        mid = next(line for line in offer.splitlines() if line.startswith("a=mid:"))
        fragment = "\r\n".join(ice + ["m=audio 9 UDP/TLS/RTP/SAVPF 0", mid, *candidates,
                                       "a=end-of-candidates"]) + "\r\n"
        patched = await answered(http_exchange(
            daemon.site, response.headers["location"],
            {**TRICKLE, "If-Match": response.headers["etag"]}, method="PATCH",
            body=fragment.encode()))
        track = pc.getReceivers()[0].track
        frames = [await asyncio.wait_for(track.recv(), 10) for _ in range(5)]
        stop.set()
        await feeder
        await pc.close()
        await asyncio.sleep(0.1)
        return state_before, patched, frames, viewer

    state_before, patched, frames, viewer = asyncio.run(scenario())
    assert state_before in ("new", "checking")
    assert (patched.code, patched.body) == (204, b"")
    assert len(frames) == 5 and viewer.trickled >= 1


def test_trickle_refusals(daemon, http_exchange):
    """PATCH of a live session: another ETag 412, not an sdpfrag 415, another ufrag (an ICE
    restart) 422, a candidate that does not parse 400, more than whep_max_trickle_candidates
    429."""
    async def scenario():
        pc, response = await play(daemon, http_exchange)
        where, etag = response.headers["location"], response.headers["etag"]
        ufrag = next(line for line in pc.localDescription.sdp.splitlines()
                     if line.startswith("a=ice-ufrag:"))

        async def patch(body, headers=None):
            return await answered(http_exchange(daemon.site, where, headers or TRICKLE,
                                                method="PATCH", body=body.encode()))
        out = {
            "etag": await patch("a=end-of-candidates\r\n", {**TRICKLE, "If-Match": '"other"'}),
            "type": await patch("a=end-of-candidates\r\n", SDP),
            "restart": await patch("a=ice-ufrag:newone\r\na=ice-pwd:newpasswordnewpassword\r\n"),
            "bad": await patch(f"{ufrag}\r\na=candidate:garbage\r\n"),
            "many": await patch("".join(f"a=candidate:{i} 1 udp 1 127.0.0.1 {9000 + i} typ host\r\n"
                                        for i in range(40))),
            "fine": await patch(f"{ufrag}\r\na=candidate:1 1 udp 1 127.0.0.1 9 typ host\r\n",
                                {**TRICKLE, "If-Match": etag}),
        }
        await pc.close()
        await asyncio.sleep(0.1)
        return out

    out = asyncio.run(scenario())
    assert out["etag"].code == 412 and out["type"].code == 415
    assert (out["restart"].code, out["restart"].json()["error"]) == (422, NO_RESTART)
    assert out["bad"].code == 400 and "does not parse" in out["bad"].json()["error"]
    assert out["many"].code == 429 and "whep_max_trickle_candidates=32" in out["many"].json()["error"]
    assert out["fine"].code == 204


def test_sdpfrag_parsing():
    """RFC 8840 fragments: candidates keep the mid of their m= section; ufrag, pwd and
    end-of-candidates are read; a line that is not SDP is refused."""
    frag = parse_sdpfrag("a=ice-ufrag:u\r\na=ice-pwd:p\r\nm=audio 9 RTP/AVP 0\r\na=mid:0\r\n"
                         "a=candidate:1 1 udp 1 10.0.0.1 5000 typ host\r\n"
                         "m=video 9 RTP/AVP 96\r\na=candidate:2 1 udp 1 10.0.0.1 5002 typ host\r\n"
                         "a=end-of-candidates\r\n")
    assert (frag.ufrag, frag.pwd, frag.end) == ("u", "p", True)
    assert frag.candidates == [("1 1 udp 1 10.0.0.1 5000 typ host", "0"),
                               ("2 1 udp 1 10.0.0.1 5002 typ host", None)]
    with pytest.raises(ValueError, match="not an SDP line"):
        parse_sdpfrag("hello")
