"""The real daemon against SIPp callees that do what PBXs do mid-call and around the
answer: hold without music, an offerless re-INVITE, 100rel, a 407 to BYE, a 302 (issue 12)."""
import hashlib
import itertools
import re
import time

import pytest

from peers import free_port, wait_for
from sipgw_daemon import Sipgw

RTP_TIMEOUT = 6  # the 422 test runs two 4 s session-timer refreshes without RTP
_ids = itertools.count(1)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    gw = Sipgw(str(tmp_path_factory.mktemp("sipgw-ext")),
               rtp_activity_timeout=RTP_TIMEOUT).start()
    yield gw
    gw.stop()


@pytest.fixture
def callee(sipp_factory):
    """conftest's sipp_factory: SIPp scenarios on free ports, all stopped afterwards."""
    return sipp_factory


def _startup(daemon, sipp):
    call_id = f"x{next(_ids)}"
    daemon.start_call_to_sipp(sipp.port, call_id)
    return call_id


def _hang_up(daemon, sipp, call_id):
    daemon.rest("/call/terminate", {"callId": call_id})
    daemon.wait_status(call_id, "FINISH")
    assert sipp.wait(15) == 0, sipp.errors()


def test_hold_sendonly_without_rtp_outlives_the_rtp_timeout_and_resumes(daemon, callee):
    """A callee holding with a=sendonly and sending no RTP for longer than
    rtp_activity_timeout stays HOLD, and its resume makes the call ESTABLISHED again."""
    sipp = callee("uas_hold_sendonly.xml", pause_ms=(RTP_TIMEOUT + 3) * 1000)
    call_id = _startup(daemon, sipp)
    daemon.wait_status(call_id, "HOLD")
    call = daemon.wait_status(call_id, "ESTABLISHED", "FAILED", timeout=RTP_TIMEOUT + 10)
    assert call["status"] == "ESTABLISHED", call
    assert call["history"][-3:] == ["ESTABLISHED", "HOLD", "ESTABLISHED"]
    _hang_up(daemon, sipp, call_id)


def test_offerless_reinvite_takes_the_answer_in_the_ack(daemon, callee):
    """A re-INVITE without SDP gets the gateway's offer in the 200; the answer in SIPp's
    ACK (PCMA on another port) becomes the call's SDP, and the call stays ESTABLISHED."""
    port = free_port("udp", count=2)
    sipp = callee("uas_reinvite_offerless.xml", variables={"answer_port": port})
    call_id = _startup(daemon, sipp)
    daemon.wait_status(call_id, "ESTABLISHED")
    moved = f"m=audio {port} RTP/AVP 8"
    wait_for(lambda: moved in daemon.call(call_id)["sdp"], 10, "the ACK's answer as the call's SDP",
             log=lambda: str(daemon.call(call_id)))
    assert daemon.call(call_id)["status"] == "ESTABLISHED"
    offer = sipp.received(200)[-1]
    assert "CSeq: 1 INVITE" in offer.text and "m=audio" in offer.text
    _hang_up(daemon, sipp, call_id)


def test_reliable_183_is_pracked_then_the_call_is_answered(daemon, callee):
    """A 183 with Require: 100rel and SDP is PRACKed (RAck: its RSeq and the INVITE's
    CSeq, RFC 3262 §7.2); the 200 that follows makes the call ESTABLISHED."""
    sipp = callee("uas_183_100rel_200.xml")
    call_id = _startup(daemon, sipp)
    call = daemon.wait_status(call_id, "ESTABLISHED")
    assert "RING_MEDIA" in call["history"]
    (invite,) = sipp.received("INVITE")
    assert "100rel" in invite.header("Supported")
    cseq = invite.header("CSeq").split()[0]
    (prack,) = sipp.received("PRACK")
    assert prack.header("RAck") == f"1 {cseq} INVITE"
    _hang_up(daemon, sipp, call_id)


