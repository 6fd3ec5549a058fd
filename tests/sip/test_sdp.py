"""Tests for sipgw.sip.sdp: RFC 4566 parsing, RFC 3264 offer/answer."""
import ast
import pathlib

import pytest
from hypothesis import given, strategies as st

from sipgw.sip import sdp
from sipgw.sip.sdp import (
    Codec, MediaDescription, Origin, SDPError, SessionDescription, is_hold, make_answer,
    make_offer, negotiate,
)


def crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode()


# baresip offering audio and two H264 modes; baresip lists packetization-mode first.
BARESIP_OFFER = crlf("""\
v=0
o=- 2890844526 2890844527 IN IP4 10.0.0.5
s=-
c=IN IP4 10.0.0.5
t=0 0
a=tool:baresip 3.10.1
m=audio 10000 RTP/AVP 96 0 8 101
b=AS:64
a=rtpmap:96 opus/48000/2
a=fmtp:96 stereo=1;sprop-stereo=1
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-15
a=sendrecv
a=label:1
m=video 10002 RTP/AVP 98 99
b=TIAS:1024000
a=rtpmap:98 H264/90000
a=fmtp:98 packetization-mode=0;profile-level-id=42e01f
a=rtpmap:99 H264/90000
a=fmtp:99 packetization-mode=1;profile-level-id=42e01f
a=framerate:30
a=sendrecv
""")

# baresip answering our make_offer() with its own payload type numbers.
BARESIP_ANSWER = crlf("""\
v=0
o=- 1194432165 1194432166 IN IP4 10.0.0.5
s=-
c=IN IP4 10.0.0.5
t=0 0
m=audio 10000 RTP/AVP 96 100
a=rtpmap:96 opus/48000/2
a=fmtp:96 stereo=1;sprop-stereo=1
a=rtpmap:100 telephone-event/8000
a=fmtp:100 0-15
a=sendrecv
m=video 10002 RTP/AVP 98
a=rtpmap:98 H264/90000
a=fmtp:98 packetization-mode=0;profile-level-id=42e01f
a=sendrecv
""")

# SIPp's canned uas answer: one PCMU stream.
SIPP_ANSWER = crlf("""\
v=0
o=user1 53655765 2353687637 IN IP4 127.0.1.1
s=-
c=IN IP4 127.0.1.1
t=0 0
m=audio 6000 RTP/AVP 0
a=rtpmap:0 PCMU/8000
""")

# A browser offer, LF line ends, in the field order SDP serialises to.
WEBRTC_OFFER = """\
v=0
o=- 4611731400430051336 2 IN IP4 127.0.0.1
s=-
t=0 0
a=group:BUNDLE 0 1 2
a=extmap-allow-mixed
a=msid-semantic: WMS stream
m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126
c=IN IP4 0.0.0.0
a=rtcp:9 IN IP4 0.0.0.0
a=ice-ufrag:EsAw
a=ice-pwd:bP+XJMM09aR8AiX1jdukzR6Y
a=ice-options:trickle
a=fingerprint:sha-256 D7:87:D4:2E:47:54:CD:3C:44:A7:DD:0E:5F:F6:59:9E:31:94:6D:3C:4D:3A:5C:A8:4A:0B:5E:66:0E:0E:2D:33
a=setup:actpass
a=mid:0
a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level
a=sendrecv
a=msid:stream track0
a=rtcp-mux
a=rtpmap:111 opus/48000/2
a=rtcp-fb:111 transport-cc
a=fmtp:111 minptime=10;useinbandfec=1
a=rtpmap:63 red/48000/2
a=fmtp:63 111/111
a=rtpmap:9 G722/8000
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:13 CN/8000
a=rtpmap:110 telephone-event/48000
a=rtpmap:126 telephone-event/8000
a=ssrc:3510681183 cname:4TOk42mSjXCkVIa6
m=video 9 UDP/TLS/RTP/SAVPF 96 97 102 103
c=IN IP4 0.0.0.0
a=rtcp:9 IN IP4 0.0.0.0
a=mid:1
a=recvonly
a=rtcp-mux
a=rtcp-rsize
a=rtpmap:96 VP8/90000
a=rtcp-fb:96 goog-remb
a=rtcp-fb:96 nack pli
a=rtpmap:97 rtx/90000
a=fmtp:97 apt=96
a=rtpmap:102 H264/90000
a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f
a=rtpmap:103 rtx/90000
a=fmtp:103 apt=102
m=application 9 UDP/DTLS/SCTP webrtc-datachannel
c=IN IP4 0.0.0.0
a=mid:2
a=sctp-port:5000
a=max-message-size:262144
"""


def offer(audio_port=4000, video_port=4002):
    return make_offer("192.0.2.1", audio_port=audio_port, video_port=video_port, session_id=7)


def test_module_is_pure():
    """The SDP module imports nothing from Twisted."""
    tree = ast.parse(pathlib.Path(sdp.__file__).read_text())
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert not [n for n in names if n.startswith("twisted")]


# --- parsing -----------------------------------------------------------------------------


@pytest.mark.parametrize("line", ["a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:SECRETKEY\0",
                                  "v=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:SECRETKEY"])
