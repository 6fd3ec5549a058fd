"""The callee's REFER (sip_accept_refer, RFC 3515 §2.4): 202, NOTIFYs of the new INVITE's
progress, the transfer target's media into the same stream, the old dialog hung up."""
from fakes import PEER, call_request as _call, reply as _reply
from sipgw.sip.headers import URI
from sipgw.sip.message import Request, make_response
from sipgw.sip.sdp import SessionDescription, make_offer
from sipgw.sip.transaction import new_branch

BOB = bytes(make_offer("127.0.0.1", audio_port=6000, video_port=6002, session_id=9))
CAROL = bytes(make_offer("127.0.0.3", audio_port=7000, video_port=7002, session_id=11))


def _established(gw, sender):
    gw.startup(_call())
    invite = sender.requests("INVITE")[-1]
    gw.sip.transactions.receive(_reply(invite, 200, body=BOB), PEER)
    return invite


def _in_dialog(method, invite, cseq, tag="b1", extra=()):
    """``method`` from the peer that answered ``invite`` with To tag ``tag``."""
    return Request(method, URI.parse("sip:alice@127.0.0.1:5070"), [
        ("Via", f"SIP/2.0/UDP 127.0.0.1:5060;branch={new_branch()}"),
        ("From", f"<sip:peer@127.0.0.1>;tag={tag}"), ("To", invite.get("From")),
        ("Call-ID", invite.call_id), ("CSeq", f"{cseq} {method}"), ("Max-Forwards", "70"),
        ("Contact", "<sip:peer@127.0.0.1:5060>"), *extra])


def _refer(invite, cseq=1, target="<sip:carol@127.0.0.3:5062>"):
    return _in_dialog("REFER", invite, cseq, extra=[("Refer-To", target)])


def _bye(invite, cseq, tag="b1"):
    return _in_dialog("BYE", invite, cseq, tag)


def _sipfrags(sender, call_id):
    return [(n.body.decode().strip(), n.get("Subscription-State").split(";")[0])
            for n in sender.requests("NOTIFY") if n.call_id == call_id]


def test_an_accepted_refer_calls_the_target_into_the_same_stream_and_hangs_up_the_old_dialog(
        make_gateway, sender):
    """202 and a NOTIFY 100 Trying; an INVITE to the Refer-To target from the same RTP
    ports; its 200 moves the media to the target, keeps the stream and its viewers, NOTIFYs
    200 OK (subscription terminated) and BYEs the old dialog; the call stays ESTABLISHED
    and ends when the target hangs up."""
    gw = make_gateway(sip_accept_refer=True)
    invite = _established(gw, sender)
    call = gw.calls["call1"]
    stream, media_session = call.stream, call.media_session
    viewer = stream.subscribe(maxlen=10)
    gw.sip.transactions.receive(_refer(invite), PEER)
    assert [r.status for r in sender.responses()] == [202]
    assert _sipfrags(sender, invite.call_id) == [("SIP/2.0 100 Trying", "active")]
    assert sender.requests("NOTIFY")[0].get("Event") == "refer;id=1"
    second = sender.requests("INVITE")[-1]
    assert str(second.uri) == "sip:carol@127.0.0.3:5062" and second.call_id != invite.call_id
    assert [(t, h, p) for m, t, h, p in sender.sent if m is second] == [
        ("UDP", "127.0.0.3", 5062)]
    ports = [m.port for m in SessionDescription.parse(invite.body).media]
    assert [m.port for m in SessionDescription.parse(second.body).media] == ports
    gw.sip.transactions.receive(_reply(second, 180, tag="c1"), PEER)
    gw.sip.transactions.receive(_reply(second, 200, tag="c1", body=CAROL), PEER)
    assert sender.requests("ACK")[-1].call_id == second.call_id
    assert _sipfrags(sender, invite.call_id) == [
        ("SIP/2.0 100 Trying", "active"), ("SIP/2.0 180 Ringing", "active"),
        ("SIP/2.0 200 OK", "terminated")]
    bye, = sender.requests("BYE")
    assert bye.call_id == invite.call_id
    found = gw.find("call1")[0]
    assert (found["status"], found["sessionId"]) == ("ESTABLISHED", second.call_id)
    assert call.stream is stream and gw.streams.get(name="call1") is stream
    assert call.media_session is media_session and not viewer.closed
    assert media_session.endpoints["audio"].sdp_rtp == ("127.0.0.3", 7000)
    gw.sip.transactions.receive(make_response(bye, 200), PEER)
    assert list(gw.sip.sessions) == [second.call_id]  # the old dialog is forgotten
    gw.sip.transactions.receive(_bye(second, 1, tag="c1"), PEER)
    found = gw.find("call1")[0]
    assert (found["status"], found["info"]) == ("FINISH", "Normal call clearing")


def test_a_busy_or_denied_target_is_notified_and_the_call_stays(make_gateway, sender):
    """The target answering 486 gives a final NOTIFY 486 and the call goes on with the
    callee; a target sip_egress denies is never sent anything (final NOTIFY 503)."""
    gw = make_gateway(sip_accept_refer=True, sip_egress_deny="127.0.0.9")
    invite = _established(gw, sender)
    gw.sip.transactions.receive(_refer(invite), PEER)
    second = sender.requests("INVITE")[-1]
    gw.sip.transactions.receive(_reply(second, 486, tag="c1"), PEER)
    assert _sipfrags(sender, invite.call_id)[-1] == ("SIP/2.0 486 Busy Here", "terminated")
    assert sender.requests("BYE") == [] and gw.find("call1")[0]["status"] == "ESTABLISHED"
    assert list(gw.sip.sessions) == [invite.call_id]
    gw.sip.transactions.receive(_refer(invite, 2, "<sip:mallory@127.0.0.9>"), PEER)
    assert len(sender.requests("INVITE")) == 2  # nothing to the denied target
    assert _sipfrags(sender, invite.call_id)[-1] == ("SIP/2.0 503 Service Unavailable",
                                                     "terminated")
    assert gw.find("call1")[0]["status"] == "ESTABLISHED"