def test_a_bye_challenged_with_407_is_sent_again_with_credentials(daemon, callee):
    """/call/terminate's BYE gets a 407: it goes again with a right Proxy-Authorization (RFC
    2617 digest recomputed here) and a higher CSeq, and its 200 ends the call."""
    sipp = callee("uas_bye_407.xml")
    call_id = _startup(daemon, sipp)
    daemon.wait_status(call_id, "ESTABLISHED")
    _hang_up(daemon, sipp, call_id)
    first, second = sipp.received("BYE")
    assert first.header("Proxy-Authorization") is None
    assert int(second.header("CSeq").split()[0]) == int(first.header("CSeq").split()[0]) + 1
    fields = dict(re.findall(r'(\w+)="([^"]*)"', second.header("Proxy-Authorization")))
    md5 = lambda text: hashlib.md5(text.encode()).hexdigest()  # noqa: E731
    assert (fields["username"], fields["realm"]) == ("alice", "sipp")
    assert fields["response"] == md5(f"{md5('alice:sipp:s3cret')}:{fields['nonce']}:"
                                     f"{md5('BYE:' + fields['uri'])}")


def test_302_is_followed_to_another_sipp(daemon, callee):
    """A 302 from one SIPp sends the INVITE (same Call-ID, next CSeq) to the SIPp its Contact
    names, whose 200 makes the call ESTABLISHED."""
    target = callee("uas_200.xml")
    redirector = callee("uas_302.xml", variables={"target_port": target.port})
    call_id = _startup(daemon, redirector)
    daemon.wait_status(call_id, "ESTABLISHED")
    assert redirector.wait(15) == 0, redirector.errors()
    (moved,) = redirector.received("INVITE")
    (invite,) = target.received("INVITE")
    assert invite.first_line.startswith(f"INVITE sip:bob@127.0.0.1:{target.port} ")
    assert invite.header("Call-ID") == moved.header("Call-ID")
    _hang_up(daemon, target, call_id)


def test_422_then_timers_refreshed_within_a_short_interval(daemon, callee):
    """A 422 is retried with its Min-SE (RFC 4028 §7.4); the 200 makes sipgw the refresher
    of a 4 s session: it sends UPDATEs (the callee allows them) within each interval, and the
    call stays ESTABLISHED across them."""
    sipp = callee("uas_422_timer.xml")
    call_id = _startup(daemon, sipp)
    daemon.wait_status(call_id, "ESTABLISHED")
    wait_for(lambda: len(sipp.received("UPDATE")) >= 2, 8, "two UPDATEs", log=sipp.errors)
    assert daemon.call(call_id)["status"] == "ESTABLISHED"
    _hang_up(daemon, sipp, call_id)
    first, second = sipp.received("INVITE")
    assert first.header("Session-Expires") == "1800" and second.header("Min-SE") == "1900"
    update = sipp.received("UPDATE")[0]
    assert update.header("Session-Expires") == "4;refresher=uac"


def test_media_in_the_second_codec_of_the_answer_is_taken(daemon, callee):
    """SIPp answers `0 8 101` (PCMU first) and sends PCMA (its g711a.pcap): every packet is
    taken (none counted wrong_payload_type), the switch from PCMU is counted once, and the
    stream's audio codec is PCMA."""
    sipp = callee("uas_pcap_answer_0_8_101.xml")
    call_id = _startup(daemon, sipp)
    daemon.wait_status(call_id, "ESTABLISHED")

    def audio():
        stream = daemon.stream(f"stream-{call_id}")
        return stream["counters"].get("audio", {}) if stream else {}
    wait_for(lambda: audio().get("packets", 0) >= 50, 15, "50 audio packets",
             log=lambda: str(audio()))
    counters = audio()
    assert counters["wrong_payload_type"] == 0 and counters["codec_changes"] == 1
    assert daemon.stream(f"stream-{call_id}")["audioCodec"] == "PCMA"
    _hang_up(daemon, sipp, call_id)


