"""Locating SIP servers (RFC 3263, RFC 2782) with a fake DNS on a task.Clock, and the user
agent's failover between the targets found."""
import random

from twisted.internet import defer
from twisted.names import dns
from twisted.names.error import DNSNameError

from fakes import PEER, call_request
from sipgw.sip.message import make_response
from sipgw.sip.resolver import (Destination, Locator, Naptr, Srv, naptr_services, order_srv,
                                parse_servers)
from sipgw.sip.sdp import make_offer
from sipgw.sip.transaction import T1

ANSWER = bytes(make_offer("127.0.0.1", audio_port=6000, video_port=6002, session_id=9))


class FakeDNS:
    """An IResolver answering from a table after ``delay`` seconds on the clock; every
    query is noted as (type name, name)."""

    def __init__(self, clock, records, delay=0.01, unreachable=()):
        self.clock, self.records, self.delay = clock, records, delay
        self.unreachable = unreachable  # record types or names whose queries fail (no route)
        self.queries = []

    def _answer(self, name, kind):
        name = name.decode() if isinstance(name, bytes) else name
        self.queries.append((dns.QUERY_TYPES[kind], name))
        if kind in self.unreachable or name in self.unreachable:
            return defer.fail(OSError(101, "Network is unreachable"))
        d = defer.Deferred()
        found = self.records.get((kind, name))
        if found is None:
            self.clock.callLater(self.delay, d.errback, DNSNameError(name))
        else:
            answers = [dns.RRHeader(name, kind, ttl=ttl, payload=payload) for payload, ttl in found]
            self.clock.callLater(self.delay, d.callback, (answers, [], []))
        return d

    def lookupNamingAuthorityPointer(self, name, timeout=None):
        return self._answer(name, dns.NAPTR)

    def lookupService(self, name, timeout=None):
        return self._answer(name, dns.SRV)

    def lookupAddress(self, name, timeout=None):
        return self._answer(name, dns.A)

    def lookupIPV6Address(self, name, timeout=None):
        return self._answer(name, dns.AAAA)


def _naptr(order, pref, service, replacement):
    return dns.Record_NAPTR(order, pref, b"s", service.encode(), b"", replacement.encode()), 300


def _srv(priority, weight, port, target, ttl=300):
    return dns.Record_SRV(priority, weight, port, target.encode()), ttl


def _a(address, ttl=300):
    return dns.Record_A(address), ttl


# example.test: NAPTR to TCP first (dead.example.test then live.example.test), UDP after.
ZONE = {
    (dns.NAPTR, "example.test"): [_naptr(20, 10, "SIP+D2U", "_sip._udp.example.test"),
                                  _naptr(10, 10, "SIP+D2T", "_sip._tcp.example.test"),
                                  _naptr(5, 10, "SIPS+D2T", "_sips._tcp.example.test")],
    (dns.SRV, "_sip._tcp.example.test"): [_srv(20, 0, 5080, "live.example.test"),
                                          _srv(10, 0, 5070, "dead.example.test")],
    (dns.SRV, "_sip._udp.example.test"): [_srv(10, 0, 5090, "live.example.test")],
    (dns.SRV, "_sips._tcp.example.test"): [_srv(10, 0, 5071, "live.example.test")],
    (dns.SRV, "_sips._tcp.srv-only.test"): [_srv(10, 0, 5072, "proxy.test")],
    (dns.SRV, "_sip._udp.srv-only.test"): [_srv(10, 0, 5060, "live.example.test", ttl=60)],
    (dns.A, "dead.example.test"): [_a("127.0.0.2")],
    (dns.A, "live.example.test"): [_a("127.0.0.3"), _a("127.0.0.4")],
    (dns.A, "plain.test"): [_a("127.0.0.5")],
    (dns.A, "proxy.test"): [_a("127.0.0.6")],
    (dns.AAAA, "live.example.test"): [(dns.Record_AAAA("::1"), 300)],
}


def _chain(dest):
    return [tuple(dest)] + [tuple(t) for t in dest.rest]


def _run(clock, seconds=0.5):
    """Let the fake DNS answer, one lookup after another."""
    clock.pump([0.01] * int(seconds * 100))


def _locate(clock, *args, records=ZONE, **kwargs):
    fake = FakeDNS(clock, records)
    got = []
    Locator(clock, fake).locate(*args, **kwargs).addBoth(got.append)
    _run(clock)
    return got[0], fake


