"""The forwarding fast path: its aiortc assumptions, its RTP headers, and real aiortc
receivers decoding what it sends over loopback."""
import asyncio
import inspect

import aioice.ice
import pytest
from aiortc import (RTCCertificate, RTCDtlsTransport, RTCIceGatherer, RTCIceTransport,
                    RTCPeerConnection, RTCRtpSender, RTCSessionDescription)
from aiortc.rtp import HeaderExtensionsMap, RtcpRtpfbPacket, RTCP_RTPFB_NACK, RtpPacket

from media.synthetic import h264_access_units
from sipgw.streams.stream import MediaFrame, Stream
from sipgw.webrtc.forward import RtpForwarder, frame_payloads
from sipgw.webrtc.viewer import SinkTrack, Viewer


def test_aiortc_internals_the_fast_path_uses():
    """The aiortc/aioice internals forward.py relies on exist in the pinned range: an
    upgrade that renames them fails here, not silently in production."""
    async def check():
        ice = RTCIceTransport(RTCIceGatherer())
        dtls = RTCDtlsTransport(ice, [RTCCertificate.generateCertificate()])
        sender = RTCRtpSender("video", dtls)
        assert dtls._tx_srtp is None  # set by the DTLS handshake
        assert isinstance(ice._connection, aioice.ice.Connection)
        assert ice._connection._nominated == {}
        for name in ("ntp_timestamp", "rtp_timestamp", "packet_count", "octet_count"):
            assert getattr(sender, "_RTCRtpSender__" + name) == 0
        assert asyncio.iscoroutinefunction(sender._handle_rtcp_packet)
        assert "protocol" in inspect.signature(aioice.ice.CandidatePair).parameters
        assert isinstance(aioice.ice.CandidatePair.remote_addr, property)
    asyncio.run(check())


class CollectingEgress:
    """Keeps the packets it is asked to send, in clear."""

    def __init__(self):
        self.packets = []
        self.backlog_bytes = 0

    def send(self, packets):
        self.packets += packets

    def backlog(self):
        return self.backlog_bytes


class Params:
    mid, codec, payload_type, clock_rate, ssrc = "0", "H264", 102, 90000, 0x11223344
    rtx_payload_type, rtx_ssrc = 103, 0x55667788

    def __init__(self):
        from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
        self.extensions = HeaderExtensionsMap()
        self.extensions.configure(RTCRtpParameters(headerExtensions=[
            RTCRtpHeaderExtensionParameters(1, "urn:ietf:params:rtp-hdrext:sdes:mid"),
            RTCRtpHeaderExtensionParameters(
                3, "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time")]))


def _forwarder(egress):
    sender = RTCRtpSender.__new__(RTCRtpSender)
    for name in ("ntp_timestamp", "rtp_timestamp", "packet_count", "octet_count"):
        setattr(sender, "_RTCRtpSender__" + name, 0)
    timeline = SinkTrack.__new__(SinkTrack)
    timeline.prev_ts, timeline.pts, timeline.step, timeline.discontinuities = None, 0, 0, 0
    return RtpForwarder(timeline, Params(), egress, sender, 1000, 0xFFFE, 1000), sender


def test_packets_carry_the_viewers_header_and_the_shared_payloads():
    """One access unit becomes aiortc's payloads once; each packet has the viewer's SSRC,
    running sequence numbers (wrapping), its timeline's timestamp, mid, the marker on the
    last one; the sender's RTCP SR counters follow."""
    egress = CollectingEgress()
    forwarder, sender = _forwarder(egress)
    units = h264_access_units(2)
    frames = [MediaFrame("video", "H264", 90000, 5000 + 3600 * i, data, key)
              for i, (data, key) in enumerate(units)]
    assert forwarder.forward(frames[0]) and forwarder.forward(frames[1])
    payloads = frame_payloads(frames[0]) + frame_payloads(frames[1])
    assert frame_payloads(frames[0]) is frames[0].payloads  # made once, shared
    parsed = [RtpPacket.parse(p, Params().extensions) for p in egress.packets]
    assert [p.payload for p in parsed] == payloads
    assert [p.sequence_number for p in parsed] == [(0xFFFE + i) & 0xFFFF
                                                   for i in range(len(parsed))]
    n0 = len(frame_payloads(frames[0]))
    assert {p.timestamp for p in parsed[:n0]} == {1000}
    assert {p.timestamp for p in parsed[n0:]} == {4600}
    assert [p.marker for p in parsed] == [0] * (n0 - 1) + [1] + [0] * (len(parsed) - n0 - 1) + [1]
    assert {(p.ssrc, p.payload_type, p.extensions.mid) for p in parsed} == {(0x11223344, 102, "0")}
    assert all(p.extensions.abs_send_time is not None for p in parsed)
    assert sender._RTCRtpSender__packet_count == len(parsed)
    assert sender._RTCRtpSender__rtp_timestamp == 4600


