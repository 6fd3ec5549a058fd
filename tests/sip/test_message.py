"""SIP messages, header access and typed header values (RFC 3261 §7, §8.2.6, §19, §20)."""
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sipgw.sip.headers import (URI, Address, CSeq, HeaderError, Via, canonical_name, quote,
                               split_list, unquote)
from sipgw.sip.message import Request, Response, make_response
from sipgw.sip.parser import parse


def _invite(to="Bob <sip:bob@biloxi.example.com>", vias=None):
    """An INVITE with two Via headers, one of them comma-joined with a third."""
    vias = vias or [("Via", "SIP/2.0/UDP p1.example.com;branch=z9hG4bK1, "
                            "SIP/2.0/TCP p2.example.com;branch=z9hG4bK2"),
                    ("Via", "SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK3;received=192.0.2.1")]
    return Request("INVITE", URI.parse("sip:bob@biloxi.example.com"), vias + [
        ("Max-Forwards", "70"), ("To", to),
        ("From", '"Alice, A." <sip:alice@atlanta.example.com>;tag=1928301774'),
        ("Call-ID", "a84b4c76e66710@pc33.atlanta.example.com"), ("CSeq", "314159 INVITE"),
        ("Contact", "<sip:alice@pc33.atlanta.example.com>"), ("Content-Type", "application/sdp"),
    ], b"v=0\r\n")


# -- make_response ---------------------------------------------------------------------------

def test_make_response_copies_the_dialog_headers():
    """A response copies every Via in order, From, To, Call-ID and CSeq, and nothing else."""
    request = _invite()
    response = make_response(request, 180)
    assert (response.status, response.reason) == (180, "Ringing")
    assert response.get_all("Via") == request.get_all("Via") and len(response.vias) == 3
    for name in ("From", "To", "Call-ID", "CSeq"):
        assert response.get(name) == request.get(name)
    assert {k for k, _ in response.headers} == {"Via", "From", "To", "Call-ID", "CSeq"}
    assert response.body == b"" and response.get("Contact") is None


def test_make_response_adds_a_to_tag_once():
    """to_tag is added when To has none, and an existing To tag is never replaced or doubled."""
    request = _invite()
    tagged = make_response(request, 200, to_tag="a6c85cf")
    assert tagged.to.tag == "a6c85cf" and tagged.to.display == "Bob"
    again = Request("INVITE", request.uri, [(k, tagged.get("To") if k == "To" else v)
                                            for k, v in request.headers])
    assert make_response(again, 200, to_tag="other").get("To") == tagged.get("To")
    spaced = make_response(_invite(to="<sip:bob@biloxi.example.com> ; TAG = x9"), 486, to_tag="new")
    assert spaced.to.tag == "x9"
    assert make_response(request, 100).to.tag is None


def test_make_response_to_tag_ignores_a_uri_parameter_named_tag():
    """A 'tag' URI parameter inside <...> is not a To tag, so the to-tag is still added."""
    request = _invite(to="<sip:bob@biloxi.example.com;tag=uri-param>")
    response = make_response(request, 200, to_tag="real")
    assert response.to.tag == "real" and response.to.uri.params == {"tag": "uri-param"}


def test_make_response_reason_extra_and_body():
    """Custom reason, extra headers (after the copied ones) and a body are carried through."""
    response = make_response(_invite(), 488, "Codec Mismatch", body=b"x",
                             extra=[("Warning", '305 gw "no H.264"'), ("Allow", "INVITE, ACK")])
    assert response.first_line == "SIP/2.0 488 Codec Mismatch"
    assert [k for k, _ in response.headers][-2:] == ["Warning", "Allow"]
    reparsed = parse(bytes(response))
    assert reparsed.body == b"x" and reparsed.get("Content-Length") == "1"
    assert reparsed.get_all("Allow") == ["INVITE", "ACK"]


def test_make_response_default_reason_for_unknown_status():
    """A status without a known phrase gets 'Unknown'; known ones get their RFC 3261 phrase."""
    assert make_response(_invite(), 499).reason == "Unknown"
    assert make_response(_invite(), 481).reason == "Call/Transaction Does Not Exist"


# -- raw header access -----------------------------------------------------------------------

def test_get_returns_the_first_value_by_any_spelling():
    """get() finds a header by long name, compact form or any case, else the default."""
    message = _invite()
    assert message.get("Call-ID") == message.get("i") == message.get("cAlL-Id")
    assert message.get("v").startswith("SIP/2.0/UDP p1.example.com")
    assert message.get("Subject") is None and message.get("Subject", "none") == "none"


