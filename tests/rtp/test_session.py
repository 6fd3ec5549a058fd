"""One call's RTP session (sipgw/rtp/session.py) on a fake reactor clock: binding, symmetric RTP
latching, demux into the Stream, malformed input, RTCP RR/BYE (RFC 3550 §6), PLI/FIR (RFC 4585
§6.3.1, RFC 5104 §4.3.1) with the SIP INFO fallback, inactivity, silence and RFC 4733 DTMF.

No real sockets: the peer's datagrams go straight to the fake port's protocol and what the
session sends is read back from ``written``.
"""
import struct

import pytest
from twisted.internet import error
from twisted.logger import globalLogPublisher

from sipgw.rtp.packet import (Bye, FullIntraRequest, PictureLossIndication, ReceiverReport,
                              RtpPacket, SenderReport, SourceDescription, ntp_short, parse_rtcp)
from sipgw.rtp.ports import PortPool, PortsExhausted
from sipgw.rtp.session import MediaSession
from sipgw.sip.sdp import SessionDescription, make_offer, negotiate
from sipgw.streams.stream import Stream

PEER = "127.0.0.1"
AUDIO_PORT, VIDEO_PORT = 30000, 30002
AUDIO_SRC = (PEER, AUDIO_PORT)
VIDEO_SRC = (PEER, VIDEO_PORT)
AUDIO_SSRC, VIDEO_SSRC = 0xA0D10, 0x71DE0
START = b"\x00\x00\x00\x01"
SPS_320x240 = bytes.fromhex("6742c00dda0507e840000003004000000f23c50aa8")
PPS = bytes.fromhex("68ce0fc8")
IDR = b"\x65\x88\x84" + bytes(range(40))
SLICE = b"\x41\x9a" + bytes(range(256)) * 3  # non-IDR slice (type 1), sent as three FU-As


# --- helpers ------------------------------------------------------------------------------------

def answer(ports: dict, *, address: str = PEER, audio_port: int = AUDIO_PORT,
           video_port: int = VIDEO_PORT, direction: str = "sendrecv", dtmf: bool = True) -> dict:
    """Negotiate our real offer for ``ports`` against a callee's answer (PCMU, H264 pm=1)."""
    offer = make_offer("127.0.0.1", audio_port=ports.get("audio"), video_port=ports.get("video"),
                       session_id=1)
    lines = ["v=0", f"o=- 1 1 IN IP4 {address}", "s=-", f"c=IN IP4 {address}", "t=0 0"]
    if "audio" in ports:
        lines += [f"m=audio {audio_port} RTP/AVP 0" + (" 96" if dtmf else ""),
                  "a=rtpmap:0 PCMU/8000", f"a={direction}"]
        if dtmf:  # the callee's own telephone-event PT, not our 101
            lines += ["a=rtpmap:96 telephone-event/8000", "a=fmtp:96 0-16"]
    if "video" in ports:
        lines += [f"m=video {video_port} RTP/AVP 102", "a=rtpmap:102 H264/90000",
                  "a=fmtp:102 profile-level-id=42e01f;packetization-mode=1", f"a={direction}"]
    return negotiate(offer, SessionDescription.parse("\r\n".join(lines) + "\r\n"))


def make_session(clock, pool, kinds=("audio", "video"), **kwargs):
    """An opened MediaSession publishing to a fresh Stream; returns (session, stream, ports)."""
    stream = Stream("s1", has_audio="audio" in kinds, has_video="video" in kinds, call_id="c1")
    session = MediaSession(clock, call_id="c1", stream=stream, bind_address="127.0.0.1",
                           ports=pool, kinds=list(kinds), **kwargs)
    ports = session.open()
    return session, stream, ports


def start(clock, pool, kinds=("audio", "video"), **kwargs):
    """An answered, established session; returns (session, stream, ports, sink)."""
    session, stream, ports = make_session(clock, pool, kinds, **kwargs)
    sink = stream.subscribe(name="test")
    session.negotiate(answer(ports))
    session.established()
    return session, stream, ports, sink


def rtp(seq: int, *, ts: int = 0, pt: int = 0, ssrc: int = AUDIO_SSRC,
        payload: bytes = b"\x55" * 160, marker: bool = False) -> bytes:
    return bytes(RtpPacket(payload_type=pt, marker=marker, sequence_number=seq, timestamp=ts,
                           ssrc=ssrc, payload=payload))


def receive(clock, port: int, data: bytes, source) -> None:
    """A datagram from ``source`` arrives on our local UDP ``port``."""
    clock.udp_ports[port].proto.datagramReceived(data, source)


def send_audio(clock, ports, seqs, *, source=AUDIO_SRC, ssrc=AUDIO_SSRC, pt=0):
    for seq in seqs:
        receive(clock, ports["audio"], rtp(seq, ts=160 * seq, pt=pt, ssrc=ssrc,
                                           payload=bytes([seq & 0xFF]) * 160), source)


def keyframe_packets(seq: int, ts: int) -> list[bytes]:
    """SPS, PPS and an IDR slice, each a single NAL unit packet (RFC 6184 §5.6)."""
    nals = [SPS_320x240, PPS, IDR]
    return [rtp(seq + i, ts=ts, pt=102, ssrc=VIDEO_SSRC, payload=nal, marker=i == 2)
            for i, nal in enumerate(nals)]


def fu_a_packets(nal: bytes, seq: int, ts: int, size: int = 300) -> list[bytes]:
    """One NAL unit split into FU-A fragments (RFC 6184 §5.8)."""
    body = nal[1:]
    chunks = [body[i:i + size] for i in range(0, len(body), size)]
    out = []
    for i, chunk in enumerate(chunks):
        fu_header = (0x80 if i == 0 else 0) | (0x40 if i == len(chunks) - 1 else 0) | nal[0] & 0x1F
        out.append(rtp(seq + i, ts=ts, pt=102, ssrc=VIDEO_SSRC, marker=i == len(chunks) - 1,
                       payload=bytes([nal[0] & 0xE0 | 28, fu_header]) + chunk))
    return out


