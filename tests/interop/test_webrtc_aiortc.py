"""Players over the WCS websocket protocol (aiortc clients): a baresip call's stream
plays to several viewers at once, and every viewer is told when the call ends."""
import asyncio

import pytest

from sipgw_daemon import Sipgw
from ws_viewer import WcsSession


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


def test_unknown_stream_and_bad_frames(daemon):
    """Unknown stream -> FAILED 'Stream not found'; junk frames get 'fail', not a drop."""
    url = f"ws://127.0.0.1:{daemon.settings['ws_port']}"

    async def scenario():
        session = WcsSession(url)
        await session.connect()
        session.send_raw(b"not json")
        first = await session.wait_for(lambda m: m["message"] == "fail")
        session.send("publishStream", {"mediaSessionId": "p1", "name": "x"})
        second = await session.wait_for(lambda m: m["message"] == "fail")
        session.send("playStream", {"mediaSessionId": "v1", "name": "nope", "sdp": "v=0"})
        missing = await session.status("v1", "FAILED")
        session.send("ping", {})
        pong = await session.wait_for(lambda m: m["message"] == "pong")
        session.close()
        return first, second, missing, pong

    first, second, missing, pong = _run(scenario())
    assert first["data"][0]["info"] == "frame is not JSON"
    assert "not supported" in second["data"][0]["info"]
    assert missing["info"] == "Stream not found"


def test_socket_without_connection_is_closed(daemon):
    """A websocket that never sends 'connection' is closed after ws_connection_timeout."""
    url = f"ws://127.0.0.1:{daemon.settings['ws_port']}"

    async def scenario():
        session = WcsSession(url)
        loop = asyncio.get_running_loop()
        from autobahn.asyncio.websocket import WebSocketClientFactory
        from ws_viewer import _Protocol
        factory = WebSocketClientFactory(url)
        factory.protocol = _Protocol
        factory.opened = loop.create_future()
        factory.messages = asyncio.Queue()
        session.factory = factory
        await loop.create_connection(factory, "127.0.0.1", daemon.settings["ws_port"])
        await factory.opened
        return await session.wait_for(lambda m: m["message"] == "__closed__", timeout=10)

    closed = _run(scenario())
    assert closed["data"][0]["code"] == 4000