def test_get_all_splits_list_headers_only():
    """get_all() splits comma lists for list headers, respecting quotes and <...>, but not others."""
    message = Request("OPTIONS", URI.parse("sip:a@example.com"), [
        ("Contact", '"Doe, J." <sip:j@example.com;x=a,b>, <sip:k@example.com>'),
        ("Contact", "sip:l@example.com"), ("Subject", "one, two"), ("Allow", "INVITE,ACK , BYE"),
        ("Authorization", 'Digest username="a", realm="b", nonce="c"'),
    ])
    assert message.get_all("Contact") == ['"Doe, J." <sip:j@example.com;x=a,b>',
                                          "<sip:k@example.com>", "sip:l@example.com"]
    assert message.get_all("Subject") == ["one, two"]
    assert message.get_all("Allow") == ["INVITE", "ACK", "BYE"]
    assert len(message.get_all("Authorization")) == 1
    assert message.get_all("Route") == []


def test_set_replaces_every_value_with_one():
    """set() leaves exactly one value of the header and keeps the other headers in order."""
    message = _invite()
    message.set("via", "SIP/2.0/TCP only.example.com;branch=z9hG4bKonly")
    assert message.get_all("Via") == ["SIP/2.0/TCP only.example.com;branch=z9hG4bKonly"]
    others = [k for k, _ in message.headers if k != "Via"]
    assert others == ["Max-Forwards", "To", "From", "Call-ID", "CSeq", "Contact", "Content-Type"]
    message.set("Subject", "new")
    assert message.get("Subject") == "new"


def test_add_appends_or_prepends():
    """add() appends a value, or puts it first with first=True (a new top Via)."""
    message = _invite()
    message.add("Via", "SIP/2.0/UDP proxy.example.com;branch=z9hG4bKtop", first=True)
    message.add("Record-Route", "<sip:proxy.example.com;lr>")
    assert message.top_via.host == "proxy.example.com" and len(message.vias) == 4
    assert message.headers[-1] == ("Record-Route", "<sip:proxy.example.com;lr>")
    assert message.record_routes[0].uri.params == {"lr": None}


def test_remove_drops_every_value_and_ignores_absent_names():
    """remove() deletes all values of a header by any spelling; an absent header is a no-op."""
    message = _invite()
    message.remove("v")
    message.remove("Subject")
    assert message.get_all("Via") == [] and message.get("Call-ID") is not None
    assert len(message.headers) == 7


def test_headers_are_stored_under_canonical_names():
    """Constructor, add and set store canonical names, so bytes() writes them canonically."""
    message = Request("OPTIONS", URI.parse("sip:a@example.com"), [("call-id", "x"), ("cseq", "1 OPTIONS")])
    message.add("www-authenticate", 'Digest realm="r"')
    message.set("l", "99")
    assert [k for k, _ in message.headers] == ["Call-ID", "CSeq", "WWW-Authenticate", "Content-Length"]
    data = bytes(message)
    assert b"Call-ID: x\r\n" in data and data.count(b"Content-Length") == 1
    assert data.endswith(b"Content-Length: 0\r\n\r\n")


def test_canonical_names():
    """Compact forms expand, special spellings are kept, and non-token names are refused."""
    assert [canonical_name(n) for n in ("v", "I", "m", "l", "X-CUSTOM-header", "cseq", "rseq")] == [
        "Via", "Call-ID", "Contact", "Content-Length", "X-Custom-Header", "CSeq", "RSeq"]
    for bad in ("", "Bad Name", "Via:", "Na\u00efve"):
        with pytest.raises(HeaderError):
            canonical_name(bad)


def test_split_list_respects_quotes_escapes_and_angles():
    """split_list keeps commas inside quotes (with escaped quotes) and inside <...>."""
    assert split_list('"a \\" , b" <sip:x@y>, <sip:p@q;v=1,2>,,  c  ') == [
        '"a \\" , b" <sip:x@y>', "<sip:p@q;v=1,2>", "c"]
    with pytest.raises(HeaderError):
        split_list('"unbalanced, <sip:x@y>')


def test_quote_and_unquote_are_inverse():
    """quote() escapes '"' and '\\'; unquote() undoes it."""
    for text in ['plain', 'with "quotes"', "back\\slash", ""]:
        assert unquote(quote(text)) == text


def test_equal_messages_compare_by_bytes():
    """Two messages with the same bytes are equal; a different body makes them differ."""
    a, b = _invite(), _invite()
    assert a == b and a != Response(200)
    b.body = b"v=1\r\n"
    assert a != b


# -- typed header values ---------------------------------------------------------------------