def test_a_refused_line_is_quoted_without_its_srtp_key(line):
    """An SDP error quoting a line hides its inline: key (the error reaches logs and /call/find)."""
    with pytest.raises(SDPError) as caught:
        SessionDescription.parse(("v=0\r\n" if line[0] == "a" else "") + line + "\r\n")
    assert "SECRETKEY" not in str(caught.value) and "inline:..." in str(caught.value)

def test_parse_baresip_offer_session_fields():
    """A baresip offer yields its origin, session connection, times and session attributes."""
    s = SessionDescription.parse(BARESIP_OFFER)
    assert s.origin == Origin("-", 2890844526, 2890844527, "IN", "IP4", "10.0.0.5")
    assert s.session_name == "-"
    assert s.connection == "10.0.0.5"
    assert s.times == [(0, 0)]
    assert s.attributes == [("tool", "baresip 3.10.1")]
    assert [m.kind for m in s.media] == ["audio", "video"]


def test_parse_baresip_offer_media_fields():
    """Each m= section keeps its port, proto, formats, b= values and attributes in order."""
    audio, video = SessionDescription.parse(BARESIP_OFFER).media
    assert (audio.port, audio.proto, audio.formats) == (10000, "RTP/AVP", ["96", "0", "8", "101"])
    assert audio.bandwidths == ["AS:64"]
    assert audio.attributes[:2] == [("rtpmap", "96 opus/48000/2"), ("fmtp", "96 stereo=1;sprop-stereo=1")]
    assert ("sendrecv", None) in audio.attributes
    assert video.bandwidths == ["TIAS:1024000"]
    assert video.attribute("framerate") == "30"


def test_parse_codecs_in_m_line_order():
    """codecs follows the m= format order and joins rtpmap with fmtp."""
    audio, video = SessionDescription.parse(BARESIP_OFFER).media
    assert audio.codecs == [
        Codec(96, "opus", 48000, 2, "stereo=1;sprop-stereo=1"),
        Codec(0, "PCMU", 8000),
        Codec(8, "PCMA", 8000),
        Codec(101, "telephone-event", 8000, 1, "0-15"),
    ]
    assert [(c.pt, c.packetization_mode) for c in video.codecs] == [(98, 0), (99, 1)]


def test_parse_sipp_answer():
    """SIPp's canned answer is a single PCMU stream at the session address."""
    s = SessionDescription.parse(SIPP_ANSWER)
    (audio,) = s.media
    assert audio.codecs == [Codec(0, "PCMU", 8000)]
    assert s.media_address(audio) == "127.0.1.1"
    assert audio.direction() == "sendrecv"
    assert audio.rtcp_port == 6001


def test_static_payload_types_without_rtpmap():
    """RFC 3551 static types 0 and 8 are PCMU and PCMA even without a=rtpmap."""
    s = SessionDescription.parse(b"v=0\r\no=- 1 1 IN IP4 h\r\ns=-\r\nc=IN IP4 h\r\nt=0 0\r\n"
                                 b"m=audio 6000 RTP/AVP 8 0 96\r\n")
    assert s.media[0].codecs == [Codec(8, "PCMA", 8000), Codec(0, "PCMU", 8000)]


def test_parse_webrtc_offer_with_many_attributes():
    """A browser offer parses with LF line ends; values keep colons and leading spaces."""
    s = SessionDescription.parse(WEBRTC_OFFER)
    audio, video, data = s.media
    assert s.connection is None
    assert ("msid-semantic", " WMS stream") in s.attributes
    assert audio.attribute("fingerprint").startswith("sha-256 D7:87:")
    assert audio.attribute("extmap") == "1 urn:ietf:params:rtp-hdrext:ssrc-audio-level"
    assert s.media_address(audio) == "0.0.0.0"
    assert audio.rtcp_port == 9
    assert [c.name for c in audio.codecs] == [
        "opus", "red", "G722", "PCMU", "PCMA", "CN", "telephone-event", "telephone-event"]
    assert s.media_direction(video) == "recvonly"
    assert [c.name for c in video.codecs] == ["VP8", "rtx", "H264", "rtx"]
    assert (data.kind, data.proto, data.formats, data.codecs) == (
        "application", "UDP/DTLS/SCTP", ["webrtc-datachannel"], [])


def test_webrtc_offer_serialises_back_to_the_same_bytes():
    """An SDP already in canonical field order serialises to identical CRLF bytes."""
    assert bytes(SessionDescription.parse(WEBRTC_OFFER)) == crlf(WEBRTC_OFFER)


def test_lf_and_crlf_parse_the_same():
    """LF-only and CRLF line ends give equal descriptions."""
    assert SessionDescription.parse(BARESIP_OFFER.replace(b"\r\n", b"\n")) == \
        SessionDescription.parse(BARESIP_OFFER)


def test_str_input_is_accepted():
    """parse takes str as well as bytes."""
    assert SessionDescription.parse(SIPP_ANSWER.decode()) == SessionDescription.parse(SIPP_ANSWER)


