"""The control plane's admission (sipgw/policy.py) over real HTTP/1.1 bytes: bearer tokens and
scopes on every route, trusted networks, JSON-only bodies, the body cap before reading."""
from __future__ import annotations

import json

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from sipgw.config import Config
from sipgw.policy import AccessPolicy, parse_networks, parse_tokens, route_scope
from sipgw.rest.calls import CallApi
from sipgw.rest.inject import InjectApi
from sipgw.rest.openapi import OpenApi
from sipgw.rest.push import PushApi
from sipgw.rest.recorder import RecorderApi
from sipgw.rest.router import IDLE_TIMEOUT, MAX_BODY, RestResource, RestSite, Router
from sipgw.rest.streams import StreamApi

CLIENT = IPv4Address("TCP", "127.0.0.1", 40312)
STRANGER = IPv4Address("TCP", "192.0.2.7", 40313)  # outside the default trusted_networks
GOOD = "good-token-0123456789abcdef"
CALLS_ONLY = "calls-token-0123456789abcd"
BAD = "bad-token-0123456789abcdefg"
EVERY_ROUTE = sorted({*CallApi.router.paths, *StreamApi.router.paths, *PushApi.router.paths,
                      *RecorderApi.router.paths, *OpenApi.router.paths,
                      *InjectApi.router.paths})


@pytest.fixture
def rest(tmp_path):
    """The daemon's real REST resource (service.make_root), on a Clock, with two tokens."""
    from sipgw.service import make_media, make_root
    from sipgw.gateway.manager import CallManager
    clock = Clock()
    config = Config(rest_auth_tokens=f"{GOOD},{CALLS_ONLY}:calls", record_dir=str(tmp_path))
    calls = CallManager(clock, config)
    root = make_root(config, calls, make_media(config, clock, calls.streams))
    return root.children[b"rest-api"]


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def test_every_route_is_listed(rest):
    """The table below covers every route the daemon serves."""
    assert rest.paths == EVERY_ROUTE


@pytest.mark.parametrize("path", EVERY_ROUTE)
def test_every_route_needs_a_credential(client_for, rest, path):
    """From an address outside trusted_networks: no token 401, bad token 401, good token the
    route's own answer (the same one a loopback client gets without a token)."""
    stranger = client_for(rest, peer=STRANGER)
    missing = stranger.post(path, {})
    assert missing.code == 401
    assert missing.headers["www-authenticate"] == 'Bearer realm="sipgw"'
    assert missing.json()["error"].startswith("a bearer token is required")
    for wrong in (bearer(BAD), bearer(GOOD[:-1]), {"Authorization": f"Basic {GOOD}"},
                  {"Authorization": "Bearer"}):
        assert stranger.post(path, {}, headers=wrong).code == 401
    good = stranger.post(path, {}, headers=bearer(GOOD))
    local = client_for(rest).post(path, {})
    assert good.code not in (401, 403)
    assert (good.code, good.body) == (local.code, local.body)


@pytest.mark.parametrize("path", EVERY_ROUTE)
def test_scoped_token(client_for, rest, path):
    """A token limited to the calls scope reaches /call/* (and the API description, open to
    any token) only; elsewhere it gets a 403."""
    response = client_for(rest, peer=STRANGER).post(path, {}, headers=bearer(CALLS_ONLY))
    if path.startswith("/call/") or path == "/openapi.json":
        assert response.code not in (401, 403)
    else:
        assert response.code == 403
        assert response.json()["error"] == \
            f"the bearer token does not have the {route_scope(path)} scope"


def test_route_scopes():
    """Recording routes under /stream need the record scope; unknown paths need admin."""
    assert [route_scope(p) for p in ("/call/startup", "/stream/find", "/stream/startRecording",
                                     "/push/startup", "/recorder/find_all", "/x/y")] == \
        ["calls", "streams", "record", "push", "record", "admin"]