def test_srv_order_is_priority_then_weighted_random():
    """RFC 2782: a lower priority always comes first; within a priority a weight of 90
    comes first about 9 times in 10 against a weight of 10."""
    records = [Srv(20, 0, 1, "c"), Srv(10, 10, 1, "b"), Srv(10, 90, 1, "a")]
    rng = random.Random(7)
    firsts = [order_srv(records, rng)[0].target for _ in range(1000)]
    assert all(order_srv(records, rng)[-1].target == "c" for _ in range(50))
    assert 850 < firsts.count("a") < 950 and firsts.count("b") + firsts.count("a") == 1000
    assert order_srv([Srv(0, 0, 0, ".")]) == []  # "." : no such service


def test_naptr_records_are_kept_by_order_and_preference_for_our_transports():
    """RFC 3263 §4.1: order, then preference; services we cannot use (TLS, E2U) are skipped."""
    records = [Naptr(20, 5, "s", "SIP+D2U", "_sip._udp.x"), Naptr(10, 50, "s", "SIP+D2T", "_sip._tcp.x"),
               Naptr(10, 10, "s", "SIPS+D2T", "_sips._tcp.x"), Naptr(1, 1, "u", "E2U+sip", "")]
    assert naptr_services(records, ("UDP", "TCP")) == [("TCP", "_sip._tcp.x"),
                                                       ("UDP", "_sip._udp.x")]


def test_naptr_then_srv_then_a_gives_every_target_in_order(clock):
    """A bare domain goes NAPTR -> SRV -> A: TCP targets by SRV priority, then UDP ones."""
    got = []
    Locator(clock, FakeDNS(clock, ZONE)).locate("example.test").addBoth(got.append)
    assert got == []  # nothing answered at once: the lookups wait on the clock, never block
    dest, _ = _locate(clock, "example.test")
    assert _chain(dest) == [("TCP", "127.0.0.2", 5070), ("TCP", "127.0.0.3", 5080),
                            ("TCP", "127.0.0.4", 5080), ("UDP", "127.0.0.3", 5090),
                            ("UDP", "127.0.0.4", 5090)]


def test_numeric_host_and_explicit_port_skip_naptr_and_srv(clock):
    """§4.1/§4.2: an IP address needs no DNS at all; a name with a port only its A record."""
    dest, fake = _locate(clock, "127.0.0.9")
    assert _chain(dest) == [("UDP", "127.0.0.9", 5060)] and fake.queries == []
    dest, fake = _locate(clock, "live.example.test", 5099)
    assert _chain(dest) == [("UDP", "127.0.0.3", 5099), ("UDP", "127.0.0.4", 5099)]
    assert fake.queries == [("A", "live.example.test")]


def test_transport_parameter_asks_only_that_srv(clock):
    """§4.2: with ;transport=udp the client asks _sip._udp only, never NAPTR."""
    dest, fake = _locate(clock, "example.test", None, "UDP")
    assert _chain(dest)[0] == ("UDP", "127.0.0.3", 5090)
    assert ("NAPTR", "example.test") not in fake.queries


def test_tls_uses_naptr_sips_d2t_then_sips_srv_then_the_address_at_5061(clock):
    """A sips: URI or ;transport=tls: NAPTR SIPS+D2T leads to _sips._tcp; without NAPTR the
    _sips._tcp SRV is asked; without SRV the address on 5061, as for a numeric host."""
    dest, fake = _locate(clock, "example.test", None, "TLS")
    assert _chain(dest) == [("TLS", "127.0.0.3", 5071), ("TLS", "127.0.0.4", 5071)]
    assert fake.queries[:2] == [("NAPTR", "example.test"), ("SRV", "_sips._tcp.example.test")]
    dest, fake = _locate(clock, "srv-only.test", None, "TLS")
    assert _chain(dest) == [("TLS", "127.0.0.6", 5072)]
    assert ("SRV", "_sip._udp.srv-only.test") not in fake.queries
    dest, _ = _locate(clock, "plain.test", None, "TLS")
    assert _chain(dest) == [("TLS", "127.0.0.5", 5061)]
    dest, _ = _locate(clock, "127.0.0.9", None, "TLS")
    assert _chain(dest) == [("TLS", "127.0.0.9", 5061)]


