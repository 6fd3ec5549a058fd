"""Players over the WCS websocket protocol (aiortc clients): a baresip call's stream
plays to several viewers at once, and every viewer is told when the call ends."""
import asyncio

import pytest

from sipgw_daemon import Sipgw
from ws_viewer import WcsSession, refused_then_let_in


@pytest.fixture
def daemon(tmp_path):
    gw = Sipgw(str(tmp_path), ws_connection_timeout=2).start()
    yield gw
    gw.stop()


def _run(coro):
    return asyncio.run(asyncio.wait_for(coro, 90))


def test_four_viewers_play_then_get_stopped(daemon, kamailio, baresip):
    """Four viewers of one stream each decode 320x240 video and get audio; terminate -> STOPPED."""
    daemon.call_bob(kamailio.port, "w1")
    url = f"ws://127.0.0.1:{daemon.settings['ws_port']}"

    async def scenario():
        session = WcsSession(url)
        hello = await session.connect()
        assert hello["message"] == "getUserData"
        players = [await session.play("stream-w1") for _ in range(4)]
        for player in players:
            await session.status(player.id, "PLAYING", timeout=20)
        deadline = asyncio.get_running_loop().time() + 20
        while any(p.frames["video"] < 10 or p.frames["audio"] < 10 for p in players):
            assert asyncio.get_running_loop().time() < deadline, [p.frames for p in players]
            await asyncio.sleep(0.1)
        sizes = {p.size for p in players}
        daemon.rest("/call/terminate", {"callId": "w1"})
        stopped = [await session.status(p.id, "STOPPED", "FAILED") for p in players]
        for player in players:
            await player.close()
        session.close()
        return sizes, stopped

    sizes, stopped = _run(scenario())
    assert sizes == {(320, 240)}
    assert {s["status"] for s in stopped} == {"STOPPED"}


def test_audio_is_transcoded_to_opus_for_a_player_without_g711(daemon, kamailio, baresip):
    """A player that takes only opus gets the callee's G.711 audio as opus, video untouched."""
    daemon.call_bob(kamailio.port, "w3")
    url = f"ws://127.0.0.1:{daemon.settings['ws_port']}"

    async def scenario():
        session = WcsSession(url)
        await session.connect()
        player = await session.play("stream-w3", audio_codecs=["audio/opus"])
        await session.status(player.id, "PLAYING", timeout=20)
        deadline = asyncio.get_running_loop().time() + 20
        while player.frames["audio"] < 25 or player.frames["video"] < 10:
            assert asyncio.get_running_loop().time() < deadline, player.frames
            await asyncio.sleep(0.1)
        await player.close()
        session.close()
        return player.answer_sdp

    answer = _run(scenario())
    audio = answer.split("m=audio", 1)[1].split("m=", 1)[0]
    assert "opus/48000" in audio and "PCMU" not in audio
    assert daemon.stream("stream-w3")["audioCodec"] in ("PCMU", "PCMA")
    daemon.rest("/call/terminate", {"callId": "w3"})


def test_unknown_stream_and_bad_frames(daemon):
    """Unknown stream -> FAILED 'Stream not found'; junk frames get 'fail', not a drop;
    publishStream gets FAILED (published); a client ping gets no pong (the WebSDK has no
    handler for it)."""
    url = f"ws://127.0.0.1:{daemon.settings['ws_port']}"

    async def scenario():
        session = WcsSession(url)
        await session.connect()
        session.send_raw(b"not json")
        first = await session.wait_for(lambda m: m["message"] == "fail")
        session.send("publishStream", {"mediaSessionId": "p1", "name": "x"})
        second = await session.status("p1", "FAILED")
        session.send("ping", {})
        session.send("playStream", {"mediaSessionId": "v1", "name": "nope", "sdp": "v=0"})
        missing = await session.status("v1", "FAILED")
        session.close()
        return first, second, missing, session.events

    first, second, missing, messages = _run(scenario())
    assert first["data"][0]["info"] == "frame is not JSON"
    assert "not supported" in second["info"]
    assert missing["info"] == "Stream not found"
    assert not [m for m in messages if m["message"] == "pong"]


def test_socket_without_connection_is_closed(daemon):
    """A websocket that never sends 'connection' is closed after ws_connection_timeout."""
    url = f"ws://127.0.0.1:{daemon.settings['ws_port']}"

    async def scenario():
        session = WcsSession(url)
        await session.open()
        return await session.wait_for(lambda m: m["message"] == "__closed__", timeout=10)

    closed = _run(scenario())
    assert closed["data"][0]["code"] == 4000