def test_hold_and_unhold_from_the_app_send_the_sdp_directions(daemon, callee):
    """/call/hold re-INVITEs SIPp with every stream a=sendonly (the scenario fails on any other
    direction), HOLD past rtp_activity_timeout with no RTP; /call/unhold offers a=sendrecv,
    ESTABLISHED; the stream stays published throughout."""
    sipp = callee("uas_app_hold.xml")
    call_id = _startup(daemon, sipp)
    daemon.wait_status(call_id, "ESTABLISHED")
    daemon.rest("/call/hold", {"callId": call_id})
    daemon.wait_status(call_id, "HOLD")
    time.sleep(RTP_TIMEOUT + 2)  # a bounded negative wait: no RTP timeout while on hold
    assert daemon.call(call_id)["status"] == "HOLD"
    assert daemon.stream(f"stream-{call_id}") is not None
    daemon.rest("/call/unhold", {"callId": call_id})
    call = daemon.wait_status(call_id, "ESTABLISHED", "FAILED")
    assert call["history"][-3:] == ["ESTABLISHED", "HOLD", "ESTABLISHED"], call
    _hang_up(daemon, sipp, call_id)


def test_transfer_refers_and_follows_the_notifies_to_completion(daemon, callee):
    """/call/transfer sends SIPp a REFER to carol (202); its NOTIFYs sipfrag 100 then 200 are
    answered 200; the call shows transferStatus COMPLETED and ends FINISH by our BYE."""
    sipp = callee("uas_refer_notify.xml")
    call_id = _startup(daemon, sipp)
    daemon.wait_status(call_id, "ESTABLISHED")
    daemon.rest("/call/transfer", {"callId": call_id, "target": "carol"})
    call = daemon.wait_status(call_id, "FINISH", "FAILED")
    assert (call["status"], call["transferStatus"], call["info"]) == (
        "FINISH", "COMPLETED", "Transferred"), call
    assert call["target"].startswith("sip:carol@")
    assert sipp.wait(15) == 0, sipp.errors()


def test_register_423_is_retried_with_min_expires_then_the_call_goes_through(daemon, callee):
    """A registrar's 423 Interval Too Brief is answered with a REGISTER asking for its
    Min-Expires (RFC 3261 §10.2.8, same Call-ID, next CSeq); its 200 lets the call go to
    the callee, and the binding is removed after the call."""
    sipp = callee("uas_register_423_200.xml", calls=2)
    call_id = f"x{next(_ids)}"
    daemon.rest("/call/startup", {
        "callId": call_id, "callee": "bob", "sipLogin": "alice", "sipPassword": "s3cret",
        "sipDomain": "127.0.0.1", "sipPort": str(sipp.port), "hasVideo": "false",
        "sipRegisterRequired": "true", "toStream": f"stream-{call_id}"})
    daemon.wait_status(call_id, "ESTABLISHED")
    daemon.rest("/call/terminate", {"callId": call_id})
    daemon.wait_status(call_id, "FINISH")
    wait_for(lambda: len(sipp.received("REGISTER")) >= 3, 10, "three REGISTERs", log=sipp.errors)
    assert sipp.wait(15) == 0, sipp.errors()
    first, second, last = sipp.received("REGISTER")
    assert [r.header("Expires") for r in (first, second, last)] == ["3600", "3700", "0"]
    assert second.header("Call-ID") == first.header("Call-ID")
    assert int(second.header("CSeq").split()[0]) == int(first.header("CSeq").split()[0]) + 1


def test_tcp_connection_is_read_on_after_a_malformed_request(daemon, callee):
    """On one TCP connection a malformed OPTIONS (Max-Forwards not a number) is answered 400
    and the good OPTIONS after it is answered 200: the connection stays open and in step."""
    sipp = callee("uac_tcp_resync.xml", transport="t1",
                  remote=f"127.0.0.1:{daemon.sip_port}")
    assert sipp.wait(15) == 0, sipp.errors()


def test_an_unparseable_486_ends_the_call_busy_at_once(daemon, callee):
    """A 486 that does not parse (a broken Contact) but has a usable Via, CSeq and Call-ID
    reaches its transaction: the call ends BUSY and SIPp gets its ACK, well before Timer B
    (32 s) would end it."""
    sipp = callee("uas_486_garbled.xml")
    call_id = _startup(daemon, sipp)
    call = daemon.wait_status(call_id, "BUSY", "FAILED", timeout=10)
    assert (call["status"], call["sipStatus"]) == ("BUSY", 486), call
    assert sipp.wait(15) == 0, sipp.errors()
    assert [m.method for m in sipp.received()] == ["INVITE", "ACK"]