def test_unknown_and_unused_lines_are_skipped():
    """i=, u=, e=, z=, k=, r= and unknown type letters are ignored (RFC 4566 §5)."""
    plain = SessionDescription.parse(SIPP_ANSWER)
    noisy = SessionDescription.parse(crlf("""\
v=0
o=user1 53655765 2353687637 IN IP4 127.0.1.1
s=-
i=a session
u=http://example.com/
e=alice@example.com
c=IN IP4 127.0.1.1
t=0 0
r=604800 3600 0
z=2882844526 -1h
x=whatever
m=audio 6000 RTP/AVP 0
i=the audio
k=prompt
a=rtpmap:0 PCMU/8000
"""))
    assert noisy == plain


def test_media_connection_overrides_session_connection():
    """A c= line inside an m= section wins over the session's c= line."""
    s = SessionDescription.parse(b"v=0\r\no=- 1 1 IN IP4 a\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
                                 b"m=audio 6000 RTP/AVP 0\r\nc=IN IP6 2001:db8::1\r\n"
                                 b"m=video 6002 RTP/AVP 96\r\n")
    audio, video = s.media
    assert s.media_address(audio) == "2001:db8::1"
    assert s.media_address(video) == "192.0.2.1"
    assert b"c=IN IP6 2001:db8::1\r\n" in bytes(s)


def test_port_count_and_flag_versus_empty_attribute_round_trip():
    """'5000/2', a flag attribute and an empty-valued attribute survive serialisation."""
    text = crlf("v=0\no=- 1 1 IN IP4 a\ns=\nc=IN IP4 a\nt=0 0\n"
                "m=video 5000/2 RTP/AVP 96\na=flag\na=empty:\n")
    s = SessionDescription.parse(text)
    assert s.session_name == ""
    assert (s.media[0].port, s.media[0].port_count) == (5000, 2)
    assert s.media[0].attributes == [("flag", None), ("empty", "")]
    assert bytes(s) == text


def test_rtcp_port_defaults_to_rtp_plus_one_and_zero_when_rejected():
    """Without a=rtcp the RTCP port is RTP + 1; a rejected stream has none."""
    assert MediaDescription("audio", 4000, "RTP/AVP", ["0"]).rtcp_port == 4001
    assert MediaDescription("audio", 4000, "RTP/AVP", ["0"], attributes=[("rtcp", "5005")]).rtcp_port == 5005
    assert MediaDescription("audio", 0, "RTP/AVP", ["0"]).rtcp_port == 0


def test_media_direction_falls_back_to_session_attribute():
    """A session-level a=sendonly applies to m= sections without their own direction."""
    s = SessionDescription.parse(crlf("""\
v=0
o=- 1 1 IN IP4 a
s=-
c=IN IP4 a
t=0 0
a=sendonly
m=audio 6000 RTP/AVP 0
m=video 6002 RTP/AVP 96
a=inactive
"""))
    assert [s.media_direction(m) for m in s.media] == ["sendonly", "inactive"]
    assert s.media[0].direction() == "sendrecv"


HEAD = "v=0\r\no=- 1 1 IN IP4 a\r\ns=-\r\nc=IN IP4 a\r\nt=0 0\r\n"


