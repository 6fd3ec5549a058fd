"""Transaction state machines (RFC 3261 §17) on a task.Clock."""
from fakes import PEER, Source
from sipgw.sip.message import Request, make_response
from sipgw.sip.headers import URI
from sipgw.sip.transaction import T1, T2, T4, TransactionLayer, new_branch


def _request(method="INVITE", branch=None):
    return Request(method, URI.parse("sip:bob@127.0.0.1"), [
        ("Via", f"SIP/2.0/UDP 127.0.0.1:5070;branch={branch or new_branch()}"),
        ("From", "<sip:alice@127.0.0.1>;tag=a1"), ("To", "<sip:bob@127.0.0.1>"),
        ("Call-ID", "c1@test"), ("CSeq", f"1 {method}"), ("Max-Forwards", "70")])


class RecordingTU:
    """Transaction user that keeps what the layer hands up."""

    def __init__(self):
        self.requests, self.stray, self.acks = [], [], []

    def request(self, request, tx):
        self.requests.append((request, tx))

    def stray_response(self, response, source):
        self.stray.append(response)

    def ack(self, request, source):
        self.acks.append(request)


def _layer(clock, sender):
    return TransactionLayer(clock, RecordingTU(), sender)


def _send_times(clock, sender, until):
    """Run the clock from timer to timer, noting when each new message went out."""
    times = []
    while clock.getDelayedCalls() and clock.seconds() < until:
        clock.advance(min(c.getTime() for c in clock.getDelayedCalls()) - clock.seconds())
        while len(sender.sent) > len(times) + 1:
            times.append(round(clock.seconds(), 3))
    return times


def test_invite_retransmits_with_timer_a_doubling(clock, sender):
    """Over UDP an unanswered INVITE is resent at T1, 2T1, 4T1... (Timer A)."""
    layer = _layer(clock, sender)
    layer.send_request(_request(), "UDP", "127.0.0.1", 5060, lambda r: None)
    assert _send_times(clock, sender, 16)[:5] == [0.5, 1.5, 3.5, 7.5, 15.5]


def test_invite_timer_b_gives_local_408(clock, sender):
    """No response within 64*T1 ends the INVITE with a locally made 408 (Timer B)."""
    layer = _layer(clock, sender)
    got = []
    layer.send_request(_request(), "UDP", "127.0.0.1", 5060, got.append)
    clock.advance(64 * T1 - 0.01)
    assert got == []
    clock.advance(0.02)
    assert [r.status for r in got] == [408] and got[0].local
    assert layer.client == {}


def test_invite_over_tcp_is_not_retransmitted(clock, sender):
    """A reliable transport never retransmits the request (§17.1.1.2)."""
    layer = _layer(clock, sender)
    layer.send_request(_request(), "TCP", "127.0.0.1", 5060, lambda r: None)
    clock.advance(10)
    assert len(sender.sent) == 1


def test_provisional_stops_retransmission_and_timer_b(clock, sender):
    """After a 1xx the INVITE is neither resent nor timed out by the transaction."""
    layer = _layer(clock, sender)
    got = []
    req = _request()
    layer.send_request(req, "UDP", "127.0.0.1", 5060, got.append)
    layer.receive(make_response(req, 180, to_tag="b1"), PEER)
    clock.advance(100)
    assert len(sender.sent) == 1 and [r.status for r in got] == [180]


def test_a_cancelled_invite_with_no_final_response_is_destroyed_after_64_t1(clock, sender):
    """§9.1: after a CANCEL, an INVITE in Proceeding that never gets its 487 is destroyed
    at 64*T1 (found by bench/fuzz.py: one INVITE transaction stayed per such call)."""
    layer = _layer(clock, sender)
    invite = _request()
    layer.send_request(invite, "UDP", "127.0.0.1", 5060, lambda r: None)
    layer.receive(make_response(invite, 183, to_tag="b1"), PEER)
    cancel = Request("CANCEL", invite.uri, [(n, v) for n, v in invite.headers if n != "CSeq"]
                     + [("CSeq", "1 CANCEL")])
    layer.send_request(cancel, "UDP", "127.0.0.1", 5060, lambda r: None)
    clock.advance(64 * T1 - 0.1)
    assert (invite.top_via.branch, "INVITE") in layer.client
    clock.advance(0.2)
    assert layer.client == {}


