"""Registration NAT handling on a Clock: RFC 5626 keep-alives and the Contact learned from
received/rport (RFC 3581 §4)."""
from fakes import PEER
from sipgw.sip.message import make_response
from fakes import call_request as _call, reply as _reply


def _registered(gw, sender, via_params=""):
    """Start a call of a registering account and answer its REGISTER 200, the Via carrying
    ``via_params`` as a registrar behind the NAT would stamp them."""
    gw.startup(_call(sip_register_required=True))
    reg = sender.requests("REGISTER")[0]
    ok = make_response(reg, 200, to_tag="r", extra=[("Expires", "600")])
    via = ok.get("Via").replace(";rport", ";rport" + via_params)
    ok.remove("Via")
    ok.add("Via", via)
    gw.sip.transactions.receive(ok, PEER)
    return ok


def test_crlf_keepalive_goes_to_the_registrar_instead_of_options(make_gateway, sender, clock):
    """sip_nat_keepalive=crlf: an RFC 5626 keep-alive to the registrar's address every
    sip_keepalive_interval while registered, and no OPTIONS."""
    gw = make_gateway(sip_keepalive_interval=25, sip_nat_keepalive="crlf", sip_ring_timeout=0,
                 rtp_activity_timeout=0)
    _registered(gw, sender)
    gw.sip.transactions.receive(_reply(sender.requests("INVITE")[0], 180), PEER)
    clock.advance(24)
    assert sender.keepalives == []
    clock.advance(1.01)
    assert sender.keepalives == [("UDP", "127.0.0.1", 5060)]
    clock.advance(25)
    assert len(sender.keepalives) == 2 and sender.requests("OPTIONS") == []


def test_nat_keepalive_off_sends_nothing(make_gateway, sender, clock):
    """sip_nat_keepalive=off: neither OPTIONS nor CRLF, whatever the interval."""
    gw = make_gateway(sip_keepalive_interval=25, sip_nat_keepalive="off", sip_ring_timeout=0,
                 rtp_activity_timeout=0)
    _registered(gw, sender)
    gw.sip.transactions.receive(_reply(sender.requests("INVITE")[0], 180), PEER)
    clock.advance(100)
    assert sender.keepalives == [] and sender.requests("OPTIONS") == []


def test_contact_rewritten_from_received_and_rport_behind_a_nat(make_gateway, sender, clock):
    """sip_nat_rewrite_contact: a REGISTER 200 whose Via shows another address
    (received/rport) makes the account register again at once with that public address in
    its Contact and Via sent-by, and its call's INVITE carries it in both too."""
    gw = make_gateway(sip_nat_rewrite_contact=True, sip_ring_timeout=0, rtp_activity_timeout=0)
    _registered(gw, sender, ";received=203.0.113.5;rport=40000")
    invite = sender.requests("INVITE")[0]
    assert str(invite.contacts[0].uri) == "sip:alice@203.0.113.5:40000"
    assert (invite.top_via.host, invite.top_via.port) == ("203.0.113.5", 40000)
    clock.advance(0.01)
    first, again = sender.requests("REGISTER")
    assert str(first.contacts[0].uri) == "sip:alice@127.0.0.1:5070"
    assert (first.top_via.host, first.top_via.port) == ("127.0.0.1", 5070)
    assert str(again.contacts[0].uri) == "sip:alice@203.0.113.5:40000"
    assert (again.top_via.host, again.top_via.port) == ("203.0.113.5", 40000)
    assert again.call_id == first.call_id and again.cseq.seq == first.cseq.seq + 1
    # its 200 shows the same public address: no further REGISTER until the refresh
    ok = make_response(again, 200, to_tag="r", extra=[("Expires", "600")])
    ok.remove("Via")
    ok.add("Via", again.get("Via").replace(";rport", ";received=203.0.113.5;rport=40000"))
    gw.sip.transactions.receive(ok, PEER)
    clock.advance(30)  # (Timer B ends the unanswered INVITE at 32 s)
    assert len(sender.requests("REGISTER")) == 2


def test_contact_not_rewritten_by_default(make_gateway, sender, clock):
    """sip_nat_rewrite_contact=false (default): the local address stays in Contact and Via."""
    gw = make_gateway(sip_ring_timeout=0, rtp_activity_timeout=0)
    _registered(gw, sender, ";received=203.0.113.5;rport=40000")
    clock.advance(0.01)
    assert len(sender.requests("REGISTER")) == 1
    invite = sender.requests("INVITE")[0]
    assert str(invite.contacts[0].uri) == "sip:alice@127.0.0.1:5070"
    assert (invite.top_via.host, invite.top_via.port) == ("127.0.0.1", 5070)