@pytest.mark.parametrize(("data", "message"), [
    (b"", "SDP is empty"),
    (b"\r\n\r\n", "SDP is empty"),
    (b"v=0\r\ns=\xff\r\n", "SDP is not valid UTF-8"),
    (b"o=- 1 1 IN IP4 a\r\n", "SDP line 1: expected 'v=0' first, got 'o=- 1 1 IN IP4 a'"),
    (b"v=1\r\n", "SDP line 1: expected 'v=0' first, got 'v=1'"),
    (b"v=0\r\nhello\r\n", "SDP line 2: not a <type>=<value> line 'hello'"),
    (b"v=0\r\nO=x\r\n", "SDP line 2: not a <type>=<value> line 'O=x'"),
    (b"v=0\r\na=x\rb\r\n", "SDP line 2: CR or NUL inside the line 'a=x\\rb'"),
    (b"v=0\r\ns=-\r\n", "SDP has no o= line"),
    (b"v=0\r\no=- 1 1 IN IP4 a\r\n", "SDP has no s= line"),
    (b"v=0\r\nv=0\r\n", "SDP line 2: second v= line"),
    (b"v=0\r\no=- 1 1 IN IP4 a\r\no=- 1 1 IN IP4 a\r\n", "SDP line 3: second o= line"),
    (b"v=0\r\ns=a\r\ns=b\r\n", "SDP line 3: second s= line"),
    (b"v=0\r\no=- x 1 IN IP4 a\r\n", "SDP line 2: bad o= line 'o=- x 1 IN IP4 a'"),
    (b"v=0\r\no=- 1 IN IP4 a\r\n", "SDP line 2: bad o= line 'o=- 1 IN IP4 a'"),
    (b"v=0\r\no=- -1 1 IN IP4 a\r\n", "SDP line 2: bad o= line 'o=- -1 1 IN IP4 a'"),
    (b"v=0\r\nc=IN IP5 a\r\n", "SDP line 2: bad c= line 'c=IN IP5 a'"),
    (b"v=0\r\nc=IN IP4\r\n", "SDP line 2: bad c= line 'c=IN IP4'"),
    (b"v=0\r\nt=0\r\n", "SDP line 2: bad t= line 't=0'"),
    (b"v=0\r\nt=now 0\r\n", "SDP line 2: bad t= line 't=now 0'"),
    (b"v=0\r\na=\r\n", "SDP line 2: bad a= line 'a='"),
    (b"v=0\r\na=:x\r\n", "SDP line 2: bad a= line 'a=:x'"),
    ((HEAD + "m=audio x RTP/AVP 0\r\n").encode(), "SDP line 6: bad m= line 'm=audio x RTP/AVP 0'"),
    ((HEAD + "m=audio 65536 RTP/AVP 0\r\n").encode(), "SDP line 6: bad m= line 'm=audio 65536 RTP/AVP 0'"),
    ((HEAD + "m=audio -1 RTP/AVP 0\r\n").encode(), "SDP line 6: bad m= line 'm=audio -1 RTP/AVP 0'"),
    ((HEAD + "m=audio 5000/ RTP/AVP 0\r\n").encode(), "SDP line 6: bad m= line 'm=audio 5000/ RTP/AVP 0'"),
    ((HEAD + "m=audio 5000\r\n").encode(), "SDP line 6: bad m= line 'm=audio 5000'"),
    ((HEAD + "m=audio 5000 RTP/AVP 0\r\no=- 1 1 IN IP4 a\r\n").encode(),
     "SDP line 7: o= line after the first m= line"),
    (b"v=0\r\no=- 1 1 IN IP4 a\r\ns=-\r\nt=0 0\r\nm=audio 5000 RTP/AVP 0\r\n",
     "SDP line 5: m= line has no c= line and the session has none"),
])
def test_malformed_input_names_the_line(data, message):
    """Each malformed input raises SDPError with an exact message naming the line."""
    with pytest.raises(SDPError) as raised:
        SessionDescription.parse(data)
    assert str(raised.value) == message


def test_sdp_error_is_a_value_error():
    """SDPError is a ValueError so callers can map it to 400/488 with one except clause."""
    assert issubclass(SDPError, ValueError)


def test_rejected_stream_may_omit_connection():
    """A port-0 m= line needs no c= line anywhere."""
    s = SessionDescription.parse(b"v=0\r\no=- 1 1 IN IP4 a\r\ns=-\r\nt=0 0\r\nm=video 0 RTP/AVP 96\r\n")
    assert s.media[0].port == 0
    with pytest.raises(SDPError, match="no c= address for the video stream"):
        s.media_address(s.media[0])


# --- make_offer --------------------------------------------------------------------------

def test_make_offer_audio_only_exact_bytes():
    """An audio-only offer lists PCMU, PCMA, opus and telephone-event, sendrecv, RTCP on +1."""
    o = make_offer("192.0.2.1", audio_port=4000, video_port=None, session_id=42, version=3)
    assert bytes(o) == crlf("""\
v=0
o=- 42 3 IN IP4 192.0.2.1
s=sipgw
c=IN IP4 192.0.2.1
t=0 0
m=audio 4000 RTP/AVP 0 8 111 101
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:111 opus/48000/2
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16
a=rtcp:4001
a=sendrecv
""")


def test_make_offer_video_only_with_framerate():
    """A video-only offer lists H264 mode 1 (102) and mode 0 (103) and the frame rate."""
    o = make_offer("192.0.2.1", audio_port=None, video_port=5000, session_id=1, video_framerate=25)
    (video,) = o.media
    assert video.formats == ["102", "103"]
    assert [(c.name, c.clock, c.packetization_mode) for c in video.codecs] == [
        ("H264", 90000, 1), ("H264", 90000, 0)]
    assert video.codecs[0].fmtp == "profile-level-id=42e01f;packetization-mode=1"
    assert video.attribute("framerate") == "25"
    assert video.rtcp_port == 5001


def test_make_offer_ipv6_and_round_trip():
    """An IPv6 address gives IP6 in o= and c=, and the offer parses back equal."""
    o = make_offer("2001:db8::5", audio_port=4000, video_port=4002, session_id=9)
    assert b"o=- 9 1 IN IP6 2001:db8::5\r\n" in bytes(o)
    assert b"c=IN IP6 2001:db8::5\r\n" in bytes(o)
    assert SessionDescription.parse(bytes(o)) == o


@pytest.mark.parametrize(("audio", "video", "message"), [
    (None, None, "make_offer needs an audio_port or a video_port"),
    (0, None, "audio_port must be 1-65534, got 0"),
    (None, 65535, "video_port must be 1-65534, got 65535"),
])
def test_make_offer_rejects_bad_ports(audio, video, message):
    """make_offer needs at least one port, each leaving room for RTCP on port + 1."""
    with pytest.raises(ValueError) as raised:
        make_offer("192.0.2.1", audio_port=audio, video_port=video, session_id=1)
    assert str(raised.value) == message


# --- negotiate ---------------------------------------------------------------------------

