"""The WCS sample flow with real peers: sipgw registers alice at Kamailio (401), calls bob
through it (407), baresip answers with H264 + audio, /call/terminate hangs up."""
import pytest

from peers import wait_for
from sipgw_daemon import Sipgw


REGISTERING = {"sipAuthenticationName": "alice", "sipRegisterRequired": "true"}


@pytest.fixture
def daemon(tmp_path):
    gw = Sipgw(str(tmp_path)).start()
    yield gw
    gw.stop()
    assert "alicepw" not in gw.log()


def test_register_call_through_kamailio_to_baresip(daemon, kamailio, baresip):
    """REGISTER 401 -> 200, INVITE 407 -> authenticated -> relayed to baresip, which answers
    with H264; terminate gives FINISH and alice is unregistered."""
    daemon.start_call_to_bob(kamailio.port, "k1", **REGISTERING)
    call = daemon.wait_status("k1", "ESTABLISHED", timeout=30)
    assert "m=video" in call["sdp"] and "H264/90000" in call["sdp"]
    assert "m=audio" in call["sdp"]
    assert kamailio.registered("alice")
    daemon.rest("/call/terminate", {"callId": "k1"})
    call = daemon.wait_status("k1", "FINISH", timeout=20)
    assert call["info"] == "Stopped by rest /terminate"
    wait_for(lambda: not kamailio.registered("alice"), 10, "alice to be unregistered")
    # Kamailio drops the binding before its 200 reaches sipgw, which logs on that 200
    wait_for(lambda: "unregistered sip:alice@127.0.0.1" in daemon.log(), 10,
             "sipgw to log the unregistration")
    assert "Call established" in baresip.log()


def test_wrong_password_fails_with_the_registrar_reason(daemon, kamailio, baresip):
    """A refused REGISTER ends the call FAILED naming the registration failure."""
    daemon.start_call_to_bob(kamailio.port, "k2", **REGISTERING, sipPassword="wrong")
    call = daemon.wait_status("k2", "FAILED", timeout=20)
    assert call["info"].startswith("Registration failed")
    assert "wrong" not in daemon.log().replace("wrong password", "")


def test_call_without_registering_is_proxy_authenticated(daemon, kamailio, baresip):
    """Without sipRegisterRequired the INVITE answers Kamailio's 407 and reaches baresip."""
    daemon.start_call_to_bob(kamailio.port, "k3", sipAuthenticationName="alice")
    daemon.wait_status("k3", "ESTABLISHED", timeout=30)
    assert not kamailio.registered("alice")
    daemon.rest("/call/terminate", {"callId": "k3"})
    daemon.wait_status("k3", "FINISH", timeout=20)
