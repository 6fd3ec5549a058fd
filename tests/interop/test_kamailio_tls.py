"""SIP over TLS with a real peer: Kamailio with tls.so (certificate from a CA made here) as
registrar and proxy; sipgw registers alice over TLS and calls bob (baresip, UDP) through it."""
import pytest

import peers
from certs import TestCA
from sipgw_daemon import Sipgw


@pytest.fixture
def tls_files(tmp_path):
    ca = TestCA(tmp_path)
    cert, key = ca.issue(["127.0.0.1", "sip.test"], tmp_path)
    return ca, cert, key


@pytest.fixture
def kamailio(tmp_path, tls_files):
    """Kamailio on UDP/TCP port and TLS port + 1, its certificate naming 127.0.0.1."""
    proxy = peers.Kamailio(tmp_path, port=peers.free_port("tcp", count=2), tls=tls_files[1:])
    try:
        yield proxy.start()
    finally:
        proxy.stop()


def _daemon(tmp_path, name, ca_file, **settings):
    workdir = tmp_path / name
    workdir.mkdir()
    return Sipgw(str(workdir), sip_tls_ca_file=str(ca_file), **settings).start()


def test_register_and_call_over_tls_through_kamailio(tmp_path, tls_files, kamailio, baresip):
    """sipOutboundProxy sips:127.0.0.1:TLSPORT: REGISTER (401) and INVITE go over TLS, the
    call is established with baresip and ends with a BYE over the same connection."""
    gw = _daemon(tmp_path, "gw", tls_files[0].path)
    try:
        gw.start_call_to_bob(kamailio.port, "t1", sipAuthenticationName="alice",
                             sipRegisterRequired="true",
                             sipOutboundProxy=f"sips:127.0.0.1:{kamailio.tls_port}")
        call = gw.wait_status("t1", "ESTABLISHED", timeout=30)
        assert "H264/90000" in call["sdp"]
        assert kamailio.registered("alice")
        assert "registered alice from 127.0.0.1:" in kamailio.log()
        assert "/tls" in kamailio.log().split("registered alice from")[1].split("\n")[0]
        assert "request INVITE" in kamailio.log() and "request BYE" not in kamailio.log()
        gw.rest("/call/terminate", {"callId": "t1"})
        gw.wait_status("t1", "FINISH", timeout=20)
        byes = [line for line in kamailio.log().splitlines() if "request BYE" in line]
        assert byes and all(line.endswith("/tls") for line in byes)
    finally:
        gw.stop()
    assert "alicepw" not in gw.log()


def test_a_certificate_of_an_unknown_ca_fails_the_call_with_the_reason(tmp_path, kamailio):
    """With sip_tls_ca_file naming another CA the handshake fails: nothing is sent in clear
    and the call is FAILED with the TLS reason."""
    (tmp_path / "other").mkdir()
    other = TestCA(tmp_path / "other", "Another CA")
    gw = _daemon(tmp_path, "gw2", other.path)
    try:
        gw.start_call_to_bob(kamailio.port, "t2", sipAuthenticationName="alice",
                             sipOutboundProxy=f"127.0.0.1:{kamailio.tls_port};transport=tls")
        call = gw.wait_status("t2", "FAILED", timeout=20)
        assert "certificate verify failed" in call["info"], call["info"]
        assert "request INVITE" not in kamailio.log()
    finally:
        gw.stop()


def test_callee_bye_comes_back_over_the_tls_connection(tmp_path, tls_files, kamailio, baresip):
    """sipgw has no TLS listener: bob's BYE reaches it through Kamailio over the connection
    sipgw opened (RFC 5923 alias in its Via), and the call ends with Normal call clearing."""
    gw = _daemon(tmp_path, "gw3", tls_files[0].path)
    try:
        gw.start_call_to_bob(kamailio.port, "t3", sipAuthenticationName="alice",
                             sipOutboundProxy=f"127.0.0.1:{kamailio.tls_port};transport=tls")
        gw.wait_status("t3", "ESTABLISHED", timeout=30)
        baresip.stop()
        call = gw.wait_status("t3", "FINISH", timeout=20)
        assert call["info"] == "Normal call clearing"
    finally:
        gw.stop()