def test_negotiate_picks_codecs_by_name_not_payload_type():
    """baresip's opus/96 and H264 mode 0 at 98 match our 111 and 103 by name."""
    agreed = negotiate(offer(), SessionDescription.parse(BARESIP_ANSWER))
    audio, video = agreed["audio"], agreed["video"]
    assert audio.codec == Codec(96, "opus", 48000, 2, "stereo=1;sprop-stereo=1")
    assert (audio.recv_pt, audio.dtmf_pt, audio.recv_dtmf_pt) == (111, 100, 101)
    assert (audio.address, audio.port, audio.rtcp_port) == ("10.0.0.5", 10000, 10001)
    assert (audio.direction, audio.packetization_mode) == ("sendrecv", None)
    assert (video.codec.pt, video.recv_pt, video.packetization_mode) == (98, 103, 0)
    assert video.port == 10002


def test_negotiate_h264_mode_one():
    """An answer with only H264 packetization-mode=1 matches our PT 102, not 103."""
    answer = BARESIP_ANSWER.replace(b"packetization-mode=0", b"packetization-mode=1")
    video = negotiate(offer(), SessionDescription.parse(answer))["video"]
    assert (video.codec.pt, video.recv_pt, video.packetization_mode) == (98, 102, 1)


def test_negotiate_h264_without_mode_is_mode_zero():
    """H264 without packetization-mode is mode 0 (RFC 6184 §8.1)."""
    answer = BARESIP_ANSWER.replace(b"a=fmtp:98 packetization-mode=0;profile-level-id=42e01f\r\n", b"")
    video = negotiate(offer(), SessionDescription.parse(answer))["video"]
    assert (video.recv_pt, video.packetization_mode) == (103, 0)


def test_negotiate_first_answer_codec_wins():
    """The answer's order decides: PCMA listed first is chosen over PCMU."""
    answer = SessionDescription.parse(SIPP_ANSWER.replace(b"RTP/AVP 0", b"RTP/AVP 8 0"))
    agreed = negotiate(offer(video_port=None), answer)
    assert agreed["audio"].codec == Codec(8, "PCMA", 8000)
    assert agreed["audio"].dtmf_pt is None


def test_negotiate_sipp_answer_with_fewer_m_lines():
    """SIPp's one-line answer to an audio+video offer accepts audio; video counts as rejected."""
    agreed = negotiate(offer(), SessionDescription.parse(SIPP_ANSWER))
    assert list(agreed) == ["audio"]
    assert agreed["audio"].codec == Codec(0, "PCMU", 8000)
    assert (agreed["audio"].address, agreed["audio"].port) == ("127.0.1.1", 6000)


def test_negotiate_rejected_stream_is_omitted():
    """A port-0 m= line in the answer leaves that kind out of the result."""
    answer = SessionDescription.parse(BARESIP_ANSWER.replace(b"m=video 10002", b"m=video 0"))
    assert list(negotiate(offer(), answer)) == ["audio"]


def test_negotiate_no_common_codecs():
    """An answer whose codecs we never offered raises 'No common codecs'."""
    answer = SessionDescription.parse(SIPP_ANSWER.replace(b"0 PCMU/8000", b"18 G729/8000")
                                      .replace(b"RTP/AVP 0", b"RTP/AVP 18"))
    with pytest.raises(SDPError, match="^No common codecs$"):
        negotiate(offer(video_port=None), answer)


def test_negotiate_everything_rejected_is_no_common_codecs():
    """An answer rejecting every stream yields no codec and raises."""
    answer = SessionDescription.parse(BARESIP_ANSWER.replace(b"m=video 10002", b"m=video 0")
                                      .replace(b"m=audio 10000", b"m=audio 0"))
    with pytest.raises(SDPError, match="^No common codecs$"):
        negotiate(offer(), answer)


def test_negotiate_telephone_event_alone_is_not_a_codec():
    """telephone-event alone is not a usable codec."""
    answer = SessionDescription.parse(SIPP_ANSWER.replace(b"0 PCMU/8000", b"101 telephone-event/8000")
                                      .replace(b"RTP/AVP 0", b"RTP/AVP 101"))
    with pytest.raises(SDPError, match="^No common codecs$"):
        negotiate(offer(video_port=None), answer)


def test_negotiate_answer_with_extra_m_line():
    """An answer with more m= lines than the offer is refused (RFC 3264 §6)."""
    with pytest.raises(SDPError, match="^answer has 2 m= lines but the offer has 1$"):
        negotiate(offer(video_port=None), SessionDescription.parse(BARESIP_ANSWER))


def test_negotiate_answer_with_other_kind():
    """An answer m= line of another media type than the offer's is refused."""
    with pytest.raises(SDPError, match="^answer m= line 1 is 'audio' but the offer's is 'video'$"):
        negotiate(offer(audio_port=None), SessionDescription.parse(SIPP_ANSWER))


@pytest.mark.parametrize(("answer_direction", "ours"), [
    ("sendrecv", "sendrecv"), ("recvonly", "sendonly"), ("sendonly", "recvonly"), ("inactive", "inactive"),
])
def test_negotiate_direction_is_ours(answer_direction, ours):
    """NegotiatedMedia.direction is our side: the mirror of the answer's attribute."""
    answer = SessionDescription.parse(SIPP_ANSWER + f"a={answer_direction}\r\n".encode())
    assert negotiate(offer(video_port=None), answer)["audio"].direction == ours


