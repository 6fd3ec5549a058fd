"""The SIP user agent alone (RFC 3261 §8, §12): what it answers with no call of ours."""
import pytest

from sipgw.config import Config


def _unsolicited_invite(size: int) -> bytes:
    """An out-of-dialog INVITE of about ``size`` bytes whose Via names a third party."""
    head = ("INVITE sip:gw@127.0.0.1 SIP/2.0\r\n"
            "Via: SIP/2.0/UDP 203.0.113.50:5060;branch=z9hG4bKspoof;maddr=203.0.113.51;rport\r\n"
            "From: <sip:x@203.0.113.50>;tag=f1\r\nTo: <sip:gw@127.0.0.1>\r\n"
            "Call-ID: unsolicited@x\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\n")
    padding = "X-Pad: " + "p" * (size - len(head) - 30) + "\r\n"
    return (head + padding + "Content-Length: 0\r\n\r\n").encode()


@pytest.mark.parametrize("answer, expected", [(True, [603]), (False, [])])
def test_unsolicited_invite_gets_at_most_one_answer_to_its_source(clock, answer, expected):
    """A 7 KB out-of-dialog INVITE gets one stateless 603 (none with sip_answer_unsolicited
    false), sent to the packet's source, never retransmitted (no Timer G), and no state stays."""
    from sipgw.sip.ua import UserAgent
    ua = UserAgent(clock, Config(sip_bind_address="127.0.0.1", sip_local_port=0,
                                 sip_answer_unsolicited=answer))
    ua.start()
    port = clock.udp_ports[ua.transport.port]
    invite = _unsolicited_invite(7000)
    assert len(invite) >= 7000
    port.proto.datagramReceived(invite, ("198.51.100.7", 5099))
    for _ in range(70):
        clock.advance(1)
    assert [int(data.split(b" ")[1]) for data, _ in port.written] == expected
    assert all(addr == ("198.51.100.7", 5099) for _, addr in port.written)
    assert ua.transactions.server == {}
