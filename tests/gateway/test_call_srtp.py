"""The user agent with SRTP (SDES, RFC 4568): sip_srtp / sipSrtp choose the offer, the answer
is accepted or refused accordingly, keys reach the media session and never /call/find."""
import base64

from fakes import PEER
from sipgw.sip.message import make_response
from sipgw.sip.sdp import SessionDescription
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
