"""Tests for sipgw.sip.auth: Digest challenges and answers (RFC 2617, RFC 7616, RFC 8760)."""
import ast
import hashlib
import pathlib
import re

import pytest
from hypothesis import given, strategies as st

from sipgw.sip import auth
from sipgw.sip.auth import AuthError, Challenge, DigestClient, pick_challenge, redact_authorization

# RFC 2617 §3.5
RFC2617_CHALLENGE = ('Digest realm="testrealm@host.com", qop="auth,auth-int", '
                     'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41"')
# RFC 7616 §3.9.1: the same server offers SHA-256 first, then MD5.
RFC7616_SHA256 = ('Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm=SHA-256, '
                  'nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", '
                  'opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"')
RFC7616_MD5 = RFC7616_SHA256.replace("algorithm=SHA-256", "algorithm=MD5")
RFC7616_CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"


def param(value: str, name: str) -> str:
    match = re.search(rf'\b{name}=("[^"]*"|[^,\s]+)', value)
    assert match, f"{name} missing from {value}"
    return match.group(1).strip('"')


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def test_module_is_pure():
    """The auth module imports nothing from Twisted."""
    tree = ast.parse(pathlib.Path(auth.__file__).read_text())
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert not [n for n in names if n.startswith("twisted")]


# --- known answers -----------------------------------------------------------------------

def test_rfc2617_example():
    """The RFC 2617 §3.5 Mufasa example gives response 6629fae4... in the documented layout."""
    client = DigestClient("Mufasa", "Circle Of Life")
    name, value = client.authorize(Challenge.parse(RFC2617_CHALLENGE), "GET", "/dir/index.html",
                                   cnonce="0a4f113b")
    assert name == "Authorization"
    assert value == (
        'Digest username="Mufasa", realm="testrealm@host.com", '
        'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", uri="/dir/index.html", '
        'response="6629fae49393a05397450978507c4ef1", algorithm=MD5, cnonce="0a4f113b", '
        'opaque="5ccc069c403ebaf9f0171e9517f40e41", qop=auth, nc=00000001')


def test_rfc7616_sha256_example():
    """The RFC 7616 §3.9.1 SHA-256 example gives response 753927fa...."""
    client = DigestClient("Mufasa", "Circle of Life")
    _, value = client.authorize(Challenge.parse(RFC7616_SHA256), "GET", "/dir/index.html",
                                cnonce=RFC7616_CNONCE)
    assert param(value, "response") == "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
    assert param(value, "algorithm") == "SHA-256"
    assert param(value, "opaque") == "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"
    assert (param(value, "qop"), param(value, "nc")) == ("auth", "00000001")


def test_rfc7616_md5_example():
    """The RFC 7616 §3.9.1 MD5 example gives response 8ca523f5...."""
    client = DigestClient("Mufasa", "Circle of Life")
    _, value = client.authorize(Challenge.parse(RFC7616_MD5), "GET", "/dir/index.html",
                                cnonce=RFC7616_CNONCE)
    assert param(value, "response") == "8ca523f5e9506fed4657c9700eebdbec"
    assert param(value, "algorithm") == "MD5"


def test_rfc2069_response_without_qop():
    """Without qop the response is H(HA1:nonce:HA2) and no cnonce, qop or nc is sent."""
    challenge = Challenge.parse(
        'Digest realm="testrealm@host.com", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093"')
    _, value = DigestClient("Mufasa", "Circle Of Life").authorize(challenge, "GET", "/dir/index.html")
    # RFC 2617 §3.5: HA1 and HA2 of the Mufasa example.
    expected = md5("939e7578ed9e3c518a452acee763bce9:dcd98b7102dd2f0e8b11d0f600bfb0c093:"
                   "39aff3a2bab6126f332b942af96d3366")
    assert param(value, "response") == expected
    assert not re.search(r"\b(cnonce|qop|nc|opaque)=", value)


def test_md5_sess():
    """MD5-sess hashes HA1 again with nonce and cnonce (RFC 7616 §3.4.2)."""
    challenge = Challenge.parse(RFC2617_CHALLENGE + ", algorithm=md5-sess")
    _, value = DigestClient("Mufasa", "Circle Of Life").authorize(
        challenge, "GET", "/dir/index.html", cnonce="0a4f113b")
    nonce = "dcd98b7102dd2f0e8b11d0f600bfb0c093"
    ha1 = md5(f"939e7578ed9e3c518a452acee763bce9:{nonce}:0a4f113b")
    expected = md5(f"{ha1}:{nonce}:00000001:0a4f113b:auth:39aff3a2bab6126f332b942af96d3366")
    assert param(value, "response") == expected
    assert param(value, "algorithm") == "MD5-sess"