@pytest.mark.parametrize("text", [
    "sip:alice@atlanta.example.com",
    "sips:alice:secret@atlanta.example.com:5061;transport=tcp;lr",
    "sip:+1-212-555-1212:1234@gateway.example.com;user=phone",
    "sip:[2001:db8::10]:5070;maddr=239.255.255.1;ttl=15",
    "sip:192.0.2.4",
    "sip:alice@example.com?subject=project%20x&priority=urgent",
    "sip:user;par=u%40example.net@example.com",
    "sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:&it+has=1,weird!*pas$wo~d_too.(doesn't-it)@example.com",
    "tel:+1-201-555-0123",
    "urn:service:sos",
])
def test_uri_str_round_trip(text):
    """URI.parse then str gives the same text for canonical URIs, user part oddities included."""
    assert str(URI.parse(text)) == text


def test_uri_fields_and_normalisation():
    """URI fields are split right; scheme and parameter names are lower-cased."""
    uri = URI.parse("SIP:Bob:pw@Biloxi.Example.com:5060;Transport=TCP;lr?Route=%3Csip:x%3E")
    assert (uri.scheme, uri.user, uri.password, uri.host, uri.port) == (
        "sip", "Bob", "pw", "Biloxi.Example.com", 5060)
    assert uri.params == {"transport": "TCP", "lr": None} and uri.transport == "tcp"
    assert uri.headers == "Route=%3Csip:x%3E"
    assert str(uri) == "sip:Bob:pw@Biloxi.Example.com:5060;transport=TCP;lr?Route=%3Csip:x%3E"
    assert URI.parse("sips:a@b").transport == "tls"
    assert uri.replace(port=None, params={}).port is None and uri.port == 5060


@pytest.mark.parametrize("text", [
    "sip:a@b:0", "sip:a@b:65536", "sip:@example.com", "sip:a@exa mple.com", "sip:a@", "nocolon",
    "sip:a@b<c", "sip:a@[zz::1]",
])
def test_bad_uris_are_refused(text):
    """Out-of-range ports, empty users, spaces, '<' and bad hosts raise HeaderError."""
    with pytest.raises(HeaderError):
        URI.parse(text)


@pytest.mark.parametrize("text", [
    '"Alice" <sip:alice@atlanta.example.com>;tag=1928301774',
    '"Doe, John \\"JD\\"" <sip:jd@example.com>',
    '"\\\\" <sip:b@example.com>;expires=60;q=0.5',
    "<sip:bob@biloxi.example.com>",
    "<sip:carol@chicago.example.com;lr>;+sip.instance=\"<urn:uuid:f81d4fae>\"",
    "*",
])
def test_address_str_round_trip(text):
    """Address.parse then str gives the same canonical name-addr text."""
    assert str(Address.parse(text)) == text


def test_address_normalises_token_display_and_addr_spec():
    """A token display name is quoted and an addr-spec gets <>; params stay header params."""
    address = Address.parse("Bob Smith <sip:bob@example.com>;tag=x")
    assert address.display == "Bob Smith" and str(address) == '"Bob Smith" <sip:bob@example.com>;tag=x'
    spec = Address.parse("sip:bob@example.com;tag=1 ; user = phone")
    assert spec.uri.params == {} and spec.params == {"tag": "1", "user": "phone"}
    assert str(spec) == "<sip:bob@example.com>;tag=1;user=phone"


@pytest.mark.parametrize("text", [
    '"unterminated <sip:a@b>', "Bell, Alexander <sip:a@b>", "<sip:a@b", '"x" sip:a@b',
    'Bob "the" <sip:a@b>',
    "< sip:a@b >", "sip:a@b?Route=x", "<sip:a@b> junk", "two words sip:a@b",
])
def test_bad_addresses_are_refused(text):
    """Broken or stray quotes, a comma in an unquoted display name (RFC 4475 baddn),
    missing '>', LWS inside <> and '?' outside <> fail."""
    with pytest.raises(HeaderError):
        Address.parse(text)


@pytest.mark.parametrize("text", [
    "SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds",
    "SIP/2.0/TCP client.example.com:5060;branch=z9hG4bK74bf9;received=192.0.2.101;rport=40000",
    "SIP/2.0/UDP 192.0.2.1:5070;rport;branch=z9hG4bKabc",
    "SIP/2.0/TLS [2001:db8::1]:5061;branch=z9hG4bKv6",
    "SIP/2.0/WSS df7jal23ls0d.invalid;branch=z9hG4bKws",
])
def test_via_str_round_trip(text):
    """Via.parse then str gives the same text for canonical Via values."""
    assert str(Via.parse(text)) == text