def send_video(clock, ports, packets, source=VIDEO_SRC):
    for data in packets:
        receive(clock, ports["video"], data, source)


def run_until(clock, when: float) -> None:
    """Move the clock to the absolute time ``when``, stopping at every timer due on the way, so
    that a timer re-armed by a tick counts from the tick's own time (as on a real reactor)."""
    while True:
        due = [call.getTime() for call in clock.getDelayedCalls() if call.getTime() <= when]
        if not due:
            break
        clock.rightNow = max(clock.rightNow, min(due))
        clock.advance(0)
    clock.rightNow = max(clock.rightNow, when)


def written(clock, port: int) -> list:
    return clock.udp_ports[port].written


def rtcp_sent(clock, ports, kind: str) -> list:
    """Every RTCP compound packet sent on ``kind``'s RTCP port, parsed, with its destination."""
    return [(parse_rtcp(data), addr) for data, addr in written(clock, ports[kind] + 1)]


def keyframe_requests(clock, ports) -> list:
    return [packets for packets, _ in rtcp_sent(clock, ports, "video")
            if any(isinstance(p, PictureLossIndication) for p in packets)]


# --- binding ------------------------------------------------------------------------------------

def test_open_binds_an_rtp_and_rtcp_pair_per_kind(clock, pool):
    """open() binds RTP on an even port and RTCP on the next, per kind, and gives the RTP ports."""
    session, _, ports = make_session(clock, pool)
    assert set(ports) == {"audio", "video"}
    for port in ports.values():
        assert port % 2 == 0 and 45000 <= port < 45999
        assert clock.udp_ports[port].interface == "127.0.0.1"
        assert clock.udp_ports[port + 1].interface == "127.0.0.1"
    assert len(clock.udp_ports) == 4
    assert pool.in_use == set(ports.values())


def test_open_skips_a_pair_whose_rtcp_port_is_taken(clock, pool, monkeypatch):
    """A pair whose RTCP port cannot be bound is given back whole and another pair is used."""
    listen = clock.listenUDP
    refused = []

    def taken_by_someone_else(port, protocol, interface="", maxPacketSize=8192):
        if port % 2 and not refused:  # the first RTCP port tried is someone else's
            refused.append(port - 1)
            raise error.CannotListenError(interface, port, OSError("Address already in use"))
        return listen(port, protocol, interface, maxPacketSize)

    monkeypatch.setattr(clock, "listenUDP", taken_by_someone_else)
    session, _, ports = make_session(clock, pool, kinds=("audio",))
    [first] = refused
    assert ports["audio"] != first
    assert first not in clock.udp_ports and first not in pool.in_use
    assert set(clock.udp_ports) == {ports["audio"], ports["audio"] + 1}


def test_open_gives_back_bound_ports_when_the_range_runs_out(clock):
    """When the second kind finds no free pair, the first kind's ports are closed and released."""
    pool = PortPool(45010, 45011, "127.0.0.1")  # room for one pair only
    stream = Stream("s1", call_id="c1")
    session = MediaSession(clock, call_id="c1", stream=stream, bind_address="127.0.0.1",
                           ports=pool, kinds=["audio", "video"])
    with pytest.raises(PortsExhausted):
        session.open()
    assert clock.udp_ports == {}
    assert pool.in_use == set()


# --- receiving ----------------------------------------------------------------------------------

def test_pcmu_from_the_sdp_address_is_published_as_audio_frames(clock, pool):
    """PCMU packets from the answer's address become one audio MediaFrame each, in order."""
    session, stream, ports, sink = start(clock, pool, kinds=("audio",))
    send_audio(clock, ports, [0, 1, 2])
    frames = list(sink.queue)
    assert [(f.kind, f.codec, f.clock_rate, f.timestamp) for f in frames] == [
        ("audio", "PCMU", 8000, 0), ("audio", "PCMU", 8000, 160), ("audio", "PCMU", 8000, 320)]
    assert [f.data for f in frames] == [bytes([n]) * 160 for n in range(3)]
    assert stream.audio_codec == "PCMU" and stream.status.value == "PUBLISHING"
    counters = session.counters()["audio"]
    assert counters["packets"] == 3 and counters["frames"] == 3
    assert counters["bytes"] == 3 * (12 + 160)


def test_h264_single_nals_and_fu_a_are_published_as_access_units(clock, pool):
    """SPS/PPS/IDR single NAL packets make a keyframe and an FU-A-split slice the next frame."""
    session, stream, ports, sink = start(clock, pool)
    send_video(clock, ports, keyframe_packets(0, 0) + fu_a_packets(SLICE, 3, 3000))
    frames = list(sink.queue)
    assert [(f.kind, f.codec, f.clock_rate, f.timestamp, f.keyframe) for f in frames] == [
        ("video", "H264", 90000, 0, True), ("video", "H264", 90000, 3000, False)]
    assert frames[0].data == START + SPS_320x240 + START + PPS + START + IDR
    assert frames[1].data == START + SLICE
    assert (stream.video_codec, stream.width, stream.height) == ("H264", 320, 240)
    counters = session.counters()["video"]
    assert counters["frames"] == 2 and counters["keyframes"] == 1 and counters["packets"] == 6


