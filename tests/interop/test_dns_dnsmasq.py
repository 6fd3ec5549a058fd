"""RFC 3263 against a real DNS server: the daemon finds a SIPp callee only through
dnsmasq's NAPTR, SRV, A and AAAA records, and gets past a dead first SRV target."""
from peers import free_port
from sipgw_daemon import call_once

DOMAIN = "sip.test"  # the dnsmasq fixture's (tests/interop/conftest.py)


def test_a_callee_found_only_through_naptr_and_srv_answers_after_a_dead_first_target(
        dnsmasq, sipp_factory, tmp_path):
    """sipDomain=sip.test with the default port: NAPTR picks TCP, SRV gives a dead target
    (nothing listens on its port) then SIPp; the refused connection moves the INVITE to
    SIPp and the call is ESTABLISHED, then ends with a BYE."""
    dead_port = free_port("tcp")
    sipp = sipp_factory("uas_200.xml", transport="t1")
    dns = dnsmasq([
        f"naptr-record={DOMAIN},10,10,S,SIP+D2T,,_sip._tcp.{DOMAIN}",
        f"srv-host=_sip._tcp.{DOMAIN},dead.{DOMAIN},{dead_port},10,0",
        f"srv-host=_sip._tcp.{DOMAIN},live.{DOMAIN},{sipp.port},20,0",
        f"host-record=dead.{DOMAIN},127.0.0.1",
        f"host-record=live.{DOMAIN},127.0.0.1"])
    gw, _ = call_once(tmp_path / "sipgw", "srv1", DOMAIN,
                      sip_dns_servers=f"127.0.0.1:{dns.port}")
    assert sipp.wait(15) == 0
    assert [m.method for m in sipp.received()] == ["INVITE", "ACK", "BYE"]
    queries = dns.queries()
    assert ("NAPTR", DOMAIN) in queries and ("SRV", f"_sip._tcp.{DOMAIN}") in queries
    assert ("A", f"live.{DOMAIN}") in queries
    assert f"TCP:127.0.0.1:{dead_port}, trying TCP:127.0.0.1:{sipp.port}" in gw.log()


def test_an_ipv6_callee_found_through_srv_and_aaaa(dnsmasq, sipp_factory, tmp_path):
    """sipgw on ::1 calls v6.sip.test: no NAPTR, so _sip._udp SRV, whose target has only an
    AAAA record (::1), where SIPp answers over IPv6."""
    sipp = sipp_factory("uas_200.xml", transport="u1", host="::1")
    dns = dnsmasq([f"srv-host=_sip._udp.v6.{DOMAIN},live6.{DOMAIN},{sipp.port},10,0",
                   f"host-record=live6.{DOMAIN},::1"])
    call_once(tmp_path / "sipgw", "srv6", f"v6.{DOMAIN}", sip_bind_address="::1",
              sip_dns_servers=f"127.0.0.1:{dns.port}")
    assert sipp.wait(15) == 0
    assert [m.method for m in sipp.received()] == ["INVITE", "ACK", "BYE"]
    queries = dns.queries()
    assert ("SRV", f"_sip._udp.v6.{DOMAIN}") in queries and ("AAAA", f"live6.{DOMAIN}") in queries