def test_negotiate_null_address_means_do_not_send():
    """An answer with c=0.0.0.0 leaves us receive-only (RFC 3264 §8.4)."""
    answer = SessionDescription.parse(SIPP_ANSWER.replace(b"IN IP4 127.0.1.1\r\nt", b"IN IP4 0.0.0.0\r\nt"))
    assert negotiate(offer(video_port=None), answer)["audio"].direction == "recvonly"


def test_negotiate_uses_answer_rtcp_attribute():
    """a=rtcp in the answer sets where RTCP goes (RFC 3605)."""
    answer = SessionDescription.parse(SIPP_ANSWER + b"a=rtcp:7078 IN IP4 127.0.1.1\r\n")
    assert negotiate(offer(video_port=None), answer)["audio"].rtcp_port == 7078


def test_negotiate_prefers_dtmf_at_codec_clock():
    """With telephone-event at 48000 and 8000, the one at the codec's clock is chosen."""
    ours = SessionDescription.parse(bytes(offer(video_port=None)).replace(
        b"a=fmtp:101 0-16\r\n", b"a=fmtp:101 0-16\r\na=rtpmap:110 telephone-event/48000\r\n")
        .replace(b"111 101", b"111 101 110"))
    answer = SessionDescription.parse(crlf("""\
v=0
o=- 1 1 IN IP4 10.0.0.9
s=-
c=IN IP4 10.0.0.9
t=0 0
m=audio 7000 RTP/AVP 0 126 110
a=rtpmap:126 telephone-event/48000
a=rtpmap:110 telephone-event/8000
"""))
    audio = negotiate(ours, answer)["audio"]
    assert (audio.codec.name, audio.dtmf_pt, audio.recv_dtmf_pt) == ("PCMU", 110, 101)


@pytest.mark.parametrize("address", ["bogus.invalid", "localhost", "10.0.0.5.evil"])
def test_negotiate_refuses_a_host_name_in_c(address):
    """A c= address that is not an IP literal is refused at negotiation, naming the stream
    (sipgw sends RTP to it and resolves no names): the call fails with that reason."""
    answer = BARESIP_ANSWER.replace(b"c=IN IP4 10.0.0.5", f"c=IN IP4 {address}".encode())
    with pytest.raises(SDPError) as raised:
        negotiate(offer(), SessionDescription.parse(answer))
    assert str(raised.value) == f"c= address {address!r} of the audio stream is not an IP address"


def test_make_answer_refuses_a_host_name_in_the_offer():
    """A peer's re-INVITE offer naming a host in c= is refused too (488)."""
    offer_sdp = SessionDescription.parse(BARESIP_OFFER.replace(b"c=IN IP4 10.0.0.5",
                                                               b"c=IN IP4 bogus.invalid"))
    with pytest.raises(SDPError, match="is not an IP address"):
        answer_to(offer_sdp)


# --- make_answer -------------------------------------------------------------------------

def answer_to(offer_sdp, audio_port=20000, video_port=20002):
    return make_answer(offer_sdp, address="198.51.100.7", audio_port=audio_port,
                       video_port=video_port, session_id=55, version=2)


def test_make_answer_to_baresip_offer():
    """The answer keeps the offer's m= order and payload types, with our address and ports."""
    theirs = SessionDescription.parse(BARESIP_OFFER)
    answer, agreed = answer_to(theirs)
    audio, video = answer.media
    assert answer.origin == Origin("-", 55, 2, "IN", "IP4", "198.51.100.7")
    assert answer.connection == "198.51.100.7"
    assert (audio.port, audio.formats) == (20000, ["96", "0", "8", "101"])
    assert audio.codecs[0] == Codec(96, "opus", 48000, 2)
    assert audio.codecs[3] == Codec(101, "telephone-event", 8000, 1, "0-16")
    assert (video.port, video.formats) == (20002, ["98", "99"])
    assert [c.packetization_mode for c in video.codecs] == [0, 1]
    assert audio.rtcp_port == 20001
    assert agreed["audio"].codec == theirs.media[0].codecs[0]
    audio_agreed, video_agreed = agreed["audio"], agreed["video"]
    assert (audio_agreed.address, audio_agreed.port, audio_agreed.dtmf_pt) == ("10.0.0.5", 10000, 101)
    assert (video_agreed.codec.pt, video_agreed.recv_pt, video_agreed.packetization_mode) == (98, 98, 0)
    assert SessionDescription.parse(bytes(answer)) == answer


def test_make_answer_agrees_with_negotiate():
    """Running negotiate on (offer, our answer) picks the same codecs make_answer reported."""
    theirs = SessionDescription.parse(BARESIP_OFFER)
    answer, agreed = answer_to(theirs)
    seen_by_offerer = negotiate(theirs, answer)
    for kind in ("audio", "video"):
        assert seen_by_offerer[kind].codec.pt == agreed[kind].recv_pt
        assert seen_by_offerer[kind].recv_pt == agreed[kind].codec.pt