def test_without_naptr_srv_then_without_srv_the_a_record_at_5060(clock):
    """§4.1: no NAPTR: SRV per transport, UDP first; no SRV either: the A record on 5060."""
    dest, _ = _locate(clock, "srv-only.test")
    assert _chain(dest) == [("UDP", "127.0.0.3", 5060), ("UDP", "127.0.0.4", 5060)]
    dest, fake = _locate(clock, "plain.test")
    assert _chain(dest) == [("UDP", "127.0.0.5", 5060)]
    assert fake.queries[0] == ("NAPTR", "plain.test")


def test_naptr_and_srv_queries_that_fail_fall_through_to_the_address(clock):
    """A DNS server out of reach for NAPTR/SRV (as in a host with only /etc/hosts) is as
    good as no such records: the name's address (the hosts file answers A) at 5060."""
    fake = FakeDNS(clock, ZONE, unreachable=(dns.NAPTR, dns.SRV))
    got = []
    Locator(clock, fake).locate("plain.test").addBoth(got.append)
    _run(clock)
    assert _chain(got[0]) == [("UDP", "127.0.0.5", 5060)]


def test_aaaa_records_are_asked_for_the_families_of_our_sockets(clock):
    """An IPv4 socket asks A only, an IPv6 one AAAA only, a dual-stack one A then AAAA."""
    found = {}
    for name, families in (("v4", {}), ("v6", {"ipv4": False, "ipv6": True}),
                           ("both", {"ipv6": True})):
        got = []
        Locator(clock, FakeDNS(clock, ZONE), **families).locate(
            "live.example.test", 5060).addBoth(got.append)
        _run(clock)
        found[name] = [host for _, host, _ in _chain(got[0])]
    assert found == {"v4": ["127.0.0.3", "127.0.0.4"], "v6": ["::1"],
                     "both": ["127.0.0.3", "127.0.0.4", "::1"]}


def test_an_srv_target_whose_address_lookup_fails_is_skipped(clock):
    """The first SRV target's A query gets no answer: the other targets are still used."""
    fake = FakeDNS(clock, ZONE, unreachable=("dead.example.test",))
    got = []
    Locator(clock, fake).locate("example.test", None, "TCP").addBoth(got.append)
    _run(clock)
    assert _chain(got[0]) == [("TCP", "127.0.0.3", 5080), ("TCP", "127.0.0.4", 5080)]


def test_a_name_that_does_not_resolve_is_an_error(clock):
    """No record at all: the Deferred fails, naming the host."""
    failure, _ = _locate(clock, "nowhere.test")
    assert failure.check(DNSNameError) and "nowhere.test" in failure.getErrorMessage()


def test_answers_are_cached_for_their_ttl(clock):
    """A second lookup within the TTL asks nothing; after the TTL it asks again."""
    fake = FakeDNS(clock, ZONE)
    locator = Locator(clock, fake)
    locator.locate("srv-only.test")
    _run(clock)
    asked = len(fake.queries)
    locator.locate("srv-only.test")
    _run(clock)
    assert len(fake.queries) == asked
    clock.advance(60)  # the SRV record's TTL
    locator.locate("srv-only.test")
    _run(clock)
    assert ("SRV", "_sip._udp.srv-only.test") in fake.queries[asked:]


def test_a_huge_srv_answer_is_bounded(clock):
    """An SRV answer of 200 records is read for its MAX_SRV_RECORDS best priorities only,
    and the chain holds at most MAX_TARGETS addresses."""
    from sipgw.sip.resolver import MAX_SRV_RECORDS, MAX_TARGETS
    records = {(dns.SRV, "_sip._udp.big.test"): [_srv(p, 0, 5060, f"h{p}.big.test")
                                                 for p in range(200, 0, -1)]}
    records.update({(dns.A, f"h{p}.big.test"): [_a("127.0.0.5"), _a("127.0.0.6")]
                    for p in range(1, 201)})
    dest, fake = _locate(clock, "big.test", transport="UDP", records=records)
    assert len([1, *dest.rest]) == MAX_TARGETS
    asked = {name for kind, name in fake.queries if kind == "A"}
    assert asked <= {f"h{p}.big.test" for p in range(1, MAX_SRV_RECORDS + 1)}


