"""Full-size SIP over UDP (RFC 3261 §18.1.1) with a real SIPp callee."""
from peers import SCENARIOS
from sipgw_daemon import call_once


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
    _, call = call_once(tmp_path / "sipgw", "big1", "127.0.0.1", str(sipp.port))
    assert len(call["sdp"]) > 20000
    assert sipp.wait(15) == 0
    assert len(sipp.sent(200)[0].body) > 20000


def test_an_invite_over_1300_bytes_goes_over_tcp(sipp_factory, tmp_path):
    """sipgw set for UDP sends an INVITE of more than 1300 bytes (a 250-character callee,
    a long visibleName, audio and video) over TCP instead (RFC 3261 §18.1.1), to a SIPp
    that listens on TCP only: its Via says TCP, the call is ESTABLISHED, and the log says
    why."""
    sipp = sipp_factory("uas_200.xml", transport="t1")
    gw, _ = call_once(tmp_path / "sipgw", "long1", "127.0.0.1", str(sipp.port), body={
        "callee": "b" * 250, "visibleName": "V" * 120, "hasVideo": "true"})
    assert sipp.wait(15) == 0
    invite = sipp.received("INVITE")[0]
    assert invite.header("Via").startswith("SIP/2.0/TCP")
    assert "bytes sent over TCP, not UDP" in gw.log()