def test_sha256_sess():
    """SHA-256-sess uses SHA-256 throughout with the session HA1."""
    challenge = Challenge.parse(RFC7616_SHA256.replace("SHA-256", "SHA-256-sess"))
    _, value = DigestClient("Mufasa", "Circle of Life").authorize(
        challenge, "GET", "/dir/index.html", cnonce=RFC7616_CNONCE)

    def h(text):
        return hashlib.sha256(text.encode()).hexdigest()
    nonce = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
    ha1 = h(f"{h('Mufasa:http-auth@example.org:Circle of Life')}:{nonce}:{RFC7616_CNONCE}")
    expected = h(f"{ha1}:{nonce}:00000001:{RFC7616_CNONCE}:auth:{h('GET:/dir/index.html')}")
    assert param(value, "response") == expected
    assert param(value, "algorithm") == "SHA-256-sess"


def test_sess_without_qop_still_sends_cnonce():
    """A -sess challenge without qop still sends the cnonce its HA1 depends on."""
    challenge = Challenge.parse('Digest realm="r", nonce="n", algorithm=MD5-sess')
    _, value = DigestClient("u", "p").authorize(challenge, "REGISTER", "sip:example.com", cnonce="c1")
    assert param(value, "cnonce") == "c1"
    assert not re.search(r"\b(qop|nc)=", value)
    ha1 = md5(md5("u:r:p") + ":n:c1")
    assert param(value, "response") == md5(f"{ha1}:n:{md5('REGISTER:sip:example.com')}")


def test_auth_int_hashes_the_body():
    """qop=auth-int alone makes A2 include H(body) (RFC 7616 §3.4.3)."""
    challenge = Challenge.parse('Digest realm="r", nonce="n", qop="auth-int"')
    body = b"v=0\r\n"
    _, value = DigestClient("u", "p").authorize(challenge, "INVITE", "sip:bob@b", body=body, cnonce="c")
    ha2 = md5(f"INVITE:sip:bob@b:{hashlib.md5(body).hexdigest()}")
    assert param(value, "qop") == "auth-int"
    assert param(value, "response") == md5(f"{md5('u:r:p')}:n:00000001:c:auth-int:{ha2}")


def test_auth_preferred_over_auth_int():
    """When both are offered, qop=auth is chosen."""
    _, value = DigestClient("u", "p").authorize(Challenge.parse(RFC2617_CHALLENGE), "GET", "/")
    assert param(value, "qop") == "auth"


def test_unsupported_qop_only():
    """A challenge offering only unknown qop values cannot be answered."""
    challenge = Challenge.parse('Digest realm="r", nonce="n", qop="auth-conf"')
    with pytest.raises(AuthError, match="^no supported qop in auth-conf$"):
        DigestClient("u", "p").authorize(challenge, "INVITE", "sip:b")


# --- nonce counts and cnonce -------------------------------------------------------------

def test_nc_increments_per_nonce():
    """nc counts 1, 2, 3 for one nonce and restarts at 1 for a new nonce."""
    client = DigestClient("u", "p")
    first = Challenge.parse('Digest realm="r", nonce="n1", qop="auth"')
    second = Challenge.parse('Digest realm="r", nonce="n2", qop="auth", stale=true')
    counts = [param(client.authorize(first, "REGISTER", "sip:r")[1], "nc") for _ in range(3)]
    assert counts == ["00000001", "00000002", "00000003"]
    assert param(client.authorize(second, "REGISTER", "sip:r")[1], "nc") == "00000001"
    assert param(client.authorize(first, "REGISTER", "sip:r")[1], "nc") == "00000004"


def test_nc_is_hexadecimal():
    """The tenth request with one nonce sends nc=0000000a."""
    client = DigestClient("u", "p")
    challenge = Challenge.parse('Digest realm="r", nonce="n", qop="auth"')
    for _ in range(9):
        client.authorize(challenge, "OPTIONS", "sip:r")
    assert param(client.authorize(challenge, "OPTIONS", "sip:r")[1], "nc") == "0000000a"


