"""RFC 3263 against a real DNS server: the daemon finds a SIPp callee only through
dnsmasq's NAPTR and SRV records, and gets past a dead first SRV target."""
import pytest

from peers import Dnsmasq, PeerMissing, Sipp, free_port, require_program
from sipgw_daemon import Sipgw

DOMAIN = "sip.test"


@pytest.fixture
def zone(tmp_path):
    """dnsmasq serving sip.test: NAPTR -> _sip._tcp SRV with a dead target first (nothing
    listens on its port) and a SIPp UAS second; both names have A records."""
    for program in ("dnsmasq", "sipp"):
        try:
            require_program(program)
        except PeerMissing as missing:
            pytest.fail(str(missing), pytrace=False)
    dead_port = free_port("tcp")
    sipp = Sipp("uas_200.xml", port=free_port("tcp"), transport="t1", tmpdir=tmp_path)
    dns = Dnsmasq(tmp_path, port=free_port("udp"), domain=DOMAIN, records=[
        f"naptr-record={DOMAIN},10,10,S,SIP+D2T,,_sip._tcp.{DOMAIN}",
        f"srv-host=_sip._tcp.{DOMAIN},dead.{DOMAIN},{dead_port},10,0",
        f"srv-host=_sip._tcp.{DOMAIN},live.{DOMAIN},{sipp.port},20,0",
        f"host-record=dead.{DOMAIN},127.0.0.1",
        f"host-record=live.{DOMAIN},127.0.0.1"])
    try:
        dns.start()
        sipp.start()
        yield dns, sipp, dead_port
    finally:
        sipp.stop()
        dns.stop()


def test_a_callee_found_only_through_naptr_and_srv_answers_after_a_dead_first_target(
        zone, tmp_path):
    """sipDomain=sip.test with the default port: NAPTR picks TCP, SRV gives the dead
    target then SIPp; the refused connection moves the INVITE to SIPp and the call is
    ESTABLISHED, then ends with a BYE."""
    dns, sipp, dead_port = zone
    workdir = tmp_path / "sipgw"
    workdir.mkdir()
    gw = Sipgw(str(workdir), sip_dns_servers=f"127.0.0.1:{dns.port}").start()
    try:
        assert gw.rest("/call/startup", {
            "callId": "srv1", "callee": "bob", "sipLogin": "alice", "sipPassword": "s3cret",
            "sipDomain": DOMAIN, "sipPort": "5060", "hasVideo": "false",
            "toStream": "stream-srv1"}) is None
        gw.wait_status("srv1", "ESTABLISHED")
        gw.rest("/call/terminate", {"callId": "srv1"})
        gw.wait_status("srv1", "FINISH")
        assert sipp.wait(15) == 0
    finally:
        gw.stop()
    assert [m.method for m in sipp.received()] == ["INVITE", "ACK", "BYE"]
    queries = dns.queries()
    assert ("NAPTR", DOMAIN) in queries and ("SRV", f"_sip._tcp.{DOMAIN}") in queries
    assert ("A", f"live.{DOMAIN}") in queries
    log = gw.log()
    assert f"TCP:127.0.0.1:{dead_port}, trying TCP:127.0.0.1:{sipp.port}" in log