def test_bad_offers_fail_the_play_not_the_session(daemon, kamailio, baresip):
    """Garbage SDP and an offer with no usable codec give FAILED with a reason; the session
    goes on; an oversized frame closes the socket cleanly (1009)."""
    daemon.call_bob(kamailio.port, "w2")
    url = f"ws://127.0.0.1:{daemon.settings['ws_port']}"
    vp8_only = ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
                "a=group:BUNDLE 0\r\na=msid-semantic:WMS *\r\n"
                "m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\n"
                "a=rtcp:9 IN IP4 0.0.0.0\r\na=ice-ufrag:abcd\r\n"
                "a=ice-pwd:abcdefghijklmnopqrstuvwx\r\na=fingerprint:sha-256 "
                + ":".join(["AB"] * 32) + "\r\na=setup:actpass\r\na=mid:0\r\n"
                "a=recvonly\r\na=rtcp-mux\r\na=rtpmap:96 VP8/90000\r\n")

    async def scenario():
        session = WcsSession(url)
        await session.connect()
        session.send("playStream", {"mediaSessionId": "g1", "name": "stream-w2",
                                    "sdp": "v=0\r\nthis is not sdp"})
        garbage = await session.status("g1", "FAILED")
        session.send("playStream", {"mediaSessionId": "g2", "name": "stream-w2"})
        missing = await session.status("g2", "FAILED")
        session.send("playStream", {"mediaSessionId": "g3", "name": "stream-w2", "sdp": vp8_only})
        no_codec = await session.status("g3", "FAILED")
        player = await session.play("stream-w2")  # the session still works
        await session.status(player.id, "PLAYING", timeout=20)
        await player.close()
        session.send_raw(b'{"message": "ping", "data": ["' + b"x" * 300_000 + b'"]}')
        closed = await session.wait_for(lambda m: m["message"] == "__closed__")
        return garbage, missing, no_codec, closed

    garbage, missing, no_codec, closed = _run(scenario())
    assert garbage["info"].startswith("Bad SDP")
    assert missing["info"] == "playStream needs the offer SDP"
    assert no_codec["info"] == "No common codecs"
    assert closed["data"][0]["code"] == 1009
    daemon.rest("/call/terminate", {"callId": "w2"})


def test_auth_token_is_checked_when_configured(tmp_path):
    """With ws_auth_tokens set, a wrong token is refused and closed; a right one connects."""
    gw = Sipgw(str(tmp_path), ws_auth_tokens="s3cret-token").start()
    try:
        refused, closed, accepted = _run(refused_then_let_in(
            f"ws://127.0.0.1:{gw.settings['ws_port']}", "wrong", "s3cret-token"))
    finally:
        gw.stop()
    assert refused["message"] == "fail" and closed["data"][0]["code"] == 4003
    assert accepted["message"] == "getUserData"


def test_wss_serves_the_same_protocol(tmp_path):
    """With a certificate and key, wss:// speaks the same signalling."""
    import ssl
    from certs import TestCA
    ca = TestCA(tmp_path)
    cert, key = ca.issue(["127.0.0.1"], tmp_path)
    from peers import free_port
    gw = Sipgw(str(tmp_path), wss_port=free_port("tcp"), https_port=free_port("tcp"),
               wss_certificate=str(cert),
               wss_private_key=str(key)).start()
    try:
        context = ssl.create_default_context(cafile=str(ca.path))

        async def scenario():
            session = WcsSession(f"wss://127.0.0.1:{gw.settings['wss_port']}")
            hello = await session.connect(ssl=context)
            session.close()
            return hello

        hello = _run(scenario())
    finally:
        gw.stop()
    assert hello["message"] == "getUserData"


def test_a_stream_without_media_yet_plays_and_stops(daemon):
    """A player of a call still ringing (no media) gets PLAYING once its WebRTC connection is
    up, as WCS sends it (the WebSDK cannot stop a stream still PENDING), and stopStream then
    answers STOPPED."""
    from peers import free_port
    silent = free_port("udp")  # nobody answers the INVITE: the call stays PENDING
    daemon.rest("/call/startup", {"callId": "q1", "callee": "bob", "toStream": "stream-q1",
                                  "sipLogin": "alice", "sipDomain": "127.0.0.1",
                                  "sipPort": str(silent)})
    url = f"ws://127.0.0.1:{daemon.settings['ws_port']}"

    async def scenario():
        session = WcsSession(url)
        await session.connect()
        player = await session.play("stream-q1", decode=False)
        playing = await session.status(player.id, "PLAYING", timeout=20)
        session.send("stopStream", {"mediaSessionId": player.id, "name": "stream-q1"})
        stopped = await session.status(player.id, "STOPPED", "FAILED", timeout=10)
        await player.close()
        session.close()
        return playing, stopped, player.frames

    playing, stopped, frames = _run(scenario())
    assert frames == {"video": 0, "audio": 0}
    assert stopped["status"] == "STOPPED"
    assert daemon.call("q1")["status"] in ("PENDING", "TRYING")
    daemon.rest("/call/terminate", {"callId": "q1"})