def test_non_2xx_final_is_acked_on_same_branch_and_again_on_retransmission(clock, sender):
    """A 486 is ACKed by the transaction with the INVITE's branch, and re-ACKed if resent."""
    layer = _layer(clock, sender)
    got = []
    req = _request()
    layer.send_request(req, "UDP", "127.0.0.1", 5060, got.append)
    final = make_response(req, 486, to_tag="b1")
    layer.receive(final, PEER)
    layer.receive(final, PEER)
    acks = sender.requests("ACK")
    assert len(acks) == 2
    assert acks[0].top_via.branch == req.top_via.branch
    assert acks[0].to.tag == "b1" and acks[0].cseq.method == "ACK"
    assert [r.status for r in got] == [486]  # the retransmission is absorbed
    clock.advance(32.1)  # Timer D
    assert layer.client == {}


def test_2xx_ends_invite_transaction_and_later_copies_are_stray(clock, sender):
    """A 2xx goes to the TU; its retransmissions reach the TU as stray responses (§13.2.2.4)."""
    layer = _layer(clock, sender)
    got = []
    req = _request()
    layer.send_request(req, "UDP", "127.0.0.1", 5060, got.append)
    ok = make_response(req, 200, to_tag="b1")
    layer.receive(ok, PEER)
    layer.receive(ok, PEER)
    assert [r.status for r in got] == [200]
    assert [r.status for r in layer.tu.stray] == [200]
    assert sender.requests("ACK") == []  # ACK for 2xx is the TU's job


def test_non_invite_timer_e_caps_at_t2_and_timer_f_times_out(clock, sender):
    """BYE retransmissions back off to T2 and stop with a 408 at 64*T1 (Timers E, F)."""
    layer = _layer(clock, sender)
    got = []
    layer.send_request(_request("BYE"), "UDP", "127.0.0.1", 5060, got.append)
    stamps = _send_times(clock, sender, 64 * T1)
    gaps = [round(b - a, 1) for a, b in zip([0] + stamps, stamps)]
    assert gaps[:4] == [0.5, 1.0, 2.0, 4.0] and max(gaps) == T2
    assert [r.status for r in got] == [408]


def test_non_invite_completed_waits_timer_k(clock, sender):
    """A final response to BYE keeps the transaction T4 to absorb retransmissions (Timer K)."""
    layer = _layer(clock, sender)
    req = _request("BYE")
    got = []
    layer.send_request(req, "UDP", "127.0.0.1", 5060, got.append)
    layer.receive(make_response(req, 200), PEER)
    layer.receive(make_response(req, 200), PEER)
    assert len(got) == 1 and layer.client
    clock.advance(T4 + 0.01)
    assert layer.client == {}


def test_server_transaction_absorbs_retransmitted_request(clock, sender):
    """A retransmitted BYE gets the last response again and never reaches the TU twice."""
    layer = _layer(clock, sender)
    req = _request("BYE")
    layer.receive(req, PEER)
    (_, tx), = layer.tu.requests
    tx.respond(make_response(req, 200))
    layer.receive(_request_copy(req), PEER)
    assert len(layer.tu.requests) == 1
    assert [r.status for r in sender.responses()] == [200, 200]
    clock.advance(64 * T1 + 0.1)  # Timer J
    assert layer.server == {}


def _server_invite(clock, sender):
    """A layer holding the server transaction of one INVITE from PEER: (layer, INVITE, tx)."""
    layer = _layer(clock, sender)
    req = _request("INVITE")
    layer.receive(req, PEER)
    (_, tx), = layer.tu.requests
    return layer, req, tx


def _request_copy(req):
    from sipgw.sip.parser import parse
    return parse(bytes(req))


