"""Calls with SRTP (SDES, RFC 4568): sip_srtp / sipSrtp choose the offer, the answer
is accepted or refused accordingly, keys reach the media session and never /call/find."""
import base64

from fakes import PEER
from sipgw.sip.headers import URI
from sipgw.sip.message import Request, make_response
from sipgw.sip.sdp import SessionDescription
from sipgw.sip.transaction import new_branch
from fakes import call_request as _call, reply as _reply

KEY = base64.b64encode(bytes(range(30))).decode()


def _answer(offer, proto, crypto=True):
    """baresip-like answer: PCMU + H264, each stream with a=crypto:1 _80 when ``crypto``."""
    tags = {m.kind: next(v for n, v in m.attributes if n == "crypto").split()[0]
            for m in offer.media} if crypto else {}
    lines = ["v=0", "o=- 1 1 IN IP4 127.0.0.1", "s=-", "c=IN IP4 127.0.0.1", "t=0 0",
             f"m=audio 6000 {proto} 0", "a=rtpmap:0 PCMU/8000"]
    if crypto:
        lines.append(f"a=crypto:{tags['audio']} AES_CM_128_HMAC_SHA1_80 inline:{KEY}")
    lines += [f"m=video 6002 {proto} 102", "a=rtpmap:102 H264/90000",
              "a=fmtp:102 profile-level-id=42e01f;packetization-mode=1"]
    if crypto:
        lines.append(f"a=crypto:{tags['video']} AES_CM_128_HMAC_SHA1_80 inline:{KEY}")
    return ("\r\n".join(lines) + "\r\n").encode()


def _offer(sender):
    invite = sender.requests("INVITE")[-1]
    return invite, SessionDescription.parse(invite.body)


def test_mandatory_offers_savp_and_an_answer_with_keys_secures_both_streams(make_gateway, sender):
    """sipSrtp=mandatory: RTP/SAVP with two a=crypto per stream; the answer's keys secure the
    media session; /call/find's sdp shows the answer with its key masked."""
    gw = make_gateway()
    gw.startup(_call(sip_srtp="mandatory"))
    invite, offer = _offer(sender)
    assert [m.proto for m in offer.media] == ["RTP/SAVP", "RTP/SAVP"]
    assert all(sum(n == "crypto" for n, _ in m.attributes) == 2 for m in offer.media)
    gw.sip.transactions.receive(_reply(invite, 200, body=_answer(offer, "RTP/SAVP")), PEER)
    call, = gw.find("call1")
    assert call["status"] == "ESTABLISHED"
    assert KEY not in call["sdp"] and "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:..." in call["sdp"]
    session = gw.calls["call1"].media_session
    assert all(ep.srtp is not None for ep in session.endpoints.values())


def test_mandatory_fails_the_call_on_an_answer_without_keys(make_gateway, sender):
    """An RTP/AVP answer without a=crypto to a mandatory offer: BYE, FAILED with the reason."""
    gw = make_gateway()
    gw.startup(_call(sip_srtp="mandatory"))
    invite, offer = _offer(sender)
    gw.sip.transactions.receive(_reply(invite, 200, body=_answer(offer, "RTP/AVP", crypto=False)), PEER)
    call, = gw.find("call1")
    assert call["status"] == "FAILED"
    assert call["info"] == "SRTP required but the audio answer has no usable a=crypto (RTP/AVP)"
    assert sender.requests("BYE")


def test_optional_setting_offers_avp_with_keys_and_accepts_plain_rtp(make_gateway, sender):
    """sip_srtp=optional (no sipSrtp): RTP/AVP with a=crypto; an answer without keys is
    plain RTP; sipSrtp=off overrides the setting: no a=crypto at all."""
    gw = make_gateway(sip_srtp="optional")
    gw.startup(_call())
    invite, offer = _offer(sender)
    assert [m.proto for m in offer.media] == ["RTP/AVP", "RTP/AVP"] and b"a=crypto:" in invite.body
    gw.sip.transactions.receive(_reply(invite, 200, body=_answer(offer, "RTP/AVP", crypto=False)), PEER)
    assert gw.find("call1")[0]["status"] == "ESTABLISHED"
    assert all(ep.srtp is None for ep in gw.calls["call1"].media_session.endpoints.values())
    gw.startup(_call(call_id="call2", sip_srtp="off"))
    assert b"a=crypto" not in sender.requests("INVITE")[-1].body