def test_the_transferor_hanging_up_at_once_leaves_the_call_to_the_target(make_gateway, sender):
    """A BYE from the callee right after the 202 (blind transfer) does not end the call:
    the target's answer carries it on, with no NOTIFY or BYE to the old dialog."""
    gw = make_gateway(sip_accept_refer=True)
    invite = _established(gw, sender)
    gw.sip.transactions.receive(_refer(invite), PEER)
    gw.sip.transactions.receive(_bye(invite, 2), PEER)
    assert gw.find("call1")[0]["status"] == "ESTABLISHED"
    second = sender.requests("INVITE")[-1]
    gw.sip.transactions.receive(_reply(second, 200, tag="c1", body=CAROL), PEER)
    assert len(sender.requests("NOTIFY")) == 1 and sender.requests("BYE") == []
    assert gw.find("call1")[0]["status"] == "ESTABLISHED"
    assert list(gw.sip.sessions) == [second.call_id]
    gw.terminate("call1")
    bye, = sender.requests("BYE")
    assert bye.call_id == second.call_id


def test_a_refer_with_replaces_or_while_one_is_carried_out_is_refused(make_gateway, sender):
    """Blind transfer only: a Refer-To with headers gets 403; a second REFER while the
    first is carried out gets 491; off by default (403)."""
    gw = make_gateway(sip_accept_refer=True)
    invite = _established(gw, sender)
    gw.sip.transactions.receive(_refer(
        invite, 1, "<sip:carol@127.0.0.3?Replaces=abc%3Bto-tag%3D1%3Bfrom-tag%3D2>"), PEER)
    gw.sip.transactions.receive(_refer(invite, 2), PEER)
    gw.sip.transactions.receive(_refer(invite, 3), PEER)
    assert [r.status for r in sender.responses()] == [403, 202, 491]
    off = make_gateway()
    gw2_invite = _established(off, sender)
    off.sip.transactions.receive(_refer(gw2_invite, 1), PEER)
    assert sender.responses()[-1].status == 403


def test_terminate_while_the_target_rings_hangs_up_both_and_ends_the_call(make_gateway, sender):
    """/call/terminate while the transfer target rings: CANCEL to the target, BYE to the
    callee, and the call ends FINISH once the BYE is answered (the transfer does not keep
    it alive)."""
    gw = make_gateway(sip_accept_refer=True)
    invite = _established(gw, sender)
    gw.sip.transactions.receive(_refer(invite), PEER)
    second = sender.requests("INVITE")[-1]
    gw.sip.transactions.receive(_reply(second, 180, tag="c1"), PEER)
    gw.terminate("call1")
    cancel, = sender.requests("CANCEL")
    bye, = sender.requests("BYE")
    assert (cancel.call_id, bye.call_id) == (second.call_id, invite.call_id)
    gw.sip.transactions.receive(make_response(bye, 200), PEER)
    found = gw.find("call1")[0]
    assert (found["status"], found["info"]) == ("FINISH", "Stopped by rest /terminate")
    gw.sip.transactions.receive(make_response(cancel, 200), PEER)
    gw.sip.transactions.receive(_reply(second, 487, tag="c1"), PEER)
    assert gw.find("call1")[0]["status"] == "FINISH" and gw.sip.sessions.keys() <= {
        invite.call_id}


def test_the_target_gets_new_srtp_keys_and_a_plain_answer_ends_srtp(make_gateway, sender):
    """sip_srtp=optional, the callee answered with keys: the INVITE to the transfer target
    offers new keys (a new dialog), and the target's answer without a=crypto makes the
    call's media plain RTP from then on."""
    import base64
    gw = make_gateway(sip_accept_refer=True, sip_srtp="optional")
    gw.startup(_call())
    invite = sender.requests("INVITE")[-1]
    key = base64.b64encode(bytes(range(30))).decode()
    tags = [v.split()[0] for m in SessionDescription.parse(invite.body).media
            for n, v in m.attributes if n == "crypto" and "_80" in v]
    keyed = BOB.replace(b"a=rtcp:6001", f"a=crypto:{tags[0]} AES_CM_128_HMAC_SHA1_80 "
                        f"inline:{key}\r\na=rtcp:6001".encode())
    gw.sip.transactions.receive(_reply(invite, 200, body=keyed), PEER)
    session = gw.calls["call1"].media_session
    assert session.endpoints["audio"].srtp is not None
    gw.sip.transactions.receive(_refer(invite), PEER)
    second = sender.requests("INVITE")[-1]

    def keys(body):
        return {v.split()[2] for m in SessionDescription.parse(body).media
                for n, v in m.attributes if n == "crypto"}
    assert keys(second.body) and not keys(second.body) & keys(invite.body)
    gw.sip.transactions.receive(_reply(second, 200, tag="c1", body=CAROL), PEER)
    assert gw.find("call1")[0]["status"] == "ESTABLISHED"
    assert session.endpoints["audio"].srtp is None