def test_a_sips_proxy_found_through_naptr_sips_d2t_and_sips_srv(tmp_path, tls_files, kamailio,
                                                              baresip, dnsmasq):
    """sipOutboundProxy sips:sip.test (no port): NAPTR SIPS+D2T -> SRV _sips._tcp -> A leads
    to Kamailio's TLS port, whose certificate is checked against sip.test (RFC 5922)."""
    dns = dnsmasq(["naptr-record=sip.test,10,10,S,SIPS+D2T,,_sips._tcp.sip.test",
                   "naptr-record=sip.test,20,10,S,SIP+D2U,,_sip._udp.sip.test",
                   f"srv-host=_sips._tcp.sip.test,kam.sip.test,{kamailio.tls_port},10,0",
                   f"srv-host=_sip._udp.sip.test,kam.sip.test,{kamailio.port},10,0",
                   "host-record=kam.sip.test,127.0.0.1"])
    gw = _daemon(tmp_path, "gw4", tls_files[0].path, sip_dns_servers=f"127.0.0.1:{dns.port}")
    try:
        # sipPort 5060: no port for the proxy, RFC 3263 finds it; Kamailio's port in the callee
        gw.start_call_to_bob(kamailio.port, "t4", sipAuthenticationName="alice",
                             sipOutboundProxy="sips:sip.test", sipPort="5060",
                             callee=f"bob@127.0.0.1:{kamailio.port}")
        gw.wait_status("t4", "ESTABLISHED", timeout=30)
        invites = [line for line in kamailio.log().splitlines() if "request INVITE" in line]
        assert invites and all(line.endswith("/tls") for line in invites)
        gw.rest("/call/terminate", {"callId": "t4"})
        gw.wait_status("t4", "FINISH", timeout=20)
    finally:
        gw.stop()
    queries = dns.queries()
    assert ("NAPTR", "sip.test") in queries and ("SRV", "_sips._tcp.sip.test") in queries
    assert ("SRV", "_sip._udp.sip.test") not in queries


@pytest.mark.parametrize("baresip_mediaenc", ["srtp-mand"])  # baresip requires SRTP
def test_srtp_call_over_tls_signalling(tmp_path, tls_files, kamailio, baresip):
    """The secure trunk case: REGISTER and INVITE over TLS (sips: proxy) and SRTP (SDES,
    mandatory) media to baresip requiring SRTP: audio and video counted with no
    authentication failure, and the keys, carried only inside TLS, never in the log."""
    from test_srtp_baresip import INLINE_KEY
    gw = _daemon(tmp_path, "gw-srtp", tls_files[0].path)
    try:
        gw.start_call_to_bob(kamailio.port, "ts1", sipAuthenticationName="alice",
                             sipRegisterRequired="true", sipSrtp="mandatory",
                             sipOutboundProxy=f"sips:127.0.0.1:{kamailio.tls_port}")
        call = gw.wait_status("ts1", "ESTABLISHED", timeout=30)
        assert "RTP/SAVP" in call["sdp"] and "inline:..." in call["sdp"]
        stream = peers.wait_for(
            lambda: (s := gw.stream("stream-ts1")) and s["counters"]["video"]["packets"] > 50
            and s["counters"]["audio"]["packets"] > 50 and s, 30, "SRTP audio and video")
        for kind in ("audio", "video"):
            assert stream["counters"][kind]["srtp_auth_failures"] == 0
        assert "request INVITE" in kamailio.log()
        gw.rest("/call/terminate", {"callId": "ts1"})
        gw.wait_status("ts1", "FINISH", timeout=20)
    finally:
        gw.stop()
    assert not INLINE_KEY.search(gw.log()) and "alicepw" not in gw.log()
