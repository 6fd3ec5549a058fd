"""An IPv6 call: the daemon on ::1 calls a SIPp callee on ::1 (RFC 3261 §25.1 references in
every header, c=IN IP6 in the SDP, IPv6 SIP and RTP sockets)."""
import re
import socket
import struct
import time

from peers import wait_for
from sipgw_daemon import call_once


def _send_pcmu(port: int, count: int) -> None:
    """``count`` PCMU packets, one per 20 ms, to [::1]:port, as the media of a callee behind
    NAT would arrive: not from the SDP's port (SIPp holds it), so the strict source rule takes
    them only after the SDP address's grace second and probation."""
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
        for seq in range(count):
            header = struct.pack("!BBHII", 0x80, 0, seq, seq * 160, 0x1234)
            sock.sendto(header + b"\xff" * 160, ("::1", port))
            time.sleep(0.02)  # media pacing, not a wait for an event


def test_an_ipv6_call_to_sipp_on_loopback(sipp_factory, tmp_path):
    """INVITE, 200, ACK, BYE over IPv6: SIPp sees [::1] in the Via and Contact and an IP6
    offer; the call is ESTABLISHED with SIPp's IP6 answer, RTP sent to the offer's port over
    IPv6 is counted on the stream, and the call ends FINISH."""
    sipp = sipp_factory("uas_200.xml", transport="u1", host="::1")

    def rtp_over_ipv6(gw, call):
        assert "c=IN IP6 ::1" in call["sdp"]
        offer = sipp.received("INVITE")[0].body
        _send_pcmu(int(re.search(r"m=audio (\d+)", offer).group(1)), 100)
        wait_for(lambda: gw.stream("stream-v6")["counters"].get("audio", {}).get("packets", 0)
                 >= 20, 10, "20 RTP packets over IPv6 on the stream", log=gw.log)
    call_once(tmp_path / "sipgw", "v6", "[::1]", str(sipp.port), during=rtp_over_ipv6,
              sip_bind_address="::1")
    assert sipp.wait(15) == 0
    assert [m.method for m in sipp.received()] == ["INVITE", "ACK", "BYE"]
    invite = sipp.received("INVITE")[0]
    assert "[::1]" in invite.header("Via") and "[::1]" in invite.header("Contact")
    assert "c=IN IP6 ::1" in invite.body
