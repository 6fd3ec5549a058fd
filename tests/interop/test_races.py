"""Races with a real SIPp callee (issue 10): an answer crossing the CANCEL sent at the
ring timeout is ACKed and hung up, so the callee is not left answered."""
from sipgw_daemon import Sipgw


def test_answer_crossing_the_ring_timeout_cancel_is_acked_and_byed(tmp_path, sipp_factory):
    """sip_ring_timeout=1: the call is FAILED and CANCELled after 1 s; SIPp answers the
    INVITE 200 anyway; sipgw ACKs it and sends BYE, which SIPp answers."""
    sipp = sipp_factory("uas_cancel_crosses_200.xml", transport="u1")
    gw = Sipgw(str(tmp_path), sip_ring_timeout=1).start()
    try:
        gw.rest("/call/startup", {"callId": "x1", "callee": "bob", "sipLogin": "alice",
                                  "sipDomain": "127.0.0.1", "sipPort": str(sipp.port),
                                  "hasVideo": "false", "toStream": "stream-x1"})
        call = gw.wait_status("x1", "FAILED", timeout=10)
        assert call["info"] == "No answer within 1 s"
        assert sipp.wait(15) == 0
        assert [m.method for m in sipp.received()] == ["INVITE", "CANCEL", "ACK", "BYE"]
        assert gw.call("x1")["status"] == "FAILED"
    finally:
        gw.stop()
