"""Bytes to SIP messages: RFC 4475 torture fixtures, framing, and property tests (RFC 3261 §7, §18.3)."""
import hashlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sipgw.sip.headers import URI, Address, Via, canonical_name
from sipgw.sip.message import Request, Response, make_response
from sipgw.sip.parser import MAX_MESSAGE_SIZE, ParseError, StreamParser, parse

TORTURE = Path(__file__).parent / "torture"
VALID = sorted((TORTURE / "valid").glob("*.sip"))
INVALID = sorted((TORTURE / "invalid").glob("*.sip"))

# Fixtures our parser does not handle the way RFC 4475 asks, each with the reason. strict=True:
# the day the parser learns the case, the test fails and the entry must go.
XFAIL_VALID: dict[str, str] = {}
XFAIL_INVALID = {
    "baddate": "Date is not validated (RFC 3261 §20.17 wants rfc1123-date in GMT); the "
               "parser accepts 'EST', which RFC 4475 §3.1.2.12 allows a liberal element to do",
}
# RFC 4475 says these requests deserve a 400 (505 for badvers), which needs ParseError.request.
ANSWERABLE = ["badinv01", "clerr", "ncl", "scalar02", "quotbal", "ltgtruri", "lwsruri", "lwsstart",
              "trws", "escruri", "baddate", "regbadct", "badaspec", "baddn", "badvers",
              "mismatch01", "mismatch02", "multi01", "mcl01"]
XFAIL_ANSWERABLE = {
    "badvers": "Via.parse only accepts SIP/2.0, so the SIP/7.0 Via makes the request unanswerable",
    "baddate": XFAIL_INVALID["baddate"],
}


def _cases(paths, xfails):
    for path in paths:
        marks = [pytest.mark.xfail(strict=True, reason=xfails[path.stem])] if path.stem in xfails else []
        yield pytest.param(path, id=f"{path.parent.name}/{path.stem}", marks=marks)


def _names(names, xfails):
    for name in names:
        marks = [pytest.mark.xfail(strict=True, reason=xfails[name])] if name in xfails else []
        yield pytest.param(name, id=name, marks=marks)


def _fixture(name: str) -> bytes:
    for folder in ("valid", "invalid"):
        path = TORTURE / folder / f"{name}.sip"
        if path.exists():
            return path.read_bytes()
    raise FileNotFoundError(name)


def _without_length(message):
    return [(k, v) for k, v in message.headers if k != "Content-Length"]


# -- the fixture files themselves ------------------------------------------------------------