def test_frames_of_another_codec_are_skipped_not_sent_under_the_viewers_type():
    """A callee that switches codec mid-call: frames not of the viewer's negotiated codec are
    counted and skipped (noise in the browser otherwise); the viewer's own still go out."""
    egress = CollectingEgress()
    forwarder, _ = _forwarder(egress)
    assert forwarder.forward(MediaFrame("audio", "PCMA", 8000, 0, b"\xd5" * 160, False))
    assert egress.packets == [] and forwarder.other_codec == 1
    data, key = h264_access_units(1)[0]
    assert forwarder.forward(MediaFrame("video", "H264", 90000, 0, data, key))
    assert egress.packets and forwarder.other_codec == 1


def test_nack_resends_over_rtx_and_a_full_socket_refuses_the_frame():
    """A NACKed packet goes out again as RTX (RFC 4588: original sequence number first);
    an unknown one is ignored; over the backlog bound forward() refuses the frame."""
    egress = CollectingEgress()
    forwarder, _ = _forwarder(egress)
    data, key = h264_access_units(1)[0]
    forwarder.forward(MediaFrame("video", "H264", 90000, 0, data, key))
    original = RtpPacket.parse(egress.packets[1], Params().extensions)
    forwarder.retransmit([original.sequence_number, 1234])
    assert len(egress.packets) == len(frame_payloads(MediaFrame("video", "H264", 90000, 0,
                                                                data, key))) + 1
    rtx = RtpPacket.parse(egress.packets[-1], Params().extensions)
    assert (rtx.ssrc, rtx.payload_type) == (0x55667788, 103)
    assert rtx.payload == original.sequence_number.to_bytes(2, "big") + original.payload
    egress.backlog_bytes = 1001
    assert not forwarder.forward(MediaFrame("video", "H264", 90000, 3000, data, key))


def test_a_nack_resends_each_packet_once_and_nothing_into_a_full_socket():
    """A NACK listing one sequence number 1000 times resends it once; with the socket's
    backlog over the bound, a NACK resends nothing."""
    egress = CollectingEgress()
    forwarder, _ = _forwarder(egress)
    data, key = h264_access_units(1)[0]
    forwarder.forward(MediaFrame("video", "H264", 90000, 0, data, key))
    sent = len(egress.packets)
    seq = RtpPacket.parse(egress.packets[0], Params().extensions).sequence_number
    forwarder.retransmit([seq] * 1000)
    assert len(egress.packets) == sent + 1 and forwarder.retransmitted == 1
    egress.backlog_bytes = 1001
    forwarder.retransmit([seq])
    assert len(egress.packets) == sent + 1 and forwarder.retransmitted == 1


def test_aiortc_receivers_decode_what_the_fast_path_sends(monkeypatch):
    """Over loopback, an aiortc peer connection decodes the forwarded H264 at its size and
    gets PCMU audio; a NACK from it is answered from the history."""
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])
    units = h264_access_units(30, width=160, height=96, gop=10)

    async def scenario():
        stream = Stream("s1")
        stream.video_codec, stream.audio_codec = "H264", "PCMU"
        viewer = Viewer(stream, media_session_id="v1", ice_servers=[])
        client = RTCPeerConnection()
        client.addTransceiver("video", direction="recvonly")
        client.addTransceiver("audio", direction="recvonly")
        tracks = {}
        client.on("track", lambda track: tracks.setdefault(track.kind, track))
        await client.setLocalDescription(await client.createOffer())
        answer = await viewer.answer(client.localDescription.sdp)
        await client.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        for _ in range(200):
            if len(viewer.forwarders) == 2:
                break
            await asyncio.sleep(0.02)
        assert set(viewer.forwarders) == {"video", "audio"}
        assert all(t.forwarded for t in viewer.tracks)

        async def feed():
            for i, (data, key) in enumerate(units):
                stream.publish(MediaFrame("video", "H264", 90000, 3000 * i, data, key))
                stream.publish(MediaFrame("audio", "PCMU", 8000, 160 * i, b"\xff" * 160))
                await asyncio.sleep(0.02)
        feeding = asyncio.ensure_future(feed())
        video = await asyncio.wait_for(tracks["video"].recv(), 10)
        audio = await asyncio.wait_for(tracks["audio"].recv(), 10)
        assert (video.width, video.height) == (160, 96)
        assert audio.sample_rate == 8000 or audio.samples > 0
        await feeding
        forwarder = viewer.forwarders["video"]
        stats = await viewer.transceivers["video"].sender.getStats()
        outbound = [s for s in stats.values() if s.type == "outbound-rtp"]
        assert outbound[0].packetsSent == forwarder.sent > 0  # what aiortc's RTCP SR reports
        sent = forwarder.sent
        nack = RtcpRtpfbPacket(fmt=RTCP_RTPFB_NACK, ssrc=1, media_ssrc=forwarder.params.ssrc,
                               lost=[(forwarder.seq - 1) & 0xFFFF])
        await viewer.transceivers["video"].sender._handle_rtcp_packet(nack)
        assert forwarder.retransmitted == 1 and forwarder.sent == sent
        await viewer.close()
        await client.close()
    asyncio.run(asyncio.wait_for(scenario(), 30))
