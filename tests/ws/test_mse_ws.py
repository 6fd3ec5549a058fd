"""MSE players over the websocket as the WebSDK's MSE provider speaks to WCS: playStream with
mediaProvider "MSE" answered with an SDP saying which kinds come, the provider's second socket
saying connectMediaTransport with the session's authToken and getting binary tags, the
bounded send queue dropping to the next keyframe, and WSPlayer refused in a way the WebSDK
handles."""
import json

from media.synthetic import ClockedCalls, frames
from sipgw.config import Config
from sipgw.media.mse import TAG_VIDEO, parse_tags
from sipgw.streams.registry import StreamRegistry
from sipgw.streams.stream import Stream
from sipgw.ws.mse import MEDIA_TRANSPORT_CLOSED, NO_MEDIA_TRANSPORT, SendQueue, answer_sdp
from sipgw.ws.signalling import SignallingFactory

from test_signalling import LOCAL, UPGRADE, TcpLikeTransport

WEBSDK_MSE_OFFER = ("v=0\r\no=- 1988962254 1988962254 IN IP4 0.0.0.0\r\nc=IN IP4 0.0.0.0\r\n"
                    "t=0 0\r\nm=video 0 RTP/AVP 112\r\na=rtpmap:112 H264/90000\r\na=recvonly\r\n"
                    "m=audio 0 RTP/AVP 108\r\na=rtpmap:108 mpeg4-generic/48000/1\r\n"
                    "a=recvonly\r\n")


# -- the send queue -------------------------------------------------------------------
def test_send_queue_sends_at_once_queues_while_paused_and_flushes_on_resume():
    """Chunks go straight out while the transport takes them, wait while it is paused, and
    leave in order when it resumes."""
    sent = []
    q = SendQueue(sent.append, max_bytes=100)
    q.offer(b"k" * 10, True)
    q.pauseProducing()
    q.offer(b"a" * 10, False)
    q.offer(b"b" * 10, False)
    assert sent == [b"k" * 10] and q.queued_bytes == 20
    q.resumeProducing()
    assert sent == [b"k" * 10, b"a" * 10, b"b" * 10] and q.queued_bytes == 0


def test_a_slow_socket_drops_to_the_next_keyframe_and_asks_for_one():
    """Past max_bytes queued, everything queued and every chunk up to the next keyframe are
    dropped, and a keyframe is requested once; the keyframe then starts the queue again."""
    sent, asked = [], []
    q = SendQueue(sent.append, max_bytes=25, on_drop=lambda: asked.append(1))
    q.pauseProducing()
    for chunk in (b"a" * 10, b"b" * 10, b"c" * 10, b"d" * 10):
        q.offer(chunk, False)
    assert q.items == type(q.items)() and q.waiting_keyframe and asked == [1]
    q.offer(b"K" * 10, True)
    q.offer(b"e" * 10, False)
    q.resumeProducing()
    assert sent == [b"K" * 10, b"e" * 10]
    assert (q.dropped, q.overflows) == (4, 1)


def test_an_audio_only_queue_goes_on_after_an_overflow():
    """Without video no chunk is a keyframe: an overflow drops what is queued and the queue
    takes the next chunk (waiting for a keyframe would silence the player for good)."""
    sent = []
    q = SendQueue(sent.append, max_bytes=25, keyframes=False)
    q.pauseProducing()
    for chunk in (b"a" * 10, b"b" * 10, b"c" * 10):
        q.offer(chunk, False)
    q.offer(b"d" * 10, False)
    q.resumeProducing()
    assert not q.waiting_keyframe and sent == [b"c" * 10, b"d" * 10]


def test_the_answer_turns_off_the_kinds_the_stream_lacks():
    """The WebSDK's demuxer takes a kind whose m-line has port 0 as absent."""
    assert "m=video 1 " in answer_sdp(True, True) and "m=audio 1 " in answer_sdp(True, True)
    assert "m=audio 0 " in answer_sdp(False, True) and "m=video 0 " in answer_sdp(True, False)


# -- the websocket flow -------------------------------------------------------------------
def _socket(factory):
    protocol = factory.buildProtocol(LOCAL)
    transport = TcpLikeTransport(peerAddress=LOCAL)
    protocol.makeConnection(transport)
    protocol.dataReceived(UPGRADE)
    sent, closed = [], []
    protocol.sendMessage = lambda payload, isBinary=False, **kw: sent.append(
        payload if isBinary else json.loads(payload))
    protocol.sendClose = lambda code=None, reason=None: closed.append(code)
    return protocol, transport, sent, closed


def _say(protocol, message, obj):
    protocol.onMessage(json.dumps({"message": message, "data": [obj]}).encode(), False)


def _session(**settings):
    factory = SignallingFactory(Config(**settings), StreamRegistry(), ClockedCalls())
    stream = factory.registry.add(Stream("s1"))
    stream.audio_codec, stream.video_codec = "PCMU", "H264"
    signalling, _, sent, _ = _socket(factory)
    _say(signalling, "connection", {"msePacketizationVersion": 2})
    (user_data,) = [m for m in sent if m["message"] == "getUserData"]
    assert "MSE" in user_data["data"][0]["mediaProviders"]
    return factory, stream, signalling, sent, user_data["data"][0]["authToken"]