def _sums():
    for line in (TORTURE / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split()
        yield pytest.param(name, digest, id=name)


@pytest.mark.parametrize("name,digest", list(_sums()))
def test_fixture_bytes_are_unchanged(name, digest):
    """Each fixture file still has its recorded SHA-256 (no CRLF conversion by git or an editor)."""
    assert hashlib.sha256((TORTURE / name).read_bytes()).hexdigest() == digest


def test_every_fixture_has_a_checksum():
    """No fixture file is left out of SHA256SUMS, so none is silently skipped either."""
    listed = {p.values[0] for p in _sums()}
    assert listed == {f"{p.parent.name}/{p.name}" for p in VALID + INVALID}
    assert len(VALID) == 27 and len(INVALID) == 22


# -- RFC 4475 torture messages ---------------------------------------------------------------

@pytest.mark.parametrize("path", list(_cases(VALID, XFAIL_VALID)))
def test_valid_torture_message_parses_and_reparses(path):
    """A well-formed RFC 4475 message parses, and its serialisation parses to the same message."""
    message = parse(path.read_bytes())
    again = parse(bytes(message))
    assert type(again) is type(message)
    if isinstance(message, Request):
        assert (again.method, str(again.uri)) == (message.method, str(message.uri))
    else:
        assert (again.status, again.reason) == (message.status, message.reason)
    assert again.call_id == message.call_id
    assert again.cseq == message.cseq
    assert _without_length(again) == _without_length(message)
    assert len(again.get_all("Content-Length")) == 1
    assert again.body == message.body
    assert again == message


@pytest.mark.parametrize("path", list(_cases(INVALID, XFAIL_INVALID)))
def test_invalid_torture_message_is_refused(path):
    """A malformed RFC 4475 message raises ParseError with 505 for a bad version, else 400."""
    with pytest.raises(ParseError) as caught:
        parse(path.read_bytes())
    assert caught.value.status == (505 if path.stem == "badvers" else 400)


@pytest.mark.parametrize("name", list(_names(ANSWERABLE, XFAIL_ANSWERABLE)))
def test_invalid_request_can_be_answered_statelessly(name):
    """Where RFC 4475 asks for a 400/505, the ParseError carries a request to build it from."""
    with pytest.raises(ParseError) as caught:
        parse(_fixture(name))
    request = caught.value.request
    assert request is not None
    response = make_response(request, caught.value.status, to_tag="x1")
    assert response.call_id == request.call_id
    assert response.get("CSeq") == request.get("CSeq")
    assert response.get_all("Via") == request.get_all("Via")


@pytest.mark.parametrize("name", ["scalarlg", "bigcode", "insuf"])
def test_unanswerable_invalid_message_has_no_request(name):
    """Responses, and requests without From/To/Call-ID, give nothing to answer (request is None)."""
    with pytest.raises(ParseError) as caught:
        parse(_fixture(name))
    assert caught.value.request is None


def test_wsinv_reads_through_folding_and_whitespace():
    """wsinv: folded, oddly spaced and compact headers read as their plain values."""
    m = parse(_fixture("wsinv"))
    assert [(v.transport, v.host, v.branch) for v in m.vias] == [
        ("UDP", "192.0.2.2", "390skdjuw"),
        ("TCP", "spindle.example.com", "z9hG4bK9ikj8"),
        ("UDP", "192.168.255.111", "z9hG4bK30239")]
    assert m.to.tag == "1918181833n" and m.to.uri.user == "vivekg"
    assert m.from_.display == 'J Rosenberg \\"' and m.from_.tag == "98asjd8"
    assert (m.cseq.seq, m.cseq.method) == (9, "INVITE")
    assert m.get("Max-Forwards") == "0068" and m.get("Subject") == ""
    assert m.get("NewFangledHeader") == "newfangled value continued newfangled value"
    assert m.get("UnknownHeaderWithUnusualValue") == ";;,,;;,;"
    [contact] = m.contacts
    assert contact.display == 'Quoted string ""'
    assert contact.params == {"newparam": "newvalue", "secondparam": None, "q": "0.33"}
    assert m.routes[0].uri.params == {"lr": None, "unknownwith": "value", "unknown-no-value": None}
    assert m.uri.params == {"unknownparam": None} and len(m.body) == 150


def test_intmeth_keeps_unusual_token_characters():
    """intmeth: the method, a '?' and ';' in the URI user part and a NUL in a quoted string survive."""
    m = parse(_fixture("intmeth"))
    assert m.method == "!interesting-Method0123456789_*+`.%indeed'~"
    assert m.uri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert m.uri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    assert m.uri.host == "example.com" and m.uri.headers is None
    assert m.to.display == "BEL:\x07 NUL:\x00 DEL:\x7f"
    assert m.from_.display == "token1~` token2'+_ token3*%!.-"
    assert m.from_.params["fromparam''~+*_!.-%"] == '"работающий"'
    assert m.call_id == "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"
    assert m.get("extensionHeader-!.%*+_`'~") == "\ufeff大停電"


def test_escaping_fixtures_keep_percent_escapes_verbatim():
    """esc01/esc02/escnull: %HH stays escaped, and C%6Fntact is not a Contact header."""
    esc01 = parse(_fixture("esc01"))
    assert esc01.uri.user == "sips%3Auser%40example.com" and esc01.uri.host == "example.net"
    assert esc01.contacts[0].uri.params == {"%6c%72": None, "n%61me": "v%61lue%25%34%31"}
    esc02 = parse(_fixture("esc02"))
    assert esc02.method == "RE%47IST%45R" and esc02.to.display == "%Z%45"
    assert [c.uri.user for c in esc02.contacts] == ["alias1", "alias3"]
    assert esc02.get("C%6Fntact") == "<sip:alias2@host2.example.com>"
    escnull = parse(_fixture("escnull"))
    assert [c.uri.user for c in escnull.contacts] == ["%00", "%00%00"]


def test_other_valid_fixture_details():
    """semiuri, transports, longreq, dblreq, mpart01, noreason, unreason, inv2543, novelsc read right."""
    semiuri = parse(_fixture("semiuri"))
    assert (semiuri.uri.user, semiuri.uri.host) == ("user;par=u%40example.net", "example.com")
    assert semiuri.get_all("Accept")[-1] == "message/sipfrag"
    assert [v.transport for v in parse(_fixture("transports")).vias] == [
        "UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]
    longreq = parse(_fixture("longreq"))
    assert len(longreq.vias) == 34 and longreq.vias[0].host == "sip33.example.com"
    assert longreq.to.uri.port == 6000
    dblreq = parse(_fixture("dblreq"))
    assert (dblreq.method, dblreq.body) == ("REGISTER", b"")
    mpart = parse(_fixture("mpart01"))
    assert len(mpart.body) == 553 and b"\x00" in mpart.body and mpart.body.endswith(b"--\r\n")
    assert parse(_fixture("noreason")).reason == ""
    assert parse(_fixture("unreason")).reason.startswith("= 2**3 * 5**2 но сто")
    inv2543 = parse(_fixture("inv2543"))
    assert inv2543.get("Content-Length") is None and inv2543.body.endswith(b"RTP/AVP 0\r\n")
    assert inv2543.vias[0].branch is None and inv2543.from_.tag is None
    assert str(parse(_fixture("novelsc")).uri) == "soap.beep://192.0.2.103:3002"
    assert parse(_fixture("unksm2")).to.uri.scheme == "isbn"


# -- header syntax ---------------------------------------------------------------------------

def _request(*headers: str, first: str = "OPTIONS sip:bob@example.com SIP/2.0", body: bytes = b"",
             cseq: str = "1 OPTIONS") -> bytes:
    """A small valid request; each given header replaces the default one of the same name."""
    base = ["Via: SIP/2.0/UDP pc33.example.com;branch=z9hG4bK776asdhds",
            "From: <sip:alice@example.com>;tag=1928301774", "To: <sip:bob@example.com>",
            "Call-ID: a84b4c76e66710", f"CSeq: {cseq}", "Max-Forwards: 70"]
    names = {canonical_name(h.split(":", 1)[0].strip()) for h in headers}
    lines = [first, *(h for h in base if canonical_name(h.split(":", 1)[0]) not in names), *headers]
    if "Content-Length" not in names:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def test_compact_header_names_expand():
    """Compact forms v, i, m, l, f, t, s, k, c, e read as their long names (RFC 3261 §7.3.3)."""
    m = parse(_request("v: SIP/2.0/TCP a.example.com;branch=z9hG4bK1", "i: compact-1",
                       "f: <sip:a@example.com>;tag=9", "t: sip:b@example.com", "m: <sip:a@10.0.0.1>",
                       "s: hello", "k: 100rel", "c: text/plain", "e: gzip", "l: 2", body=b"hi"))
    assert m.top_via.transport == "TCP" and m.call_id == "compact-1"
    assert m.from_.tag == "9" and m.to.uri.user == "b" and m.contacts[0].uri.host == "10.0.0.1"
    assert (m.get("Subject"), m.get("Supported"), m.content_type, m.get("Content-Encoding")) == (
        "hello", "100rel", "text/plain", "gzip")
    assert m.body == b"hi" and m.get("l") == "2"


def test_header_names_are_case_insensitive():
    """Header names match whatever their case: cALL-iD, VIA, content-LENGTH."""
    data = _request(first="OPTIONS sip:bob@example.com SIP/2.0").decode()
    data = data.replace("Call-ID:", "cALL-iD:").replace("Via:", "VIA:").replace(
        "Content-Length:", "content-LENGTH:").replace("CSeq:", "cseq:")
    m = parse(data.encode())
    assert m.call_id == "a84b4c76e66710" and m.top_via.host == "pc33.example.com"
    assert m.get("call-id") == m.get("CALL-ID") == m.get("i")
    assert [k for k, _ in m.headers][:1] == ["Via"]


def test_repeated_and_comma_joined_list_headers_read_in_order():
    """Via, Contact and Route values keep their order whether repeated or comma-joined."""
    m = parse(_request(
        "Via: SIP/2.0/UDP a.example.com;branch=z9hG4bK1, SIP/2.0/TCP b.example.com;branch=z9hG4bK2",
        "Via: SIP/2.0/UDP c.example.com:5070;branch=z9hG4bK3;rport",
        "Contact: <sip:one@example.com>;q=0.5, \"Two, Esq.\" <sip:two@example.com>",
        "Contact: sip:three@example.com;expires=60",
        "Route: <sip:p1.example.com;lr>,<sip:p2.example.com;lr>", "Route: <sip:p3.example.com;lr>"))
    assert [v.host for v in m.vias] == ["a.example.com", "b.example.com", "c.example.com"]
    assert m.vias[2].port == 5070 and m.vias[2].params == {"branch": "z9hG4bK3", "rport": None}
    assert [c.uri.user for c in m.contacts] == ["one", "two", "three"]
    assert m.contacts[1].display == "Two, Esq." and m.contacts[2].params == {"expires": "60"}
    assert [r.uri.host for r in m.routes] == ["p1.example.com", "p2.example.com", "p3.example.com"]


def test_folded_header_lines_are_joined():
    """A line starting with SP or HTAB continues the previous header (RFC 3261 §7.3.1)."""
    m = parse(_request("Subject: I know you're there,\r\n pick up the phone\r\n\t and talk to me!",
                       "Contact:\r\n <sip:alice@pc33.example.com>"))
    assert m.get("Subject") == "I know you're there, pick up the phone and talk to me!"
    assert m.contacts[0].uri.host == "pc33.example.com"


def test_quoted_display_names_keep_commas_and_escaped_quotes():
    """Quoted display names may hold commas, semicolons, '<' and escaped quotes and backslashes."""
    m = parse(_request(
        'Contact: "Doe, John \\"JD\\" <x>; y" <sip:jd@example.com>;tag=a, "\\\\" <sip:b@example.com>',
        'From: "Smith; \\"Agent\\"" <sip:smith@example.com>;tag=77'))
    assert [c.display for c in m.contacts] == ['Doe, John "JD" <x>; y', "\\"]
    assert m.contacts[0].params == {"tag": "a"}
    assert m.from_.display == 'Smith; "Agent"' and m.from_.tag == "77"


def test_quoted_parameter_value_may_hold_escaped_quote_and_semicolon():
    """A quoted-string parameter value keeps ';' and an escaped '"' inside it."""
    address = Address.parse('<sip:a@example.com>;p="x\\";y";tag=t')
    assert address.params == {"p": '"x\\";y"', "tag": "t"}


def test_ipv6_hosts_in_uri_and_via():
    """IPv6 references in brackets work in the Request-URI, Via (with port) and Contact."""
    m = parse(_request("Via: SIP/2.0/UDP [2001:db8::9]:5061;branch=z9hG4bKv6;received=2001:db8::1",
                       "Contact: <sip:alice@[2001:db8::10]:5070;transport=tcp>",
                       first="OPTIONS sip:bob@[2001:db8::2]:5080;transport=udp SIP/2.0"))
    assert (m.uri.host, m.uri.port, m.uri.transport) == ("[2001:db8::2]", 5080, "udp")
    assert (m.top_via.host, m.top_via.port) == ("[2001:db8::9]", 5061)
    assert m.top_via.params["received"] == "2001:db8::1"
    assert (m.contacts[0].uri.host, m.contacts[0].uri.port) == ("[2001:db8::10]", 5070)
    assert str(m.uri) == "sip:bob@[2001:db8::2]:5080;transport=udp"
    assert str(m.top_via) == "SIP/2.0/UDP [2001:db8::9]:5061;branch=z9hG4bKv6;received=2001:db8::1"


def test_missing_required_header_is_refused_with_request_when_answerable():
    """A request without Max-Forwards parses; one without a To is refused and cannot be answered."""
    assert parse(_request()).get("Max-Forwards") == "70"
    data = _request().replace(b"To: <sip:bob@example.com>\r\n", b"")
    with pytest.raises(ParseError, match="missing To"):
        parse(data)


def test_non_ascii_digits_are_refused_not_crashing():
    """'²' and '٢' are not DIGIT: Content-Length, Max-Forwards, CSeq and status code refuse them."""
    for data in (_request("Content-Length: \u00b2"), _request("Max-Forwards: \u00b2"),
                 _request(cseq="\u00b2 OPTIONS"), _request("Content-Length: \u0662"),
                 b"SIP/2.0 \xd9\xa2\xd9\xa0\xd9\xa0 OK\r\n\r\n"):
        with pytest.raises(ParseError):
            parse(data)


def test_response_with_malformed_contact_or_record_route_is_refused():
    """A 2xx whose Contact or Record-Route does not parse is refused at the boundary (no request)."""
    ok = _request().replace(b"OPTIONS sip:bob@example.com SIP/2.0", b"SIP/2.0 200 OK")
    for bad in (b"Contact: <sip:a@b\r\n", b"Record-Route: junk <sip:p@q>x\r\n", b"Contact: \"x\r\n"):
        with pytest.raises(ParseError) as caught:
            parse(ok.replace(b"Max-Forwards: 70\r\n", bad))
        assert caught.value.request is None


def test_escaped_headers_in_request_uri_are_refused():
    """A Request-URI with ?headers is refused (RFC 3261 §19.1.1), one in a Contact is kept."""
    with pytest.raises(ParseError) as caught:
        parse(_request(first="OPTIONS sip:bob@example.com?Subject=hi SIP/2.0"))
    assert caught.value.request is not None
    m = parse(_request("Contact: <sip:bob@example.com?Route=%3Csip:p.example.com%3E>"))
    assert m.contacts[0].uri.headers == "Route=%3Csip:p.example.com%3E"


# -- UDP datagrams ---------------------------------------------------------------------------

def test_datagram_body_longer_than_content_length_is_truncated():
    """Octets after Content-Length in a datagram are discarded (RFC 3261 §18.3)."""
    m = parse(_request("Content-Length: 4", "Content-Type: text/plain") + b"bodyEXTRA\r\n")
    assert m.body == b"body"


def test_datagram_body_shorter_than_content_length_is_refused():
    """A datagram whose body is shorter than Content-Length is a 400 (RFC 3261 §18.3)."""
    with pytest.raises(ParseError) as caught:
        parse(_request("Content-Length: 10", "Content-Type: text/plain") + b"short")
    assert caught.value.status == 400 and caught.value.request is not None


def test_datagram_without_content_length_takes_the_rest_as_body():
    """Over UDP, a missing Content-Length means the body runs to the end of the datagram."""
    data = _request(body=b"").replace(b"Content-Length: 0\r\n", b"") + b"v=0\r\n"
    assert parse(data).body == b"v=0\r\n"


def test_oversized_datagram_is_refused_with_513():
    """A message above the size limit raises ParseError with status 513."""
    padding = "X-Pad: " + "p" * MAX_MESSAGE_SIZE
    with pytest.raises(ParseError) as caught:
        parse(_request(padding))
    assert caught.value.status == 513
    with pytest.raises(ParseError) as caught:
        parse(_request("Subject: long" + "g" * 200), max_size=200)
    assert caught.value.status == 513


def test_leading_crlf_before_a_datagram_is_ignored():
    """CRLFs before the start line (keep-alives, RFC 3261 §7.5) do not break parsing."""
    assert parse(b"\r\n\r\n" + _request()).call_id == "a84b4c76e66710"


# -- TCP streams -----------------------------------------------------------------------------

def test_stream_parser_byte_at_a_time_with_keepalives():
    """Two pipelined messages fed one byte at a time, CRLF keep-alives around them, both come out."""
    first = _request("Content-Type: text/plain", body=b"hello\r\n\r\nworld")
    second = bytes(make_response(parse(first), 200, to_tag="t1"))
    stream = b"\r\n\r\n" + first + b"\r\n\r\n\r\n" + second + b"\r\n"
    parser, out = StreamParser(), []
    for i in range(len(stream)):
        out += parser.feed(stream[i:i + 1])
    assert [type(m) for m in out] == [Request, Response]
    assert out[0] == parse(first) and out[0].body == b"hello\r\n\r\nworld"
    assert out[1] == parse(second) and out[1].to.tag == "t1"
    assert parser.feed(b"\r\n\r\n") == []


@pytest.mark.parametrize("name", ["wsinv", "longreq", "mpart01", "unreason", "esc01"])
def test_stream_parser_reads_torture_fixtures_byte_at_a_time(name):
    """A Content-Length framed torture message read byte by byte equals the datagram parse."""
    data = _fixture(name)
    parser, out = StreamParser(), []
    for i in range(len(data)):
        out += parser.feed(data[i:i + 1])
    assert out == [parse(data)]


def test_stream_message_without_content_length_is_refused():
    """On a stream, a message without Content-Length cannot be framed: a ParseError in its
    place, answerable with 400 (§18.3), and the parser goes on after its headers."""
    data = _request().replace(b"Content-Length: 0\r\n", b"")
    [error] = StreamParser().feed(data)
    assert isinstance(error, ParseError) and "Content-Length" in str(error)
    assert error.request is not None


def test_stream_resynchronizes_after_a_malformed_message():
    """A malformed message (bad header line, its body skipped by Content-Length; bad CSeq)
    becomes a ParseError in its place and the good message after it is still read, also
    byte by byte."""
    good = _request(cseq="2 OPTIONS")
    broken_line = _request("Content-Type: text/plain", body=b"x\r\n\r\ny").replace(
        b"Max-Forwards: 70", b"Max-Forwards 70")
    bad_cseq = _request(cseq="1 BYE")
    stream = broken_line + bad_cseq + good
    for step in (len(stream), 1):
        parser, out = StreamParser(), []
        for i in range(0, len(stream), step):
            out += parser.feed(stream[i:i + step])
        assert [type(m) for m in out] == [ParseError, ParseError, Request]
        assert out[1].request is not None and out[2] == parse(good)
        assert not parser.pending


def _response(first: str, *lines: str) -> bytes:
    return ("\r\n".join([first, "Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKabc",
                          "From: <sip:a@x>;tag=1", "To: <sip:b@x>;tag=2", "Call-ID: c@x",
                          "CSeq: 7 INVITE", *lines]) + "\r\n\r\n").encode()


@pytest.mark.parametrize("first, line, status", [
    ("SIP/2.0 486 Busy Here", "Contact: <<sip:broken", 486),
    ("SIP/2.0 486 Busy Here", "this line has no colon", 486),
    ("SIP/2.0 200 OK", "Contact: <<sip:broken", 500),
    ("SIP/2.0 2OO OK", "Content-Length: 0", 500),
])
def test_unparseable_response_is_salvaged_as_a_final_failure(first, line, status):
    """A response that does not parse but names its transaction (top Via branch, CSeq,
    Call-ID) comes with a final failure response: its own status when that is 3xx-6xx,
    else 500 (a broken 2xx cannot set up a dialog)."""
    with pytest.raises(ParseError) as caught:
        parse(_response(first, line))
    response = caught.value.response
    assert response.status == status and response.top_via.branch == "z9hG4bKabc"
    assert (response.cseq.method, response.call_id) == ("INVITE", "c@x")


def test_a_response_datagram_cut_within_its_headers_is_salvaged():
    """A 486 cut short before the end of its headers (no blank line) still names its
    transaction: salvaged as 486."""
    data = _response("SIP/2.0 486 Busy Here", "Warning: 399 pbx \"x\"")
    with pytest.raises(ParseError) as caught:
        parse(data[:data.index(b"Warning")])
    assert caught.value.response.status == 486


def test_unparseable_provisional_or_unnamed_response_is_not_salvaged():
    """A broken 1xx (a final response follows), one without a usable Via, CSeq or Call-ID,
    or with more than one Via (§18.1.2), is only dropped."""
    for data in (_response("SIP/2.0 180 Ringing", "Contact: <<x"),
                 _response("SIP/2.0 486 Busy", "x").replace(b"CSeq: 7 INVITE", b"CSeq: seven"),
                 _response("SIP/2.0 486 Busy", "x").replace(b";branch=z9hG4bKabc", b""),
                 _response("SIP/2.0 486 Busy", "x", "Via: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKb"),
                 _request("Contact: <<x")):
        with pytest.raises(ParseError) as caught:
            parse(data)
        assert caught.value.response is None


def test_stream_oversized_message_is_refused_with_513():
    """Endless headers, or a Content-Length beyond the limit, raise ParseError 513 on a stream."""
    parser = StreamParser(max_size=1000)
    with pytest.raises(ParseError) as caught:
        for _ in range(20):
            parser.feed(b"X-Filler: " + b"f" * 90 + b"\r\n")
    assert caught.value.status == 513
    with pytest.raises(ParseError) as caught:
        StreamParser().feed(_request(f"Content-Length: {MAX_MESSAGE_SIZE}"))
    assert caught.value.status == 513


def test_stream_waits_for_the_whole_body():
    """The stream parser returns nothing until Content-Length octets have arrived."""
    data = _request("Content-Type: text/plain", body=b"0123456789")
    parser = StreamParser()
    assert parser.feed(data[:-1]) == []
    [message] = parser.feed(data[-1:])
    assert message.body == b"0123456789"


# -- properties ------------------------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_parse_raises_only_parse_error(data):
    """Any bytes either parse or raise ParseError, never another exception."""
    try:
        parse(data)
    except ParseError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=6))
