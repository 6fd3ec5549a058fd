"""The WebRTC viewer: the outgoing timeline, the offer check, when PLAYING is said."""
from sipgw.webrtc.viewer import SinkTrack, offered_codecs


def _track():
    return SinkTrack.__new__(SinkTrack)  # the timeline needs no sink or peer connection


def _timeline(timestamps, clock_rate=90000):
    track = _track()
    track.prev_ts, track.pts, track.step, track.discontinuities = None, 0, 0, 0
    return [track._pts(ts, clock_rate) for ts in timestamps], track


def test_pts_follow_rtp_timestamps_across_the_32_bit_wrap():
    """Consecutive frames keep their spacing, also where the RTP timestamp wraps."""
    start = 0xFFFFFFFF - 3600
    pts, _ = _timeline([start, (start + 3600) & 0xFFFFFFFF, (start + 7200) & 0xFFFFFFFF])
    assert pts == [0, 3600, 7200]


def test_a_jump_backwards_continues_the_timeline():
    """A callee's source looping (timestamps jump back 10 s) keeps pts growing by one step."""
    pts, track = _timeline([900000, 903600, 907200, 3600, 7200])
    assert pts == [0, 3600, 7200, 10800, 14400] and track.discontinuities == 1


def test_a_huge_jump_forwards_is_a_discontinuity_too():
    """A gap of more than 5 s (a new sender) is bridged by one usual step, not replayed."""
    pts, track = _timeline([0, 160, 320, 320 + 8000 * 60, 320 + 8000 * 60 + 160], clock_rate=8000)
    assert pts == [0, 160, 320, 480, 640] and track.discontinuities == 1


def test_offered_codecs_per_kind():
    """The rtpmap names of each m-section, upper case."""
    sdp = ("v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111 0\r\na=rtpmap:111 opus/48000/2\r\n"
           "a=rtpmap:0 PCMU/8000\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 VP8/90000\r\n")
    assert offered_codecs(sdp) == {"audio": {"OPUS", "PCMU"}, "video": {"VP8"}}


def test_playing_once_connected_before_any_media():
    """PLAYING is sent when the peer connection is up, media or not (the WebSDK cannot stop a
    stream still PENDING), and only once: the first frame after it says nothing more."""
    from sipgw.streams.stream import Stream
    from sipgw.webrtc.viewer import Viewer
    seen = []
    viewer = Viewer(Stream("s1"), media_session_id="v1", ice_servers=[],
                    on_state=lambda status, info: seen.append(status))
    viewer.pc._RTCPeerConnection__connectionState = "connected"
    viewer.pc.emit("connectionstatechange")
    assert seen == ["PLAYING"]
    viewer.first_media("video")
    assert seen == ["PLAYING"]
