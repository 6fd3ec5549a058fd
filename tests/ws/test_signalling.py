"""Websocket signalling admission: the trusted_networks allowlist and ws_auth_tokens."""
import json

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from sipgw.config import Config
from sipgw.streams.registry import StreamRegistry
from sipgw.ws.signalling import SignallingFactory

LOCAL = IPv4Address("TCP", "127.0.0.1", 50000)
STRANGER = IPv4Address("TCP", "192.0.2.7", 50001)
UPGRADE = (b"GET / HTTP/1.1\r\nHost: gw.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


class TcpLikeTransport(StringTransport):
    """Unregistering with no producer is a no-op, as on a TCP transport (Autobahn does it when
    it refuses an upgrade); StringTransport raises instead."""

    def unregisterProducer(self):
        if self.producer is not None:
            super().unregisterProducer()


def connect(peer, **settings):
    factory = SignallingFactory(Config(**settings), StreamRegistry(), Clock())
    protocol = factory.buildProtocol(peer)
    transport = TcpLikeTransport(peerAddress=peer)
    protocol.makeConnection(transport)
    protocol.dataReceived(UPGRADE)
    return protocol, transport


def status(transport) -> int:
    return int(transport.value().split(b" ", 2)[1])


@pytest.mark.parametrize("peer, code", [(LOCAL, 101), (STRANGER, 403)])
def test_without_tokens_only_trusted_networks_connect(peer, code):
    """With no ws_auth_tokens, a client outside trusted_networks is refused at the upgrade."""
    assert status(connect(peer)[1]) == code


def test_trusted_networks_setting_admits_a_lan():
    """A network added to trusted_networks may connect without a token."""
    _, transport = connect(STRANGER, trusted_networks="192.0.2.0/24")
    assert status(transport) == 101


def test_with_tokens_a_stranger_may_connect_and_must_send_one():
    """With ws_auth_tokens set, any address may open the socket; 'connection' needs the token."""
    protocol, transport = connect(STRANGER, ws_auth_tokens="app-key-1")
    assert status(transport) == 101
    sent = []
    protocol.sendMessage = lambda payload, *a, **kw: sent.append(json.loads(payload))
    protocol.sendClose = lambda *a, **kw: sent.append("closed")
    for bad in (["app-key-1"], {"k": 1}, "app-key-2", "app-key-1\u00e9"):  # unhashable too
        sent.clear()
        protocol.on_connection({"authToken": bad})
        assert sent[-1] == "closed" and not protocol.established
    protocol.on_connection({"appKey": "app-key-1"})
    assert protocol.established


def _playing(**settings):
    """An established player connection on a registry holding stream 's1'."""
    from sipgw.streams.stream import Stream
    protocol, _ = connect(LOCAL, **settings)
    stream = protocol.factory.registry.add(Stream("s1"))
    sent = []
    protocol.sendMessage = lambda payload, *a, **kw: sent.append(json.loads(payload))
    protocol.on_connection({})
    return protocol, stream, sent


def test_viewers_per_connection_are_capped_with_a_failed_status():
    """Beyond max_viewers_per_connection, playStream gets notifyStreamStatusEvent FAILED
    naming the setting; the socket stays open."""
    protocol, stream, sent = _playing(max_viewers_per_connection=2)
    protocol.viewers.update({"v1": object(), "v2": object()})
    protocol.on_play_stream({"mediaSessionId": "v3", "name": "s1", "sdp": "v=0\r\n"})
    assert sent[-1] == {"message": "notifyStreamStatusEvent", "data": [{
        "mediaSessionId": "v3", "name": "s1", "published": False, "status": "FAILED",
        "info": "too many streams played on this connection: 2 of max_viewers_per_connection=2"}]}
    assert "v3" not in protocol.viewers and protocol.state == protocol.STATE_OPEN


def test_viewers_per_stream_are_capped_across_connections():
    """Beyond max_viewers_per_stream (over every connection), playStream of that stream
    gets FAILED naming the setting."""
    protocol, stream, sent = _playing(max_viewers_per_stream=1)
    protocol.factory.watch(stream, object(), "elsewhere")
    protocol.on_play_stream({"mediaSessionId": "v1", "name": "s1", "sdp": "v=0\r\n"})
    assert sent[-1]["data"][0]["status"] == "FAILED"
    assert sent[-1]["data"][0]["info"] == "too many viewers of s1: 1 of max_viewers_per_stream=1"
    assert protocol.viewers == {}


def client_frame(payload: bytes, opcode: int = 1) -> bytes:
    """One masked client frame (RFC 6455 §5.2)."""
    mask = b"\x11\x22\x33\x44"
    size = len(payload)
    head = bytes([0x80 | opcode])
    if size < 126:
        head += bytes([0x80 | size])
    elif size < 65536:
        head += bytes([0x80 | 126]) + size.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + size.to_bytes(8, "big")
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def open_session(established=True):
    """A socket past the upgrade (and past 'connection'), recording what it sends."""
    protocol, transport = connect(LOCAL)
    sent = []
    real_send = protocol.sendMessage
    protocol.sendMessage = lambda payload, *a, **kw: (sent.append(json.loads(payload)),
                                                      real_send(payload, *a, **kw))
    if established:
        protocol.dataReceived(client_frame(b'{"message": "connection", "data": [{}]}'))
        assert sent[-1]["message"] == "getUserData"
    return protocol, transport, sent


MALFORMED = [
    (b'{"message": "stopStream", "data": [{"mediaSessionId": ["a"]}]}',
     "stopStream", "mediaSessionId must be a string"),
    (b'{"message": "stopStream", "data": [{"mediaSessionId": {"k": 1}}]}',
     "stopStream", "mediaSessionId must be a string"),
    (b'{"message": "stopStream", "data": [{}]}', "stopStream", "mediaSessionId is required"),
    (b'{"message": "stopStream", "data": {"mediaSessionId": "x"}}',
     "stopStream", "data must be a list holding one object"),
    (b'{"message": "stopStream", "data": [["x"]]}',
     "stopStream", "data must be a list holding one object"),
    (b'{"message": "stopStream"}', "stopStream", "data must be a list holding one object"),
    (b'{"message": "playStream", "data": [{"mediaSessionId": 5, "name": "s", "sdp": "v=0"}]}',
     "playStream", "mediaSessionId must be a string"),
    (b'{"message": "playStream", "data": [{"mediaSessionId": "m", "name": 7, "sdp": "v=0"}]}',
     "playStream", "name must be a string"),
    (b'{"message": "playStream", "data": [{"mediaSessionId": "m", "name": "s", "sdp": [1]}]}',
     "playStream", "sdp must be a string"),
    (b'{"message": "playStream", "data": [{"name": "s"}]}',
     "playStream", "mediaSessionId is required"),
    (b'{"message": "playStream", "data": 3}',
     "playStream", "data must be a list holding one object"),
    (b'{"message": "connection", "data": [{"appKey": 12}]}',
     "connection", "appKey must be a string"),
    (b'{"message": "connection", "data": [{"authToken": [1]}]}',
     "connection", "authToken must be a string"),
    (b'{"message": "stopStream", "data": [{"mediaSessionId": NaN}]}',
     "stopStream", "mediaSessionId must be a string"),
    (b'{"message": ["stopStream"]}', "unknown", "frame has no 'message'"),
    (b'[1, 2]', "unknown", "frame has no 'message'"),
    (b'"text"', "unknown", "frame has no 'message'"),
    (b'{"message": "nope", "data": [{"mediaSessionId": {}}]}', "nope", "not supported"),
    (b"[" * 100000, "unknown", "frame is not JSON"),
]


@pytest.mark.parametrize("frame, method, info", MALFORMED)
def test_each_malformed_message_gets_a_fail_and_the_socket_stays_open(frame, method, info):
    """Wrong types (unhashable ids, numbers for strings, lists for objects), missing fields
    and unparsable JSON each get one WCS 'fail' naming the problem (a string id is echoed); no traceback, no close;
    the socket still answers afterwards."""
    protocol, transport, sent = open_session()
    sent.clear()
    protocol.dataReceived(client_frame(frame))
    assert len(sent) == 1 and sent[0]["message"] == "fail", sent
    fail = sent[0]["data"][0]
    assert fail["apiMethod"] == method and info in fail["info"]
    assert fail["id"] == ("m" if b'"mediaSessionId": "m"' in frame else None)  # strings only
    assert fail["apiMethod"] != "StreamStatusEvent"  # the WebSDK would take it as a status
    assert not transport.disconnecting and protocol.state == protocol.STATE_OPEN
    protocol.dataReceived(client_frame(b'{"message": "availableStream", "data": [{"name": "x"}]}'))
    assert sent[-1]["message"] == "availableStream"


def _say(protocol, message, obj):
    protocol.onMessage(json.dumps({"message": message, "data": [obj]}).encode(), False)


def test_available_stream_is_answered_in_kind():
    """availableStream gets an availableStream reply whose status is the string the WebSDK
    compares ("true"/"false"), with the reason: never a fail that would blank the status."""
    protocol, stream, sent = _playing()
    _say(protocol, "availableStream", {"mediaSessionId": "p1", "name": "s1"})
    _say(protocol, "availableStream", {"mediaSessionId": "p2", "name": "nope"})
    assert sent[-2:] == [
        {"message": "availableStream",
         "data": [{"id": "p1", "name": "s1", "status": "true", "info": ""}]},
        {"message": "availableStream",
         "data": [{"id": "p2", "name": "nope", "status": "false", "info": "Stream not found"}]}]


def test_stop_stream_of_a_player_already_gone_is_stopped():
    """stopStream for a mediaSessionId no longer playing (failed, ended) is answered STOPPED,
    which releases the WebSDK's stream, not a fail that sets its status to undefined."""
    protocol, stream, sent = _playing()
    _say(protocol, "stopStream", {"mediaSessionId": "gone", "name": "s1"})
    assert sent[-1] == {"message": "notifyStreamStatusEvent", "data": [{
        "mediaSessionId": "gone", "name": "s1", "published": False, "status": "STOPPED",
        "info": ""}]}


def test_client_ping_is_not_answered_with_pong():
    """The WebSDK has no handler for a server 'pong' (it logs it as unknown): a client ping
    gets no answer."""
    protocol, stream, sent = _playing()
    before = len(sent)
    _say(protocol, "ping", None)
    _say(protocol, "pong", None)
    assert len(sent) == before


@pytest.mark.parametrize("message, obj, reply", [
    ("snapshot", {"mediaSessionId": "p1", "name": "s1"},
     {"message": "notifyStreamEvent", "data": [{"mediaSessionId": "p1", "name": "s1",
      "type": "snapshotFailed", "payload": {"info": "snapshots are not supported"}}]}),
    ("sendStreamEvent", {"mediaSessionId": "p1", "type": "audioMuted"}, None),
    ("publishStream", {"mediaSessionId": "p1", "name": "mine", "sdp": "v=0"},
     {"message": "notifyStreamStatusEvent", "data": [{"mediaSessionId": "p1", "name": "mine",
      "published": True, "status": "FAILED", "info": "publishing is not supported by sipgw"}]}),
    ("unPublishStream", {"mediaSessionId": "p1", "name": "mine"},
     {"message": "notifyStreamStatusEvent", "data": [{"mediaSessionId": "p1", "name": "mine",
      "published": True, "status": "UNPUBLISHED", "info": ""}]}),
    ("sendData", {"operationId": "op1", "payload": {"a": 1}},
     {"message": "DataStatusEvent", "data": [{"operationId": "op1", "status": "FAILED",
      "info": "no REST application to send data to"}]}),
    ("call", {"callId": "c1", "callee": "bob"},
     {"message": "finish", "data": [{"callId": "c1", "status": "FAILED",
      "info": "calls over the websocket are not supported by sipgw: use /rest-api/call/startup"}]}),
    *[(name, {"callId": "c1"},
       {"message": "fail", "data": [{"apiMethod": name, "id": None,
        "info": f"{name} over the websocket is not supported by sipgw (a player owns no call): "
                f"use /rest-api/call/{name}"}]}) for name in ("hold", "unhold", "transfer")],
    ("changeSomething", {"mediaSessionId": "p1"},
     {"message": "fail", "data": [{"apiMethod": "changeSomething", "id": "p1",
      "info": "changeSomething is not supported by sipgw"}]}),
])
def test_webSDK_messages_get_the_reply_their_handler_expects(message, obj, reply):
    """Each WebSDK client message gets the reply flashphoner-core.js handles for it (or none);
    a fail never says apiMethod StreamStatusEvent, which would set the stream's status to
    undefined."""
    protocol, stream, sent = _playing()
    before = len(sent)
    _say(protocol, message, obj)
    assert sent[before:] == ([reply] if reply else [])


def test_server_pings_and_closes_after_probes_missed():
    """Once established, a JSON ping every keep_alive.server_interval ms; a pong resets the
    count; after keep_alive.probes pings unanswered the connection is closed."""
    protocol, stream, sent = _playing(keep_alive_server_interval=5000, keep_alive_probes=3)
    closed = []
    protocol.sendClose = lambda code=None, reason=None: closed.append(code)
    clock = protocol.factory.reactor
    pings = lambda: sum(m == {"message": "ping", "data": []} for m in sent)
    clock.advance(4.9)
    assert pings() == 0
    clock.advance(0.1)
    assert pings() == 1
    for _ in range(10):  # a client that answers stays up as long as it likes
        _say(protocol, "pong", None)
        clock.advance(5)
    assert closed == [] and pings() == 11  # the last one unanswered: 1 missed
    clock.pump([5, 5])
    assert closed == [] and pings() == 13  # 3 missed
    clock.advance(5)
    assert closed == [4001]
    clock.pump([5] * 10)
    assert pings() == 13


def test_keep_alive_interval_zero_sends_no_ping():
    """keep_alive.server_interval=0: no pings, nothing closed."""
    protocol, stream, sent = _playing(keep_alive_server_interval=0)
    protocol.factory.reactor.pump([5] * 720)
    assert not [m for m in sent if m["message"] == "ping"]


def test_player_statuses_carry_the_websdk_info_texts():
    """A player whose publisher (the call) stops gets STOPPED "Stopped by publisher stop", not
    the call's reason; one stopped by its page "Stopped by user"; a mediaSessionId played twice
    FAILED "MediaSessionId is already in use" (STREAM_STATUS_INFO of constants.js)."""
    protocol, stream, sent = _playing()
    viewer = type("FakeViewer", (), {"stream": stream})()
    protocol._stop_viewer = lambda media_session_id, notify: protocol.viewers.pop(media_session_id)
    protocol.viewers.update({"p1": viewer, "p2": viewer})
    stream.end(info="Normal call clearing")
    protocol.stream_ended("p1", stream)
    _say(protocol, "stopStream", {"mediaSessionId": "p2", "name": "s1"})
    protocol.viewers["p3"] = viewer
    _say(protocol, "playStream", {"mediaSessionId": "p3", "name": "s1", "sdp": "v=0"})
    assert [(m["data"][0]["mediaSessionId"], m["data"][0]["status"], m["data"][0]["info"])
            for m in sent[-3:]] == [("p1", "STOPPED", "Stopped by publisher stop"),
                                   ("p2", "STOPPED", "Stopped by user"),
                                   ("p3", "FAILED", "MediaSessionId is already in use")]


def test_a_websdk_session_with_receive_probes_stays_up_ten_minutes():
    """A WebSDK session created with receiveProbes=3, probesInterval=5000 fails when 3 of its
    checks pass without a server message; with the default keep-alive and the WebSDK's pong
    to each ping it stays up for 10 minutes, and the server never closes it."""
    protocol, stream, sent = _playing()
    closed = []
    protocol.sendClose = lambda code=None, reason=None: closed.append(code)
    clock = protocol.factory.reactor
    seen, missing = len(sent), 0
    for _ in range(120):  # the WebSDK's WSPingReceiver, checking every 5 s for 10 minutes
        clock.advance(5)
        if len(sent) > seen:
            seen, missing = len(sent), 0
            if sent[-1]["message"] == "ping":
                _say(protocol, "pong", None)
        else:
            missing += 1
        assert missing < 3, "the WebSDK would declare the session FAILED"
    assert closed == []


def test_connections_are_limited_in_all_and_per_address():
    """Beyond ws_max_connections_per_address from one address, or ws_max_connections in all,
    the upgrade is refused with 503; a closed connection frees its place."""
    factory = SignallingFactory(Config(ws_max_connections=3, ws_max_connections_per_address=2),
                                StreamRegistry(), Clock())

    def open_from(host, port):
        peer = IPv4Address("TCP", host, port)
        protocol = factory.buildProtocol(peer)
        transport = TcpLikeTransport(peerAddress=peer)
        protocol.makeConnection(transport)
        protocol.dataReceived(UPGRADE)
        return protocol, transport

    first = open_from("127.0.0.1", 1)
    assert status(first[1]) == 101 and status(open_from("127.0.0.1", 2)[1]) == 101
    refused = open_from("127.0.0.1", 3)[1]
    assert status(refused) == 503 and b"ws_max_connections_per_address=2" in refused.value()
    assert status(open_from("127.0.0.2", 4)[1]) == 101
    assert status(open_from("127.0.0.3", 5)[1]) == 503  # three open in all
    first[0].connectionLost(Failure(ConnectionDone()))
    assert status(open_from("127.0.0.3", 6)[1]) == 101
    assert factory.clients == {"127.0.0.1": 1, "127.0.0.2": 1, "127.0.0.3": 1}


def test_messages_beyond_the_rate_are_dropped_and_the_client_told():
    """ws_messages_per_second (50, burst 100): the 101st message at once is dropped with one
    'fail' saying so; a second later 50 more are answered."""
    protocol, transport, sent = open_session()
    sent.clear()
    for _ in range(150):
        _say(protocol, "availableStream", {"name": "x"})
    answers = [m for m in sent if m["message"] == "availableStream"]
    fails = [m for m in sent if m["message"] == "fail"]
    assert len(answers) == 99  # the burst of 100, 'connection' included
    assert len(fails) == 1 and "ws_messages_per_second=50" in fails[0]["data"][0]["info"]
    assert protocol.state == protocol.STATE_OPEN
    sent.clear()
    protocol.factory.reactor.advance(1)
    for _ in range(60):
        _say(protocol, "availableStream", {"name": "x"})
    assert len([m for m in sent if m["message"] == "availableStream"]) == 50


def test_close_all_closes_every_open_websocket_and_fires_when_they_are_gone():
    """At shutdown every open websocket gets a 1001 close; the Deferred fires when the last
    has closed (or after the timeout when a client never answers)."""
    first, _, _ = open_session()
    factory = first.factory
    peer = IPv4Address("TCP", "127.0.0.1", 50002)
    second = factory.buildProtocol(peer)
    second.makeConnection(TcpLikeTransport(peerAddress=peer))
    second.dataReceived(UPGRADE)
    closes = []
    for proto in (first, second):
        proto.sendClose = lambda code=None, reason=None, p=proto: closes.append((p, code))
    done = factory.close_all(timeout=2)
    assert sorted(code for _, code in closes) == [1001, 1001] and not done.called
    first.connectionLost(Failure(ConnectionDone()))
    assert not done.called
    second.connectionLost(Failure(ConnectionDone()))
    assert done.called and factory.open_sockets == set() and factory.clients == {}
    third, _, _ = open_session()  # a client that never answers: the timeout ends the wait
    third.sendClose = lambda *a, **kw: None
    late = third.factory.close_all(timeout=2)
    third.factory.reactor.advance(2)
    assert late.called and third.factory._closed == []