def test_stream_parser_raises_only_parse_error(chunks):
    """Any chunks fed to a StreamParser give messages or ParseError, never another exception."""
    parser = StreamParser()
    try:
        for chunk in chunks:
            parser.feed(chunk)
    except ParseError:
        pass


_SEEDS = [p.read_bytes() for p in VALID + INVALID]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_torture_messages_raise_only_parse_error(data):
    """Torture fixtures with bytes replaced, inserted or cut parse or raise ParseError only."""
    message = bytearray(data.draw(st.sampled_from(_SEEDS)))
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(message)))
        op = data.draw(st.sampled_from(["set", "insert", "cut"]))
        blob = data.draw(st.sampled_from([b"\x00", b"\xff", b":", b";", b'"', b"<", b">", b",",
                                          b"\r\n", b" ", b"\xb2", b"@", b"?", b"%", b"\\", b"[",
                                          b"]", b"9" * 12, b"\r\n\r\n", b"\t"]))
        if op == "set":
            message[at:at + len(blob)] = blob
        elif op == "insert":
            message[at:at] = blob
        else:
            del message[at:at + data.draw(st.integers(1, 40))]
    try:
        parse(bytes(message))
    except ParseError:
        pass
    try:
        StreamParser().feed(bytes(message))
    except ParseError:
        pass