def test_the_answer_cache_is_bounded(clock, monkeypatch):
    """Past MAX_CACHED answers the expired ones, then the oldest, are forgotten."""
    from sipgw.sip import resolver
    monkeypatch.setattr(resolver, "MAX_CACHED", 3)
    locator = Locator(clock, FakeDNS(clock, ZONE))
    for n in range(5):
        locator.locate(f"10.0.0.{n}.test", 5060)  # one A query each, none answered
        _run(clock)
    assert len(locator._cache) == 3


def test_dns_servers_setting():
    """sip_dns_servers: IP[:port] items, IPv6 in brackets; anything else is refused."""
    assert parse_servers("127.0.0.1:5353, [::1]:53,10.0.0.1") == [
        ("127.0.0.1", 5353), ("::1", 53), ("10.0.0.1", 53)]
    assert parse_servers("") == []
    for bad in ("dns.example.org", "127.0.0.1:99999"):
        try:
            parse_servers(bad)
        except ValueError as exc:
            assert "sip_dns_servers" in str(exc)
        else:
            raise AssertionError(bad)


# -- the user agent's failover (RFC 3263 §4.3) ----------------------------------------------
def _ua(make_gateway, clock, **settings):
    gw = make_gateway(**settings)
    gw.sip.locator = Locator(clock, FakeDNS(clock, ZONE))
    return gw


def _call(**fields):
    return call_request(**{"sip_domain": "example.test", **fields})


def _dests(sender, method):
    return [(t, h, p) for m, t, h, p in sender.sent if getattr(m, "method", "") == method]


def test_invite_moves_to_the_next_target_on_timeout_and_503(make_gateway, sender, clock):
    """The INVITE goes to the first SRV target; Timer B sends it to the next in a new
    transaction, a 503 from that one to the one after."""
    gw = _ua(make_gateway, clock)
    gw.startup(_call())
    _run(clock)
    assert _dests(sender, "INVITE") == [("TCP", "127.0.0.2", 5070)]
    clock.advance(64 * T1)
    assert _dests(sender, "INVITE")[-1] == ("TCP", "127.0.0.3", 5080)
    second = sender.requests("INVITE")[-1]
    assert second.top_via.branch != sender.requests("INVITE")[0].top_via.branch
    gw.sip.transactions.receive(make_response(second, 503), PEER)
    assert _dests(sender, "INVITE")[-1] == ("TCP", "127.0.0.4", 5080)
    assert gw.find("call1")[0]["status"] == "PENDING"


def test_register_fails_over_on_a_transport_error_and_the_invite_follows(make_gateway, sender,
                                                                        clock):
    """REGISTER to a dead first target (TCP refused) goes to the next; once registered there,
    the INVITE goes there too, not to the dead one."""
    gw = _ua(make_gateway, clock)
    gw.startup(_call(sip_register_required=True))
    _run(clock)
    assert _dests(sender, "REGISTER") == [("TCP", "127.0.0.2", 5070)]
    gw.sip.transactions.transport_error(("127.0.0.2", 5070), "Connection refused")
    assert _dests(sender, "REGISTER")[-1] == ("TCP", "127.0.0.3", 5080)
    register = sender.requests("REGISTER")[-1]
    gw.sip.transactions.receive(make_response(register, 200, to_tag="r1"), PEER)
    _run(clock)
    assert _dests(sender, "INVITE") == [("TCP", "127.0.0.3", 5080)]


def _answer_through_proxy_test(gw, sender, clock, host="proxy.test"):
    """A call to 127.0.0.1 answered 200 with Record-Route <sip:HOST:5077;lr>."""
    gw.startup(_call(sip_domain="127.0.0.1"))
    invite = sender.requests("INVITE")[-1]
    gw.sip.transactions.receive(make_response(invite, 200, to_tag="b1", body=ANSWER, extra=[
        ("Contact", "<sip:bob@127.0.0.1:5060>"), ("Content-Type", "application/sdp"),
        ("Record-Route", f"<sip:{host}:5077;lr>")]), PEER)
    _run(clock)


def test_in_dialog_requests_go_to_a_named_record_route_host(make_gateway, sender, clock):
    """A Record-Route naming a host: the ACK and BYE go to that host's address (RFC 3263
    §4), not to the INVITE's first hop."""
    gw = _ua(make_gateway, clock)
    _answer_through_proxy_test(gw, sender, clock)
    gw.terminate("call1")
    assert _dests(sender, "ACK") == [("UDP", "127.0.0.6", 5077)]
    assert _dests(sender, "BYE") == [("UDP", "127.0.0.6", 5077)]