def test_random_cnonce_differs_between_requests():
    """Without a given cnonce a fresh random hex one is used each time."""
    client = DigestClient("u", "p")
    challenge = Challenge.parse('Digest realm="r", nonce="n", qop="auth"')
    cnonces = {param(client.authorize(challenge, "INVITE", "sip:b")[1], "cnonce") for _ in range(5)}
    assert len(cnonces) == 5
    assert all(re.fullmatch(r"[0-9a-f]{16}", c) for c in cnonces)


def test_proxy_challenge_is_answered_with_proxy_authorization():
    """A Proxy-Authenticate challenge is answered in Proxy-Authorization (RFC 3261 §22.3)."""
    challenge = Challenge.parse('Digest realm="r", nonce="n"', header="proxy-authenticate")
    assert challenge.header == "Proxy-Authenticate"
    assert DigestClient("u", "p").authorize(challenge, "INVITE", "sip:b")[0] == "Proxy-Authorization"


def test_quotes_in_username_are_escaped():
    """Quotes and backslashes in quoted fields are escaped, and the hash uses the raw value."""
    challenge = Challenge.parse(r'Digest realm="a \"quoted\" realm", nonce="n"')
    _, value = DigestClient('al"ice', "p").authorize(challenge, "INVITE", "sip:b")
    assert 'username="al\\"ice"' in value
    assert 'realm="a \\"quoted\\" realm"' in value
    ha1 = md5('al"ice:a "quoted" realm:p')
    assert param(value, "response") == md5(f"{ha1}:n:{md5('INVITE:sip:b')}")


# --- parsing -----------------------------------------------------------------------------