_HEADER_NAMES = ["Via", "From", "To", "Call-ID", "CSeq", "Contact", "Content-Length", "Max-Forwards",
                 "Route", "Record-Route", "v", "m", "l"]
_HEADER_BITS = st.sampled_from(list('abcsip:@;=,<>"\\ \t/?%[].0129\u00b2\u0662\x00\xff-') + [
    "SIP/2.0/UDP ", "sip:", "<sip:a@b>", "tag=", "branch=z9hG4bK", "\r\n ", "\r\n"])


def _stream_raising(data: bytes) -> list:
    """StreamParser's messages, raising the ParseError that stands for a malformed one."""
    out = StreamParser().feed(data)
    for item in out:
        if isinstance(item, ParseError):
            raise item
    return out


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(_HEADER_NAMES), st.lists(_HEADER_BITS, max_size=20).map("".join)),
                min_size=1, max_size=4),
       st.sampled_from(["OPTIONS sip:a@b SIP/2.0", "SIP/2.0 200 OK"]))
def test_odd_header_values_parse_fully_or_raise_parse_error(extra, first):
    """Odd values in known headers raise ParseError, or give a message whose typed views all work."""
    lines = [first, "Via: SIP/2.0/UDP h;branch=z9hG4bKx", "From: <sip:a@b>;tag=1", "To: <sip:a@b>",
             "Call-ID: c", "CSeq: 1 OPTIONS", "Content-Length: 0", *(f"{k}: {v}" for k, v in extra)]
    data = ("\r\n".join(lines) + "\r\n\r\n").encode()
    for read in (lambda d: [parse(d)], _stream_raising):
        try:
            messages = read(data)
        except ParseError as exc:
            if exc.request is not None:
                assert exc.request.top_via and make_response(exc.request, exc.status, to_tag="t")
            continue
        for message in messages:
            assert parse(bytes(message)) == message
            message.vias, message.from_, message.to, message.cseq  # noqa: B018 - must not raise
            message.contacts, message.routes, message.record_routes  # noqa: B018