def test_server_invite_non_2xx_is_retransmitted_until_ack(clock, sender):
    """A 488 to a re-INVITE is resent (Timer G) until the ACK, then Timer I ends it."""
    layer, req, tx = _server_invite(clock, sender)
    tx.respond(make_response(req, 488, to_tag="x"))
    clock.advance(T1 + 0.01)
    assert len(sender.responses(488)) == 2
    ack = _request("ACK", branch=req.top_via.branch)
    layer.receive(ack, PEER)
    clock.advance(10)
    assert len(sender.responses(488)) == 2 and layer.tu.acks == []
    assert layer.server == {}


def test_server_invite_timer_h_gives_up_without_ack(clock, sender):
    """Without an ACK the non-2xx retransmissions stop at 64*T1 (Timer H)."""
    layer, req, tx = _server_invite(clock, sender)
    tx.respond(make_response(req, 486, to_tag="x"))
    clock.advance(64 * T1 + 1)
    count = len(sender.responses(486))
    clock.advance(60)
    assert len(sender.responses(486)) == count and layer.server == {}


def test_server_invite_stays_accepted_after_a_2xx_for_timer_l(clock, sender):
    """RFC 6026 §7.1: after a 2xx the INVITE server transaction is Accepted: a retransmitted
    INVITE is absorbed (not a new request for the TU, no response from the transaction),
    and the transaction ends at Timer L (64*T1)."""
    layer, req, tx = _server_invite(clock, sender)
    tx.respond(make_response(req, 200, to_tag="x"))
    layer.receive(_request_copy(req), PEER)
    assert len(layer.tu.requests) == 1 and len(sender.responses()) == 1
    assert tx.state == "accepted"
    clock.advance(64 * T1 + 0.01)
    assert layer.server == {}


def test_ack_for_2xx_goes_to_tu(clock, sender):
    """An ACK matching no transaction is end-to-end and handed to the TU (§17.2.3)."""
    layer = _layer(clock, sender)
    layer.receive(_request("ACK"), PEER)
    assert len(layer.tu.acks) == 1


def test_request_without_magic_cookie_gets_400(clock, sender):
    """RFC 2543 branches are answered statelessly with 400, not guessed at."""
    layer = _layer(clock, sender)
    layer.receive(_request("OPTIONS", branch="old1"), PEER)
    assert [r.status for r in sender.responses()] == [400]


def test_transport_error_fails_pending_transactions_with_503(clock, sender):
    """A TCP connect failure ends the transactions to that peer with a local 503."""
    layer = _layer(clock, sender)
    got = []
    layer.send_request(_request("OPTIONS"), "TCP", "127.0.0.1", 5999, got.append)
    layer.transport_error(("127.0.0.1", 5999), "Connection refused")
    assert [r.status for r in got] == [503] and got[0].local


def test_server_transactions_are_capped(clock, sender):
    """Beyond max_server open server transactions a new request gets a stateless 503 and
    creates no state; retransmissions of the open ones are still absorbed."""
    layer = TransactionLayer(clock, RecordingTU(), sender, max_server=2)
    first = _request("INFO")
    for request in (first, _request("INFO"), _request("INFO")):
        layer.receive(request, PEER)
    assert len(layer.tu.requests) == 2 and len(layer.server) == 2
    (refusal,) = sender.responses()
    assert (refusal.status, refusal.get("Retry-After")) == (503, "5")
    layer.receive(first, PEER)
    assert len(layer.tu.requests) == 2 and len(sender.responses()) == 1


def test_at_the_cap_a_transaction_waiting_out_timer_j_makes_room(clock, sender):
    """At max_server, the oldest answered non-INVITE transaction (only absorbing
    retransmissions till Timer J) is dropped for a new request instead of a 503: one peer's
    BYEs at a high call rate fill the table with those."""
    layer = TransactionLayer(clock, RecordingTU(), sender, max_server=2)
    first, second, third = _request("BYE"), _request("BYE"), _request("BYE")
    layer.receive(first, PEER)
    layer.receive(second, PEER)
    layer.tu.requests[0][1].respond(make_response(first, 200))
    layer.receive(third, PEER)
    assert len(layer.tu.requests) == 3 and len(layer.server) == 2
    assert [r.status for r in sender.responses()] == [200]  # no 503
    assert layer.find_server(first) is None and layer.find_server(third) is not None
    layer.receive(_request("BYE"), PEER)  # the two left are unanswered: 503, as before
    assert [r.status for r in sender.responses()] == [200, 503]