def test_unknown_route_needs_a_credential_too(client_for, rest):
    """A stranger cannot list routes: an unknown path is 401 before it is 404."""
    assert client_for(rest, peer=STRANGER).post("/no/such", {}).code == 401


def test_trusted_network_needs_no_token(client_for):
    """A client inside trusted_networks is admitted without a token; IPv4-mapped IPv6 too."""
    access = AccessPolicy(networks=parse_networks("192.0.2.0/24"))
    resource = RestResource(_Recorded(), access=access)
    assert client_for(resource, peer=STRANGER).post("/do", {}).code == 200
    assert access.trusts("::ffff:192.0.2.9") and not access.trusts("198.51.100.1")
    assert client_for(resource, peer=CLIENT).post("/do", {}).code == 401  # loopback not listed


def test_tokens_never_logged_or_answered(client_for, rest, logs):
    """Neither a good nor a bad token appears in a log line or an answer."""
    stranger = client_for(rest, peer=STRANGER)
    answers = [stranger.post("/call/find_all", {}, headers=bearer(t)).body for t in (GOOD, BAD)]
    text = logs.everything() + repr(answers)
    assert GOOD not in text and BAD not in text


# --- JSON only: no CSRF through simple requests ---------------------------------------------


class _Recorded:
    """One route, /do, that records that it ran."""

    router = Router()

    def __init__(self):
        self.ran = 0

    @router.route("/do")
    def do(self, request, body):
        self.ran += 1
        return {"ran": True}


@pytest.mark.parametrize("content_type", ["text/plain", "text/plain;charset=UTF-8",
                                          "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", None])
def test_cross_origin_simple_post_is_415_and_not_run(client_for, content_type):
    """A POST a foreign page can send without a preflight (text/plain, form, no type) is a
    415 and the route never runs, even from loopback."""
    api = _Recorded()
    client = client_for(RestResource(api))
    raw = b'{"callId": "x"}'
    if content_type and content_type.startswith("multipart"):
        raw = b'--x\r\nContent-Disposition: form-data; name="callId"\r\n\r\nx\r\n--x--\r\n'
    response = client.post("/do", raw=raw,
                           headers={"Content-Type": content_type, "Origin": "http://evil.test"})
    assert response.code == 415
    assert response.json()["error"] == "Content-Type must be application/json"
    assert "access-control-allow-origin" not in response.headers
    assert api.ran == 0


def test_json_with_charset_is_accepted(client_for):
    """application/json with parameters (as jQuery sends it) is JSON."""
    client = client_for(RestResource(_Recorded()))
    assert client.post("/do", {}, headers={"Content-Type": "application/json; charset=UTF-8"}
                       ).code == 200


# --- body cap before reading ----------------------------------------------------------------


def _connect(api, peer: IPv4Address = CLIENT):
    from twisted.web.resource import Resource
    root = Resource()
    root.putChild(b"rest-api", RestResource(api))
    site = RestSite(root, reactor=Clock(), timeout=None)
    made, factory = [], site.requestFactory
    site.requestFactory = lambda *args, **kw: made.append(factory(*args, **kw)) or made[-1]
    transport = StringTransport(peerAddress=peer)
    protocol = site.buildProtocol(peer)
    protocol.makeConnection(transport)
    return protocol, transport, made


def _head(extra: str) -> bytes:
    return (f"POST /rest-api/do HTTP/1.1\r\nHost: gateway.test\r\n"
            f"Content-Type: application/json\r\n{extra}\r\n").encode()


def _answer(transport) -> tuple[int, dict]:
    head, _, body = transport.value().partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), json.loads(body)


@pytest.mark.parametrize("expect", ["", "Expect: 100-continue\r\n"])
def test_300_mb_post_is_413_before_the_body_is_read(expect):
    """A declared 300 MB body is refused from its Content-Length: 413, the connection closes,
    not one body byte is stored (no temporary file) and the route never runs."""
    api = _Recorded()
    protocol, transport, made = _connect(api)
    protocol.dataReceived(_head(f"Content-Length: {300 * 1024 * 1024}\r\n{expect}"))
    (request,) = made
    assert transport.disconnecting
    assert _answer(transport) == (413, {"error": f"body is larger than {MAX_BODY} bytes",
                                        "field": None})
    assert b"100 Continue" not in transport.value()
    protocol.dataReceived(b"x" * 65536)  # whatever was already in flight is dropped
    assert len(request.content.getvalue()) == 0
    assert api.ran == 0


