"""The real daemon calling a real SIPp callee over UDP and TCP: statuses seen through
/call/find, and what SIPp received."""
import itertools

import pytest

from peers import Sipp
from sipgw_daemon import RestError, Sipgw

TRANSPORTS = {"udp": "u1", "tcp": "t1"}
_ids = itertools.count(1)


@pytest.fixture(scope="module", params=sorted(TRANSPORTS))
def transport(request):
    return request.param


@pytest.fixture(scope="module")
def daemon(transport, tmp_path_factory):
    """One sipgw per transport, SIP over TCP when asked by setting."""
    gw = Sipgw(str(tmp_path_factory.mktemp(f"sipgw-{transport}")),
               sip_use_tcp_transport=str(transport == "tcp").lower()).start()
    yield gw
    gw.stop()
    assert "s3cret" not in gw.log()


@pytest.fixture
def callee(transport, tmp_path):
    """Starts SIPp UAS scenarios on free ports and stops them all afterwards."""
    started = []

    def start(scenario, **kwargs):
        from peers import free_port
        sipp = Sipp(scenario, port=free_port("udp"), transport=TRANSPORTS[transport],
                    tmpdir=tmp_path, **kwargs).start()
        started.append(sipp)
        return sipp
    yield start
    for sipp in started:
        sipp.stop()


def _startup(daemon, sipp, **extra):
    call_id = f"c{next(_ids)}"
    assert daemon.start_call_to_sipp(sipp.port, call_id, **extra) is None
    return call_id


def test_200_then_terminate_sends_bye(daemon, callee):
    """A call answered with 200 is ESTABLISHED; /call/terminate sends BYE and ends FINISH."""
    sipp = callee("uas_200.xml")
    call_id = _startup(daemon, sipp)
    call = daemon.wait_status(call_id, "ESTABLISHED")
    assert "m=audio" in call["sdp"] and call["sipStatus"] == 200
    daemon.rest("/call/terminate", {"callId": call_id})
    call = daemon.wait_status(call_id, "FINISH")
    assert call["info"] == "Stopped by rest /terminate"
    assert sipp.wait(15) == 0
    assert [m.method for m in sipp.received()] == ["INVITE", "ACK", "BYE"]
    invite = sipp.received("INVITE")[0]
    assert "m=audio" in invite.body and invite.header("Contact")


def test_180_then_200_rings_first(daemon, callee):
    """180 then 200 shows RING before ESTABLISHED."""
    sipp = callee("uas_180_200.xml")
    call_id = _startup(daemon, sipp)
    call = daemon.wait_status(call_id, "ESTABLISHED")
    assert call["history"][:4] == ["NEW", "PENDING", "TRYING", "RING"]
    daemon.rest("/call/terminate", {"callId": call_id})
    daemon.wait_status(call_id, "FINISH")
    assert sipp.wait(15) == 0


def test_183_with_sdp_is_ring_media(daemon, callee):
    """183 with SDP shows RING_MEDIA before ESTABLISHED."""
    sipp = callee("uas_183sdp_200.xml")
    call_id = _startup(daemon, sipp)
    call = daemon.wait_status(call_id, "ESTABLISHED")
    assert "RING_MEDIA" in call["history"]
    daemon.rest("/call/terminate", {"callId": call_id})
    daemon.wait_status(call_id, "FINISH")
    assert sipp.wait(15) == 0


def test_486_is_busy_and_acked(daemon, callee):
    """486 Busy Here ends the call BUSY, and SIPp gets its ACK."""
    sipp = callee("uas_486.xml")
    call_id = _startup(daemon, sipp)
    call = daemon.wait_status(call_id, "BUSY")
    assert call["sipStatus"] == 486
    assert sipp.wait(15) == 0
    assert [m.method for m in sipp.received()] == ["INVITE", "ACK"]


def test_401_challenge_is_answered(daemon, callee):
    """A 401 challenge is answered with Authorization, then the call is ESTABLISHED."""
    sipp = callee("uas_401_200.xml", variables={"authuser": "alice", "authpass": "s3cret"})
    call_id = _startup(daemon, sipp)
    daemon.wait_status(call_id, "ESTABLISHED")
    invites = sipp.received("INVITE")
    assert len(invites) == 2 and invites[0].header("Authorization") is None
    assert 'username="alice"' in invites[1].header("Authorization")
    daemon.rest("/call/terminate", {"callId": call_id})
    daemon.wait_status(call_id, "FINISH")
    assert sipp.wait(15) == 0


def test_bye_from_callee_finishes_call(daemon, callee):
    """The callee hanging up ends the call FINISH 'Normal call clearing'."""
    sipp = callee("uas_bye_from_callee.xml")
    call_id = _startup(daemon, sipp)
    call = daemon.wait_status(call_id, "FINISH")
    assert call["info"] == "Normal call clearing"
    assert "ESTABLISHED" in call["history"]
    assert sipp.wait(15) == 0
    assert sipp.received(200)  # SIPp got the 200 for its BYE


def test_no_answer_then_terminate_sends_cancel(daemon, callee):
    """/call/terminate while ringing CANCELs the INVITE; the 487 ends it FINISH."""
    sipp = callee("uas_noanswer_cancel.xml")
    call_id = _startup(daemon, sipp)
    daemon.wait_status(call_id, "RING")
    daemon.rest("/call/terminate", {"callId": call_id})
    call = daemon.wait_status(call_id, "FINISH")
    assert call["info"] == "Stopped by rest /terminate"
    assert sipp.wait(15) == 0
    assert [m.method for m in sipp.received()] == ["INVITE", "CANCEL", "ACK"]


def test_unknown_call_is_404(daemon):
    """/call/terminate and /call/find of an unknown callId answer 404."""
    for method in ("/call/terminate", "/call/find"):
        with pytest.raises(RestError) as info:
            daemon.rest(method, {"callId": "no-such-call"})
        assert info.value.code == 404