def test_requests_from_one_source_are_rate_limited(clock, sender):
    """Beyond requests_per_source new requests a second from one host are dropped unanswered
    and make no state; retransmissions of known ones still get their answer; the next second
    takes new ones again, and another host is not affected."""
    layer = TransactionLayer(clock, RecordingTU(), sender, requests_per_source=3)
    first = _request("INFO")
    for request in (first, _request("INFO"), _request("INFO"), _request("INFO"), _request("BYE")):
        layer.receive(request, PEER)
    assert len(layer.tu.requests) == 3 and len(layer.server) == 3 and sender.responses() == []
    layer.tu.requests[0][1].respond(make_response(first, 200))
    layer.receive(first, PEER)  # a retransmission: answered again, not counted
    assert [r.status for r in sender.responses()] == [200, 200]
    other = Source("UDP", "192.0.2.9", 5060)
    layer.receive(_request("INFO"), other)
    assert len(layer.tu.requests) == 4
    clock.advance(1)
    layer.receive(_request("INFO"), PEER)
    assert len(layer.tu.requests) == 5


def test_respond_once_keeps_no_state_and_never_retransmits(clock, sender):
    """A stateless final answer to an INVITE is sent once: no Timer G, transaction gone."""
    layer, request, tx = _server_invite(clock, sender)
    tx.respond_once(make_response(request, 603, to_tag="x"))
    clock.advance(64 * T1)
    clock.advance(64 * T1)
    assert [r.status for r in sender.responses()] == [603]
    assert layer.server == {} and clock.getDelayedCalls() == []


def _large_request():
    request = _request()
    request.body = b"v=0\r\n" + b"a=x-filler:" + b"x" * 1400 + b"\r\n"
    return request


def test_a_request_larger_than_1300_bytes_goes_over_tcp(clock, sender):
    """RFC 3261 §18.1.1: a request over 1300 bytes meant for UDP is sent over TCP, its top
    Via saying TCP, and is not retransmitted (TCP is reliable); the log says why."""
    from twisted.logger import globalLogPublisher
    logged = []
    globalLogPublisher.addObserver(logged.append)
    try:
        layer = _layer(clock, sender)
        layer.send_request(_large_request(), "UDP", "127.0.0.1", 5060, lambda r: None)
    finally:
        globalLogPublisher.removeObserver(logged.append)
    clock.advance(5)
    (message, transport, host, port), = sender.sent
    assert (transport, message.top_via.transport) == ("TCP", "TCP")
    assert any("sent over TCP" in e.get("log_format", "") for e in logged)


def test_a_large_request_falls_back_to_udp_when_tcp_fails(clock, sender):
    """§18.1.1: when the TCP connection for a request sent over TCP only for its size
    fails, the request is retried over UDP."""
    layer = _layer(clock, sender)
    got = []
    layer.send_request(_large_request(), "UDP", "127.0.0.1", 5060, got.append)
    layer.transport_error(("127.0.0.1", 5060), "Connection refused")
    assert got == []
    (_, first, *_), (retry, second, *_) = sender.sent
    assert (first, second, retry.top_via.transport) == ("TCP", "UDP", "UDP")


def test_exception_in_the_tu_handler_becomes_a_local_500(clock, sender):
    """A response handler that raises gets a local 500 naming the error, once, so its
    user can end instead of waiting for ever; the exception goes no further."""
    layer = _layer(clock, sender)
    got = []

    def handler(response):
        got.append(response)
        raise ValueError("no supported qop in auth-conf")
    request = _request("REGISTER")
    layer.send_request(request, "UDP", "127.0.0.1", 5060, handler)
    layer.receive(make_response(request, 401, to_tag="r"), PEER)
    assert [(r.status, getattr(r, "local", False)) for r in got] == [(401, False), (500, True)]
    assert got[1].reason == "Internal error: no supported qop in auth-conf"
