"""Security findings checked against the running daemon on loopback (issue 9): credentials on
every REST route, the body cap before reading, one stateless answer to an unsolicited INVITE
sent to its source only, and calls answered with an unusable c= leaking nothing."""
from __future__ import annotations

import select
import socket
import time
import urllib.error
import urllib.request

import pytest

from peers import bound_ports, wait_for
from sipgw_daemon import RestError, Sipgw

from sipgw.rest.calls import CallApi
from sipgw.rest.push import PushApi
from sipgw.rest.recorder import RecorderApi
from sipgw.rest.streams import StreamApi

TOKEN = "sec-test-token-0123456789abcdef"
ROUTES = sorted({*CallApi.router.paths, *StreamApi.router.paths, *PushApi.router.paths,
                 *RecorderApi.router.paths})


@pytest.fixture(scope="module")
def locked(tmp_path_factory):
    """A daemon that trusts no loopback client: only the bearer token admits this test."""
    gw = Sipgw(str(tmp_path_factory.mktemp("sipgw-locked")), trusted_networks="192.0.2.0/24",
               rest_auth_tokens=TOKEN)
    # Sipgw.start polls /call/find_all and takes any HTTP answer (401 here) as "REST is up"
    yield gw.start()
    gw.stop()
    assert TOKEN not in gw.log()


def post(gw: Sipgw, path: str, headers: dict, body: bytes = b"{}") -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{gw.rest_port}/rest-api{path}", data=body,
                                     method="POST",
                                     headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.parametrize("path", ROUTES)
def test_every_route_of_the_daemon_needs_the_token(locked, path):
    """No token 401, a wrong token 401, the right one the route's own answer (never 401/403)."""
    assert post(locked, path, {}) == 401
    assert post(locked, path, {"Authorization": "Bearer wrong-token-0123456789abcdef"}) == 401
    assert post(locked, path, {"Authorization": f"Bearer {TOKEN}"}) not in (401, 403, 500)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    gw = Sipgw(str(tmp_path_factory.mktemp("sipgw-sec"))).start()
    yield gw
    gw.stop()
    assert "Traceback" not in gw.log()


def test_300_mb_post_is_refused_before_it_is_read(daemon):
    """A Content-Length of 300 MB gets 413 at once: the server reads no body (it answers after
    the headers, and closes instead of reading the rest)."""
    with socket.create_connection(("127.0.0.1", daemon.rest_port), timeout=10) as sock:
        sock.sendall(b"POST /rest-api/call/startup HTTP/1.1\r\nHost: gw\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 314572800\r\n\r\n")
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
        sent = 0
        try:  # the server no longer reads: the connection ends long before 300 MB
            while sent < 64 * 1024 * 1024:
                sent += sock.send(b"x" * 65536)
        except OSError:
            pass
        assert sent < 64 * 1024 * 1024


def test_unsolicited_invite_gets_one_answer_at_its_source(daemon):
    """A 7 KB INVITE for no call of ours, whose Via names another port, a forged received and
    a maddr: one stateless answer, to the packet's source (rport), none retransmitted, none
    aimed at the addresses the sender wrote."""
    source, named, forged = (socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3))
    try:
        for sock in (source, named, forged):
            sock.bind(("127.0.0.1", 0))
        named_port, forged_port = named.getsockname()[1], forged.getsockname()[1]
        body = "v=0\r\n" + "a=x-pad:" + "p" * 7000 + "\r\n"
        invite = (f"INVITE sip:nobody@127.0.0.1:{daemon.sip_port} SIP/2.0\r\n"
                  f"Via: SIP/2.0/UDP 127.0.0.1:{named_port};branch=z9hG4bK-unsolicited;rport;"
                  f"received=127.0.0.1;maddr=127.0.0.1;ttl=1\r\n"
                  f"Via: SIP/2.0/UDP 127.0.0.1:{forged_port};branch=z9hG4bK-second\r\n"
                  "Max-Forwards: 70\r\nFrom: <sip:x@example.com>;tag=1\r\n"
                  "To: <sip:nobody@example.com>\r\nCall-ID: unsolicited-1\r\nCSeq: 1 INVITE\r\n"
                  f"Contact: <sip:x@127.0.0.1:{forged_port}>\r\nContent-Type: application/sdp\r\n"
                  f"Content-Length: {len(body)}\r\n\r\n{body}").encode()
        source.sendto(invite, ("127.0.0.1", daemon.sip_port))
        got = {source: [], named: [], forged: []}
        deadline = time.monotonic() + 5  # Timer G would have resent at 0.5, 1.5 and 3.5 s
        while time.monotonic() < deadline:
            ready, _, _ = select.select(list(got), [], [], deadline - time.monotonic())
            for sock in ready:
                got[sock].append(sock.recv(65536))
        assert len(got[source]) == 1 and got[source][0].startswith(b"SIP/2.0 ")
        assert len(got[source][0]) < 2000  # an answer, not a reflection of the 7 KB
        assert got[named] == [] and got[forged] == []
    finally:
        for sock in (source, named, forged):
            sock.close()


def test_calls_answered_with_a_bogus_c_line_leak_nothing(daemon, sipp_factory):
    """100 calls answered with c=IN IP4 bogus.invalid each end FAILED with the reason and a BYE
    the callee answers; afterwards no stream is left and the daemon holds the sockets it held
    before (no RTP port leaked)."""
    count = 100
    sipp = sipp_factory("uas_200_bogus_c.xml", calls=count, timeout_s=120)
    baseline = bound_ports([daemon.proc.pid], "udp")
    ids = [f"bogus{i}" for i in range(count)]
    for call_id in ids:
        daemon.rest("/call/startup", {"callId": call_id, "callee": "bob", "sipLogin": "alice",
                                      "sipPassword": "pw", "sipDomain": "127.0.0.1",
                                      "sipPort": str(sipp.port), "hasVideo": "false",
                                      "toStream": f"stream-{call_id}"})
    for call_id in ids:
        call = daemon.wait_status(call_id, "FAILED", "FINISH", timeout=60)
        assert call["status"] == "FAILED" and "not an IP address" in call["info"], call
    assert sipp.wait(60) == 0  # every call got its BYE and answered it
    with pytest.raises(RestError) as none:
        daemon.rest("/stream/find_all")
    assert none.value.code == 404
    wait_for(lambda: bound_ports([daemon.proc.pid], "udp") == baseline, 10,
             "the daemon's UDP sockets back to those it held before the calls")
