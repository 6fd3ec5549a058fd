"""Whole call flows of the gateway's calls through the SIP layer (RFC 3261 §13-15, §22)
under one task.Clock."""
import pytest
from twisted.logger import globalLogPublisher

from fakes import PEER, call_request as _call, reply as _reply
from sipgw.calls import CallRequest, Conflict, NotFound, Unavailable
from sipgw.config import Config
from sipgw.sip.parser import parse
from sipgw.sip.message import Request, make_response
from sipgw.sip.headers import URI
from sipgw.sip.sdp import SessionDescription, make_offer
from sipgw.sip.transaction import T1, new_branch

ANSWER = bytes(make_offer("127.0.0.1", audio_port=6000, video_port=6002, session_id=9))


def _ringing(gw, sender):
    """Start call1 and let the callee ring (180): its INVITE."""
    gw.startup(_call())
    invite = sender.requests("INVITE")[0]
    gw.sip.transactions.receive(_reply(invite, 180), PEER)
    return invite


def _status(gw, call_id="call1"):
    return gw.find(call_id)[0]["status"]


def _established(gw, sender, **fields):
    gw.startup(_call(**fields))
    invite = sender.requests("INVITE")[-1]
    gw.sip.transactions.receive(_reply(invite, 200, body=ANSWER, extra=[
        ("Record-Route", "<sip:127.0.0.1:5060;lr>")]), PEER)
    return invite


def test_invite_goes_to_domain_and_port_with_an_sdp_offer(make_gateway, sender):
    """/call/startup sends INVITE sip:callee@domain:port carrying our SDP offer."""
    gw = make_gateway()
    gw.startup(_call(sip_port=5099))
    (msg, transport, host, port), = sender.sent
    assert (msg.method, str(msg.uri), transport, host, port) == (
        "INVITE", "sip:bob@127.0.0.1:5099", "UDP", "127.0.0.1", 5099)
    offer = SessionDescription.parse(msg.body)
    assert [m.kind for m in offer.media] == ["audio", "video"]
    assert msg.from_.tag and msg.to.tag is None and msg.contacts
    assert _status(gw) == "PENDING"


def test_outbound_proxy_gets_the_invite_and_tcp_param_is_honoured(make_gateway, sender):
    """sipOutboundProxy with ;transport=tcp sends the INVITE there over TCP."""
    gw = make_gateway()
    gw.startup(_call(sip_outbound_proxy="127.0.0.2:5080;transport=tcp", sip_domain="example.org"))
    (msg, transport, host, port), = sender.sent
    assert (str(msg.uri), transport, host, port) == ("sip:bob@example.org", "TCP", "127.0.0.2", 5080)
    assert msg.top_via.transport == "TCP"


def test_sip_port_stays_in_the_request_uri_through_an_outbound_proxy(make_gateway, sender):
    """With sipOutboundProxy and sipPort 5080 the INVITE goes to the proxy for
    sip:bob@domain:5080, so a server on 5080 recognises itself."""
    gw = make_gateway()
    gw.startup(_call(sip_outbound_proxy="127.0.0.2", sip_port=5080))
    (msg, transport, host, port), = sender.sent
    assert (str(msg.uri), host, port) == ("sip:bob@127.0.0.1:5080", "127.0.0.2", 5080)


def test_statuses_follow_100_180_200_and_2xx_is_acked(make_gateway, sender):
    """100, 180, 200 move the call TRYING, RING, ESTABLISHED; the ACK follows the route set."""
    gw = make_gateway()
    gw.startup(_call())
    invite = sender.requests("INVITE")[0]
    gw.sip.transactions.receive(_reply(invite, 100), PEER)
    assert _status(gw) == "TRYING"
    gw.sip.transactions.receive(_reply(invite, 180), PEER)
    assert _status(gw) == "RING"
    ok = _reply(invite, 200, body=ANSWER, extra=[("Record-Route", "<sip:127.0.0.9:5060;lr>")])
    gw.sip.transactions.receive(ok, PEER)
    call = gw.find("call1")[0]
    assert call["status"] == "ESTABLISHED" and call["sipStatus"] == 200
    assert call["history"] == ["NEW", "PENDING", "TRYING", "RING", "ESTABLISHED"]
    (ack, transport, host, port), = [s for s in sender.sent if getattr(s[0], "method", "") == "ACK"]
    assert (host, port) == ("127.0.0.9", 5060)
    assert ack.to.tag == "b1" and ack.cseq.seq == invite.cseq.seq and ack.routes
    gw.sip.transactions.receive(ok, PEER)  # a retransmitted 2xx is ACKed again
    assert len(sender.requests("ACK")) == 2 and _status(gw) == "ESTABLISHED"


def test_183_with_sdp_is_ring_media_and_without_is_session_progress(make_gateway, sender):
    """Early media (183 + SDP) is RING_MEDIA; a bare 183 is SESSION_PROGRESS."""
    gw = make_gateway()
    gw.startup(_call())
    invite = sender.requests("INVITE")[0]
    gw.sip.transactions.receive(_reply(invite, 183), PEER)
    assert _status(gw) == "SESSION_PROGRESS"
    gw.sip.transactions.receive(_reply(invite, 183, body=ANSWER), PEER)
    assert _status(gw) == "RING_MEDIA"


@pytest.mark.parametrize("status,expected", [(486, "BUSY"), (600, "BUSY"), (404, "FAILED"),
                                             (503, "FAILED")])
def test_final_failures_map_to_wcs_statuses(make_gateway, sender, status, expected):
    """486/600 end the call BUSY, other failures FAILED with the SIP reason."""
    gw = make_gateway()
    gw.startup(_call())
    invite = sender.requests("INVITE")[0]
    gw.sip.transactions.receive(_reply(invite, status), PEER)
    call = gw.find("call1")[0]
    assert call["status"] == expected and call["info"].startswith(str(status))


def test_proxy_challenge_is_answered_once(make_gateway, sender):
    """A 407 gets one new INVITE with Proxy-Authorization, a higher CSeq and a new branch."""
    gw = make_gateway()
    gw.startup(_call(sip_auth_name="alice-auth"))
    first = sender.requests("INVITE")[0]
    challenge = 'Digest realm="test", nonce="abc123", qop="auth", algorithm=MD5'
    gw.sip.transactions.receive(_reply(first, 407, extra=[("Proxy-Authenticate", challenge)]), PEER)
    second = sender.requests("INVITE")[1]
    assert second.cseq.seq == first.cseq.seq + 1 and second.call_id == first.call_id
    assert second.top_via.branch != first.top_via.branch
    assert second.from_.tag == first.from_.tag
    auth = second.get("Proxy-Authorization")
    assert 'username="alice-auth"' in auth and 'realm="test"' in auth and "nc=00000001" in auth
    assert sender.requests("ACK")[0].cseq.method == "ACK"  # the 407 was ACKed
    # the same challenge again means the password is wrong: no loop
    gw.sip.transactions.receive(_reply(second, 407, extra=[("Proxy-Authenticate", challenge)]), PEER)
    assert len(sender.requests("INVITE")) == 2
    assert gw.find("call1")[0]["status"] == "FAILED"


def test_a_challenge_with_only_an_unknown_qop_fails_the_call(make_gateway, sender):
    """A 407 whose qop we do not support fails the call with the 407 (found by
    bench/fuzz.py: AuthError escaped from the response handler and the call hung)."""
    gw = make_gateway()
    gw.startup(_call())
    first = sender.requests("INVITE")[0]
    challenge = 'Digest realm="test", nonce="abc123", qop="auth-conf"'
    gw.sip.transactions.receive(_reply(first, 407, extra=[("Proxy-Authenticate", challenge)]), PEER)
    assert len(sender.requests("INVITE")) == 1
    call = gw.find("call1")[0]
    assert call["status"] == "FAILED" and call["info"].startswith("407")


def test_stale_nonce_is_retried(make_gateway, sender):
    """stale=true on a new challenge is answered again with the new nonce (RFC 7616 §3.3)."""
    gw = make_gateway()
    gw.startup(_call())
    first = sender.requests("INVITE")[0]
    gw.sip.transactions.receive(_reply(first, 401, extra=[
        ("WWW-Authenticate", 'Digest realm="r", nonce="n1"')]), PEER)
    second = sender.requests("INVITE")[1]
    gw.sip.transactions.receive(_reply(second, 401, extra=[
        ("WWW-Authenticate", 'Digest realm="r", nonce="n2", stale=true')]), PEER)
    third = sender.requests("INVITE")[2]
    assert 'nonce="n2"' in third.get("Authorization")


def test_no_answer_fails_by_request_timeout(make_gateway, sender, clock):
    """A peer that never answers ends the call FAILED 'Failed by request timeout' (Timer B)."""
    gw = make_gateway()
    gw.startup(_call())
    clock.advance(64 * T1 + 0.1)
    call = gw.find("call1")[0]
    assert (call["status"], call["info"]) == ("FAILED", "Failed by request timeout")


def test_terminate_while_ringing_sends_cancel_then_finish_on_487(make_gateway, sender):
    """/call/terminate before the answer CANCELs the INVITE; its 487 gives FINISH."""
    gw = make_gateway()
    invite = _ringing(gw, sender)
    gw.terminate("call1")
    cancel, = sender.requests("CANCEL")
    assert cancel.top_via.branch == invite.top_via.branch and cancel.cseq.seq == invite.cseq.seq
    assert str(cancel.uri) == str(invite.uri) and cancel.to.tag is None
    gw.sip.transactions.receive(make_response(cancel, 200), PEER)
    gw.sip.transactions.receive(_reply(invite, 487), PEER)
    call = gw.find("call1")[0]
    assert (call["status"], call["info"]) == ("FINISH", "Stopped by rest /terminate")


def test_terminate_before_any_provisional_waits_for_one(make_gateway, sender):
    """§9.1: CANCEL is held until a provisional response arrives."""
    gw = make_gateway()
    gw.startup(_call())
    gw.terminate("call1")
    assert sender.requests("CANCEL") == []
    invite = sender.requests("INVITE")[0]
    gw.sip.transactions.receive(_reply(invite, 100), PEER)
    assert len(sender.requests("CANCEL")) == 1


def test_answer_racing_a_cancel_is_acked_and_hung_up(make_gateway, sender):
    """A 200 that crosses our CANCEL is ACKed and then ended with BYE."""
    gw = make_gateway()
    invite = _ringing(gw, sender)
    gw.terminate("call1")
    gw.sip.transactions.receive(_reply(invite, 200, body=ANSWER), PEER)
    assert len(sender.requests("ACK")) == 1
    bye, = sender.requests("BYE")
    gw.sip.transactions.receive(make_response(bye, 200), PEER)
    assert _status(gw) == "FINISH"


def test_terminate_established_sends_bye(make_gateway, sender):
    """/call/terminate after the answer sends BYE in the dialog; its 200 gives FINISH."""
    gw = make_gateway()
    invite = _established(gw, sender)
    gw.terminate("call1")
    bye, = sender.requests("BYE")
    assert bye.call_id == invite.call_id and bye.to.tag == "b1"
    assert bye.cseq.seq == invite.cseq.seq + 1 and bye.routes
    assert _status(gw) == "ESTABLISHED"
    gw.sip.transactions.receive(make_response(bye, 200), PEER)
    assert _status(gw) == "FINISH"


def _in_dialog(invite, method, cseq, body=b"", extra=()):
    return Request(method, URI.parse("sip:alice@127.0.0.1:5070"), [
        ("Via", f"SIP/2.0/UDP 127.0.0.1:5060;branch={new_branch()}"),
        ("From", "<sip:bob@127.0.0.1>;tag=b1"), ("To", f"{invite.get('From')}"),
        ("Call-ID", invite.call_id), ("CSeq", f"{cseq} {method}"), ("Max-Forwards", "70"),
        ("Contact", "<sip:bob@127.0.0.1:5060>")] + list(extra), body)


def test_bye_from_callee_finishes_with_normal_clearing(make_gateway, sender):
    """A BYE from the peer gets 200 and the call is FINISH 'Normal call clearing'."""
    gw = make_gateway()
    invite = _established(gw, sender)
    gw.sip.transactions.receive(_in_dialog(invite, "BYE", 1), PEER)
    assert [r.status for r in sender.responses()] == [200]
    call = gw.find("call1")[0]
    assert (call["status"], call["info"]) == ("FINISH", "Normal call clearing")


