"""SRTP/SRTCP through libsrtp (sipgw/rtp/srtp.py): our key protects, the peer's unprotects."""
import secrets

import pytest

from sipgw.rtp.packet import ReceiverReport, RtpPacket
from sipgw.rtp.srtp import MAX_INBOUND_SSRCS, SrtpContext


@pytest.mark.parametrize("suite,tag", [("AES_CM_128_HMAC_SHA1_80", 10),
                                       ("AES_CM_128_HMAC_SHA1_32", 4)])
def test_protected_packets_unprotect_on_the_other_side_and_tampering_fails(suite, tag):
    """A packet protected with one side's key unprotects with it on the other side (auth tag
    of 10 or 4 bytes); a changed byte fails authentication (None), never raises."""
    a_key, b_key = secrets.token_bytes(30), secrets.token_bytes(30)
    a, b = SrtpContext(suite, a_key, b_key), SrtpContext(suite, b_key, a_key)
    plain = bytes(RtpPacket(payload_type=0, sequence_number=7, timestamp=160, ssrc=0x1234,
                            payload=b"\x55" * 160))
    protected = a.protect(plain)
    assert len(protected) == len(plain) + tag and protected[12:] != plain[12:]
    assert b.unprotect(protected) == plain
    tampered = bytearray(a.protect(plain[:2] + b"\x00\x08" + plain[4:]))
    tampered[20] ^= 1
    assert b.unprotect(bytes(tampered)) is None
    assert b.unprotect(b"\x80\x00") is None
    report = bytes(ReceiverReport(0x1234, []))
    assert b.unprotect_rtcp(a.protect_rtcp(report)) == report
    assert b.unprotect_rtcp(report + bytes(14)) is None


def test_a_secured_session_counts_media_and_auth_failures_and_sends_srtp(tmp_path):
    """After secure(): SRTP from the peer is counted and published as plain RTP would be,
    a packet failing authentication only bumps srtp_auth_failures, and what the session
    sends (DTMF, RTCP reports) is SRTP/SRTCP the peer can unprotect."""
    from fakes import UDPMemoryReactor
    from sipgw.rtp.ports import PortPool
    from sipgw.sip.sdes import offer_keys
    from test_session import AUDIO_SRC, answer, make_session, receive, rtp

    clock = UDPMemoryReactor()
    session, stream, ports = make_session(clock, PortPool(31000, 31010, "127.0.0.1"), ("audio",))
    sink = stream.subscribe(name="test")
    ours, theirs = offer_keys()[0], offer_keys()[0]
    session.secure({"audio": (ours, theirs)})
    session.negotiate(answer(ports))
    session.established()
    peer = SrtpContext(ours.suite, theirs.key, ours.key)
    for seq in range(1, 6):
        receive(clock, ports["audio"], peer.protect(rtp(seq, ts=seq * 160)), AUDIO_SRC)
    bad = bytearray(peer.protect(rtp(6, ts=960)))
    bad[-1] ^= 1
    receive(clock, ports["audio"], bytes(bad), AUDIO_SRC)
    receive(clock, ports["audio"], rtp(7, ts=1120), AUDIO_SRC)  # plain RTP: not authentic
    counters = session.counters()["audio"]
    assert counters["packets"] == 5 and counters["srtp_auth_failures"] == 2
    assert sink.queue  # published
    session.send_dtmf("1")
    clock.advance(0.1)
    sent = [data for data, addr in clock.udp_ports[ports["audio"]].written if addr == AUDIO_SRC]
    assert sent and all(peer.unprotect(data) is not None for data in sent[:1])
    session.endpoints["audio"].report()  # RTCP RR + SDES: SRTCP
    rtcp, = [data for data, addr in clock.udp_ports[ports["audio"] + 1].written]
    assert peer.unprotect_rtcp(rtcp) is not None  # plain RTCP would fail its check


def test_inbound_streams_are_bounded_oldest_first():
    """libsrtp's per-SSRC inbound state is bounded: past MAX_INBOUND_SSRCS authentic SSRCs
    the oldest stream is removed, and that SSRC, if it comes back, still unprotects."""
    suite = "AES_CM_128_HMAC_SHA1_80"
    a_key, b_key = secrets.token_bytes(30), secrets.token_bytes(30)
    a, b = SrtpContext(suite, a_key, b_key), SrtpContext(suite, b_key, a_key)
    removed = []
    remove = b._in.remove_stream
    b._in.remove_stream = lambda ssrc: (removed.append(ssrc), remove(ssrc))

    def packet(ssrc, seq=1):
        return a.protect(bytes(RtpPacket(payload_type=0, sequence_number=seq, timestamp=0,
                                         ssrc=ssrc, payload=b"\x55" * 20)))
    for ssrc in range(1, MAX_INBOUND_SSRCS + 11):
        assert b.unprotect(packet(ssrc)) is not None
    assert removed == list(range(1, 11)) and len(b._in_ssrcs) == MAX_INBOUND_SSRCS
    assert b.unprotect(packet(1, seq=2)) is not None
    report = bytes(ReceiverReport(MAX_INBOUND_SSRCS + 10, []))  # a known SSRC: nothing removed
    assert b.unprotect_rtcp(a.protect_rtcp(report)) == report and len(removed) == 11