# Strategies building messages whose typed views must survive bytes -> parse unchanged.
_ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
_tokens = st.text(_ALNUM + "-.!%*_+`'~", min_size=1, max_size=12)
_lower_tokens = st.text("abcdefghijklmnopqrstuvwxyz0123456789-.!%*_+`'~", min_size=1, max_size=10)
_labels = st.tuples(st.sampled_from("abcxyz"), st.text("abcdefghijklmnopqrstuvwxyz0123456789-",
                                                       max_size=8)).map("".join)
_domains = st.lists(_labels, min_size=1, max_size=4).map(".".join)
_hosts = st.one_of(_domains, st.ip_addresses(v=4).map(str),
                   st.ip_addresses(v=6).map(lambda a: f"[{a}]"))
_ports = st.none() | st.integers(1, 65535)
_users = st.lists(st.text(_ALNUM + "-_.!~*'()&=+$,;?/", min_size=1, max_size=6)
                  | st.sampled_from(["%40", "%20", "%00", "%3A", "%25"]), min_size=1, max_size=4).map("".join)
_params = st.dictionaries(_lower_tokens, st.none() | _tokens, max_size=3)
_uris = st.builds(URI, scheme=st.sampled_from(["sip", "sips"]), host=_hosts,
                  user=st.none() | _users, port=_ports, params=_params)