def test_bye_for_unknown_dialog_gets_481(make_gateway, sender):
    """A BYE matching no dialog is answered 481 (§12.2.2)."""
    gw = make_gateway()
    invite = _established(gw, sender)
    bye = _in_dialog(invite, "BYE", 1)
    bye.set("Call-ID", "other@x")
    gw.sip.transactions.receive(bye, PEER)
    assert [r.status for r in sender.responses()] == [481]


def test_reinvite_hold_and_unhold_are_answered_and_reflected(make_gateway, sender, clock):
    """A sendonly re-INVITE is answered recvonly and shows HOLD; sendrecv brings ESTABLISHED."""
    gw = make_gateway()
    invite = _established(gw, sender)
    hold = make_offer("127.0.0.5", audio_port=7000, video_port=None, session_id=9, version=2)
    hold.media[0].attributes = [a for a in hold.media[0].attributes if a[0] != "sendrecv"] + [
        ("sendonly", None)]
    gw.sip.transactions.receive(_in_dialog(invite, "INVITE", 2, bytes(hold), [
        ("Content-Type", "application/sdp")]), PEER)
    ok = sender.responses(200)[-1]
    answer = SessionDescription.parse(ok.body)
    assert answer.media[0].direction() == "recvonly"
    assert _status(gw) == "HOLD"
    call = gw.calls["call1"]
    assert call.remote_media["audio"].address == "127.0.0.5"
    clock.advance(T1 + 0.01)
    assert len(sender.responses(200)) == 2  # 2xx retransmitted until the ACK
    ack = _in_dialog(invite, "ACK", 2)
    gw.sip.transactions.receive(ack, PEER)
    clock.advance(10)
    assert len(sender.responses(200)) == 2
    unhold = make_offer("127.0.0.5", audio_port=7000, video_port=None, session_id=9, version=3)
    gw.sip.transactions.receive(_in_dialog(invite, "INVITE", 3, bytes(unhold), [
        ("Content-Type", "application/sdp")]), PEER)
    assert _status(gw) == "ESTABLISHED"


def test_2xx_retransmissions_to_a_reinvite_are_counted(make_gateway, sender, clock):
    """The TU's own 2xx retransmissions (§13.3.1.4, no ACK yet) count as INVITE
    retransmissions, as the transaction layer's do (sipgw_sip_retransmissions_total)."""
    gw = make_gateway()
    invite = _established(gw, sender)
    offer = make_offer("127.0.0.5", audio_port=7000, video_port=None, session_id=9, version=2)
    gw.sip.transactions.receive(_in_dialog(invite, "INVITE", 2, bytes(offer), [
        ("Content-Type", "application/sdp")]), PEER)
    clock.pump([T1 + 0.01, 2 * T1, 4 * T1])  # resent at 0.5, 1.5 and 3.5 s
    assert len(sender.responses(200)) == 4
    assert gw.sip.transactions.retransmissions == {"INVITE": 3}


def test_options_and_info_are_answered(make_gateway, sender):
    """OPTIONS gets 200 with Allow; an in-dialog INFO gets 200."""
    gw = make_gateway()
    invite = _established(gw, sender)
    options = _in_dialog(invite, "OPTIONS", 5)
    options.set("Call-ID", "probe@x")
    gw.sip.transactions.receive(options, PEER)
    gw.sip.transactions.receive(_in_dialog(invite, "INFO", 6), PEER)
    assert [r.status for r in sender.responses()] == [200, 200]
    assert "INVITE" in sender.responses()[0].get("Allow")


def test_send_dtmf_info_uses_dtmf_relay(make_gateway, sender):
    """/call/send_dtmf type INFO sends one application/dtmf-relay INFO per digit, each once
    the one before is answered (concurrent INFOs may arrive reordered)."""
    gw = make_gateway()
    _established(gw, sender)
    gw.send_dtmf("call1", "12", "INFO")
    gw.send_dtmf("call1", "#", "INFO")
    for n in (1, 2, 3):
        infos = sender.requests("INFO")
        assert len(infos) == n
        gw.sip.transactions.receive(make_response(infos[-1], 200), PEER)
    assert [i.body.split(b"\r\n")[0] for i in infos] == [b"Signal=1", b"Signal=2", b"Signal=#"]
    assert infos[0].get("Content-Type") == "application/dtmf-relay"
    assert len(sender.requests("INFO")) == 3


def test_unknown_call_ids_raise_not_found(make_gateway):
    """terminate and send_dtmf of an unknown callId raise NotFound (REST 404)."""
    gw = make_gateway()
    with pytest.raises(NotFound):
        gw.terminate("nope")
    with pytest.raises(NotFound):
        gw.send_dtmf("nope", "1", "INFO")
    assert gw.find("nope") == []


def test_duplicate_call_id_and_stream_name_conflict(make_gateway, sender):
    """A live callId or stream name cannot be used twice (REST 409)."""
    gw = make_gateway()
    gw.startup(_call(to_stream="s1"))
    with pytest.raises(Conflict):
        gw.startup(_call(to_stream="s2"))
    with pytest.raises(Conflict, match="Stream name"):
        gw.startup(_call(call_id="call2", to_stream="s1"))


def test_ended_call_stays_findable_for_the_retention_time(make_gateway, sender, clock):
    """A finished call is listed until call_retention seconds have passed."""
    gw = make_gateway(call_retention=30)
    gw.startup(_call())
    gw.sip.transactions.receive(_reply(sender.requests("INVITE")[0], 486), PEER)
    clock.advance(29)
    assert _status(gw) == "BUSY"
    clock.advance(2)
    assert gw.find("call1") == []


def test_found_call_names_the_caller_by_login_as_wcs(make_gateway, sender):
    """/call/find's caller is the sipLogin, as WCS gives it, not login@domain."""
    gw = make_gateway()
    gw.startup(_call())
    assert gw.find("call1")[0]["caller"] == "alice"


def test_register_first_then_invite_then_unregister(make_gateway, sender):
    """sipRegisterRequired registers (answering 401), calls, and unregisters after the call."""
    gw = make_gateway()
    gw.startup(_call(sip_register_required=True))
    reg = sender.requests("REGISTER")[0]
    assert sender.requests("INVITE") == []
    gw.sip.transactions.receive(make_response(reg, 401, to_tag="r", extra=[
        ("WWW-Authenticate", 'Digest realm="r", nonce="n1", qop="auth"')]), PEER)
    reg2 = sender.requests("REGISTER")[1]
    assert "Authorization" in dict(reg2.headers)
    gw.sip.transactions.receive(make_response(reg2, 200, to_tag="r", extra=[("Expires", "600")]), PEER)
    invite = sender.requests("INVITE")[0]
    gw.sip.transactions.receive(_reply(invite, 486), PEER)
    unreg = sender.requests("REGISTER")[2]
    assert unreg.get("Expires") == "0"


def test_a_call_with_another_password_does_not_share_the_registration(make_gateway, sender):
    """Registrations are keyed by the full credentials: a second call for the same login
    with a wrong password registers on its own (and fails), it does not ride on the first
    call's binding; a call with the same credentials shares it."""
    gw = make_gateway()
    gw.startup(_call(sip_register_required=True))
    gw.startup(_call(call_id="call2", sip_register_required=True, sip_password="wrong"))
    gw.startup(_call(call_id="call3", sip_register_required=True))
    assert len(gw.sip.registrations) == 2
    assert len(sender.requests("REGISTER")) == 2
    assert all(b"s3cret" not in repr(key).encode() and b"wrong" not in repr(key).encode()
               for key in gw.sip.registrations)


def test_call_ended_while_registering_unregisters_at_once(make_gateway, sender, clock):
    """A call terminated before its REGISTER succeeds leaves no binding refreshed forever."""
    gw = make_gateway()
    gw.startup(_call(sip_register_required=True))
    reg = sender.requests("REGISTER")[0]
    gw.terminate("call1")
    assert _status(gw) == "FINISH"
    gw.sip.transactions.receive(make_response(reg, 200, to_tag="r", extra=[("Expires", "600")]), PEER)
    unreg = sender.requests("REGISTER")[1]
    assert unreg.get("Expires") == "0" and sender.requests("INVITE") == []
    gw.sip.transactions.receive(make_response(unreg, 200, to_tag="r"), PEER)
    clock.advance(1000)
    assert len(sender.requests("REGISTER")) == 2  # no refresh of a binding nobody uses


def test_register_refused_fails_the_call(make_gateway, sender):
    """A 403 to REGISTER ends the call FAILED naming the registration failure."""
    gw = make_gateway()
    gw.startup(_call(sip_register_required=True))
    reg = sender.requests("REGISTER")[0]
    gw.sip.transactions.receive(make_response(reg, 403, to_tag="r"), PEER)
    call = gw.find("call1")[0]
    assert call["status"] == "FAILED" and "403" in call["info"]
    assert sender.requests("INVITE") == []


def test_register_is_refreshed_before_expiry(make_gateway, sender, clock):
    """A registration granted for 600 s is refreshed before it lapses."""
    gw = make_gateway()
    gw.startup(_call(sip_register_required=True))
    reg = sender.requests("REGISTER")[0]
    gw.sip.transactions.receive(make_response(reg, 200, to_tag="r", extra=[("Expires", "600")]), PEER)
    clock.advance(590)
    assert len(sender.requests("REGISTER")) == 2


def test_password_and_digest_response_never_logged(make_gateway, sender):
    """No log event of an authenticated call contains the password or digest response."""
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        gw = make_gateway()
        gw.startup(_call())
        first = sender.requests("INVITE")[0]
        gw.sip.transactions.receive(_reply(first, 401, extra=[
            ("WWW-Authenticate", 'Digest realm="r", nonce="n1", qop="auth"')]), PEER)
        gw.sip.transactions.receive(_reply(sender.requests("INVITE")[1], 403), PEER)
    finally:
        globalLogPublisher.removeObserver(events.append)
    from twisted.logger import formatEvent
    text = "\n".join(formatEvent(e) + repr(e) for e in events)
    response = sender.requests("INVITE")[1].get("Authorization").split('response="')[1][:32]
    assert events and "s3cret-pw" not in text and response not in text
    assert "s3cret-pw" not in repr(gw.find("call1"))