def test_via_fields_and_lenient_spacing():
    """LWS around '/', ':' and ';' is accepted (RFC 3261 §25.1) and the transport upper-cased."""
    via = Via.parse("SIP / 2.0 / udp  host.example.com : 5060 ; branch = z9hG4bKx ; rport")
    assert (via.transport, via.host, via.port, via.branch) == ("UDP", "host.example.com", 5060, "z9hG4bKx")
    assert via.params == {"branch": "z9hG4bKx", "rport": None}
    assert str(via) == "SIP/2.0/UDP host.example.com:5060;branch=z9hG4bKx;rport"


@pytest.mark.parametrize("text", ["SIP/2.0 host", "SIP/2.0/UDP", "SIP/2.0/UDP host:99999",
                                  "SIP/3.0/UDP host", "HTTP/1.1/TCP host"])
def test_bad_vias_are_refused(text):
    """A Via without transport or host, with a bad port or another protocol version fails."""
    with pytest.raises(HeaderError):
        Via.parse(text)


def test_cseq_parse_and_limits():
    """CSeq reads number and method; the number must be ASCII digits below 2**31."""
    assert CSeq.parse("  0009\t INVITE ") == CSeq(9, "INVITE")
    assert str(CSeq(2**31 - 1, "BYE")) == "2147483647 BYE"
    for bad in ("INVITE", "1 2 INVITE", "-1 INVITE", f"{2**31} INVITE", "\u00b2 INVITE", "1 IN VITE"):
        with pytest.raises(HeaderError):
            CSeq.parse(bad)


@pytest.mark.parametrize("text,display", [
    ("Reception (ext. 100) <sip:100@pbx>", "Reception (ext. 100)"),
    ("John@Home <sip:j@b>", "John@Home"),
    ("Müller <sip:m@b>", "Müller"),
])
def test_unquoted_display_names_with_non_token_characters_are_read(text, display):
    """Liberal (RFC 3261 §25 as peers write it): an unquoted display name with characters
    outside token (but no comma) is read as it is, and written back quoted."""
    address = Address.parse(text)
    assert address.display == display and str(address).startswith(quote(display))


def test_host_names_with_underscores_are_read():
    """Host names with '_' (not hostname syntax, §25.1, but common, and accepted by the REST
    layer) parse in URIs and Vias."""
    uri = URI.parse("sip:alice@sip_server.example.com:5080;transport=tcp")
    assert (uri.host, uri.port) == ("sip_server.example.com", 5080)
    assert Via.parse("SIP/2.0/UDP my_host.lan:5060;branch=z9hG4bKx").host == "my_host.lan"


_URI_PIECES = ["sip:", "sips:", "SIP:", "user", "@", ":", "5060", "0", "99999", "127.0.0.1",
               "[::1]", "pbx.example.org", ";transport=udp", ";lr", ";", "=", "?", "a=b",
               '"', "%40", " ", "\t", "\f", "<", ">", ",", "pass", "_", "-"]


_URI_SHAPED = st.tuples(
    st.sampled_from(["sip:", "sips:", "SIP:", "tel:", ""]),
    st.sampled_from(["", "user@", "@", "u:pw@", "a b@", "%40x@", "u;x@", "u?x@"]),
    st.sampled_from(["127.0.0.1", "pbx.example.org", "[::1]", "", "h_1", "h/x", "<h>"]),
    st.sampled_from(["", ":5060", ":0", ":65535", ":65536", ":99999", ":123456", ":", ":x"]),
    st.lists(st.sampled_from([";transport=udp", ";lr", ";", ";=x", ';a="b c"', ";a@b",
                              "?x=1", " ", "\t", ";ma ddr"]), max_size=3),
).map(lambda parts: "".join(parts[:4]) + "".join(parts[4]))


@settings(max_examples=400)
@given(st.one_of(st.lists(st.sampled_from(_URI_PIECES), min_size=1, max_size=8).map("".join),
                 _URI_SHAPED))
@example("sip:127.0.0.1:99999")
@example("sip:user@pbx.example.org:0;lr")
@example("sip:user@127.0.0.1:5060;transport=udp;lr")
@example("sip:u:pw@h")
@example('sip:h;a="b c"')
@example("sip:h;a@b")
def test_plain_uri_path_reads_what_the_general_path_reads(text):
    """URI.parse's one-match path for the usual sip: URI gives what the general path gives
    (the same URI, or the same HeaderError) for any text."""
    import re as re_module

    def outcome():
        try:
            return URI.parse(text)
        except HeaderError as exc:
            return str(exc)

    fast = outcome()
    plain, URI._PLAIN = URI._PLAIN, re_module.compile(r"(?!)")
    try:
        general = outcome()
    finally:
        URI._PLAIN = plain
    assert fast == general
