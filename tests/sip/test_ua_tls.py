"""The user agent over TLS: sips: and ;transport=tls in sipOutboundProxy, Record-Route and
Contact choose the TLS transport (RFC 3261 §26.2, RFC 5630), certificate names follow the URI
host (RFC 5922), and a failed handshake fails the call with its reason."""
from fakes import PEER
from sipgw.sip.message import make_response
from sipgw.sip.resolver import Locator
from sipgw.sip.sdp import make_offer
from test_resolver import ZONE, FakeDNS, _call, _run

ANSWER = bytes(make_offer("127.0.0.1", audio_port=6000, video_port=6002, session_id=9))


def test_sips_outbound_proxy_sends_the_invite_over_tls_to_5061(make_gateway, sender, clock):
    """sipOutboundProxy sips:HOST: the INVITE goes over TLS to port 5061, its Via says TLS
    with an RFC 5923 alias, its Contact says transport=tls."""
    gw = make_gateway()
    gw.startup(_call(sip_outbound_proxy="sips:127.0.0.2", sip_domain="example.org"))
    (msg, transport, host, port), = sender.sent
    assert (transport, host, port) == ("TLS", "127.0.0.2", 5061)
    assert msg.top_via.transport == "TLS" and "alias" in msg.top_via.params
    assert msg.contacts[0].uri.params["transport"] == "tls"


def test_transport_tls_proxy_name_is_located_by_sips_srv_and_named_for_its_certificate(
        make_gateway, sender, clock):
    """sipOutboundProxy HOST;transport=tls: _sips._tcp SRV gives the target, and the
    certificate there must name HOST, not the address."""
    gw = make_gateway()
    gw.sip.locator = Locator(clock, FakeDNS(clock, ZONE))
    gw.startup(_call(sip_outbound_proxy="example.test;transport=tls", sip_domain="example.org"))
    _run(clock)
    (msg, transport, host, port), = sender.sent
    assert (transport, host, port) == ("TLS", "127.0.0.3", 5071)
    assert sender.server_names[("127.0.0.3", 5071)] == "example.test"


def test_in_dialog_requests_follow_a_sips_record_route_over_tls(make_gateway, sender, clock):
    """A Record-Route <sips:ADDR;lr> sends the BYE over TLS to ADDR:5061."""
    gw = make_gateway()
    gw.startup(_call(sip_domain="127.0.0.1"))
    invite = sender.requests("INVITE")[-1]
    gw.sip.transactions.receive(make_response(invite, 200, to_tag="b1", body=ANSWER, extra=[
        ("Contact", "<sip:bob@127.0.0.1:5060>"), ("Content-Type", "application/sdp"),
        ("Record-Route", "<sips:127.0.0.5;lr>")]), PEER)
    gw.terminate("call1")
    (bye, transport, host, port), = [s for s in sender.sent if getattr(s[0], "method", "") == "BYE"]
    assert (transport, host, port) == ("TLS", "127.0.0.5", 5061)
    assert bye.top_via.transport == "TLS"


def test_a_tls_handshake_failure_fails_the_call_with_its_reason(make_gateway, sender, clock):
    """The transport's TLS error (here a certificate naming another host) is the call's
    failure reason."""
    gw = make_gateway()
    gw.startup(_call(sip_outbound_proxy="sips:127.0.0.2:5071", sip_domain="example.org"))
    assert sender.sent[0][1:] == ("TLS", "127.0.0.2", 5071)
    why = "TLS with 127.0.0.2 failed: the server's certificate does not name 127.0.0.2"
    gw.sip.transactions.transport_error(("127.0.0.2", 5071), why)
    call, = gw.find("call1")
    assert call["status"] == "FAILED" and why in call["info"]


def test_a_callee_with_a_port_keeps_it_in_the_request_uri(make_gateway, sender):
    """callee bob@host:port (e.g. behind a sips: proxy) is sip:bob@host:port, not a
    bracketed host:port."""
    gw = make_gateway()
    gw.startup(_call(callee="bob@127.0.0.1:5099", sip_outbound_proxy="sips:127.0.0.2"))
    proxy = "sips:127.0.0.2"
    gw.startup(_call(call_id="call2", callee="bob@[::1]:5098", sip_outbound_proxy=proxy))
    gw.startup(_call(call_id="call3", callee="bob@example.org", sip_outbound_proxy=proxy))
    assert [str(m.uri) for m in sender.requests("INVITE")] == [
        "sip:bob@127.0.0.1:5099", "sip:bob@[::1]:5098", "sip:bob@example.org"]


def test_a_redirect_to_a_sips_contact_goes_over_tls(make_gateway, sender, clock):
    """A 302 to <sips:...> sends the INVITE again over TLS, to 5061 (RFC 3261 §26.2), as
    a sips: outbound proxy or Record-Route does."""
    gw = make_gateway()
    gw.startup(_call(sip_domain="127.0.0.1"))
    first = sender.requests("INVITE")[0]
    gw.sip.transactions.receive(make_response(first, 302, to_tag="r1", extra=[
        ("Contact", "<sips:dave@127.0.0.2>")]), PEER)
    (_, transport, host, port) = sender.sent[-1]
    assert (transport, host, port) == ("TLS", "127.0.0.2", 5061)
    assert sender.requests("INVITE")[-1].top_via.transport == "TLS"


def test_tls_certificate_names_kept_are_bounded(make_gateway, sender, clock, monkeypatch):
    """Past MAX_SERVER_NAMES, the name least recently resolved to TLS is forgotten first."""
    from twisted.names import dns
    from sipgw.sip import ua as ua_module
    monkeypatch.setattr(ua_module, "MAX_SERVER_NAMES", 2)
    gw = make_gateway()
    gw.sip.locator = Locator(clock, FakeDNS(clock, {
        (dns.A, f"n{n}.test"): [(dns.Record_A(f"127.0.1.{n}"), 300)] for n in range(3)}))
    for n in range(3):
        gw.sip.resolve("TLS", f"n{n}.test", 5061)
        _run(clock)
    assert sender.server_names == {("127.0.1.1", 5061): "n1.test",
                                   ("127.0.1.2", 5061): "n2.test"}
