"""The websocket asks the app server: connect and playStream allowed or refused, and the
ConnectionStatusEvent/StreamStatusEvent it is told."""
import json

from twisted.internet.task import Clock

from sipgw.config import Config
from sipgw.hooks import Hooks, parse_apps
from sipgw.streams.registry import StreamRegistry
from sipgw.ws.signalling import SignallingFactory

from test_signalling import LOCAL, UPGRADE, TcpLikeTransport  # noqa: E402
from fakes import HeldHttpClient


def _session(apps="app1=http://127.0.0.1:9091/App", **settings):
    clock, client = Clock(), HeldHttpClient()
    hooks = Hooks(clock, client, apps=parse_apps(apps))
    factory = SignallingFactory(Config(**settings), StreamRegistry(), clock, hooks=hooks)
    protocol = factory.buildProtocol(LOCAL)
    protocol.makeConnection(TcpLikeTransport(peerAddress=LOCAL))
    protocol.dataReceived(UPGRADE)
    sent = []
    protocol.sendMessage = lambda payload, *a, **kw: sent.append(json.loads(payload))
    protocol.sendClose = lambda *a, **kw: sent.append("closed")
    return protocol, client, sent


def _posted(client):
    return [(url.rsplit("/", 1)[1], body.get("status")) for url, body, _ in client.posts]


def test_connect_refused_by_the_app_fails_and_closes():
    """connect answered 403: the client gets a fail with the reason and the socket closes."""
    protocol, client, sent = _session()
    protocol.on_connection({"appKey": "app1", "authToken": "t"})
    assert not protocol.established and sent == []
    url, body, _ = client.posts[0]
    assert url.endswith("/App/connect") and body["appKey"] == "app1" and body["sessionId"]
    client.answer(0, 403)
    assert sent[0]["message"] == "fail" and "403 Forbidden" in sent[0]["data"][0]["info"]
    assert sent[-1] == "closed" and not protocol.established


def test_connect_allowed_then_play_refused_gets_failed():
    """connect 200 establishes (ConnectionStatusEvent ESTABLISHED told); playStream refused
    gives the player FAILED with the reason, and StreamStatusEvent FAILED is told."""
    protocol, client, sent = _session()
    protocol.on_connection({"appKey": "app1"})
    client.answer(0, 200)
    assert protocol.established and sent[0]["message"] == "getUserData"
    assert _posted(client)[1] == ("ConnectionStatusEvent", "ESTABLISHED")
    client.answer(1, 200)
    protocol.on_play_stream({"mediaSessionId": "m1", "name": "s1", "sdp": "v=0"})
    assert _posted(client)[2] == ("playStream", None)
    assert "sdp" not in client.posts[2][1]
    client.answer(2, 404)
    event = sent[-1]
    assert event["message"] == "notifyStreamStatusEvent"
    assert event["data"][0]["status"] == "FAILED" and "404" in event["data"][0]["info"]
    assert _posted(client)[3] == ("StreamStatusEvent", "FAILED")


def test_other_app_keys_are_not_asked():
    """A client of an appKey without app (and no defaultApp) connects as before."""
    protocol, client, sent = _session()
    protocol.on_connection({"appKey": "someone-else"})
    assert protocol.established and client.posts == []


def test_the_ws_auth_token_is_not_told_to_the_app():
    """The authToken that admitted the client (ws_auth_tokens) is sipgw's secret: neither the
    connect query nor ConnectionStatusEvent carries it; the client's other fields go."""
    protocol, client, sent = _session(ws_auth_tokens="ws-secret-0123456789")
    protocol.on_connection({"appKey": "app1", "authToken": "ws-secret-0123456789",
                            "custom": {"room": "7"}})
    client.answer(0, 200)
    assert protocol.established and len(client.posts) == 2
    for url, body, _ in client.posts:
        assert "authToken" not in body and body["custom"] == {"room": "7"}


def test_players_waiting_for_the_app_count_toward_max_viewers_per_connection():
    """playStream queries the app has not answered count as players: beyond
    max_viewers_per_connection the next one is FAILED at once, nothing more is asked (a
    client could otherwise pile up queries, each holding its message)."""
    protocol, client, sent = _session(max_viewers_per_connection=2)
    protocol.on_connection({"appKey": "app1"})
    client.answer(0, 200)
    for n in range(3):
        protocol.on_play_stream({"mediaSessionId": f"m{n}", "name": "s1", "sdp": "v=0"})
    assert [p for p in _posted(client) if p[0] == "playStream"] == [("playStream", None)] * 2
    event = sent[-1]["data"][0]
    assert (event["mediaSessionId"], event["status"]) == ("m2", "FAILED")
    assert "max_viewers_per_connection=2" in event["info"]