_display = st.none() | st.text(
    st.characters(min_codepoint=32, max_codepoint=0x7e) | st.sampled_from("éßжΩ大"),
    min_size=1, max_size=20)


@st.composite
def _addresses(draw, tag=True):
    params = draw(st.dictionaries(_lower_tokens.filter(lambda k: k != "tag"), st.none() | _tokens,
                                  max_size=2))
    if tag:
        params["tag"] = draw(_tokens)
    return Address(uri=draw(_uris), display=draw(_display), params=params)


@st.composite
def _vias(draw):
    params = {"branch": "z9hG4bK" + draw(_tokens)}
    params.update(draw(st.dictionaries(st.sampled_from(["rport", "received", "ttl", "x-y"]),
                                       st.none() | _tokens, max_size=2)))
    return Via(transport=draw(st.sampled_from(["UDP", "TCP", "TLS", "SCTP", "WS", "WSS"])),
               host=draw(_hosts), port=draw(_ports), params=params)


_header_values = st.text(st.characters(min_codepoint=32, max_codepoint=0x2ff),
                         max_size=30).map(str.strip)


@st.composite
def _messages(draw):
    vias = draw(st.lists(_vias(), min_size=1, max_size=3))
    from_, to = draw(_addresses()), draw(_addresses(tag=draw(st.booleans())))
    contacts = draw(st.lists(_addresses(tag=False), max_size=2))
    body = draw(st.binary(max_size=80))
    is_request = draw(st.booleans())
    method = draw(st.sampled_from(["INVITE", "ACK", "BYE", "OPTIONS", "REGISTER", "MESSAGE"]) | _tokens)
    cseq = f"{draw(st.integers(0, 2**31 - 1))} {method}"
    headers = []
    if draw(st.booleans()):  # comma-joined or one header per value
        headers.append(("Via", ", ".join(map(str, vias))))
    else:
        headers += [("Via", str(v)) for v in vias]
    headers += [("From", str(from_)), ("To", str(to)),
                ("Call-ID", draw(_tokens) + "@" + draw(_domains)),
                ("CSeq", cseq), ("Max-Forwards", str(draw(st.integers(0, 255))))]
    if contacts:
        headers.append(("Contact", ", ".join(map(str, contacts))))
    for name, value in draw(st.lists(st.tuples(_tokens.map(lambda t: "X-" + t), _header_values),
                                     max_size=3)):
        headers.append((name, value))
    if body:
        headers.append(("Content-Type", "application/octet-stream"))
    if is_request:
        message = Request(method, draw(_uris), headers, body)
    else:
        reason = draw(st.none() | st.text(st.characters(min_codepoint=32, max_codepoint=0x7ff),
                                          max_size=20))
        message = Response(draw(st.integers(100, 699)), reason, headers, body)
    return message, vias, from_, to, contacts


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_messages())
def test_built_message_survives_bytes_and_parse(built):
    """parse(bytes(m)) == m for generated requests/responses, typed headers included."""
    message, vias, from_, to, contacts = built
    parsed = parse(bytes(message))
    assert parsed == message
    assert parsed.vias == vias and parsed.from_ == from_ and parsed.to == to
    assert parsed.contacts == contacts and parsed.body == message.body
    if isinstance(message, Request):
        assert parsed.uri == message.uri and parsed.method == message.method
    else:
        assert (parsed.status, parsed.reason) == (message.status, message.reason)
    [framed] = StreamParser().feed(bytes(message))
    assert framed == message