def test_named_in_dialog_hops_kept_per_call_are_bounded(make_gateway, sender, clock):
    """A peer whose target refreshes name a new host each time: each is located and used,
    and the call keeps at most HOPS_KEPT of them."""
    from sipgw.sip.headers import URI
    from sipgw.sip.ua import HOPS_KEPT
    gw = make_gateway()
    gw.sip.locator = Locator(clock, FakeDNS(clock, {(dns.A, f"h{n}.test"): [_a("127.0.0.7")]
                                                for n in range(HOPS_KEPT + 4)}))
    gw.startup(_call(sip_domain="127.0.0.1"))
    invite = sender.requests("INVITE")[-1]
    gw.sip.transactions.receive(make_response(invite, 200, to_tag="b1", body=ANSWER, extra=[
        ("Contact", "<sip:bob@127.0.0.1:5060>"), ("Content-Type", "application/sdp")]), PEER)
    call = gw.calls["call1"]
    for n in range(HOPS_KEPT + 4):
        call.dialog.remote_target = URI("sip", f"h{n}.test", user="bob", port=5077)
        gw.sip.send_in_dialog(call.session, call.dialog.create_request(
            "OPTIONS", via=gw.sip.via(call.session.dest)))
        _run(clock)
    assert set(_dests(sender, "OPTIONS")) == {("UDP", "127.0.0.7", 5077)}
    assert len({r.cseq.seq for r in sender.requests("OPTIONS")}) == HOPS_KEPT + 4
    assert len(call.session.hops) == HOPS_KEPT


def test_a_domain_that_does_not_resolve_fails_the_call(make_gateway, sender, clock):
    """No NAPTR, SRV or A: the call fails saying it cannot resolve the domain; nothing sent."""
    gw = _ua(make_gateway, clock)
    gw.startup(_call(sip_domain="nowhere.test"))
    _run(clock)
    call = gw.find("call1")[0]
    assert call["status"] == "FAILED" and "Cannot resolve nowhere.test" in call["info"]
    assert sender.sent == []


def test_destination_chain():
    """A Destination keeps the targets after it; next() walks them."""
    dest = Destination.chain([("UDP", "127.0.0.1", 1), ("TCP", "127.0.0.2", 2)])
    assert repr(dest) == "UDP:127.0.0.1:1" and repr(dest.next()) == "TCP:127.0.0.2:2"
    assert dest.next().next() is None


def test_a_denied_record_route_name_gets_nothing(make_gateway, sender, clock):
    """sip_egress_deny names a host: a Record-Route naming it gets no ACK or BYE, even
    though its address is allowed; the call still ends."""
    gw = _ua(make_gateway, clock, sip_egress_deny="proxy.test")
    _answer_through_proxy_test(gw, sender, clock)
    gw.terminate("call1")
    _run(clock)
    assert _dests(sender, "ACK") == [] and _dests(sender, "BYE") == []
    assert gw.find("call1")[0]["status"] == "FINISH"


def test_an_in_dialog_request_fails_over_between_the_named_hosts_addresses(make_gateway, sender,
                                                                          clock):
    """A Record-Route naming a host with two addresses: a BYE answered 503 by the first goes
    to the second in a new transaction, and the call ends when that one answers."""
    gw = _ua(make_gateway, clock)
    _answer_through_proxy_test(gw, sender, clock, "live.example.test")
    gw.terminate("call1")
    first = sender.requests("BYE")[0]
    gw.sip.transactions.receive(make_response(first, 503), PEER)
    assert _dests(sender, "BYE") == [("UDP", "127.0.0.3", 5077), ("UDP", "127.0.0.4", 5077)]
    second = sender.requests("BYE")[1]
    assert second.top_via.branch != first.top_via.branch
    assert gw.find("call1")[0]["status"] != "FINISH"
    gw.sip.transactions.receive(make_response(second, 200), PEER)
    assert gw.find("call1")[0]["status"] == "FINISH"


def test_targets_denied_by_egress_are_skipped(make_gateway, sender, clock):
    """sip_egress_deny holds the first SRV target's address: the INVITE goes to the next."""
    gw = _ua(make_gateway, clock, sip_egress_deny="127.0.0.2")
    gw.startup(_call())
    _run(clock)
    assert _dests(sender, "INVITE") == [("TCP", "127.0.0.3", 5080)]