def _play_mse(signalling, media_session_id="m1"):
    _say(signalling, "playStream", {"mediaSessionId": media_session_id, "name": "s1",
                                    "mediaProvider": "MSE", "sdp": WEBSDK_MSE_OFFER})


def _statuses(sent):
    return [(m["data"][0]["status"], m["data"][0]["info"]) for m in sent
            if isinstance(m, dict) and m["message"] == "notifyStreamStatusEvent"]


def test_an_mse_player_gets_tags_on_its_media_socket_then_stopped():
    """playStream over MSE is answered setRemoteSDP (video and audio on); the provider's second
    socket says connectMediaTransport with the authToken and gets binary tags starting with a
    keyframe (its AVC sequence header first); PLAYING then; stopStream gives STOPPED and
    closes the media socket."""
    factory, stream, signalling, sent, token = _session()
    _play_mse(signalling)
    (answer,) = [m for m in sent if m["message"] == "setRemoteSDP"]
    assert answer["data"][0] == "m1"
    assert "m=video 1 " in answer["data"][1] and "m=audio 1 " in answer["data"][1]
    assert _statuses(sent) == []

    media, _, media_sent, media_closed = _socket(factory)
    media.onMessage(json.dumps({"message": "connectMediaTransport",
                                "data": [{"authToken": token}]}).encode(), False)
    assert media.media_viewer is signalling.viewers["m1"]
    for _, frame in frames(2.0):
        stream.publish(frame)
    factory.reactor.run_until(lambda: len(media_sent) > 20, what="tags on the media socket")
    first = parse_tags(media_sent[0])
    assert (first[0][0], first[0][2][:2]) == (TAG_VIDEO, b"\x17\x00")
    assert _statuses(sent) == [("PLAYING", "")]

    _say(signalling, "stopStream", {"mediaSessionId": "m1"})
    assert _statuses(sent)[-1] == ("STOPPED", "Stopped by user")
    assert media_closed == [1000] and media.media_viewer is None and signalling.viewers == {}


def test_a_media_socket_with_a_wrong_token_is_refused():
    """connectMediaTransport whose authToken names no session with an MSE player waiting: a
    fail, and the socket is closed."""
    factory, stream, signalling, sent, token = _session()
    media, _, media_sent, media_closed = _socket(factory)
    _say(media, "connectMediaTransport", {"authToken": token})  # no MSE player yet
    _play_mse(signalling)
    other, _, other_sent, other_closed = _socket(factory)
    _say(other, "connectMediaTransport", {"authToken": "not-" + token})
    for answers, closed in ((media_sent, media_closed), (other_sent, other_closed)):
        assert answers[-1]["message"] == "fail" and closed == [4003]
    assert not signalling.viewers["m1"].attached


def test_an_mse_player_without_media_socket_fails_and_one_that_loses_it_too():
    """No connectMediaTransport within ws_connection_timeout: FAILED saying so; a media socket
    that closes under a playing player: FAILED "Media transport closed"."""
    factory, stream, signalling, sent, token = _session(ws_connection_timeout=5)
    _play_mse(signalling, "m1")
    factory.reactor.advance(5)
    assert _statuses(sent) == [("FAILED", NO_MEDIA_TRANSPORT)] and signalling.viewers == {}
    _play_mse(signalling, "m2")
    media, _, _, _ = _socket(factory)
    _say(media, "connectMediaTransport", {"authToken": token})
    media.onClose(False, 1006, "gone")
    assert _statuses(sent)[-1] == ("FAILED", MEDIA_TRANSPORT_CLOSED)
    assert signalling.viewers == {}


def test_an_mse_player_of_an_audio_only_stream_gets_video_turned_off():
    """A stream without video is answered with the video m-line at port 0."""
    factory, stream, signalling, sent, token = _session()
    stream.has_video = False
    _play_mse(signalling)
    (answer,) = [m for m in sent if m["message"] == "setRemoteSDP"]
    assert "m=video 0 " in answer["data"][1] and "m=audio 1 " in answer["data"][1]


def test_wsplayer_is_refused_with_a_failed_status():
    """mediaProvider WSPlayer gets FAILED naming it (the WebSDK releases the stream), not a
    'Bad SDP' nobody understands."""
    factory, stream, signalling, sent, token = _session()
    _say(signalling, "playStream", {"mediaSessionId": "w1", "name": "s1",
                                    "mediaProvider": "WSPlayer", "sdp": "v=0\r\n"})
    assert _statuses(sent) == [("FAILED",
                                "WSPlayer is not supported by sipgw: play with WebRTC or MSE")]
    assert signalling.viewers == {}


def test_the_media_socket_gets_keep_alive_pings():
    """The MSE provider answers a JSON ping with pong: its socket gets WCS's keep-alive too."""
    factory, stream, signalling, sent, token = _session(keep_alive_server_interval=1000)
    _play_mse(signalling)
    media, _, media_sent, media_closed = _socket(factory)
    _say(media, "connectMediaTransport", {"authToken": token})
    factory.reactor.advance(1)
    assert media_sent[-1] == {"message": "ping", "data": []}
    media.onMessage(b'{"message": "pong"}', False)
    assert media._missed == 0 and media_closed == []
