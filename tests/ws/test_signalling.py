"""Websocket signalling admission: the trusted_networks allowlist and ws_auth_tokens."""
import json

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

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
     "StreamStatusEvent", "name must be a string"),
    (b'{"message": "playStream", "data": [{"mediaSessionId": "m", "name": "s", "sdp": [1]}]}',
     "StreamStatusEvent", "sdp must be a string"),
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
    the socket still answers a ping afterwards."""
    protocol, transport, sent = open_session()
    sent.clear()
    protocol.dataReceived(client_frame(frame))
    assert len(sent) == 1 and sent[0]["message"] == "fail", sent
    fail = sent[0]["data"][0]
    assert fail["apiMethod"] == method and info in fail["info"]
    assert fail["id"] == ("m" if method == "StreamStatusEvent" else None)
    assert not transport.disconnecting and protocol.state == protocol.STATE_OPEN
    protocol.dataReceived(client_frame(b'{"message": "ping", "data": []}'))
    assert sent[-1]["message"] == "pong"