NEW_KEY = base64.b64encode(bytes(range(100, 130))).decode()


def _srtp_call(gw, sender):
    """call1, mandatory SRTP, answered with tag-1 keys: (INVITE, our offer)."""
    gw.startup(_call(sip_srtp="mandatory"))
    invite, offer = _offer(sender)
    gw.sip.transactions.receive(_reply(invite, 200, body=_answer(offer, "RTP/SAVP")), PEER)
    return invite, offer


def _reinvite(invite, cseq, body):
    return Request("INVITE", URI.parse("sip:alice@127.0.0.1:5070"), [
        ("Via", f"SIP/2.0/UDP 127.0.0.1:5060;branch={new_branch()}"),
        ("From", "<sip:bob@127.0.0.1>;tag=b1"), ("To", invite.get("From")),
        ("Call-ID", invite.call_id), ("CSeq", f"{cseq} INVITE"), ("Max-Forwards", "70"),
        ("Contact", "<sip:bob@127.0.0.1:5060>"), ("Content-Type", "application/sdp")], body)


def _crypto(sdp_bytes, kind):
    m = next(m for m in SessionDescription.parse(sdp_bytes).media if m.kind == kind)
    return m.proto, [v for n, v in m.attributes if n == "crypto"]


def test_a_savp_reinvite_keeping_its_keys_is_answered_with_ours_unchanged(make_gateway, sender):
    """RFC 4568 §7.1.4: the peer's re-INVITE over RTP/SAVP with the crypto in use is answered
    200 over RTP/SAVP with our key of that tag, and the SRTP contexts stay as they were."""
    gw = make_gateway()
    invite, offer = _srtp_call(gw, sender)
    session = gw.calls["call1"].media_session
    contexts = {kind: ep.srtp for kind, ep in session.endpoints.items()}
    offered = {m.kind: next(v for n, v in m.attributes if n == "crypto") for m in offer.media}
    reoffer = _answer(offer, "RTP/SAVP").replace(b"o=- 1 1", b"o=- 1 2")
    gw.sip.transactions.receive(_reinvite(invite, 2, reoffer), PEER)
    ok = sender.responses(200)[-1]
    assert ok.cseq.method == "INVITE"
    for kind in ("audio", "video"):
        assert _crypto(ok.body, kind) == ("RTP/SAVP", [offered[kind]])  # tag 1, our key
    assert {kind: ep.srtp for kind, ep in session.endpoints.items()} == contexts
    assert gw.find("call1")[0]["status"] == "ESTABLISHED"


def test_a_reinvite_with_a_new_key_rekeys_both_directions(make_gateway, sender):
    """The peer's re-INVITE with a new inline key: our answer carries a new key of ours too
    and the media session gets new SRTP contexts; /call/find still masks the keys."""
    gw = make_gateway()
    invite, offer = _srtp_call(gw, sender)
    session = gw.calls["call1"].media_session
    before = session.endpoints["audio"].srtp
    offered = next(v for n, v in offer.media[0].attributes if n == "crypto")
    reoffer = _answer(offer, "RTP/SAVP").replace(KEY.encode(), NEW_KEY.encode())
    gw.sip.transactions.receive(_reinvite(invite, 2, reoffer), PEER)
    ok = sender.responses(200)[-1]
    proto, (ours,) = _crypto(ok.body, "audio")
    assert proto == "RTP/SAVP" and ours.split()[:2] == ["1", "AES_CM_128_HMAC_SHA1_80"]
    assert ours != offered
    assert session.endpoints["audio"].srtp is not before
    assert NEW_KEY not in gw.find("call1")[0]["sdp"]


def test_a_plain_reinvite_in_an_srtp_call_is_refused(make_gateway, sender):
    """No downgrade: a re-INVITE over RTP/AVP without a=crypto in an SRTP call gets 488 and
    the call keeps its SRTP."""
    gw = make_gateway()
    invite, offer = _srtp_call(gw, sender)
    gw.sip.transactions.receive(_reinvite(invite, 2, _answer(offer, "RTP/AVP", crypto=False)),
                                PEER)
    refused, = sender.responses(488)
    assert "no usable a=crypto" in refused.get("Warning")
    assert gw.find("call1")[0]["status"] == "ESTABLISHED"
    assert all(ep.srtp is not None for ep in gw.calls["call1"].media_session.endpoints.values())
