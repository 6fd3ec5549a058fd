"""The real daemon with sip_accept_refer=true against SIPp callees that do mid-call what
this gateway learnt late: a callee transfers the call (blind REFER, RFC 3515) to a second
SIPp, whose answer carries the same stream on; an SRTP callee re-INVITEs over RTP/SAVP."""
import pytest

from peers import wait_for
from sipgw_daemon import Sipgw


@pytest.fixture
def daemon(tmp_path):
    gw = Sipgw(str(tmp_path), sip_accept_refer="true").start()
    yield gw
    gw.stop()


def test_a_callee_transfer_moves_the_call_to_the_target_with_the_same_stream(daemon,
                                                                              sipp_factory):
    """bob REFERs to carol: sipgw answers 202, NOTIFYs 100 Trying, INVITEs carol, NOTIFYs
    200 OK once she answers and BYEs bob (his scenario checks each); the call stays
    ESTABLISHED on carol's dialog with the same stream, and /call/terminate BYEs carol."""
    carol = sipp_factory("uas_200.xml")
    bob = sipp_factory("uas_refer_to_target.xml", variables={"target_port": carol.port})
    daemon.start_call_to_sipp(bob.port, "t1")
    first = daemon.wait_status("t1", "ESTABLISHED")
    stream = daemon.stream("stream-t1")
    assert bob.wait(15) == 0, bob.errors()
    wait_for(lambda: carol.received("ACK"), 10, "carol's ACK", log=carol.errors)
    (invite,) = carol.received("INVITE")
    assert "sip:carol@127.0.0.1" in invite.text.splitlines()[0]
    call = daemon.call("t1")
    assert call["status"] == "ESTABLISHED" and call["sessionId"] != first["sessionId"], call
    assert daemon.stream("stream-t1")["mediaSessionId"] == stream["mediaSessionId"]
    daemon.rest("/call/terminate", {"callId": "t1"})
    daemon.wait_status("t1", "FINISH")
    assert carol.wait(15) == 0, carol.errors()


def test_an_srtp_callee_reinviting_over_savp_gets_our_crypto_back(daemon, sipp_factory):
    """sipSrtp=mandatory to a SIPp callee that re-INVITEs over RTP/SAVP with its key
    unchanged: the 200 answers over RTP/SAVP with a=crypto:1 (its scenario checks), no 488,
    and the call stays ESTABLISHED until /call/terminate."""
    callee = sipp_factory("uas_srtp_reinvite.xml")
    daemon.start_call_to_sipp(callee.port, "s1", sipSrtp="mandatory")
    daemon.wait_status("s1", "ESTABLISHED")
    wait_for(lambda: len(callee.received(200)) >= 1, 10, "the 200 to the re-INVITE",
             log=callee.errors)
    assert daemon.call("s1")["status"] == "ESTABLISHED"
    assert not callee.received(488)
    daemon.rest("/call/terminate", {"callId": "s1"})
    daemon.wait_status("s1", "FINISH")
    assert callee.wait(15) == 0, callee.errors()