def test_a_stranger_sending_before_the_callee_gets_none_of_its_packets_in(clock, pool):
    """A stranger's in-sequence RTP, sent before the callee's and on between them (RTP bleed),
    is never accepted: every packet from the SDP address is published, and DTMF and RTCP go to
    the SDP address."""
    session, _, ports, sink = start(clock, pool, kinds=("audio",))
    stranger = ("127.0.0.66", 40000)
    for i in range(110):  # the stranger every 20 ms from t = 0, the callee from t = 0.2 s
        run_until(clock, i * 0.02)
        send_audio(clock, ports, [1000 + i], source=stranger, ssrc=0x57A)
        if i >= 10:
            send_audio(clock, ports, [i])
    receive(clock, ports["audio"] + 1, bytes(ReceiverReport(0x57A)), (stranger[0], 40001))
    assert [f.timestamp for f in sink.queue] == [160 * i for i in range(10, 110)]
    counters = session.counters()["audio"]
    assert counters["packets"] == 100 and counters["wrong_source"] == 110
    session.send_dtmf("1")
    run_until(clock, 5)
    assert {addr for _, addr in written(clock, ports["audio"])} == {AUDIO_SRC}
    assert {addr for _, addr in rtcp_sent(clock, ports, "audio")} == {(PEER, AUDIO_PORT + 1)}