@pytest.mark.parametrize(("theirs", "ours"), [
    ("sendrecv", "sendrecv"), ("sendonly", "recvonly"), ("recvonly", "sendonly"), ("inactive", "inactive"),
])
def test_make_answer_mirrors_direction(theirs, ours):
    """Our answer's direction mirrors the offer's (RFC 3264 §6.1)."""
    offer_sdp = SessionDescription.parse(BARESIP_OFFER.replace(b"a=sendrecv", f"a={theirs}".encode()))
    answer, agreed = answer_to(offer_sdp)
    assert [m.direction() for m in answer.media] == [ours, ours]
    assert agreed["audio"].direction == ours


def test_make_answer_mirrors_session_level_direction():
    """A session-level a=sendonly in a re-INVITE offer is answered recvonly per stream."""
    offer_sdp = SessionDescription.parse(SIPP_ANSWER.replace(b"t=0 0\r\n", b"t=0 0\r\na=sendonly\r\n"))
    answer, agreed = answer_to(offer_sdp)
    assert answer.media[0].direction() == "recvonly"
    assert agreed["audio"].direction == "recvonly"


def test_make_answer_rejects_unwanted_kinds_with_port_zero():
    """Kinds we have no port for, or do not support, get port 0 and keep their formats."""
    text_stream = crlf("m=text 11000 RTP/AVP 98\na=rtpmap:98 t140/1000\n")
    offer_sdp = SessionDescription.parse(BARESIP_OFFER + text_stream)
    answer, agreed = answer_to(offer_sdp, video_port=None)
    assert [(m.kind, m.port, m.formats) for m in answer.media] == [
        ("audio", 20000, ["96", "0", "8", "101"]), ("video", 0, ["98", "99"]), ("text", 0, ["98"])]
    assert answer.media[1].attributes == []
    assert list(agreed) == ["audio"]


def test_make_answer_accepts_one_stream_per_kind():
    """A second audio m= line is refused with port 0."""
    offer_sdp = SessionDescription.parse(SIPP_ANSWER + b"m=audio 6002 RTP/AVP 8\r\n")
    answer, agreed = answer_to(offer_sdp)
    assert [m.port for m in answer.media] == [20000, 0]
    assert agreed["audio"].port == 6000


def test_make_answer_rejects_offered_port_zero_and_codecless_streams():
    """A stream the offer disabled, or with no codec we support, gets port 0."""
    offer_sdp = SessionDescription.parse(BARESIP_OFFER.replace(b"m=audio 10000", b"m=audio 0")
                                         .replace(b"H264/90000", b"VP8/90000"))
    with pytest.raises(SDPError, match="^No common codecs$"):
        answer_to(offer_sdp)


def test_make_answer_to_webrtc_offer_has_no_common_codecs():
    """SRTP/DTLS protos are never accepted, so a browser offer has nothing in common."""
    with pytest.raises(SDPError, match="^No common codecs$"):
        answer_to(SessionDescription.parse(WEBRTC_OFFER))


def test_make_answer_accepts_avpf():
    """An RTP/AVPF stream is answered in RTP/AVPF."""
    answer, agreed = answer_to(SessionDescription.parse(SIPP_ANSWER.replace(b"RTP/AVP", b"RTP/AVPF")))
    assert answer.media[0].proto == "RTP/AVPF"
    assert agreed["audio"].codec.name == "PCMU"


# --- hold --------------------------------------------------------------------------------

def hold_sdp(*media_lines: str, session: str = "", address: str = "10.0.0.5") -> SessionDescription:
    body = f"v=0\no=- 1 2 IN IP4 h\ns=-\nc=IN IP4 {address}\nt=0 0\n{session}" + "".join(media_lines)
    return SessionDescription.parse(body)


@pytest.mark.parametrize(("sdp_", "held"), [
    (hold_sdp("m=audio 6000 RTP/AVP 0\na=sendonly\n"), True),
    (hold_sdp("m=audio 6000 RTP/AVP 0\na=inactive\n"), True),
    (hold_sdp("m=audio 6000 RTP/AVP 0\na=sendrecv\n"), False),
    (hold_sdp("m=audio 6000 RTP/AVP 0\na=recvonly\n"), False),
    (hold_sdp("m=audio 6000 RTP/AVP 0\n"), False),
    (hold_sdp("m=audio 6000 RTP/AVP 0\n", address="0.0.0.0"), True),
    (hold_sdp("m=audio 6000 RTP/AVP 0\nc=IN IP4 0.0.0.0\n"), True),
    (hold_sdp("m=audio 6000 RTP/AVP 0\n", session="a=sendonly\n"), True),
    (hold_sdp("m=audio 6000 RTP/AVP 0\na=sendonly\n", "m=video 6002 RTP/AVP 96\na=sendrecv\n"), False),
    (hold_sdp("m=audio 6000 RTP/AVP 0\na=sendonly\n", "m=video 0 RTP/AVP 96\na=sendrecv\n"), True),
    (hold_sdp("m=audio 0 RTP/AVP 0\n"), False),
    (hold_sdp(), False),
], ids=["sendonly", "inactive", "sendrecv", "recvonly", "no-attribute", "session-0.0.0.0",
        "media-0.0.0.0", "session-sendonly", "video-still-active", "rejected-video-ignored",
        "all-rejected", "no-media"])