def test_parse_rfc7616_challenge():
    """All fields of the RFC 7616 challenge are read; qop is split and trimmed."""
    c = Challenge.parse(RFC7616_SHA256)
    assert c == Challenge(
        realm="http-auth@example.org", nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
        algorithm="SHA-256", qop=("auth", "auth-int"),
        opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS", stale=False, header="WWW-Authenticate")


@pytest.mark.parametrize(("text", "stale"), [
    ("stale=TRUE", True), ("stale=true", True), ('stale="true"', True), ("stale=FALSE", False), ("", False),
])
def test_stale_is_visible(text, stale):
    """stale=true (any case, quoted or not) is exposed so the caller retries silently."""
    assert Challenge.parse(f'Digest realm="r", nonce="n", {text}').stale is stale


@pytest.mark.parametrize(("written", "normalised"), [
    ("md5", "MD5"), ("MD5-SESS", "MD5-sess"), ("sha-256", "SHA-256"), ('"SHA-256-Sess"', "SHA-256-sess"),
])
def test_algorithm_is_normalised(written, normalised):
    """Algorithm names are case-insensitive and normalised to their RFC spelling."""
    assert Challenge.parse(f'Digest realm="r", nonce="n", algorithm={written}').algorithm == normalised


def test_parse_is_lenient_about_layout():
    """Scheme and parameter names are case-insensitive; spacing, commas in quotes and extras are fine."""
    c = Challenge.parse('  digest  REALM = "a, b" ,NONCE="x\\\\y",, domain="sip:a sip:b", charset=UTF-8 ,')
    assert (c.realm, c.nonce, c.algorithm, c.qop, c.opaque) == ("a, b", "x\\y", "MD5", (), None)


@pytest.mark.parametrize(("value", "message"), [
    ('Basic realm="r"', "not a Digest challenge: 'Basic'"),
    ("", "not a Digest challenge: ''"),
    ('Digest nonce="n"', "Digest challenge has no realm"),
    ('Digest realm="r"', "Digest challenge has no nonce"),
    ("Digest", "Digest challenge has no realm"),
    ('Digest realm="r", nonce="n", algorithm=SHA-512-256', "unsupported Digest algorithm 'SHA-512-256'"),
    ('Digest realm="r", nonce="n", algorithm=AKAv1-MD5', "unsupported Digest algorithm 'AKAv1-MD5'"),
    ('Digest realm="r, nonce="n"', "bad Digest challenge parameter at 'realm=\"r, nonce=\"n\"'"),
    ('Digest realm="r" nonce="n"', "bad Digest challenge parameter at 'realm=\"r\" nonce=\"n\"'"),
    ('Digest realm', "bad Digest challenge parameter at 'realm'"),
])
def test_parse_errors(value, message):
    """Malformed or unsupported challenges raise AuthError with an exact message."""
    with pytest.raises(AuthError) as raised:
        Challenge.parse(value)
    assert str(raised.value) == message


FRAGMENTS = ["Digest ", "realm", "nonce", "qop", "stale", "algorithm", "MD5", "SHA-256", *'="\\, =ab']


@given(st.text() | st.lists(st.sampled_from(FRAGMENTS), max_size=20).map("".join))
def test_parse_raises_only_auth_error(value):
    """Arbitrary header values either parse or raise AuthError, nothing else."""
    try:
        Challenge.parse(value)
    except AuthError:
        pass


def test_parse_rejects_unknown_header():
    """Only WWW-Authenticate and Proxy-Authenticate carry challenges."""
    with pytest.raises(AuthError, match="^not a challenge header: 'Authorization'$"):
        Challenge.parse('Digest realm="r", nonce="n"', header="Authorization")


def test_auth_error_is_a_value_error():
    """AuthError is a ValueError, like the other parse errors."""
    assert issubclass(AuthError, ValueError)


# --- choosing ----------------------------------------------------------------------------

def test_pick_prefers_sha256():
    """Of the RFC 7616 pair, SHA-256 is picked whichever order they came in."""
    sha, md = Challenge.parse(RFC7616_SHA256), Challenge.parse(RFC7616_MD5)
    assert pick_challenge([md, sha]) is sha
    assert pick_challenge([sha, md]) is sha


def test_pick_keeps_server_order_among_equals():
    """Between two challenges of equal strength the topmost wins (RFC 8760 §2.4)."""
    first = Challenge.parse('Digest realm="a", nonce="1", algorithm=MD5')
    second = Challenge.parse('Digest realm="b", nonce="2", algorithm=MD5-sess')
    assert pick_challenge([first, second]) is first


def test_pick_from_nothing():
    """An empty list of challenges is an AuthError."""
    with pytest.raises(AuthError, match="^no Digest challenge to answer$"):
        pick_challenge([])


# --- secrets stay out of logs ------------------------------------------------------------

def test_repr_hides_password():
    """repr(DigestClient) shows the username and never the password."""
    client = DigestClient("Mufasa", "Circle Of Life")
    client.authorize(Challenge.parse(RFC2617_CHALLENGE), "GET", "/")
    assert repr(client) == "DigestClient(username='Mufasa')"
    assert "Circle" not in repr(client) and "Circle" not in str(client)


def test_redaction_hides_response():
    """redact_authorization replaces the response and keeps the other fields."""
    _, value = DigestClient("Mufasa", "Circle Of Life").authorize(
        Challenge.parse(RFC2617_CHALLENGE), "GET", "/dir/index.html", cnonce="0a4f113b")
    redacted = redact_authorization(value)
    assert "6629fae49393a05397450978507c4ef1" not in redacted
    assert 'response="***"' in redacted
    assert redacted == value.replace("6629fae49393a05397450978507c4ef1", "***")


@pytest.mark.parametrize(("value", "redacted"), [
    ('Digest username="u", Response="abc", password="hunter2", nc=00000001',
     'Digest username="u", Response="***", password="***", nc=00000001'),
    ("Digest username=u, response=abc, passwd=hunter2, secret = hunter2",
     'Digest username=u, response="***", passwd="***", secret = "***"'),
    ('Digest username="u", response="a\\"b", uri="sip:x"',
     'Digest username="u", response="***", uri="sip:x"'),
])
def test_redaction_hides_password_like_fields(value, redacted):
    """Password-like fields and unquoted, escaped or oddly cased responses are masked too."""
    assert redact_authorization(value) == redacted


def test_answerer_skips_an_unusable_challenge_and_answers_the_usable_one():
    """A server offering SHA-512-256 beside MD5 gets an MD5 answer; the skip is recorded."""
    from sipgw.sip.auth import ChallengeAnswerer
    from sipgw.sip.message import Response
    response = Response(401, headers=[
        ("WWW-Authenticate", 'Digest realm="r", nonce="n1", algorithm=SHA-512-256'),
        ("WWW-Authenticate", 'Digest realm="r", nonce="n1", algorithm=MD5')])
    answerer = ChallengeAnswerer(DigestClient("alice", "pw"))
    (name, value), = answerer.headers_for(response, "INVITE", "sip:bob@x", b"")
    assert name == "Authorization" and "algorithm=MD5" in value
    assert len(answerer.skipped) == 1 and "SHA-512-256" in answerer.skipped[0]
    assert answerer.headers_for(response, "INVITE", "sip:bob@x", b"") is None  # refused again


def _challenge(status, *values):
    from sipgw.sip.message import Response
    name = "WWW-Authenticate" if status == 401 else "Proxy-Authenticate"
    return Response(status, headers=[(name, v) for v in values])


def test_answerer_accumulates_credentials_per_realm_across_hops():
    """A proxy's 407 then the PBX's 401: the retry carries both answers (RFC 3261 §22.3),
    the proxy's recomputed for the new request (nc=00000002 on its nonce)."""
    from sipgw.sip.auth import ChallengeAnswerer
    answerer = ChallengeAnswerer(DigestClient("alice", "pw"))
    first = answerer.headers_for(_challenge(407, 'Digest realm="proxy", nonce="p1", qop="auth"'),
                                 "INVITE", "sip:bob@x", b"")
    assert [n for n, _ in first] == ["Proxy-Authorization"]
    second = answerer.headers_for(_challenge(401, 'Digest realm="pbx", nonce="b1", qop="auth"'),
                                  "INVITE", "sip:bob@x", b"")
    names = dict(second)
    assert set(names) == {"Proxy-Authorization", "Authorization"}
    assert 'realm="proxy"' in names["Proxy-Authorization"] and "nc=00000002" in names[
        "Proxy-Authorization"]
    assert 'realm="pbx"' in names["Authorization"]


def test_answerer_answers_every_realm_of_one_response():
    """Several challenges of different realms in one 407 (a forking proxy): one answer per
    realm (RFC 3261 §22.3); two of one realm: one answer, the preferred algorithm's."""
    from sipgw.sip.auth import ChallengeAnswerer
    answerer = ChallengeAnswerer(DigestClient("alice", "pw"))
    headers = answerer.headers_for(_challenge(
        407, 'Digest realm="a", nonce="1"', 'Digest realm="b", nonce="2"',
        'Digest realm="b", nonce="3", algorithm=SHA-256'), "BYE", "sip:bob@x", b"")
    values = [v for _, v in headers]
    assert len(values) == 2 and 'realm="a"' in values[0]
    assert 'realm="b"' in values[1] and "SHA-256" in values[1]


def test_realms_answered_and_kept_are_bounded():
    """A 407 naming more realms than MAX_REALMS has only the first MAX_REALMS answered, and
    the realms kept for a dialog stay within MAX_REALMS, the oldest forgotten first."""
    from sipgw.sip.auth import MAX_REALMS, ChallengeAnswerer
    answerer = ChallengeAnswerer(DigestClient("alice", "pw"))
    many = [f'Digest realm="r{n}", nonce="n{n}"' for n in range(MAX_REALMS + 5)]
    headers = answerer.headers_for(_challenge(407, *many), "BYE", "sip:bob@x", b"")
    assert len(headers) == MAX_REALMS and 'realm="r0"' in headers[0][1]
    later = answerer.chain()
    later.headers_for(_challenge(401, 'Digest realm="pbx", nonce="b1"'), "BYE", "sip:bob@x", b"")
    assert len(answerer.realms) == MAX_REALMS
    assert ("WWW-Authenticate", "pbx") in answerer.realms
    assert ("Proxy-Authenticate", "r0") not in answerer.realms


def test_a_new_chain_answers_a_fresh_nonce_and_keeps_the_other_realms():
    """An in-dialog request is a new chain (``chain()``): a new nonce for a realm answered
    during the INVITE is answered, not taken as a refusal; other realms stay cached."""
    from sipgw.sip.auth import ChallengeAnswerer
    invite = ChallengeAnswerer(DigestClient("alice", "pw"))
    invite.headers_for(_challenge(407, 'Digest realm="proxy", nonce="p1"'), "INVITE", "sip:b", b"")
    invite.headers_for(_challenge(401, 'Digest realm="pbx", nonce="b1"'), "INVITE", "sip:b", b"")
    bye = invite.chain()
    headers = bye.headers_for(_challenge(407, 'Digest realm="proxy", nonce="p2"'), "BYE",
                              "sip:b", b"")
    assert {n for n, _ in headers} == {"Proxy-Authorization", "Authorization"}
    assert 'nonce="p2"' in dict(headers)["Proxy-Authorization"]
    assert bye.headers_for(_challenge(407, 'Digest realm="proxy", nonce="p2"'), "BYE",
                           "sip:b", b"") is None  # the same nonce again: refused