def test_a_callee_behind_nat_is_learned_after_probation(clock, pool):
    """A callee sending from another address than its SDP's (NAT), the SDP address silent, is
    learned once the SDP address had its first second to itself and the probation's
    in-sequence packets came: from then on all its packets are published and DTMF goes to it."""
    session, _, ports, sink = start(clock, pool, kinds=("audio",))
    nat = ("127.0.0.9", 41000)
    for seq in range(100):
        run_until(clock, seq * 0.02)
        send_audio(clock, ports, [seq], source=nat)
    published = [f.timestamp // 160 for f in sink.queue]
    assert 50 <= published[0] <= 51 and published == list(range(published[0], 100))
    assert session.counters()["audio"]["wrong_source"] == published[0]
    session.send_dtmf("1")
    run_until(clock, 4)
    assert {addr for _, addr in written(clock, ports["audio"])} == {nat}


def test_probation_needs_consecutive_in_sequence_packets(clock, pool):
    """Another source is learned on its Nth consecutive in-sequence packet of one SSRC (RFC 3550
    §A.1): a gap or a new SSRC starts the count again, another address does not disturb it."""
    session, _, ports, sink = start(clock, pool, kinds=("audio",), probation_packets=3)
    run_until(clock, 2)
    nat, other = ("127.0.0.9", 41000), ("127.0.0.66", 40000)
    send_audio(clock, ports, [10, 11, 13, 14], source=nat)  # a gap: the count restarts at 13
    send_audio(clock, ports, [15, 16], source=nat, ssrc=0xBEEF)  # so does a new SSRC
    send_audio(clock, ports, [500], source=other)
    assert len(sink.queue) == 0
    send_audio(clock, ports, [17], source=nat, ssrc=0xBEEF)
    send_audio(clock, ports, [501, 502, 503], source=other)  # too late: nat holds the latch
    assert [f.timestamp // 160 for f in sink.queue] == [17]
    assert session.endpoints["audio"].remote_rtp == nat


def test_the_sdp_address_takes_over_from_a_learned_source(clock, pool):
    """Packets from the SDP address are taken at once even after another source was learned;
    the learned source is dropped from then on and DTMF goes to the SDP address."""
    session, _, ports, sink = start(clock, pool, kinds=("audio",))
    nat = ("127.0.0.9", 41000)
    run_until(clock, 1)
    send_audio(clock, ports, range(5), source=nat)
    send_audio(clock, ports, [5])
    send_audio(clock, ports, [100], source=nat)
    send_audio(clock, ports, [6])
    assert [f.timestamp // 160 for f in sink.queue][-2:] == [5, 6]
    session.send_dtmf("1")
    run_until(clock, 3)
    assert {addr for _, addr in written(clock, ports["audio"])} == {AUDIO_SRC}


def test_renegotiation_with_a_new_address_relatches(clock, pool):
    """A re-INVITE that moves the media relatches to the new sender; the old one is then dropped."""
    session, _, ports, sink = start(clock, pool, kinds=("audio",))
    send_audio(clock, ports, [0, 1])
    session.negotiate(answer(ports, address="127.0.0.2", audio_port=32000))
    new = ("127.0.0.2", 32000)
    send_audio(clock, ports, [2, 3], source=new)
    send_audio(clock, ports, [4], source=AUDIO_SRC)
    assert [f.timestamp for f in sink.queue] == [0, 160, 320, 480]
    assert session.counters()["audio"]["wrong_source"] == 1
    assert session.endpoints["audio"].remote_rtp == new


def test_old_source_cannot_take_the_latch_right_after_a_move(clock, pool):
    """Packets still in flight from the old source after a re-INVITE are dropped; the new
    source latches at once; after another move a NATed peer's old address, the new SDP address
    silent, is learned again after probation."""
    session, _, ports, sink = start(clock, pool, kinds=("audio",))
    send_audio(clock, ports, [0])
    session.negotiate(answer(ports, address="127.0.0.2", audio_port=32000))
    send_audio(clock, ports, [1, 2, 3], source=AUDIO_SRC)  # late packets from the old source
    assert session.counters()["audio"]["wrong_source"] == 3
    send_audio(clock, ports, [4], source=("127.0.0.2", 32000), ssrc=0xBEEF)  # the new sender
    assert session.endpoints["audio"].remote_rtp == ("127.0.0.2", 32000)
    session.negotiate(answer(ports, address="127.0.0.3", audio_port=33000))
    run_until(clock, clock.seconds() + 2.5)
    send_audio(clock, ports, [5, 6, 7, 8, 9], source=("127.0.0.2", 32000), ssrc=0xBEEF)
    assert session.endpoints["audio"].remote_rtp == ("127.0.0.2", 32000)
    published = [f.timestamp // 160 for f in sink.queue]
    assert published[:2] == [0, 4] and published[-1] == 9 and len(published) < 7


def test_renegotiation_with_the_same_address_keeps_the_latch(clock, pool):
    """A re-INVITE with unchanged media keeps the latched source, even a learned one."""
    session, _, ports, sink = start(clock, pool, kinds=("audio",))
    nat = ("127.0.0.9", 41000)
    run_until(clock, 1)
    send_audio(clock, ports, range(5), source=nat)
    published = len(sink.queue)
    session.negotiate(answer(ports))
    send_audio(clock, ports, [5], source=nat)
    assert len(sink.queue) == published + 1
    assert session.endpoints["audio"].remote_rtp == nat


def test_packets_before_the_answer_are_dropped(clock, pool):
    """RTP arriving before any answer was negotiated is dropped and does not latch."""
    session, stream, ports = make_session(clock, pool, kinds=("audio",))
    sink = stream.subscribe()
    send_audio(clock, ports, [0], source=("127.0.0.9", 41000))
    session.negotiate(answer(ports))
    send_audio(clock, ports, [1])
    assert [f.timestamp for f in sink.queue] == [160]
    assert session.counters()["audio"]["wrong_source"] == 1


def test_a_flood_is_cut_at_the_call_packet_rate_limit(clock, pool):
    """Past max_packets_per_second packets within a second, counting RTP and RTCP of all the
    call's media together, packets are dropped before parsing and counted in rate_limited, with
    one log line per 10 s; a new second starts the count over."""
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        session, _, ports, sink = start(clock, pool, max_packets_per_second=100)
        send_audio(clock, ports, range(90))
        send_video(clock, ports, keyframe_packets(0, 0) * 5)  # 10 in, 5 over
        receive(clock, ports["audio"] + 1, bytes(ReceiverReport(AUDIO_SSRC)), (PEER, 50001))
        send_audio(clock, ports, range(90, 100))
        assert len(sink.queue) == 91  # 90 audio frames and the keyframe
        run_until(clock, 0.99)
        send_audio(clock, ports, range(90, 100))
        assert len(sink.queue) == 91
        run_until(clock, 1)
        send_audio(clock, ports, range(90, 100))
        assert len(sink.queue) == 101
        run_until(clock, 10.5)
        send_audio(clock, ports, range(100, 400))  # 90 end the old second, 100 the new one
    finally:
        globalLogPublisher.removeObserver(events.append)
    counters = session.counters()
    assert counters["video"]["rate_limited"] == 5 and counters["video"]["packets"] == 10
    assert counters["audio"]["rate_limited"] == 1 + 10 + 10 + 110
    assert counters["audio"]["rtcp_packets"] == 0 and counters["audio"]["packets"] == 290
    lines = [e for e in events if "packets/s" in e.get("log_format", "")]
    assert [e["more"] for e in lines] == ["", " (25 more held back)"]


GOOD = rtp(0)
MALFORMED_RTP = {
    "version 1": bytes([0x40]) + GOOD[1:],
    "version 0": bytes([0x00]) + GOOD[1:],
    "truncated header": GOOD[:11],
    "one byte": b"\x80",
    "empty": b"",
    "padding longer than the packet": bytes([0xA0]) + GOOD[1:12] + b"\x00\x00\x00\xff",
    "zero padding count": bytes([0xA0]) + GOOD[1:] + b"\x00",
    "CSRC count past the end": bytes([0x8F]) + GOOD[1:12] + b"\x00" * 8,
    "extension past the end": bytes([0x90]) + GOOD[1:12] + b"\xbe\xde\x00\x09",
}


@pytest.mark.parametrize("data", MALFORMED_RTP.values(), ids=MALFORMED_RTP.keys())
def test_malformed_rtp_is_counted_and_dropped(clock, pool, data):
    """A malformed RTP packet counts in bad_packets, raises nothing, and does not latch."""
    session, _, ports, sink = start(clock, pool, kinds=("audio",))
    receive(clock, ports["audio"], data, ("127.0.0.9", 41000))
    send_audio(clock, ports, [1])
    assert len(sink.queue) == 1
    counters = session.counters()["audio"]
    assert counters["bad_packets"] == 1 and counters["wrong_source"] == 0


RTCP_GARBAGE = {
    "empty": (1, b""),
    "version 1": (1, b"\x40\xc9\x00\x01\x00\x00\x00\x01"),
    "length past the end": (1, b"\x80\xc9\x00\x09\x00\x00\x00\x01"),
    "truncated header": (1, b"\x80\xc9"),
    "report blocks past the end": (1, b"\x81\xc9\x00\x01\x00\x00\x00\x01"),
    "bad padding": (1, b"\xa0\xc9\x00\x01\x00\x00\x00\x09"),
    "muxed on the RTP port": (0, b"\x80\xc8\x00\xff\x00"),
}


@pytest.mark.parametrize("offset,data", RTCP_GARBAGE.values(), ids=RTCP_GARBAGE.keys())
def test_rtcp_garbage_is_counted(clock, pool, offset, data):
    """Unparseable RTCP (on the RTCP port, or RFC 5761-muxed on the RTP port) counts in rtcp_bad."""
    session, _, ports, _ = start(clock, pool, kinds=("audio",))
    receive(clock, ports["audio"] + offset, data, (PEER, AUDIO_PORT + offset))
    counters = session.counters()["audio"]
    assert counters["rtcp_bad"] == 1 and counters["rtcp_packets"] == 0
    assert counters["bad_packets"] == 0


def test_wrong_payload_type_is_counted_and_not_published(clock, pool):
    """A payload type the answer did not agree on is counted and not published, and its
    sequence number leaves no hole: the next packet is published at once and nothing is lost."""
    session, _, ports, sink = start(clock, pool, kinds=("audio",))
    send_audio(clock, ports, [0])
    send_audio(clock, ports, [1], pt=8)
    send_audio(clock, ports, [2])
    assert [f.timestamp for f in sink.queue] == [0, 320]
    run_until(clock, 5)
    counters = session.counters()["audio"]
    assert counters["wrong_payload_type"] == 1 and counters["frames"] == 2
    assert counters["lost"] == 0


def test_wrong_payload_type_on_another_ssrc_leaves_the_stream_alone(clock, pool):
    """A stray payload type on a foreign SSRC is counted and dropped without an SSRC change."""
    session, _, ports, sink = start(clock, pool, kinds=("audio",))
    send_audio(clock, ports, [0])
    send_audio(clock, ports, [7000], pt=8, ssrc=0xBAD)
    send_audio(clock, ports, [1])
    assert [f.timestamp for f in sink.queue] == [0, 160]
    counters = session.counters()["audio"]
    assert counters["wrong_payload_type"] == 1 and counters["ssrc_changes"] == 0


def test_dtmf_from_the_callee_is_not_published_and_leaves_no_gap(clock, pool):
    """RFC 4733 events on the audio's SSRC share its sequence numbers: they are neither published
    nor counted as wrong, and the audio after them flows on without a loss."""
    session, _, ports, sink = start(clock, pool, kinds=("audio",))
    send_audio(clock, ports, [0, 1])
    for seq in (2, 3, 4):  # digit 5, 10 dB, end bit on the last one
        event = struct.pack("!BBH", 5, 10 | (0x80 if seq == 4 else 0), 160 * (seq - 1))
        receive(clock, ports["audio"], rtp(seq, ts=320, pt=96, payload=event, marker=seq == 2),
                AUDIO_SRC)
    send_audio(clock, ports, [5])
    assert [f.timestamp for f in sink.queue] == [0, 160, 800]
    run_until(clock, 5)
    counters = session.counters()["audio"]
    assert counters["wrong_payload_type"] == 0 and counters["lost"] == 0
    assert counters["frames"] == 3


def test_ssrc_change_is_counted_and_the_stream_goes_on(clock, pool):
    """A new SSRC (the callee restarted its sender) is counted and its packets keep flowing."""
    session, _, ports, sink = start(clock, pool, kinds=("audio",))
    send_audio(clock, ports, [0, 1, 2])
    send_audio(clock, ports, [5000, 5001, 5002], ssrc=0xBEEF)
    assert len(sink.queue) == 6
    counters = session.counters()["audio"]
    assert counters["ssrc_changes"] == 1 and counters["packets"] == 6
    assert session.endpoints["audio"].ssrc == 0xBEEF


# --- RTCP out -------------------------------------------------------------------------------

def test_receiver_report_every_five_seconds(clock, pool):
    """Every 5 s an RR + SDES CNAME about the sender's SSRC and its losses goes to its RTCP port."""
    session, stream, ports, _ = start(clock, pool, kinds=("audio",))
    send_audio(clock, ports, [0, 1, 3, 4, 5, 6, 7])  # 2 is lost
    run_until(clock, 4.99)
    assert rtcp_sent(clock, ports, "audio") == []
    run_until(clock, 5)
    [(packets, addr)] = rtcp_sent(clock, ports, "audio")
    assert addr == (PEER, AUDIO_PORT + 1)
    rr, sdes = packets
    local = session.endpoints["audio"].local_ssrc
    assert isinstance(rr, ReceiverReport) and rr.ssrc == local
    [block] = rr.reports
    assert block.ssrc == AUDIO_SSRC and block.packets_lost == 1
    assert block.highest_sequence == 7 and block.fraction_lost == 256 // 8
    assert sdes == SourceDescription([(local, [(1, session.cname)])])
    counters = session.counters()["audio"]
    assert counters["lost"] == 1 and counters["packets"] == 7
    run_until(clock, 10)
    assert len(rtcp_sent(clock, ports, "audio")) == 2


def test_receiver_report_echoes_the_last_sender_report(clock, pool):
    """The RR's LSR is the middle of the last SR's NTP time, DLSR the delay since in 1/65536 s."""
    session, _, ports, _ = start(clock, pool, kinds=("audio",))
    send_audio(clock, ports, [0, 1])
    run_until(clock, 6)
    ntp = 0xE1234567_89ABCDEF
    sr = SenderReport(AUDIO_SSRC, ntp_timestamp=ntp, rtp_timestamp=320, packet_count=2)
    receive(clock, ports["audio"] + 1, bytes(sr), (PEER, AUDIO_PORT + 1))
    run_until(clock, 10)
    packets, _ = rtcp_sent(clock, ports, "audio")[-1]
    block = packets[0].reports[0]
    assert block.lsr == ntp_short(ntp) and block.dlsr == 4 * 65536
    assert session.counters()["audio"]["rtcp_packets"] == 1


def test_rtcp_goes_where_the_peer_sends_its_rtcp_from(clock, pool):
    """RTCP from the peer's host on another port (NAT) becomes where RRs go (symmetric RTCP)."""
    session, _, ports, _ = start(clock, pool, kinds=("audio",))
    send_audio(clock, ports, [0])
    receive(clock, ports["audio"] + 1, bytes(ReceiverReport(AUDIO_SSRC)), (PEER, 50001))
    run_until(clock, 5)
    [(_, addr)] = rtcp_sent(clock, ports, "audio")
    assert addr == (PEER, 50001)


def test_rtcp_from_a_stranger_on_the_peers_host_is_not_followed(clock, pool):
    """RTCP from the peer's host but of another SSRC than the followed one (a stranger behind
    the same NAT) does not move where RRs go, and a flood of RTCP BYEs is one log line per 10 s."""
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        session, _, ports, _ = start(clock, pool, kinds=("audio",))
        send_audio(clock, ports, [0])
        receive(clock, ports["audio"] + 1, bytes(ReceiverReport(0x57A)), (PEER, 50001))
        for _ in range(100):
            receive(clock, ports["audio"] + 1, bytes(Bye([0x57A])), (PEER, 50001))
        run_until(clock, 5)
    finally:
        globalLogPublisher.removeObserver(events.append)
    [(_, addr)] = rtcp_sent(clock, ports, "audio")
    assert addr == (PEER, AUDIO_PORT + 1)
    assert len([e for e in events if "BYE" in e.get("log_format", "")]) == 1


def test_keyframe_requests_are_coalesced(clock, pool):
    """Ten requests within 0.1 s send one PLI+FIR at once and one more 0.5 s after the first."""
    session, _, ports, _ = start(clock, pool)
    send_video(clock, ports, keyframe_packets(0, 0))  # the callee's SSRC is known now
    run_until(clock, 1)
    written(clock, ports["video"] + 1).clear()
    for i in range(10):  # t = 1.00 ... 1.09
        run_until(clock, 1 + i / 100)
        session.request_keyframe()
    assert len(keyframe_requests(clock, ports)) == 1
    run_until(clock, 1.49)
    assert len(keyframe_requests(clock, ports)) == 1
    run_until(clock, 1.5)
    assert len(keyframe_requests(clock, ports)) == 2
    run_until(clock, 4)
    requests = keyframe_requests(clock, ports)
    assert len(requests) == 2
    local = session.endpoints["video"].local_ssrc
    (pli1, fir1), (pli2, fir2) = requests
    assert pli1 == pli2 == PictureLossIndication(local, VIDEO_SSRC)
    assert isinstance(fir1, FullIntraRequest) and fir1.sender_ssrc == local
    assert fir1.entries[0][0] == fir2.entries[0][0] == VIDEO_SSRC
    assert fir2.entries[0][1] == (fir1.entries[0][1] + 1) & 0xFF  # RFC 5104 §4.3.1.2


def test_sip_info_after_two_unanswered_rtcp_requests_and_rate_limited(clock, pool):
    """on_keyframe_info fires at the second unanswered PLI+FIR, then at most every 1.5 s, and a
    keyframe starts the count again."""
    infos = []
    session, _, ports, _ = start(clock, pool,
                                 on_keyframe_info=lambda: infos.append(clock.seconds()))
    send_video(clock, ports, [rtp(0, ts=0, pt=102, ssrc=VIDEO_SSRC, payload=SLICE, marker=True)])
    assert len(keyframe_requests(clock, ports)) == 1 and infos == []  # mid-GOP start: ask once
    for i in range(1, 7):  # t = 0.5 ... 3.0
        run_until(clock, i / 2)
        session.request_keyframe()
    assert len(keyframe_requests(clock, ports)) == 7
    assert infos == [0.5, 2.0]
    run_until(clock, 3.2)  # the IDR arrives (its SPS packet asks once more, sent at 3.5)
    send_video(clock, ports, keyframe_packets(1, 3000))
    run_until(clock, 3.5)
    assert len(keyframe_requests(clock, ports)) == 8 and infos == [0.5, 2.0]
    run_until(clock, 4)
    session.request_keyframe()  # t = 4.0: the second unanswered request since the IDR
    assert infos == [0.5, 2.0, 4.0]


def test_keyframe_request_before_any_video_is_not_counted(clock, pool):
    """established() asks for a keyframe before the callee sends video: that is no RTCP request,
    so the first real PLI goes out with the first packet and no SIP INFO follows it."""
    infos = []
    session, _, ports, _ = start(clock, pool,
                                 on_keyframe_info=lambda: infos.append(clock.seconds()))
    run_until(clock, 0.1)
    send_video(clock, ports, [rtp(0, ts=0, pt=102, ssrc=VIDEO_SSRC, payload=SLICE, marker=True)])
    assert len(keyframe_requests(clock, ports)) == 1
    run_until(clock, 1.1)
    assert len(keyframe_requests(clock, ports)) == 1 and infos == []


def test_keyframe_request_without_video_does_nothing(clock, pool):
    """An audio-only session ignores keyframe requests."""
    infos = []
    session, _, ports, _ = start(clock, pool, kinds=("audio",),
                                 on_keyframe_info=lambda: infos.append(clock.seconds()))
    send_audio(clock, ports, [0])
    for i in range(5):
        run_until(clock, i * 0.6)
        session.request_keyframe()
    assert rtcp_sent(clock, ports, "audio") == [] and infos == []


# --- RTP inactivity -------------------------------------------------------------------------

def test_rtp_timeout_calls_on_timeout(clock, pool):
    """rtp_timeout seconds without RTP close the session and call on_timeout once."""
    timeouts = []
    session, _, ports, _ = start(clock, pool, kinds=("audio",), rtp_timeout=3,
                                 on_timeout=lambda: timeouts.append(clock.seconds()))
    run_until(clock, 1)
    send_audio(clock, ports, [0])
    run_until(clock, 3.99)
    assert timeouts == [] and not session.closed
    run_until(clock, 4)
    assert timeouts == [4.0] and session.closed
    run_until(clock, 20)
    assert timeouts == [4.0]
    assert clock.getDelayedCalls() == []


def test_fixed_length_timers_on_shared_timer_queues_fire_as_call_later(clock, pool):
    """With the gateway's TimerQueues (one reactor timer per length for every call) the RTCP
    reports, silence and the inactivity timeout come when the reactor's own timers bring
    them, and a closed session leaves nothing pending."""
    from sipgw.timerqueue import TimerQueues
    queues = TimerQueues(clock)
    timeouts = {"queues": [], "reactor": []}
    sessions = {}
    for name, timers in (("queues", queues), ("reactor", None)):
        sessions[name] = start(clock, pool, kinds=("audio",), rtp_timeout=12, send_silence=True,
                               timers=timers,
                               on_timeout=lambda name=name: timeouts[name].append(clock.seconds()))
    sent = [(written(clock, ports["audio"] + 1), written(clock, ports["audio"]))  # RTCP, RTP
            for _, _, ports, _ in sessions.values()]  # (kept: a closed port leaves the fake)
    seen = []
    for t in (0.5, 4.99, 5.0, 9.99, 10.0, 11.99, 12.0, 30.0):
        run_until(clock, t)
        seen.append([(len(rtcp), len(rtp)) for rtcp, rtp in sent])
    assert all(a == b for a, b in seen), seen
    assert seen[1][0][0] == 0 and seen[2][0][0] == 1 and seen[4][0][0] == 2  # RTCP at 5, 10 s
    assert seen[0][0][1] in (24, 25)  # silence every 20 ms (the 25th due at 0.5 s, give or take a float)
    assert timeouts == {"queues": [12.0], "reactor": [12.0]}
    assert clock.getDelayedCalls() == []


def test_no_rtp_timeout_while_paused(clock, pool):
    """With the media inactive (hold) no timeout fires; once resumed, silence times out again."""
    timeouts = []
    session, stream, ports = make_session(clock, pool, kinds=("audio",), rtp_timeout=3,
                                          on_timeout=lambda: timeouts.append(clock.seconds()))
    session.negotiate(answer(ports, direction="inactive"))
    assert session.paused
    session.established()
    run_until(clock, 30)
    assert timeouts == [] and not session.closed
    session.negotiate(answer(ports))
    assert not session.paused
    run_until(clock, 33)
    assert timeouts == [33.0]


# --- sending --------------------------------------------------------------------------------

def test_silence_every_20_ms_when_asked(clock, pool):
    """send_silence sends 160 bytes of PCMU silence every 20 ms to the remote RTP address."""
    session, _, ports, _ = start(clock, pool, kinds=("audio",), send_silence=True)
    run_until(clock, 0.21)
    sent = written(clock, ports["audio"])
    assert len(sent) == 10 and {addr for _, addr in sent} == {AUDIO_SRC}
    packets = [RtpPacket.parse(data) for data, _ in sent]
    assert {(p.payload_type, p.payload, p.ssrc) for p in packets} == {
        (0, b"\xff" * 160, session.endpoints["audio"].local_ssrc)}
    first = packets[0]
    assert [(p.sequence_number - first.sequence_number) & 0xFFFF for p in packets] == [*range(10)]
    assert [(p.timestamp - first.timestamp) & 0xFFFFFFFF for p in packets] == [
        160 * i for i in range(10)]


def test_sender_report_once_we_have_sent_rtp(clock, pool):
    """While sending silence the RTCP report is an SR (RFC 3550 §6.4.1) with our counts and a
    report block for the callee's stream."""
    session, _, ports, _ = start(clock, pool, kinds=("audio",), send_silence=True)
    send_audio(clock, ports, [0, 1, 2])
    run_until(clock, 5.01)
    (packets, addr), = rtcp_sent(clock, ports, "audio")
    sr, sdes = packets
    assert isinstance(sr, SenderReport) and isinstance(sdes, SourceDescription)
    ours = session.endpoints["audio"]
    assert sr.ssrc == ours.local_ssrc and sr.packet_count == ours.sent_packets >= 240
    assert sr.octet_count == 160 * ours.sent_packets
    assert [r.ssrc for r in sr.reports] == [AUDIO_SSRC]


def test_no_silence_by_default(clock, pool):
    """Without send_silence nothing is sent on the RTP port."""
    _, _, ports, _ = start(clock, pool, kinds=("audio",))
    run_until(clock, 1)
    assert written(clock, ports["audio"]) == []


def test_dtmf_is_sent_as_rfc4733_events(clock, pool):
    """send_dtmf("1#") sends two events on the callee's telephone-event PT: marker on the first
    packet, one timestamp per event, growing duration, the end packet three times."""
    session, _, ports, _ = start(clock, pool, kinds=("audio",))
    session.send_dtmf("1#", duration_ms=100)
    run_until(clock, 2)
    sent = written(clock, ports["audio"])
    assert {addr for _, addr in sent} == {AUDIO_SRC}
    packets = [RtpPacket.parse(data) for data, _ in sent]
    assert {p.payload_type for p in packets} == {96}
    seqs = [p.sequence_number for p in packets]
    assert [(s - seqs[0]) & 0xFFFF for s in seqs] == list(range(len(seqs)))
    events = {}
    for p in packets:
        events.setdefault(p.timestamp, []).append(p)
    assert len(events) == 2
    (ts1, first), (ts2, second) = sorted(events.items())
    for digit, event in ((1, first), (11, second)):
        fields = [struct.unpack("!BBH", p.payload) for p in event]
        assert {f[0] for f in fields} == {digit}
        assert [p.marker for p in event] == [True] + [False] * (len(event) - 1)
        ends = [bool(f[1] & 0x80) for f in fields]
        assert ends == [False] * (len(event) - 3) + [True] * 3
        durations = [f[2] for f in fields]
        assert durations == sorted(durations) and durations[0] == 160 and durations[-1] == 800
        assert len(set(durations[-3:])) == 1
    assert (ts2 - ts1) & 0xFFFFFFFF >= 800


def test_dtmf_end_packets_are_spaced_at_the_update_interval(clock, pool):
    """The three end packets go out 20 ms apart like the updates (RFC 4733 §2.5.1.4)."""
    session, _, ports, _ = start(clock, pool, kinds=("audio",))
    session.send_dtmf("5", duration_ms=100)  # 5 updates (t = 0 ... 80 ms), 3 ends
    counts = []
    for step in range(8):
        run_until(clock, step * 0.02 + 0.001)
        counts.append(len(written(clock, ports["audio"])))
    assert counts == [1, 2, 3, 4, 5, 6, 7, 8]


def test_dtmf_without_telephone_event_raises(clock, pool):
    """send_dtmf raises ValueError when the callee took no telephone-event; nothing is sent."""
    session, _, ports = make_session(clock, pool, kinds=("audio",))
    session.negotiate(answer(ports, dtmf=False))
    session.established()
    with pytest.raises(ValueError, match="telephone-event"):
        session.send_dtmf("1")
    run_until(clock, 1)
    assert written(clock, ports["audio"]) == []


def test_dtmf_with_an_unknown_digit_raises_before_sending(clock, pool):
    """A digit outside 0-9 * # A-D raises ValueError and no event of the string is sent."""
    session, _, ports, _ = start(clock, pool, kinds=("audio",))
    with pytest.raises(ValueError, match="DTMF"):
        session.send_dtmf("12x")
    run_until(clock, 2)
    assert written(clock, ports["audio"]) == []


# --- closing --------------------------------------------------------------------------------

def test_close_releases_ports_and_sends_rtcp_bye(clock, pool):
    """close() sends a last RR + SDES + BYE per kind, unbinds and frees the ports, stops timers."""
    session, _, ports, _ = start(clock, pool)
    send_audio(clock, ports, [0, 1])
    send_video(clock, ports, keyframe_packets(0, 0))
    rtcp_ports = {kind: clock.udp_ports[port + 1] for kind, port in ports.items()}
    for port in rtcp_ports.values():
        port.written.clear()
    endpoints = dict(session.endpoints)
    session.close()
    assert session.endpoints == {}  # closed: none left (nor their references back to it)
    for kind, port in rtcp_ports.items():
        [(data, addr)] = port.written
        assert addr == (PEER, (AUDIO_PORT if kind == "audio" else VIDEO_PORT) + 1)
        packets = parse_rtcp(data)
        local = endpoints[kind].local_ssrc
        assert isinstance(packets[0], ReceiverReport)  # RFC 3550 §6.1: a compound packet
        assert isinstance(packets[1], SourceDescription)
        assert packets[-1] == Bye([local])
    assert clock.udp_ports == {} and pool.in_use == set()
    assert clock.getDelayedCalls() == []
    session.close()  # twice is harmless


def test_close_before_any_media_sends_no_bye(clock, pool):
    """A session closed before anything was received just releases its ports."""
    session, _, ports = make_session(clock, pool)
    session.close()
    assert clock.udp_ports == {} and pool.in_use == set()


@pytest.mark.parametrize("failure", ["hostname", RuntimeError("socket gone")])
def test_send_failures_never_escape_and_close_releases_everything(clock, pool, failure):
    """Whatever a send raises (Twisted's ValueError for a hostname, anything else), RTCP,
    silence, DTMF and the closing BYE swallow it, and close() still frees every port."""
    import dataclasses
    session, stream, ports = make_session(clock, pool, send_silence=True)
    media = answer(ports)
    if failure == "hostname":  # as if an answer's c= named a host: Twisted raises ValueError
        media = {k: dataclasses.replace(m, address="bogus.invalid") for k, m in media.items()}
    else:
        def broken(data, addr):
            raise failure
        for port in clock.udp_ports.values():
            port.write = broken
    session.negotiate(media)
    session.established()
    send_audio(clock, ports, range(3))
    clock.advance(6)  # silence every 20 ms, RTCP reports
    session.send_dtmf("1")
    clock.advance(1)
    session.close()
    assert pool.in_use == set() and clock.udp_ports == {}


def test_every_codec_of_the_answer_is_received_and_a_switch_is_counted(clock, pool):
    """Answer `8 0 101`: PCMA first, but PCMU packets are accepted too (RFC 3264 §5.1) and
    published as PCMU; each switch between them is counted in codec_changes."""
    session, stream, ports = make_session(clock, pool, kinds=("audio",))
    sink = stream.subscribe(name="test")
    offer = make_offer("127.0.0.1", audio_port=ports["audio"], video_port=None, session_id=1)
    reply = SessionDescription.parse(
        f"v=0\r\no=- 1 1 IN IP4 {PEER}\r\ns=-\r\nc=IN IP4 {PEER}\r\nt=0 0\r\n"
        f"m=audio {AUDIO_PORT} RTP/AVP 8 0 101\r\na=rtpmap:8 PCMA/8000\r\n"
        "a=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n")
    session.negotiate(negotiate(offer, reply))
    session.established()
    send_audio(clock, ports, [0], pt=8)
    send_audio(clock, ports, [1, 2], pt=0)
    send_audio(clock, ports, [3], pt=8)
    assert [f.codec for f in sink.queue] == ["PCMA", "PCMU", "PCMU", "PCMA"]
    counters = session.counters()["audio"]
    assert counters["wrong_payload_type"] == 0 and counters["codec_changes"] == 2
    assert stream.audio_codec == "PCMA"


def test_video_timestamp_jumps_are_counted(clock, pool):
    """A picture whose RTP timestamp goes backwards or more than 5 s ahead of the last one
    counts as a jump (consumers smooth it over; operators see it); a normal step does not."""
    session, _, ports, _ = start(clock, pool, kinds=("video",))
    video = session.endpoints["video"]
    send_video(clock, ports, keyframe_packets(0, 90000))
    send_video(clock, ports, keyframe_packets(3, 93000))  # 1/30 s later: no jump
    assert video.counters["timestamp_jumps"] == 0
    send_video(clock, ports, keyframe_packets(6, 93000 + 6 * 90000))  # 6 s ahead
    send_video(clock, ports, keyframe_packets(9, 1000))  # backwards
    assert video.counters["timestamp_jumps"] == 2