def test_is_hold(sdp_, held):
    """is_hold is true when every active stream is sendonly/inactive or at 0.0.0.0."""
    assert is_hold(sdp_) is held


# --- properties --------------------------------------------------------------------------

TOKEN = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=10)
TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\r\n\0"), max_size=20)
ATTR_NAME = st.text(st.characters(codec="ascii", categories=["L", "N"], include_characters="-"),
                    min_size=1, max_size=10)
ATTRIBUTES = st.lists(st.tuples(ATTR_NAME, st.none() | TEXT), max_size=4)
BANDWIDTHS = st.lists(TEXT, max_size=2)


@st.composite
def descriptions(draw) -> SessionDescription:
    connection = draw(st.none() | TOKEN)
    media = draw(st.lists(st.builds(
        MediaDescription,
        kind=TOKEN, port=st.integers(0, 65535), proto=TOKEN, formats=st.lists(TOKEN, max_size=4),
        connection=TOKEN if connection is None else st.none() | TOKEN,
        attributes=ATTRIBUTES, bandwidths=BANDWIDTHS, port_count=st.none() | st.integers(1, 9)),
        max_size=3))
    ids = st.integers(0, 2**64)
    origin = draw(st.builds(Origin, TOKEN, ids, ids, TOKEN, TOKEN, TOKEN))
    return SessionDescription(
        origin=origin, session_name=draw(TEXT), connection=connection,
        times=draw(st.lists(st.tuples(st.integers(0, 2**40), st.integers(0, 2**40)), max_size=2)),
        attributes=draw(ATTRIBUTES), bandwidths=draw(BANDWIDTHS), media=media)


@given(descriptions())
def test_round_trip(description):
    """parse(bytes(s)) == s for any well-formed description."""
    assert SessionDescription.parse(bytes(description)) == description


@given(st.binary())
def test_arbitrary_bytes_raise_only_sdp_error(data):
    """Arbitrary bytes either parse or raise SDPError, nothing else."""
    try:
        SessionDescription.parse(data)
    except SDPError:
        pass


FRAGMENTS = [*"0123456789 /:-.abcINP46RTAV", "IN IP4 ", "RTP/AVP ", "rtpmap:", "fmtp:", "sendonly"]
GOOD_LINES = [
    "m=audio 6000 RTP/AVP 0 8 96 101", "m=video 6002 RTP/AVP 96 97", "m=audio 0 RTP/AVP 0",
    "a=rtpmap:96 opus/48000/2", "a=rtpmap:96 H264/90000", "a=rtpmap:97 H264/90000",
    "a=fmtp:96 packetization-mode=1", "a=rtpmap:101 telephone-event/8000", "a=rtcp:7000",
    "a=sendonly", "a=inactive", "c=IN IP4 0.0.0.0", "t=0 0",
]
LINE = st.sampled_from(GOOD_LINES) | st.tuples(
    st.sampled_from("vosctbamiz"), st.lists(st.sampled_from(FRAGMENTS), max_size=12),
).map(lambda t: f"{t[0]}={''.join(t[1])}")


@given(st.lists(LINE, max_size=12))
def test_sdp_like_lines_parse_consistently(lines):
    """SDP-shaped noise raises only SDPError, and what parses survives a round trip and the helpers."""
    text = "\r\n".join(["v=0", "o=- 1 1 IN IP4 a", "s=-", "c=IN IP4 a", *lines]) + "\r\n"
    try:
        parsed = SessionDescription.parse(text)
    except SDPError:
        return
    assert SessionDescription.parse(bytes(parsed)) == parsed
    for m in parsed.media:
        m.codecs, m.rtcp_port, parsed.media_direction(m)
    try:
        is_hold(parsed)
        negotiate(parsed, parsed)
        answer, _ = make_answer(parsed, address="192.0.2.9", audio_port=4000, video_port=4002,
                                session_id=1, version=1)
        assert len(answer.media) == len(parsed.media)
    except SDPError:
        pass


def test_opus_without_a_channel_count_is_stereo_opus():
    """`opus/48000` without `/2` (RFC 7587 §7 wants it, many peers leave it out) matches our
    opus/48000/2, as an answer and as an offer."""
    ours = sdp.make_offer("127.0.0.1", audio_port=4000, video_port=None, session_id=1)
    peer = ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            "m=audio 5000 RTP/AVP 96\r\na=rtpmap:96 opus/48000\r\n")
    media = sdp.negotiate(ours, SessionDescription.parse(peer))
    assert (media["audio"].codec.name, media["audio"].recv_pt) == ("opus", 111)
    answer, _ = sdp.make_answer(SessionDescription.parse(peer), address="127.0.0.1",
                                audio_port=4000, video_port=None, session_id=1, version=1)
    assert answer.media[0].port == 4000 and answer.media[0].formats == ["96"]