def test_stream_parser_costs_linear_time_for_a_64k_message_fed_byte_by_byte(monkeypatch):
    """A 64 KB message (large headers and a large body) fed one byte at a time: the headers
    are parsed once and every byte is searched for the header end about once (O(n), counted
    in bytes searched and head parses, not time)."""
    import sipgw.sip.parser as parser_module
    heads = []
    real = parser_module._parse_head
    monkeypatch.setattr(parser_module, "_parse_head", lambda head: heads.append(1) or real(head))
    filler = "".join(f"X-Filler-{i}: {'f' * 90}\r\n" for i in range(150))  # ~15 KB of headers
    body = b"b" * 50000
    data = _request(filler + "Content-Type: text/plain", body=body)
    assert len(data) > 65536
    parser, out = StreamParser(max_size=1 << 17), []
    for i in range(len(data)):
        out += parser.feed(data[i:i + 1])
    assert len(heads) == 1
    assert [m.body for m in out] == [body] and out[0] == parse(data, 1 << 17)
    assert parser.scanned <= 4 * len(data)  # each header byte searched ~4 times (overlap 3)
    assert not parser.pending


def test_an_empty_via_is_refused_not_crashing():
    """A Via header with an empty value (found by bench/fuzz.py: zeromf with 'Via:' then a
    blank line) is a ParseError; the transport raised IndexError reading the top Via."""
    data = (b"OPTIONS sip:user@example.com SIP/2.0\r\nTo: sip:user@example.com\r\n"
            b"From: sip:caller@example.net;tag=3ghsd41\r\nCall-ID: zeromf.jfasdl\r\n"
            b"CSeq: 39234321 OPTIONS\r\nVia:\r\n\r\n SIP/2.0/UDP host1.example.com\r\n")
    with pytest.raises(ParseError, match="empty Via"):
        parse(data)


@pytest.mark.parametrize("first", [b"SIP/2.0 200", b"SIP/2.0 180"])
def test_a_status_line_without_a_reason_phrase_is_read(first):
    """An empty reason phrase (and no space before it) is accepted (§7.2, as peers send it)."""
    message = parse(first + b"\r\nVia: SIP/2.0/UDP 127.0.0.1;branch=z9hG4bKa\r\n"
                    b"From: <sip:a@b>;tag=1\r\nTo: <sip:b@b>\r\nCall-ID: x\r\n"
                    b"CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n")
    assert message.status == int(first.split()[1]) and message.reason == ""