def test_the_413_log_line_names_the_request_without_its_query(logs):
    """The body is refused before twisted.web has set the request's method and URI: the log
    line still says which request it was, and leaves the query string (a token?) out."""
    protocol, transport, made = _connect(_Recorded())
    head = _head(f"Content-Length: {MAX_BODY + 1}\r\n").replace(b"/rest-api/do",
                                                                   b"/rest-api/do?token=s3cret")
    protocol.dataReceived(head)
    assert "POST /rest-api/do -> 413 (body over" in logs.everything()
    assert "s3cret" not in logs.everything()


def test_chunked_body_is_cut_at_the_limit():
    """A chunked body is refused once it passes 64 KiB: at most 64 KiB is ever stored."""
    api = _Recorded()
    protocol, transport, made = _connect(api)
    protocol.dataReceived(_head("Transfer-Encoding: chunked\r\n"))
    (request,) = made
    fed = 0
    piece = b"4000\r\n" + b" " * 0x4000 + b"\r\n"  # 16 KiB chunks of JSON whitespace
    while not transport.disconnecting and fed < 300 * 1024 * 1024:
        protocol.dataReceived(piece)
        fed += 0x4000
    assert fed <= MAX_BODY + 0x4000
    assert len(request.content.getvalue()) <= MAX_BODY
    protocol.dataReceived(b"0\r\n\r\n")
    assert _answer(transport)[0] == 413
    assert api.ran == 0


def test_body_limit_is_a_setting():
    """rest_max_body caps the body in the Site the daemon builds."""
    assert Config().rest_max_body == MAX_BODY
    assert RestSite(None, max_body=10).requestFactory.max_body == 10


def test_an_idle_connection_is_closed_after_idle_timeout():
    """A client that opens a connection and sends nothing (or stops mid-request) holds its
    socket for IDLE_TIMEOUT seconds, not twisted.web's 12 hours."""
    from twisted.web.resource import Resource
    clock = Clock()
    site = RestSite(Resource(), reactor=clock)
    transport = StringTransport(peerAddress=STRANGER)
    site.buildProtocol(STRANGER).makeConnection(transport)
    clock.advance(IDLE_TIMEOUT - 1)
    assert not transport.disconnecting
    clock.advance(1)
    assert transport.disconnecting


def test_token_parsing_names_the_setting_never_the_token():
    """A short token or an unknown scope is refused by position, without echoing the value."""
    with pytest.raises(ValueError) as short:
        parse_tokens(f"{GOOD},short")
    assert "token #2" in str(short.value) and "short" not in str(short.value)
    with pytest.raises(ValueError, match="unknown scope"):
        parse_tokens(f"{GOOD}:calls+everything")
    assert parse_tokens(f"{GOOD}:calls+push")[GOOD.encode()] == {"calls", "push"}


def test_trusted_addresses_are_remembered_and_the_answers_stay_the_same():
    """trusts() answers the same on every request of a client (worked out once per address),
    IPv4-mapped IPv6 and names included, with a bounded memory."""
    from sipgw import policy as policy_module

    access = AccessPolicy(networks=parse_networks("10.0.0.0/8"))
    for _ in range(2):
        assert access.trusts("10.1.2.3") and access.trusts("::ffff:10.1.2.3")
        assert not access.trusts("192.0.2.1") and not access.trusts("not-an-address")
    for i in range(policy_module._ADDRESSES_KEPT + 10):
        access.trusts(f"192.0.{i // 256 % 256}.{i % 256}")
    assert len(access._trusted) <= policy_module._ADDRESSES_KEPT
