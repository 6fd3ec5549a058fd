"""Full-size SIP over UDP (RFC 3261 §18.1.1) with a real SIPp callee."""
from peers import SCENARIOS
from sipgw_daemon import Sipgw


def test_a_20_kb_sdp_answer_over_udp_is_accepted(sipp_factory, tmp_path):
    """SIPp answers over UDP with a 200 OK whose SDP is 20 KB, one datagram far above
    Twisted's default 8,192-byte read: it is read whole, the call is ESTABLISHED and ends
    with a BYE."""
    padding = "".join(f"      a=x-pad{i}:{'x' * 90}\n" for i in range(200))
    text = (SCENARIOS / "uas_200.xml").read_text().replace(
        "      a=rtpmap:0 PCMU/8000\n", "      a=rtpmap:0 PCMU/8000\n" + padding, 1)
    scenario = tmp_path / "uas_200_large_sdp.xml"
    scenario.write_text(text)
    sipp = sipp_factory(str(scenario), transport="u1")
    workdir = tmp_path / "sipgw"
    workdir.mkdir()
    gw = Sipgw(str(workdir)).start()
    try:
        assert gw.rest("/call/startup", {
            "callId": "big1", "callee": "bob", "sipLogin": "alice", "sipPassword": "s3cret",
            "sipDomain": "127.0.0.1", "sipPort": str(sipp.port), "hasVideo": "false",
            "toStream": "stream-big1"}) is None
        call = gw.wait_status("big1", "ESTABLISHED")
        assert len(call["sdp"]) > 20000
        gw.rest("/call/terminate", {"callId": "big1"})
        gw.wait_status("big1", "FINISH")
        assert sipp.wait(15) == 0
    finally:
        gw.stop()
    assert len(sipp.sent(200)[0].body) > 20000