def test_unsolicited_requests_leave_no_state(make_gateway, sender):
    """OPTIONS, CANCEL and a BYE for no dialog are answered once each and keep no transaction."""
    gw = make_gateway()
    for method in ("OPTIONS", "CANCEL", "BYE"):
        gw.sip.transactions.receive(parse((
            f"{method} sip:gw@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK{method}\r\n"
            f"From: <sip:x@127.0.0.1>;tag=f\r\nTo: <sip:gw@127.0.0.1>\r\nCall-ID: none@x\r\n"
            f"CSeq: 1 {method}\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()), PEER)
    assert [r.status for r in sender.responses()] == [200, 481, 481]
    assert gw.sip.transactions.server == {}


def test_a_thousand_answers_with_a_host_name_in_c_leak_nothing(make_gateway, sender, clock):
    """1,000 calls answered with c=IN IP4 bogus.invalid each fail with the reason and a BYE;
    afterwards 0 RTP ports, 0 sockets, 0 streams and (after call_retention) 0 calls remain."""
    gw = make_gateway(media_port_from=46000, media_port_to=46999, call_retention=5)
    bogus = ANSWER.replace(b"127.0.0.1", b"bogus.invalid")
    reason = "c= address 'bogus.invalid' of the audio stream is not an IP address"
    for i in range(1000):
        gw.startup(_call(call_id=f"bogus{i}", to_stream=f"bogus{i}"))
        invite = sender.requests("INVITE")[-1]
        gw.sip.transactions.receive(_reply(invite, 200, body=bogus, tag=f"b{i}"), PEER)
        bye = sender.requests("BYE")[-1]
        assert bye.call_id == invite.call_id
        gw.sip.transactions.receive(make_response(bye, 200), PEER)
        call = gw.find(f"bogus{i}")[0]
        assert (call["status"], call["info"]) == ("FAILED", reason)
        clock.advance(1)
    clock.advance(40)
    assert gw.ports.in_use == set() and clock.udp_ports == {} and gw.streams.all() == []
    clock.advance(10)
    assert gw.calls == {} and gw.sip.sessions == {}


def test_teardown_runs_to_the_end_when_a_step_raises(make_gateway, sender, clock):
    """A media close that raises still lets the call free its stream name and be forgotten."""
    gw = make_gateway(call_retention=5)
    _established(gw, sender)
    call = gw.calls["call1"]

    def broken_close():
        raise RuntimeError("media teardown bug")
    call.media_session.close = broken_close
    gw.terminate("call1")
    gw.sip.transactions.receive(make_response(sender.requests("BYE")[-1], 200), PEER)
    assert _status(gw) == "FINISH" and gw.streams.all() == []
    clock.advance(6)
    assert gw.calls == {}


def test_endless_stale_challenges_draw_a_bounded_number_of_invites(make_gateway, sender):
    """A server answering every INVITE with a new stale nonce gets at most 1 + MAX_ANSWERS
    INVITEs (RFC 3261 sets no bound; Timer A retransmissions are not counted here), then the
    call fails."""
    from sipgw.sip.auth import MAX_ANSWERS
    gw = make_gateway()
    gw.startup(_call())
    for n in range(20):
        invite = sender.requests("INVITE")[-1]
        gw.sip.transactions.receive(_reply(invite, 401, extra=[
            ("WWW-Authenticate", f'Digest realm="r", nonce="n{n}", stale=true')]), PEER)
    assert len(sender.requests("INVITE")) == 1 + MAX_ANSWERS
    assert _status(gw) == "FAILED"


def test_unanswered_invite_is_sent_seven_times_by_timer_a(make_gateway, sender, clock):
    """The 7 INVITEs of one call to a silent host are RFC 3261 §17.1.1.2 Timer A
    retransmissions (0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5 s) until Timer B (32 s): no more."""
    gw = make_gateway()
    gw.startup(_call())
    clock.pump([0.25] * 200)
    assert len(sender.requests("INVITE")) == 7
    assert _status(gw) == "FAILED"


def test_a_domain_resolving_to_a_denied_address_fails_before_any_packet(make_gateway, sender):
    """sipDomain's name is allowed, but its address (cloud metadata) is not: the call fails
    with the reason and no packet is sent."""
    from twisted.internet import defer
    gw = make_gateway()
    from sipgw.sip.resolver import Destination
    gw.sip.resolve = lambda transport, host, port: defer.succeed(
        Destination("UDP", "169.254.169.254", 5060))
    gw.startup(_call(sip_domain="pbx.example.org"))
    call = gw.find("call1")[0]
    assert call["status"] == "FAILED"
    assert "sipDomain destination pbx.example.org (169.254.169.254) is denied" in call["info"]
    assert sender.sent == []


@pytest.mark.parametrize("register", [False, True])
def test_a_bug_while_placing_the_call_fails_it_and_is_logged(make_gateway, sender, register):
    """An exception while locating the first hop (with or without a registration to wait
    for) is logged as a failure and fails the call with "Internal error"; nothing is sent."""
    gw = make_gateway()

    def broken(params):
        raise RuntimeError("bug")

    gw.sip.first_hop = broken
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        gw.startup(_call(sip_register_required=register))
    finally:
        globalLogPublisher.removeObserver(events.append)
    call = gw.find("call1")[0]
    assert call["status"] == "FAILED" and call["info"] == "Internal error"
    failures = [e for e in events if "log_failure" in e]
    assert len(failures) == 1 and failures[0]["log_failure"].check(RuntimeError)
    assert sender.sent == []


def test_in_dialog_requests_never_go_to_a_denied_contact(make_gateway, sender, clock):
    """A callee whose 2xx Contact names a denied address gets no ACK, INFO or BYE there; the
    BYE fails locally and the call still ends."""
    gw = make_gateway()
    gw.startup(_call())
    invite = sender.requests("INVITE")[-1]
    gw.sip.transactions.receive(make_response(invite, 200, to_tag="b1", body=ANSWER, extra=[
        ("Contact", "<sip:bob@169.254.169.254:5060>"), ("Content-Type", "application/sdp")]),
        PEER)
    gw.send_dtmf("call1", "1", "INFO")
    gw.terminate("call1")
    clock.advance(0)
    assert [m.method for m in sender.requests()] == ["INVITE"]
    assert _status(gw) == "FINISH"


def test_ipv6_hosts_are_bracketed_in_uris_via_and_contact(make_gateway, sender):
    """Calling [::1] from ::1: the Request-URI, Via and Contact carry [::1] (RFC 3261 §25.1)
    and the SDP offer says c=IN IP6 ::1 (RFC 4566)."""
    sender.sent_by = lambda host: "::1"
    gw = make_gateway()
    gw.startup(_call(sip_domain="::1", sip_port=5099))
    (msg, transport, host, port), = sender.sent
    assert (str(msg.uri), host, port) == ("sip:bob@[::1]:5099", "::1", 5099)
    assert msg.top_via.host == "[::1]" and msg.contacts[0].uri.host == "[::1]"
    assert b"c=IN IP6 ::1" in msg.body


def test_an_ipv6_registration_reads_its_contact_expiry(make_gateway, sender, clock):
    """Registered from [::1], the expiry granted on our bracketed Contact (120 s) wins over
    the Expires header: the binding is refreshed before 120 s, not after an hour."""
    sender.sent_by = lambda host: "::1"
    gw = make_gateway()
    gw.startup(_call(sip_domain="::1", sip_register_required=True))
    reg = sender.requests("REGISTER")[0]
    gw.sip.transactions.receive(make_response(reg, 200, to_tag="r", extra=[
        ("Contact", "<sip:alice@[::1]:5070>;expires=120"), ("Expires", "3600")]), PEER)
    gw.sip.transactions.receive(_reply(sender.requests("INVITE")[0], 180), PEER)  # still ringing
    clock.advance(100)
    assert [r.get("Expires") for r in sender.requests("REGISTER")] == ["3600", "3600"]


def test_cancel_follows_an_invite_sent_over_tcp_for_its_size(make_gateway, sender):
    """An INVITE over 1300 bytes went over TCP (RFC 3261 §18.1.1): its CANCEL goes over TCP
    too, with the INVITE's TCP Via (§9.1)."""
    gw = make_gateway()
    gw.startup(_call(callee="b" * 250, visible_name="V" * 120))
    invite = sender.requests("INVITE")[0]
    gw.sip.transactions.receive(_reply(invite, 180), PEER)
    gw.terminate("call1")
    assert [(m.method, t) for m, t, *_ in sender.sent] == [("INVITE", "TCP"), ("CANCEL", "TCP")]
    assert sender.requests("CANCEL")[0].top_via.transport == "TCP"


# --- races that must not orphan a call or an account (issue 10) ------------------------

UNUSABLE = (b"v=0\r\no=- 9 9 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            b"m=audio 6000 RTP/AVP 98\r\na=rtpmap:98 nothing-we-know/8000\r\n")
AUTH_CONF_ONLY = 'Digest realm="r", nonce="n1", qop="auth-conf"'


def _ring_then_end(gw, sender, clock, how):
    invite = _ringing(gw, sender)
    if how == "ring timeout":
        clock.advance(gw.config.sip_ring_timeout)
    else:  # /call/terminate, then no final response until the §9.1 fallback
        gw.terminate("call1")
        clock.advance(64 * T1)
    assert gw.calls["call1"].status.ended
    assert len({c.top_via.branch for c in sender.requests("CANCEL")}) == 1
    return invite


@pytest.mark.parametrize("how", ["ring timeout", "cancel fallback"])
def test_answer_after_the_call_ended_is_acked_and_hung_up(make_gateway, sender, clock, how):
    """A 2xx arriving after the call already ended (ring timeout, CANCEL unanswered for
    64*T1) is ACKed and then BYEd (§15), once even if the 2xx is retransmitted."""
    gw = make_gateway(sip_ring_timeout=5 if how == "ring timeout" else 0)
    invite = _ring_then_end(gw, sender, clock, how)
    ok = _reply(invite, 200, body=ANSWER)
    gw.sip.transactions.receive(ok, PEER)
    assert len(sender.requests("ACK")) == 1
    bye, = sender.requests("BYE")
    assert bye.call_id == invite.call_id and bye.to.tag == "b1"
    gw.sip.transactions.receive(ok, PEER)
    assert len(sender.requests("ACK")) == 2 and len(sender.requests("BYE")) == 1
    assert gw.calls["call1"].status.ended


def test_unusable_answer_fails_at_once_with_no_common_codecs(make_gateway, sender, clock):
    """A 200 whose SDP shares no codec with the offer is ACKed, BYEd and FAILED at once:
    the call never shows ESTABLISHED while its BYE is outstanding."""
    gw = make_gateway()
    gw.startup(_call())
    invite = sender.requests("INVITE")[0]
    gw.sip.transactions.receive(_reply(invite, 200, body=UNUSABLE), PEER)
    assert len(sender.requests("ACK")) == 1 and len(sender.requests("BYE")) == 1
    call = gw.find("call1")[0]
    assert (call["status"], call["info"]) == ("FAILED", "No common codecs")
    assert "ESTABLISHED" not in call["history"]


def test_invite_challenge_that_cannot_be_answered_fails_the_call(make_gateway, sender):
    """A challenge offering only qop=auth-conf (which cannot be answered) ends the call
    FAILED with the 401 instead of leaving it pending."""
    gw = make_gateway()
    gw.startup(_call())
    gw.sip.transactions.receive(_reply(sender.requests("INVITE")[0], 401, extra=[
        ("WWW-Authenticate", AUTH_CONF_ONLY)]), PEER)
    call = gw.find("call1")[0]
    assert call["status"] == "FAILED" and "401 Unauthorized" in call["info"]


def test_exception_on_a_provisional_fails_the_call_and_cancels_it(make_gateway, sender,
                                                                  monkeypatch):
    """An exception while handling a 183 fails the call and CANCELs the INVITE; a 200
    that still arrives is ACKed and BYEd."""
    gw = make_gateway()
    gw.startup(_call())
    invite = sender.requests("INVITE")[0]
    call = gw.calls["call1"]

    def broken(*args):
        raise RuntimeError("boom")
    monkeypatch.setattr(call, "take_answer", broken)
    gw.sip.transactions.receive(_reply(invite, 183, body=ANSWER), PEER)
    assert call.status.value == "FAILED" and "boom" in call.reason
    assert len(sender.requests("CANCEL")) == 1
    gw.sip.transactions.receive(_reply(invite, 200, body=ANSWER), PEER)
    assert len(sender.requests("ACK")) == 1 and len(sender.requests("BYE")) == 1


def test_register_challenge_that_cannot_be_answered_frees_the_account(make_gateway, sender):
    """A REGISTER challenge offering only qop=auth-conf fails the call with the reason,
    and the next call of the same account registers afresh instead of waiting for ever."""
    gw = make_gateway()
    gw.startup(_call(sip_register_required=True))
    reg = sender.requests("REGISTER")[0]
    gw.sip.transactions.receive(make_response(reg, 401, to_tag="r", extra=[
        ("WWW-Authenticate", AUTH_CONF_ONLY)]), PEER)
    call = gw.find("call1")[0]
    assert call["status"] == "FAILED" and "401 Unauthorized" in call["info"]
    assert gw.sip.registrations == {}
    gw.startup(_call(call_id="call2", sip_register_required=True))
    assert len(sender.requests("REGISTER")) == 2


def test_terminate_during_dns_lookup_counts_no_registration_user(make_gateway, sender):
    """/call/terminate while sipDomain is being resolved: no REGISTER, no registration
    left counting the ended call as a user."""
    from twisted.internet import defer

    from sipgw.sip.resolver import Destination
    gw = make_gateway()
    lookup = defer.Deferred()
    gw.sip.resolve = lambda transport, host, port: lookup
    gw.startup(_call(sip_register_required=True, sip_domain="pbx.example.org"))
    gw.terminate("call1")
    assert _status(gw) == "FINISH"
    lookup.callback(Destination("UDP", "127.0.0.1", 5060))
    assert gw.sip.registrations == {} and sender.requests("REGISTER") == []
    assert gw.calls["call1"].session.registration is None


# --- bounded state (issue 10) ---------------------------------------------------------------

def _busy(gw, sender, call_id):
    gw.startup(_call(call_id=call_id))
    gw.sip.transactions.receive(_reply(sender.requests("INVITE")[-1], 486), PEER)


def test_ended_calls_are_retained_by_count_too(make_gateway, sender, clock):
    """Beyond call_retention_max ended calls the oldest is forgotten before its time."""
    gw = make_gateway(call_retention=60, call_retention_max=2)
    for n in range(3):
        _busy(gw, sender, f"call{n}")
        clock.advance(1)
    assert [c["callId"] for c in gw.find()] == ["call1", "call2"]
    clock.advance(58)
    assert [c["callId"] for c in gw.find()] == ["call2"]
    clock.advance(1)
    assert gw.find() == [] and gw.sip.sessions == {}


def test_find_lists_at_most_call_find_limit_calls(make_gateway, sender):
    """/call/find_all and /call/find by status answer at most call_find_limit calls, the
    most recently started."""
    gw = make_gateway(call_find_limit=2)
    for n in range(3):
        _busy(gw, sender, f"call{n}")
    assert [c["callId"] for c in gw.find()] == ["call1", "call2"]
    assert [c["callId"] for c in gw.find(status="BUSY")] == ["call1", "call2"]
    assert [c["callId"] for c in gw.find("call0")] == ["call0"]


# --- ordered shutdown (issue 10) ----------------------------------------------------------

def _registered_and_established(gw, sender):
    gw.startup(_call(sip_register_required=True))
    reg = sender.requests("REGISTER")[0]
    gw.sip.transactions.receive(make_response(reg, 200, to_tag="r", extra=[("Expires", "600")]), PEER)
    invite = sender.requests("INVITE")[-1]
    gw.sip.transactions.receive(_reply(invite, 200, body=ANSWER), PEER)
    assert _status(gw) == "ESTABLISHED"


def test_stop_ends_calls_and_unregisters_before_closing(make_gateway, sender, clock):
    """stop() BYEs established calls and CANCELs ringing ones while SIP stays open
    (retransmissions go on), unregisters the account after its last call, and only then
    drops every transaction; no new call is taken meanwhile."""
    gw = make_gateway()
    _registered_and_established(gw, sender)
    gw.startup(_call(call_id="call2"))
    ringing = sender.requests("INVITE")[-1]
    gw.sip.transactions.receive(_reply(ringing, 180), PEER)
    done = []
    gw.stop(timeout=10).addCallback(done.append)
    with pytest.raises(Unavailable):
        gw.startup(_call(call_id="call3"))
    bye, = sender.requests("BYE")
    cancel, = sender.requests("CANCEL")
    clock.advance(T1)
    assert len(sender.requests("BYE")) == 2  # retransmitted: the socket is still open
    gw.sip.transactions.receive(make_response(bye, 200), PEER)
    unreg = sender.requests("REGISTER")[-1]
    assert unreg.get("Expires") == "0"
    gw.sip.transactions.receive(make_response(cancel, 200), PEER)
    gw.sip.transactions.receive(_reply(ringing, 487), PEER)
    assert [_status(gw, c) for c in ("call1", "call2")] == ["FINISH", "FINISH"]
    assert gw.find("call2")[0]["info"] == "Stopped: server shutdown"
    assert done == []  # the unregistration is still outstanding
    gw.sip.transactions.receive(make_response(unreg, 200, to_tag="r"), PEER)
    assert done == [{"calls": 2, "answered": 2, "unregistered": 1, "not_unregistered": 0}]
    assert gw.sip.transactions.client == {} and gw.sip.transactions.server == {}
    sent = len(sender.sent)
    clock.advance(100)
    assert len(sender.sent) == sent


def test_stop_gives_up_at_the_deadline_and_retransmits_nothing_after(make_gateway, sender, clock):
    """A peer that never answers the BYE: at shutdown_timeout the call is ended, the
    account's REGISTER Expires: 0 goes out once, and nothing is retransmitted after."""
    gw = make_gateway(shutdown_timeout=4)
    _registered_and_established(gw, sender)
    done = []
    gw.stop().addCallback(done.append)
    clock.advance(3.9)
    assert done == [] and _status(gw) == "ESTABLISHED"
    clock.advance(0.1)
    assert done == [{"calls": 1, "answered": 0, "unregistered": 0, "not_unregistered": 1}]
    assert _status(gw) == "FINISH" and sender.requests("REGISTER")[-1].get("Expires") == "0"
    sent = len(sender.sent)
    clock.advance(100)
    assert len(sender.sent) == sent and clock.getDelayedCalls() == []


def test_stop_with_nothing_to_end_closes_at_once(make_gateway, sender):
    """With no call left and no registration, stop() closes without waiting, and counts
    no unregistration made before it."""
    gw = make_gateway()
    _registered_and_established(gw, sender)
    gw.terminate("call1")
    gw.sip.transactions.receive(make_response(sender.requests("BYE")[-1], 200), PEER)
    gw.sip.transactions.receive(make_response(sender.requests("REGISTER")[-1], 200, to_tag="r"), PEER)
    assert gw.sip.registrations == {} and gw.sip.leaving == set()
    done = []
    gw.stop().addCallback(done.append)
    assert done == [{"calls": 0, "answered": 0, "unregistered": 0, "not_unregistered": 0}]


# --- churn: every ending, then nothing left (issue 10) --------------------------------------

def _end_every_way(gw, sender, clock, n):
    """Start one call per ending; returns when each has been driven to its end."""
    from twisted.internet import defer
    rx = gw.sip.transactions.receive
    invites = lambda: sender.requests("INVITE")  # noqa: E731

    def start(name, **fields):
        gw.startup(_call(call_id=f"{name}{n}", **fields))
        return invites()[-1]

    invite = start("bye-from-callee")
    rx(_reply(invite, 200, body=ANSWER), PEER)
    rx(_in_dialog(invite, "BYE", 1), PEER)
    invite = start("terminated")
    rx(_reply(invite, 200, body=ANSWER), PEER)
    gw.terminate(f"terminated{n}")
    rx(make_response(sender.requests("BYE")[-1], 200), PEER)
    invite = start("cancelled")
    rx(_reply(invite, 180), PEER)
    gw.terminate(f"cancelled{n}")
    rx(make_response(sender.requests("CANCEL")[-1], 200), PEER)
    rx(_reply(invite, 487), PEER)
    rx(_reply(start("busy"), 486), PEER)
    start("timeout")  # Timer B
    rx(_reply(start("no-codec"), 200, body=UNUSABLE), PEER)
    rx(make_response(sender.requests("BYE")[-1], 200), PEER)
    rx(_reply(start("auth-conf"), 401, extra=[("WWW-Authenticate", AUTH_CONF_ONLY)]), PEER)
    invite = start("late-answer", sip_login="ring")
    rx(_reply(invite, 180), PEER)
    gw.calls[f"late-answer{n}"].fail("test")  # as the ring timeout does
    rx(make_response(sender.requests("CANCEL")[-1], 200), PEER)
    rx(_reply(invite, 200, body=ANSWER), PEER)
    rx(make_response(sender.requests("BYE")[-1], 200), PEER)
    lookup = defer.Deferred()
    gw.sip.resolve = lambda host: lookup
    start("during-dns", sip_register_required=True, sip_domain="pbx.example.org")
    gw.terminate(f"during-dns{n}")
    lookup.callback("127.0.0.1")
    del gw.sip.resolve
    start("during-register", sip_register_required=True, sip_login="reg")
    reg = sender.requests("REGISTER")[-1]
    gw.terminate(f"during-register{n}")
    rx(make_response(reg, 200, to_tag="r", extra=[("Expires", "600")]), PEER)
    rx(make_response(sender.requests("REGISTER")[-1], 200, to_tag="r"), PEER)


def test_churn_of_every_ending_leaves_nothing_behind(make_gateway, sender, clock):
    """Calls ended every way (BYE either side, CANCEL, 486, Timer B, no common codec, a
    challenge we cannot answer, a late 2xx, terminate during DNS and during REGISTER),
    then time passing: no call, stream, registration, transaction, RTP port or timer left."""
    gw = make_gateway(call_retention=10, sip_ring_timeout=0)
    for n in range(5):
        _end_every_way(gw, sender, clock, n)
        clock.advance(0.1)
    clock.advance(64 * T1)
    assert [c for c in gw.find() if c["status"] not in ("FINISH", "FAILED", "BUSY")] == []
    clock.advance(10)
    assert gw.calls == {} and gw.sip.sessions == {} and gw.streams.all() == []
    assert gw.sip.registrations == {} and gw.sip.leaving == set()
    assert gw.sip.transactions.client == {} and gw.sip.transactions.server == {}
    assert gw.ports.in_use == set() and clock.getDelayedCalls() == []


def _sdp_offer(invite, cseq, sdp, method="INVITE", extra=()):
    body = bytes(sdp) if not isinstance(sdp, bytes) else sdp
    return _in_dialog(invite, method, cseq, body,
                      [("Content-Type", "application/sdp")] + list(extra) if body else list(extra))


def _hold_sdp(form, version):
    address = "0.0.0.0" if form == "c=0.0.0.0" else "127.0.0.1"
    port = 6000 if form == "port unchanged" else 7000
    sdp = make_offer(address, audio_port=port, video_port=6002, session_id=9, version=version)
    direction = {"sendonly": "sendonly", "port unchanged": "sendonly",
                 "inactive": "inactive"}.get(form)
    if direction:
        for m in sdp.media:
            m.attributes = [a for a in m.attributes if a[0] != "sendrecv"] + [(direction, None)]
    return sdp


@pytest.mark.parametrize("form", ["sendonly", "inactive", "c=0.0.0.0", "port unchanged"])
def test_every_hold_form_pauses_the_rtp_timeout_and_resume_restarts_it(make_gateway, sender, clock,
                                                                         form):
    """A callee holding (sendonly, inactive, c=0.0.0.0, or only the direction changed) and
    sending no RTP stays HOLD past rtp_activity_timeout (RFC 3264 §8.4); resume is
    ESTABLISHED and the timeout counts again from the resume, not from the hold."""
    gw = make_gateway(rtp_activity_timeout=60)
    invite = _established(gw, sender)
    gw.sip.transactions.receive(_sdp_offer(invite, 2, _hold_sdp(form, 2)), PEER)
    gw.sip.transactions.receive(_in_dialog(invite, "ACK", 2), PEER)
    assert _status(gw) == "HOLD"
    clock.pump([1] * 100)
    assert _status(gw) == "HOLD"
    gw.sip.transactions.receive(_sdp_offer(invite, 3, make_offer(
        "127.0.0.1", audio_port=6000, video_port=6002, session_id=9, version=3)), PEER)
    gw.sip.transactions.receive(_in_dialog(invite, "ACK", 3), PEER)
    assert _status(gw) == "ESTABLISHED"
    clock.pump([1] * 30)
    assert _status(gw) == "ESTABLISHED"
    clock.pump([1] * 31)
    assert gw.find("call1")[0]["info"] == "Failed by RTP activity"


ANSWER_PCMA = (b"v=0\r\no=- 9 5 IN IP4 127.0.0.9\r\ns=-\r\nc=IN IP4 127.0.0.9\r\nt=0 0\r\n"
               b"m=audio 7100 RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n"
               b"m=video 7102 RTP/AVP 102\r\na=rtpmap:102 H264/90000\r\n"
               b"a=fmtp:102 profile-level-id=42e01f;packetization-mode=1\r\n")


def test_offerless_reinvite_is_completed_by_the_answer_in_the_ack(make_gateway, sender, clock):
    """A re-INVITE without SDP gets our offer (a new o= version, RFC 3264 §8) in the 200;
    the answer in the ACK (§14.2, §13.3.1.4) moves the media to its address and codec."""
    gw = make_gateway()
    invite = _established(gw, sender)
    first = SessionDescription.parse(sender.requests("INVITE")[0].body)
    gw.sip.transactions.receive(_in_dialog(invite, "INVITE", 2), PEER)
    ok = sender.responses(200)[-1]
    offer = SessionDescription.parse(ok.body)
    assert offer.origin.sess_version > first.origin.sess_version
    ack = _in_dialog(invite, "ACK", 2, ANSWER_PCMA, [("Content-Type", "application/sdp")])
    gw.sip.transactions.receive(ack, PEER)
    call = gw.calls["call1"]
    audio = call.media_session.endpoints["audio"]
    assert audio.sdp_rtp == ("127.0.0.9", 7100)
    assert call.stream.audio_codec == "PCMA" and 8 in audio.accepted_pts
    assert call.remote_sdp == ANSWER_PCMA
    clock.advance(10)
    assert len(sender.responses(200)) == 1  # the ACK stopped the 2xx retransmissions
    assert _status(gw) == "ESTABLISHED"


def test_an_unusable_answer_in_the_ack_ends_the_call(make_gateway, sender):
    """An ACK whose answer cannot be used is followed by a BYE (RFC 3261 §13.2.2.4, the
    UAS side of it): media cannot flow."""
    gw = make_gateway()
    invite = _established(gw, sender)
    gw.sip.transactions.receive(_in_dialog(invite, "INVITE", 2), PEER)
    bad = ANSWER_PCMA.replace(b"RTP/AVP 8\r\na=rtpmap:8 PCMA/8000", b"RTP/AVP 18")
    bad = bad.replace(b"RTP/AVP 102", b"RTP/AVP 34").replace(b"a=rtpmap:102 H264/90000\r\n", b"")
    gw.sip.transactions.receive(_in_dialog(invite, "ACK", 2, bad, [
        ("Content-Type", "application/sdp")]), PEER)
    assert sender.requests("BYE") and _status(gw) == "FAILED"


def test_a_retransmitted_reinvite_after_a_lost_200_is_not_refused(make_gateway, sender, clock):
    """RFC 6026 §7.1: the INVITE server transaction stays Accepted after its 2xx, so a
    retransmitted re-INVITE is absorbed, never handed up as a new request (500 CSeq out of
    order); the peer gets the 200 again from the 2xx retransmissions."""
    gw = make_gateway()
    invite = _established(gw, sender)
    reinvite = _sdp_offer(invite, 2, make_offer("127.0.0.1", audio_port=7000, video_port=None,
                                                session_id=9, version=2))
    gw.sip.transactions.receive(reinvite, PEER)
    gw.sip.transactions.receive(parse(bytes(reinvite)), PEER)
    clock.advance(T1 + 0.01)
    assert [r.status for r in sender.responses()] == [200, 200]


def test_a_refused_reinvite_leaves_the_remote_target_alone(make_gateway, sender):
    """Only a successful re-INVITE refreshes the remote target (§12.2.2): after a 488 the
    BYE still goes to the first Contact."""
    gw = make_gateway()
    invite = _established(gw, sender)
    reinvite = _in_dialog(invite, "INVITE", 2, b"v=0\r\nbogus\r\n",
                          [("Content-Type", "application/sdp")])
    reinvite.set("Contact", "<sip:bob@127.0.0.1:7777>")
    gw.sip.transactions.receive(reinvite, PEER)
    assert [r.status for r in sender.responses()] == [488]
    gw.terminate("call1")
    (bye,) = sender.requests("BYE")
    assert bye.uri.port == 5060


def _challenged_then_established(gw, sender):
    gw.startup(_call())
    first = sender.requests("INVITE")[0]
    gw.sip.transactions.receive(_reply(first, 407, extra=[
        ("Proxy-Authenticate", 'Digest realm="proxy", nonce="p1", qop="auth"')]), PEER)
    invite = sender.requests("INVITE")[-1]
    gw.sip.transactions.receive(_reply(invite, 200, body=ANSWER), PEER)
    return invite


def test_the_ack_for_a_2xx_carries_the_invites_credentials(make_gateway, sender):
    """RFC 3261 §13.2.2.4 / §22.1: the ACK of a 2xx carries the same credentials as the
    INVITE it acknowledges."""
    gw = make_gateway()
    invite = _challenged_then_established(gw, sender)
    ack = sender.requests("ACK")[-1]
    assert ack.cseq.seq == invite.cseq.seq
    assert ack.get("Proxy-Authorization") == invite.get("Proxy-Authorization")


@pytest.mark.parametrize("method", ["BYE", "INFO"])
@pytest.mark.parametrize("status", [401, 407])
def test_an_in_dialog_request_is_retried_on_a_challenge(make_gateway, sender, method, status):
    """A 401/407 to an in-dialog BYE or INFO is answered: the request goes again with a
    higher CSeq, a new branch and the credentials (§22.2, §22.3); a BYE answered 200 then
    ends the call."""
    gw = make_gateway()
    _challenged_then_established(gw, sender)
    if method == "BYE":
        gw.terminate("call1")
    else:
        gw.send_dtmf("call1", "1", "INFO")
    first = sender.requests(method)[0]
    header = "WWW-Authenticate" if status == 401 else "Proxy-Authenticate"
    gw.sip.transactions.receive(make_response(first, status, extra=[
        (header, 'Digest realm="pbx", nonce="b1"')]), PEER)
    assert _status(gw) == "ESTABLISHED"
    second = sender.requests(method)[1]
    assert second.cseq.seq == first.cseq.seq + 1
    assert second.top_via.branch != first.top_via.branch and second.body == first.body
    credentials = " ".join(second.get_all("Authorization") + second.get_all("Proxy-Authorization"))
    assert 'realm="pbx"' in credentials and f'uri="{second.uri}"' in credentials
    assert 'realm="proxy"' in credentials  # the INVITE's realm too (§22.3)
    gw.sip.transactions.receive(make_response(second, 200), PEER)
    assert _status(gw) == ("FINISH" if method == "BYE" else "ESTABLISHED")


def test_invite_advertises_100rel_timer_and_update(make_gateway, sender):
    """The INVITE says Supported: 100rel, timer (RFC 3262 §3, RFC 4028 §7.1), asks for
    sip_session_expires with Min-SE, and allows PRACK and UPDATE; each can be turned off."""
    gw = make_gateway()
    gw.startup(_call())
    invite = sender.requests("INVITE")[0]
    assert invite.get_all("Supported") == ["100rel", "timer"]
    assert (invite.get("Session-Expires"), invite.get("Min-SE")) == ("1800", "90")
    assert {"PRACK", "UPDATE"} <= set(invite.get_all("Allow"))
    off = make_gateway(sip_100rel=False, sip_session_timers=False)
    off.startup(_call(call_id="call2", to_stream="s2"))
    invite = sender.requests("INVITE")[-1]
    assert invite.get("Supported") is None and invite.get("Session-Expires") is None


def _reliable(invite, rseq, status=183, tag="b1"):
    return _reply(invite, status, tag=tag, body=ANSWER, extra=[
        ("Require", "100rel"), ("RSeq", str(rseq))])


def test_reliable_provisional_is_pracked_once_in_its_early_dialog(make_gateway, sender):
    """A 183 with Require: 100rel is PRACKed (RFC 3262 §7.2: RAck 'RSeq CSeq INVITE', in the
    early dialog, the next CSeq); its retransmission is not; the next RSeq is; the BYE after
    the 200 takes a CSeq above the PRACKs'."""
    gw = make_gateway()
    gw.startup(_call())
    invite = sender.requests("INVITE")[0]
    gw.sip.transactions.receive(_reliable(invite, 7), PEER)
    (prack,) = sender.requests("PRACK")
    assert prack.get("RAck") == f"7 {invite.cseq.seq} INVITE"
    assert prack.to.tag == "b1" and prack.cseq.seq == invite.cseq.seq + 1
    assert prack.uri.port == 5060 and prack.call_id == invite.call_id
    assert _status(gw) == "RING_MEDIA"
    gw.sip.transactions.receive(_reliable(invite, 7), PEER)  # retransmitted
    gw.sip.transactions.receive(_reliable(invite, 9), PEER)  # out of order
    assert len(sender.requests("PRACK")) == 1
    gw.sip.transactions.receive(_reliable(invite, 8, status=180), PEER)
    assert [p.get("RAck") for p in sender.requests("PRACK")][-1] == f"8 {invite.cseq.seq} INVITE"
    gw.sip.transactions.receive(_reply(invite, 200, body=ANSWER), PEER)
    assert sender.requests("ACK")[-1].cseq.seq == invite.cseq.seq
    gw.terminate("call1")
    assert sender.requests("BYE")[0].cseq.seq == invite.cseq.seq + 3


def test_reliable_provisionals_of_too_many_forks_are_not_pracked(make_gateway, sender):
    """Early dialogs PRACKed per INVITE are bounded: a reliable 1xx with one To tag more than
    MAX_EARLY_DIALOGS is processed but neither PRACKed nor kept."""
    from sipgw.sip.prack import MAX_EARLY_DIALOGS
    gw = make_gateway()
    gw.startup(_call())
    invite = sender.requests("INVITE")[0]
    for n in range(MAX_EARLY_DIALOGS + 3):
        gw.sip.transactions.receive(_reliable(invite, 1, tag=f"fork{n}"), PEER)
    assert len(sender.requests("PRACK")) == MAX_EARLY_DIALOGS
    assert len(gw.calls["call1"].session.early) == MAX_EARLY_DIALOGS


def test_100rel_off_sends_no_prack(make_gateway, sender):
    """sip_100rel=false: reliable provisionals are read as plain ones, never PRACKed."""
    gw = make_gateway(sip_100rel=False)
    gw.startup(_call())
    gw.sip.transactions.receive(_reliable(sender.requests("INVITE")[0], 1), PEER)
    assert sender.requests("PRACK") == [] and _status(gw) == "RING_MEDIA"


def test_422_is_retried_with_the_min_se_asked_for(make_gateway, sender):
    """422 Session Interval Too Small (RFC 4028 §7.4): the INVITE goes again with its
    Min-SE as Session-Expires and Min-SE; a 422 asking for no more fails the call."""
    gw = make_gateway()
    gw.startup(_call())
    first = sender.requests("INVITE")[0]
    gw.sip.transactions.receive(_reply(first, 422, extra=[("Min-SE", "3600")]), PEER)
    second = sender.requests("INVITE")[1]
    assert second.cseq.seq == first.cseq.seq + 1
    assert (second.get("Session-Expires"), second.get("Min-SE")) == ("3600", "3600")
    gw.sip.transactions.receive(_reply(second, 422, extra=[("Min-SE", "3600")]), PEER)
    assert len(sender.requests("INVITE")) == 2 and _status(gw) == "FAILED"


def _timed(gw, sender, session_expires, allow="INVITE, ACK, BYE, UPDATE"):
    gw.startup(_call())
    invite = sender.requests("INVITE")[-1]
    gw.sip.transactions.receive(_reply(invite, 200, body=ANSWER, extra=[
        ("Session-Expires", session_expires), ("Require", "timer"), ("Allow", allow)]), PEER)
    return invite


@pytest.mark.parametrize("allow,method", [("INVITE, ACK, BYE, UPDATE", "UPDATE"),
                                          ("INVITE, ACK, BYE", "INVITE")])
def test_sipgw_refreshes_at_half_the_interval_when_it_is_the_refresher(make_gateway, sender, clock,
                                                                       allow, method):
    """refresher=uac in the 2xx: sipgw refreshes at half the interval (RFC 4028 §10) by UPDATE
    when the callee allows it, else by re-INVITE (ACKed with its own CSeq), and again after."""
    gw = make_gateway(rtp_activity_timeout=0)
    _timed(gw, sender, "180;refresher=uac", allow)
    before = len(sender.requests(method))
    clock.advance(89)
    assert len(sender.requests(method)) == before
    clock.advance(1.01)
    refresh = sender.requests(method)[-1]
    assert len(sender.requests(method)) == before + 1
    assert refresh.get("Session-Expires") == "180;refresher=uac"
    assert "timer" in refresh.get_all("Supported")
    gw.sip.transactions.receive(_reply(refresh, 200, body=ANSWER if method == "INVITE" else b"",
                                   extra=[("Session-Expires", "180;refresher=uac")]), PEER)
    if method == "INVITE":
        assert sender.requests("ACK")[-1].cseq.seq == refresh.cseq.seq
    clock.pump([1] * 91)
    assert len({r.cseq.seq for r in sender.requests(method)}) == before + 2
    assert _status(gw) == "ESTABLISHED"


def test_only_the_latest_refresh_acks_are_kept(make_gateway, sender, clock):
    """A long call refreshed by re-INVITE keeps the ACKs of its last ACKS_KEPT refreshes
    (for their 2xx retransmissions), not one per refresh; the latest 2xx, again, is ACKed
    with its own CSeq."""
    from sipgw.sip.invite import ACKS_KEPT
    gw = make_gateway(rtp_activity_timeout=0)
    _timed(gw, sender, "180;refresher=uac", "INVITE, ACK, BYE")
    for _ in range(ACKS_KEPT + 3):
        clock.advance(90.01)
        refresh = sender.requests("INVITE")[-1]
        gw.sip.transactions.receive(_reply(refresh, 200, body=ANSWER, extra=[
            ("Session-Expires", "180;refresher=uac")]), PEER)
    assert len(gw.calls["call1"].session.acks) == ACKS_KEPT
    gw.sip.transactions.receive(_reply(refresh, 200, body=ANSWER, extra=[
        ("Session-Expires", "180;refresher=uac")]), PEER)  # retransmitted
    assert sender.requests("ACK")[-1].cseq.seq == refresh.cseq.seq


def test_a_session_interval_of_one_second_is_read_as_the_shortest_interval(make_gateway, sender,
                                                                          clock):
    """A 2xx with Session-Expires: 1 does not make sipgw refresh every half second: the
    interval is read as SHORTEST_INTERVAL (4 s), so the first refresh comes at 2 s."""
    from sipgw.sip.timer import SHORTEST_INTERVAL
    gw = make_gateway(rtp_activity_timeout=0)
    _timed(gw, sender, "1;refresher=uac")
    before = len(sender.requests("UPDATE"))
    clock.pump([0.5] * 3)
    assert len(sender.requests("UPDATE")) == before and _status(gw) == "ESTABLISHED"
    clock.advance(SHORTEST_INTERVAL / 2 - 1.5)
    assert len(sender.requests("UPDATE")) == before + 1


def test_no_refresh_from_the_callee_ends_the_call_with_bye(make_gateway, sender, clock):
    """refresher=uas: the callee refreshes; an UPDATE from it is answered with the interval
    and Require: timer and restarts the timer; without one the call is BYEd before the
    interval ends (RFC 4028 §10: the interval minus min(32, a third of it))."""
    gw = make_gateway(rtp_activity_timeout=0)
    invite = _timed(gw, sender, "180;refresher=uas")
    clock.advance(100)
    gw.sip.transactions.receive(_in_dialog(invite, "UPDATE", 1, extra=[
        ("Session-Expires", "180;refresher=uac"), ("Supported", "timer")]), PEER)
    ok = sender.responses(200)[-1]
    assert ok.get("Session-Expires") == "180;refresher=uac" and ok.get("Require") == "timer"
    clock.advance(147)
    assert sender.requests("BYE") == [] and _status(gw) == "ESTABLISHED"
    clock.advance(2)
    assert sender.requests("BYE")
    call = gw.find("call1")[0]
    assert (call["status"], call["info"]) == ("FAILED", "Session timer expired")


def test_a_refresh_answered_481_ends_the_call(make_gateway, sender, clock):
    """A 481 to our refresh (§12.2.1.2) means the dialog is gone: the call ends."""
    gw = make_gateway(rtp_activity_timeout=0)
    _timed(gw, sender, "180;refresher=uac")
    clock.advance(90.01)
    gw.sip.transactions.receive(make_response(sender.requests("UPDATE")[-1], 481), PEER)
    assert _status(gw) == "FAILED"


def test_423_is_retried_with_min_expires(make_gateway, sender, clock):
    """423 Interval Too Brief (RFC 3261 §10.2.8): the REGISTER goes again asking for its
    Min-Expires, and later refreshes ask for that too."""
    gw = make_gateway(sip_register_expires=60, sip_ring_timeout=0)
    gw.startup(_call(sip_register_required=True))
    reg = sender.requests("REGISTER")[0]
    gw.sip.transactions.receive(make_response(reg, 423, to_tag="r", extra=[("Min-Expires", "300")]),
                            PEER)
    reg2 = sender.requests("REGISTER")[1]
    assert reg2.get("Expires") == "300" and reg2.cseq.seq == reg.cseq.seq + 1
    gw.sip.transactions.receive(make_response(reg2, 200, to_tag="r", extra=[("Expires", "300")]), PEER)
    assert sender.requests("INVITE")
    gw.sip.transactions.receive(_reply(sender.requests("INVITE")[0], 180), PEER)
    clock.advance(290)
    assert sender.requests("REGISTER")[-1].get("Expires") == "300"


def test_expiry_is_read_from_the_contact_that_is_exactly_ours(make_gateway, sender, clock):
    """Another binding of the same host (another port, another user) is not ours: the
    expiry granted is the one on our exact Contact (RFC 3261 §10.2.4), 60 s here."""
    gw = make_gateway()
    gw.startup(_call(sip_register_required=True))
    reg = sender.requests("REGISTER")[0]
    gw.sip.transactions.receive(make_response(reg, 200, to_tag="r", extra=[
        ("Contact", "<sip:alice@127.0.0.1:5099>;expires=3600"),
        ("Contact", "<sip:bob@127.0.0.1:5070>;expires=3600"),
        ("Contact", "<sip:alice@127.0.0.1:5070>;expires=60")]), PEER)
    gw.sip.transactions.receive(_reply(sender.requests("INVITE")[0], 180), PEER)
    clock.advance(50)
    assert len(sender.requests("REGISTER")) == 2


def test_one_call_id_per_account_per_boot(make_gateway, sender):
    """Every REGISTER of one account in one run shares a Call-ID, its CSeq always rising
    (RFC 3261 §10.2), even after the binding was removed and made again."""
    gw = make_gateway()
    for n in (1, 2):
        gw.startup(_call(call_id=f"call{n}", to_stream=f"s{n}", sip_register_required=True))
        reg = sender.requests("REGISTER")[-1]
        gw.sip.transactions.receive(make_response(reg, 200, to_tag="r", extra=[("Expires", "600")]),
                                PEER)
        gw.sip.transactions.receive(_reply(sender.requests("INVITE")[-1], 486), PEER)
        gw.sip.transactions.receive(make_response(sender.requests("REGISTER")[-1], 200, to_tag="r"),
                                PEER)
    registers = sender.requests("REGISTER")
    assert len(registers) == 4 and len({r.call_id for r in registers}) == 1
    assert [r.cseq.seq for r in registers] == [1, 2, 3, 4]


def _redirect(invite, status=302, *contacts):
    return make_response(invite, status, to_tag="r1", extra=[("Contact", c) for c in contacts])


def test_302_is_followed_to_the_best_contact(make_gateway, sender):
    """A 302 sends the INVITE again (RFC 3261 §8.1.3.4) to its highest-q Contact, at that
    host, with the same Call-ID and From tag and the next CSeq; the new target answers."""
    gw = make_gateway()
    gw.startup(_call())
    first = sender.requests("INVITE")[0]
    gw.sip.transactions.receive(_redirect(first, 302, "<sip:carol@127.0.0.3:5064>;q=0.5",
                                      "<sip:dave@127.0.0.2:5062>;q=0.9"), PEER)
    second = sender.requests("INVITE")[1]
    (_, _, host, port) = sender.sent[-1]
    assert str(second.uri) == "sip:dave@127.0.0.2:5062" and (host, port) == ("127.0.0.2", 5062)
    assert second.call_id == first.call_id and second.from_.tag == first.from_.tag
    assert second.cseq.seq == first.cseq.seq + 1
    gw.sip.transactions.receive(_reply(second, 200, body=ANSWER), PEER)
    assert _status(gw) == "ESTABLISHED"


def test_a_redirect_loop_and_the_hop_limit_stop_the_call(make_gateway, sender):
    """A redirect back to a target already tried is not followed (a loop), nor one beyond
    sip_max_redirects: the call fails with the 3xx."""
    gw = make_gateway()
    gw.startup(_call())
    first = sender.requests("INVITE")[0]
    gw.sip.transactions.receive(_redirect(first, 302, "<sip:dave@127.0.0.2:5062>"), PEER)
    second = sender.requests("INVITE")[1]
    gw.sip.transactions.receive(_redirect(second, 302, f"<{first.uri}>"), PEER)
    assert len(sender.requests("INVITE")) == 2
    call = gw.find("call1")[0]
    assert call["status"] == "FAILED" and call["info"].startswith("302")
    limited = make_gateway(sip_max_redirects=1)
    limited.startup(_call(call_id="c2", to_stream="s2"))
    invite = sender.requests("INVITE")[-1]
    limited.sip.transactions.receive(_redirect(invite, 301, "<sip:e@127.0.0.4>"), PEER)
    invite = sender.requests("INVITE")[-1]
    limited.sip.transactions.receive(_redirect(invite, 301, "<sip:f@127.0.0.5>"), PEER)
    assert str(sender.requests("INVITE")[-1].uri) == "sip:e@127.0.0.4"
    assert limited.find("c2")[0]["status"] == "FAILED"


def test_305_sends_the_same_request_through_the_proxy_named(make_gateway, sender):
    """305 Use Proxy (§21.3.6): the same Request-URI, sent to the proxy of the Contact."""
    gw = make_gateway()
    gw.startup(_call())
    first = sender.requests("INVITE")[0]
    gw.sip.transactions.receive(_redirect(first, 305, "<sip:127.0.0.7:5080;lr>"), PEER)
    second = sender.requests("INVITE")[1]
    (_, _, host, port) = sender.sent[-1]
    assert second.uri == first.uri and (host, port) == ("127.0.0.7", 5080)


def test_terminate_while_a_redirect_is_followed_ends_the_call(make_gateway, sender, monkeypatch):
    """/call/terminate between a 302 and the next INVITE ends the call at once."""
    from twisted.internet import defer
    gw = make_gateway()
    gw.startup(_call())
    pending = defer.Deferred()
    monkeypatch.setattr(gw.sip, "resolve", lambda *a: pending)
    gw.sip.transactions.receive(_redirect(sender.requests("INVITE")[0], 302,
                                      "<sip:dave@127.0.0.2:5062>"), PEER)
    gw.terminate("call1")
    assert _status(gw) == "FINISH"
    from sipgw.sip.resolver import Destination
    pending.callback(Destination("UDP", "127.0.0.2", 5062))
    assert len(sender.requests("INVITE")) == 1


def test_invite_says_it_accepts_sdp(make_gateway, sender):
    """The INVITE carries Accept: application/sdp (RFC 3261 §20.1)."""
    gw = make_gateway()
    gw.startup(_call())
    assert sender.requests("INVITE")[0].get("Accept") == "application/sdp"


def test_an_answer_in_a_multipart_body_is_found(make_gateway, sender):
    """A 200 whose body is multipart/mixed (SDP beside ISUP or a PIDF) is searched for its
    application/sdp part (RFC 5621 §3), which is the answer."""
    gw = make_gateway()
    gw.startup(_call())
    invite = sender.requests("INVITE")[0]
    body = (b"--b1\r\nContent-Type: application/isup;version=itu-t92+\r\n\r\n\x01\x02\r\n"
            b"--b1\r\nContent-Type: application/sdp\r\n\r\n" + ANSWER + b"\r\n--b1--\r\n")
    ok = make_response(invite, 200, to_tag="b1", body=body, extra=[
        ("Contact", "<sip:bob@127.0.0.1:5060>"), ("Content-Type", 'multipart/mixed;boundary="b1"')])
    gw.sip.transactions.receive(ok, PEER)
    call = gw.find("call1")[0]
    assert call["status"] == "ESTABLISHED" and call["sdp"].startswith("v=0")
    assert gw.calls["call1"].media["audio"].port == 6000


def test_a_hold_reinvite_without_session_expires_keeps_sipgw_the_refresher(make_gateway, sender,
                                                                           clock):
    """RFC 4028 §9: a peer's re-INVITE without Session-Expires (a hold) does not hand the
    refreshing to it: our 200 says refresher=uas and sipgw goes on refreshing."""
    gw = make_gateway(rtp_activity_timeout=0)
    invite = _timed(gw, sender, "180;refresher=uac")
    clock.advance(60)
    gw.sip.transactions.receive(_sdp_offer(invite, 1, _hold_sdp("inactive", 2), extra=[
        ("Supported", "timer")]), PEER)
    assert sender.responses(200)[-1].get("Session-Expires") == "180;refresher=uas"
    gw.sip.transactions.receive(_in_dialog(invite, "ACK", 1), PEER)
    clock.pump([1] * 91)
    assert sender.requests("UPDATE") and _status(gw) == "HOLD"


def test_one_cancel_however_many_provisionals_come(make_gateway, sender):
    """/call/terminate while ringing sends one CANCEL (§9.1), not one per provisional."""
    gw = make_gateway()
    invite = _ringing(gw, sender)
    gw.terminate("call1")
    for status in (180, 183, 182):
        gw.sip.transactions.receive(_reply(invite, status), PEER)
    assert len(sender.requests("CANCEL")) == 1


def test_a_481_to_info_ends_the_call(make_gateway, sender):
    """§12.2.1.2: a 481 to an in-dialog INFO means the dialog is gone: the call ends; an
    INFO timing out (a callee dropping them) leaves the call to its RTP timeout."""
    gw = make_gateway()
    _established(gw, sender)
    gw.send_dtmf("call1", "5", "INFO")
    gw.sip.transactions.receive(make_response(sender.requests("INFO")[0], 408), PEER)
    assert _status(gw) == "ESTABLISHED"
    gw.send_dtmf("call1", "6", "INFO")
    gw.sip.transactions.receive(make_response(sender.requests("INFO")[-1], 481), PEER)
    assert _status(gw) == "FAILED"


def test_picture_updates_waiting_for_an_unanswered_info_are_one(make_gateway, sender):
    """Keyframe requests while an INFO is unanswered queue one picture_fast_update INFO,
    not one each."""
    gw = make_gateway()
    _established(gw, sender)
    call = gw.calls["call1"]
    for _ in range(5):
        call.request_picture_update()
    assert len(sender.requests("INFO")) == 1 and len(call.session._infos) == 1
    gw.sip.transactions.receive(make_response(sender.requests("INFO")[0], 200), PEER)
    assert len(sender.requests("INFO")) == 2 and len(call.session._infos) == 0


def test_a_hash_in_the_callee_is_escaped(make_gateway, sender):
    """'#' is not allowed unescaped in a SIP URI user part (§25.1): it goes as %23."""
    gw = make_gateway()
    gw.startup(_call(callee="*72#100"))
    invite = sender.requests("INVITE")[0]
    assert str(invite.uri).startswith("sip:*72%23100@") and "#" not in invite.get("To")


def test_a_refresh_reinvite_answered_after_the_call_ended_is_still_acked(make_gateway, sender,
                                                                         clock):
    """The 2xx to our refresh re-INVITE is ACKed (§13.2.2.4) even when the call ended while
    it was out, and its retransmission gets that same ACK again, not the first INVITE's."""
    gw = make_gateway(rtp_activity_timeout=0)
    _timed(gw, sender, "180;refresher=uac", "INVITE, ACK, BYE")
    clock.advance(90.01)
    refresh = sender.requests("INVITE")[-1]
    gw.calls["call1"].rtp_timed_out()  # ends the call at once (BYE, FAILED)
    assert _status(gw) == "FAILED"
    ok = _reply(refresh, 200, body=ANSWER)
    gw.sip.transactions.receive(ok, PEER)
    gw.sip.transactions.receive(parse(bytes(ok)), PEER)
    acks = [a for a in sender.requests("ACK") if a.cseq.seq == refresh.cseq.seq]
    assert len(acks) == 2


def test_a_challenged_prack_is_sent_again_with_credentials(make_gateway, sender):
    """A 407 to a PRACK (a proxy challenging in-dialog requests) is answered like any other
    in-dialog request (§22.2): the PRACK again, next CSeq of the early dialog, credentials."""
    gw = make_gateway()
    gw.startup(_call())
    invite = sender.requests("INVITE")[0]
    gw.sip.transactions.receive(_reliable(invite, 1), PEER)
    first = sender.requests("PRACK")[0]
    gw.sip.transactions.receive(make_response(first, 407, extra=[
        ("Proxy-Authenticate", 'Digest realm="proxy", nonce="p9"')]), PEER)
    second = sender.requests("PRACK")[1]
    assert second.cseq.seq == first.cseq.seq + 1 and second.get("RAck") == first.get("RAck")
    assert 'realm="proxy"' in second.get("Proxy-Authorization")


def test_keepalive_options_go_to_the_registrar_while_registered(make_gateway, sender, clock):
    """sip_keepalive_interval: an OPTIONS to the registrar every interval while the account
    is registered (a NAT binding stays open), none once the binding is removed."""
    gw = make_gateway(sip_keepalive_interval=25, sip_ring_timeout=0, rtp_activity_timeout=0)
    gw.startup(_call(sip_register_required=True))
    reg = sender.requests("REGISTER")[0]
    gw.sip.transactions.receive(make_response(reg, 200, to_tag="r", extra=[("Expires", "600")]), PEER)
    gw.sip.transactions.receive(_reply(sender.requests("INVITE")[0], 180), PEER)  # ringing on
    clock.advance(24)
    assert sender.requests("OPTIONS") == []
    clock.advance(1.01)
    (options,) = sender.requests("OPTIONS")
    assert str(options.uri) == "sip:127.0.0.1" and options.from_.uri.user == "alice"
    gw.sip.transactions.receive(make_response(options, 200, to_tag="x"), PEER)
    clock.advance(25.5)
    assert len({o.call_id for o in sender.requests("OPTIONS")}) == 2
    gw.sip.transactions.receive(_reply(sender.requests("INVITE")[0], 486), PEER)
    gw.sip.transactions.receive(make_response(sender.requests("REGISTER")[-1], 200, to_tag="r"), PEER)
    clock.advance(100)
    assert len({o.call_id for o in sender.requests("OPTIONS")}) == 2


def _answer_with(direction: str, version: int = 2) -> bytes:
    sdp = make_offer("127.0.0.1", audio_port=6000, video_port=6002, session_id=9, version=version)
    for m in sdp.media:
        m.attributes = [(direction, None) if k == "sendrecv" else (k, v) for k, v in m.attributes]
    return bytes(sdp)


@pytest.mark.parametrize("setting", ["sendonly", "inactive"])
def test_hold_and_unhold_from_the_app_reinvite_with_our_directions(make_gateway, sender, setting):
    """/call/hold re-INVITEs with every stream sip_hold_direction (a new o= version), HOLD on
    its 2xx (ACKed); /call/unhold offers sendrecv again, ESTABLISHED on its 2xx."""
    gw = make_gateway(sip_hold_direction=setting)
    invite = _established(gw, sender)
    first = SessionDescription.parse(invite.body)
    gw.hold("call1")
    reinvite = sender.requests("INVITE")[-1]
    assert reinvite.to.tag == "b1" and reinvite.cseq.seq == invite.cseq.seq + 1
    offer = SessionDescription.parse(reinvite.body)
    assert [m.direction() for m in offer.media] == [setting, setting]
    assert offer.origin.sess_version > first.origin.sess_version
    assert _status(gw) == "ESTABLISHED"
    with pytest.raises(Conflict):
        gw.hold("call1")  # one re-INVITE at a time
    mirrored = {"sendonly": "recvonly", "inactive": "inactive"}[setting]
    gw.sip.transactions.receive(_reply(reinvite, 200, body=_answer_with(mirrored)), PEER)
    assert sender.requests("ACK")[-1].cseq.seq == reinvite.cseq.seq
    assert _status(gw) == "HOLD"
    with pytest.raises(Conflict):
        gw.hold("call1")
    # the callee's own re-INVITE (sendrecv) while held: answered without receiving, still HOLD
    gw.sip.transactions.receive(_sdp_offer(invite, 2, ANSWER), PEER)
    answer = SessionDescription.parse(sender.responses(200)[-1].body)
    assert [m.direction() for m in answer.media] == [setting, setting]
    assert _status(gw) == "HOLD"
    gw.sip.transactions.receive(_in_dialog(invite, "ACK", 2), PEER)
    gw.hold("call1", False)
    unhold = sender.requests("INVITE")[-1]
    assert [m.direction() for m in SessionDescription.parse(unhold.body).media] == [
        "sendrecv", "sendrecv"]
    gw.sip.transactions.receive(_reply(unhold, 200, body=ANSWER), PEER)
    assert _status(gw) == "ESTABLISHED"
    assert gw.find("call1")[0]["history"][-2:] == ["HOLD", "ESTABLISHED"]


def test_hold_for_transfer_is_shown_while_held_and_a_transfer_may_follow(make_gateway, sender):
    """/call/hold with holdForTransfer: the same sendonly re-INVITE; /call/find shows
    holdForTransfer true once HOLD (false before it is answered), a REFER may go from HOLD,
    and /call/unhold clears it."""
    gw = make_gateway()
    invite = _established(gw, sender)
    gw.hold("call1", True, True)
    reinvite = sender.requests("INVITE")[-1]
    assert gw.find("call1")[0]["holdForTransfer"] is False
    gw.sip.transactions.receive(_reply(reinvite, 200, body=_answer_with("recvonly")), PEER)
    assert (_status(gw), gw.find("call1")[0]["holdForTransfer"]) == ("HOLD", True)
    gw.transfer("call1", "carol")
    gw.sip.transactions.receive(make_response(sender.requests("REFER")[-1], 603), PEER)
    gw.hold("call1", False)
    gw.sip.transactions.receive(_reply(sender.requests("INVITE")[-1], 200, body=ANSWER), PEER)
    assert (_status(gw), gw.find("call1")[0]["holdForTransfer"]) == ("ESTABLISHED", False)
    assert invite.call_id == reinvite.call_id


def test_hold_refused_by_the_peer_keeps_the_call_established(make_gateway, sender):
    """A 488 to the hold re-INVITE leaves the call ESTABLISHED, our offer as before; a call
    not established cannot be held (Conflict), an unknown one is NotFound."""
    gw = make_gateway()
    with pytest.raises(NotFound):
        gw.hold("nope")
    gw.startup(_call(call_id="ringing"))
    with pytest.raises(Conflict):
        gw.hold("ringing")
    invite = _established(gw, sender)
    gw.hold("call1")
    reinvite = sender.requests("INVITE")[-1]
    gw.sip.transactions.receive(_reply(reinvite, 488), PEER)
    assert _status(gw) == "ESTABLISHED"
    assert bytes(gw.calls["call1"].offer) == invite.body
    with pytest.raises(Conflict):
        gw.hold("call1", False)
    gw.sip.transactions.receive(_sdp_offer(invite, 2, make_offer(
        "127.0.0.1", audio_port=6000, video_port=6002, session_id=9, version=2)), PEER)
    with pytest.raises(Conflict):
        gw.hold("call1")  # the callee's re-INVITE awaits its ACK (RFC 3261 §14.1)
    gw.sip.transactions.receive(_in_dialog(invite, "ACK", 2), PEER)
    gw.hold("call1")  # may be tried again


def _notify(invite, cseq, fragment: bytes, event="refer"):
    return _in_dialog(invite, "NOTIFY", cseq, fragment, [
        ("Event", event), ("Subscription-State", "active;expires=60"),
        ("Content-Type", "message/sipfrag;version=2.0")])


def test_transfer_sends_refer_and_follows_the_sipfrag_notifies(make_gateway, sender):
    """/call/transfer REFERs in the dialog with Refer-To; 202 is ACCEPTED, NOTIFY sipfrag
    100 TRYING and 200 COMPLETED (each answered 200, each reported), then BYE."""
    gw = make_gateway()
    seen = []
    gw.transfer_observers.append(lambda call, code, reason: seen.append(
        (call.transfer_status, code)))
    invite = _established(gw, sender)
    gw.transfer("call1", "carol")
    refer, = sender.requests("REFER")
    assert refer.to.tag == "b1" and refer.cseq.seq == invite.cseq.seq + 1
    assert refer.get("Refer-To") == "<sip:carol@127.0.0.1>"
    with pytest.raises(Conflict):
        gw.transfer("call1", "dave")  # one at a time
    gw.sip.transactions.receive(make_response(refer, 202), PEER)
    found = gw.find("call1")[0]
    assert (found["transferStatus"], found["target"]) == ("ACCEPTED", "sip:carol@127.0.0.1")
    gw.sip.transactions.receive(_notify(invite, 1, b"SIP/2.0 100 Trying\r\n"), PEER)
    assert _status(gw) == "ESTABLISHED" and gw.find("call1")[0]["transferStatus"] == "TRYING"
    gw.sip.transactions.receive(_notify(invite, 2, b"SIP/2.0 200 OK\r\n"), PEER)
    assert [r.status for r in sender.responses()] == [200, 200]
    assert seen == [("PENDING", 0), ("ACCEPTED", 202), ("TRYING", 100), ("COMPLETED", 200)]
    bye, = sender.requests("BYE")
    last_two = [m for m, *_ in sender.sent if getattr(m, "method", None) == "BYE"
                or getattr(m, "status", None) == 200][-2:]
    assert [getattr(m, "method", None) for m in last_two] == [None, "BYE"]  # 200 first
    gw.sip.transactions.receive(make_response(bye, 200), PEER)
    found = gw.find("call1")[0]
    assert (found["status"], found["info"], found["transferStatus"]) == (
        "FINISH", "Transferred", "COMPLETED")


def test_a_transfer_without_a_final_notify_fails_by_timeout_and_the_call_stays(
        make_gateway, sender, clock):
    """sip_transfer_timeout after the 202 with no final NOTIFY: the transfer is FAILED
    "Timeout" (reported), the call stays ESTABLISHED with no BYE, and a new transfer may
    start; a final NOTIFY in time stops the timer."""
    gw = make_gateway(sip_transfer_timeout=20, rtp_activity_timeout=0)
    seen = []
    gw.transfer_observers.append(lambda call, code, reason: seen.append(
        (call.transfer_status, code, reason)))
    invite = _established(gw, sender)
    gw.transfer("call1", "carol")
    gw.sip.transactions.receive(make_response(sender.requests("REFER")[0], 202), PEER)
    gw.sip.transactions.receive(_notify(invite, 1, b"SIP/2.0 100 Trying\r\n"), PEER)
    clock.advance(19.9)
    assert gw.find("call1")[0]["transferStatus"] == "TRYING"
    clock.advance(0.2)
    found = gw.find("call1")[0]
    assert (found["status"], found["transferStatus"]) == ("ESTABLISHED", "FAILED")
    assert seen[-1] == ("FAILED", 0, "Timeout") and sender.requests("BYE") == []
    gw.transfer("call1", "dave")  # no Conflict: the failed transfer is over
    gw.sip.transactions.receive(make_response(sender.requests("REFER")[1], 202), PEER)
    gw.sip.transactions.receive(_notify(invite, 2, b"SIP/2.0 200 OK\r\n"), PEER)
    clock.advance(30)
    assert gw.find("call1")[0]["transferStatus"] == "COMPLETED"
    assert [s[0] for s in seen].count("FAILED") == 1


def test_transfer_refused_or_failing_keeps_the_call(make_gateway, sender):
    """A 603 to the REFER, or a NOTIFY saying 486, is FAILED and the call stays up; a NOTIFY
    with no transfer is 481, one of another event 489; not established is Conflict."""
    gw = make_gateway()
    gw.startup(_call(call_id="ringing"))
    with pytest.raises(Conflict):
        gw.transfer("ringing", "carol")
    with pytest.raises(NotFound):
        gw.transfer("nope", "carol")
    invite = _established(gw, sender)
    gw.sip.transactions.receive(_notify(invite, 1, b"SIP/2.0 200 OK\r\n"), PEER)
    gw.transfer("call1", "sip:carol@example.com")
    refer = sender.requests("REFER")[-1]
    assert refer.get("Refer-To") == "<sip:carol@example.com>"
    gw.sip.transactions.receive(make_response(refer, 603), PEER)
    assert gw.find("call1")[0]["transferStatus"] == "FAILED" and _status(gw) == "ESTABLISHED"
    gw.transfer("call1", "carol@example.com")  # again
    refer = sender.requests("REFER")[-1]
    gw.sip.transactions.receive(make_response(refer, 202), PEER)
    gw.sip.transactions.receive(_notify(invite, 2, b"SIP/2.0 100 Trying\r\n", event="dialog"), PEER)
    gw.sip.transactions.receive(_notify(invite, 3, b"SIP/2.0 486 Busy Here\r\n"), PEER)
    assert [r.status for r in sender.responses()] == [481, 489, 200]
    assert gw.find("call1")[0]["transferStatus"] == "FAILED" and _status(gw) == "ESTABLISHED"
    assert not sender.requests("BYE")


def test_refer_from_the_callee_is_refused(make_gateway, sender):
    """A REFER from the callee gets 403: sipgw places no call on its behalf."""
    gw = make_gateway()
    invite = _established(gw, sender)
    gw.sip.transactions.receive(_in_dialog(invite, "REFER", 1, extra=[
        ("Refer-To", "<sip:mallory@example.com>")]), PEER)
    assert [r.status for r in sender.responses()] == [403]
    assert _status(gw) == "ESTABLISHED"


def test_hold_from_the_app_pauses_the_rtp_timeout_and_unhold_restarts_it(make_gateway, sender,
                                                                          clock):
    """On hold from the app (the callee answers recvonly and sends nothing) the call stays
    HOLD past rtp_activity_timeout, with its stream; after unhold the timeout counts again."""
    gw = make_gateway(rtp_activity_timeout=60)
    _established(gw, sender)
    stream = gw.calls["call1"].stream
    gw.hold("call1")
    gw.sip.transactions.receive(_reply(sender.requests("INVITE")[-1], 200,
                                   body=_answer_with("recvonly")), PEER)
    clock.pump([1] * 100)
    assert _status(gw) == "HOLD" and gw.calls["call1"].stream is stream
    assert not stream.ended
    gw.hold("call1", False)
    gw.sip.transactions.receive(_reply(sender.requests("INVITE")[-1], 200, body=ANSWER), PEER)
    clock.pump([1] * 30)
    assert _status(gw) == "ESTABLISHED"
    clock.pump([1] * 31)
    assert gw.find("call1")[0]["info"] == "Failed by RTP activity"


def test_a_second_fork_is_acked_and_hung_up_along_its_own_route(make_gateway, sender):
    """A 2xx from a second fork (§13.2.2.4) is ACKed and sent a BYE in its own dialog: its
    Record-Route is followed (Route header, next hop) and the BYE is a transaction; a fork
    whose route names a denied address gets nothing."""
    gw = make_gateway()
    invite = _established(gw, sender)
    fork = _reply(invite, 200, tag="fork2", body=ANSWER,
                  extra=[("Record-Route", "<sip:127.0.0.7:5070;lr>")])
    gw.sip.transactions.receive(fork, PEER)
    to_fork = [(m, host, port) for m, _, host, port in sender.sent
               if getattr(m, "method", "") in ("ACK", "BYE") and m.to.tag == "fork2"]
    assert sorted(m.method for m, _, _ in to_fork) == ["ACK", "BYE"]
    for message, host, port in to_fork:
        assert (host, port) == ("127.0.0.7", 5070)
        assert [str(r) for r in message.routes] == ["<sip:127.0.0.7:5070;lr>"]
    assert _status(gw) == "ESTABLISHED"
    before = len(sender.sent)
    gw.sip.transactions.receive(_reply(invite, 200, tag="fork3", body=ANSWER, extra=[
        ("Record-Route", "<sip:169.254.169.254:5060;lr>")]), PEER)
    assert [s for s in sender.sent[before:] if s[2] == "169.254.169.254"] == []


@pytest.mark.parametrize("ending", ["peer_bye", "terminate", "failed", "registered"])
def test_a_forgotten_call_leaves_no_cyclic_garbage(make_gateway, sender, clock, ending):
    """Once ended and past call_retention, a call's objects (call, SIP session, media
    session, endpoints, stream, timers) are freed as soon as nothing holds them: none waits
    in a reference cycle for the cyclic collector. At hundreds of calls a second every call
    in a cycle reached the oldest generation and full collections walked them all (13 % of
    the daemon's CPU at 500 calls/s, pauses of up to a second)."""
    import gc

    gw = make_gateway(call_retention=5)
    gc.collect()
    gc.disable()
    try:
        if ending == "failed":
            gw.startup(_call(call_id="c9"))
            invite = sender.requests("INVITE")[-1]
            gw.sip.transactions.receive(_reply(invite, 486), PEER)
        elif ending == "registered":  # REGISTER and INVITE challenged, unregistered at the end
            gw.startup(_call(call_id="c9", sip_register_required=True))
            challenge = [("WWW-Authenticate", 'Digest realm="r", nonce="n1", qop="auth"')]
            reg = sender.requests("REGISTER")[-1]
            gw.sip.transactions.receive(make_response(reg, 401, to_tag="r", extra=challenge), PEER)
            reg = sender.requests("REGISTER")[-1]
            gw.sip.transactions.receive(make_response(reg, 200, to_tag="r", extra=[
                ("Expires", "600")]), PEER)
            invite = sender.requests("INVITE")[-1]
            gw.sip.transactions.receive(_reply(invite, 401, extra=challenge), PEER)
            invite = sender.requests("INVITE")[-1]
            assert "Authorization" in dict(invite.headers)
            gw.sip.transactions.receive(_reply(invite, 200, body=ANSWER), PEER)
            gw.sip.transactions.receive(_in_dialog(invite, "BYE", 1), PEER)
            unregister = sender.requests("REGISTER")[-1]
            assert unregister.get("Expires") == "0"
            gw.sip.transactions.receive(make_response(unregister, 200, to_tag="r"), PEER)
            del reg, unregister
        else:
            invite = _established(gw, sender, call_id="c9")
            if ending == "peer_bye":
                gw.sip.transactions.receive(_in_dialog(invite, "BYE", 1), PEER)
            else:
                gw.terminate("c9")
                bye = sender.requests("BYE")[-1]
                gw.sip.transactions.receive(_reply(bye, 200), PEER)
        assert gw.find("c9")[0]["status"] in ("FINISH", "FAILED", "BUSY")
        clock.advance(6)  # past call_retention: forgotten
        clock.advance(64 * T1)  # and past every transaction's timers
        assert gw.find("c9") == []
        del invite
        sender.sent.clear()
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        left = sorted({type(o).__qualname__ for o in gc.garbage
                       if type(o).__module__.startswith("sipgw.")})
        assert left == []
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


@pytest.mark.parametrize("method", ["INVITE", "UPDATE"])
def test_an_offer_in_the_dialog_after_its_bye_gets_481(make_gateway, sender, method):
    """After the BYE the invite usage is gone (RFC 5057 §5.2): a re-INVITE or UPDATE with an
    offer in the old dialog, while the call is still retained for /call/find, is answered
    481 and touches nothing of the ended call (whose media is released)."""
    gw = make_gateway()
    invite = _established(gw, sender)
    gw.sip.transactions.receive(_in_dialog(invite, "BYE", 1), PEER)
    offer = make_offer("127.0.0.1", audio_port=7000, video_port=7002, session_id=9, version=2)
    gw.sip.transactions.receive(_sdp_offer(invite, 2, offer, method=method), PEER)
    assert [(r.status, r.cseq.method) for r in sender.responses()] == [(200, "BYE"), (481, method)]
    assert gw.find("call1")[0]["status"] == "FINISH"


def test_a_retained_call_lets_go_of_its_media_and_stream_when_it_ends(make_gateway, sender):
    """While an ended call is kept for /call/find, its media session, endpoints and stream
    are already freed (by reference counting, the cyclic GC off): a retained call holds only
    what /call/find shows."""
    import gc
    import weakref

    gw = make_gateway(call_retention=30)
    invite = _established(gw, sender)
    call = gw.calls["call1"]
    held = [weakref.ref(o) for o in (call.media_session, call.stream, call.offer,
                                     *call.media_session.endpoints.values())]
    gc.disable()
    try:
        gw.sip.transactions.receive(_in_dialog(invite, "BYE", 1), PEER)
        assert [ref() for ref in held] == [None] * len(held)
    finally:
        gc.enable()
    assert gw.find("call1")[0]["status"] == "FINISH"
