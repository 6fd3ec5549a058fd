"""The INVITE session alone (sipgw/sip/invite.py): SIP only, its user a recording fake, on
one Clock; the whole calls with media are in tests/gateway/test_call.py."""
from types import SimpleNamespace

from fakes import PEER, reply
from sipgw.sip import invite
from sipgw.sip.message import Request
from sipgw.sip.sdp import SDPError

OFFER = b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
ANSWER = OFFER.replace(b"o=- 1 1", b"o=- 2 2")


class RecordingUser:
    """An InviteUser that keeps what its session told it and answers with fixed bodies."""

    def __init__(self, unusable: str = ""):
        self.events = []
        self.unusable = unusable

    def prepare_offer(self):
        self.events.append("prepare_offer")
        return True

    def offer_body(self):
        return OFFER

    def provisional(self, response):
        self.events.append(("provisional", response.status))

    def answered(self, response):
        self.events.append(("answered", response.body))
        return self.unusable

    def established(self, response):
        self.events.append("established")

    def refreshed(self, response):
        self.events.append("refreshed")

    def answer_offer(self, request):
        if b"bad" in request.body:
            raise SDPError("bad offer")
        self.events.append(("offer", request.body))
        return ANSWER

    def reoffer(self):
        return OFFER

    def ack_answer(self, offer, body):
        self.events.append(("ack_answer", offer, body))

    def transfer_changed(self, status, sip_status, reason):
        self.events.append(("transfer", status, sip_status))

    def refer_refusal(self, target):
        return ""

    def referred(self, target):
        self.events.append(("referred", str(target)))

    def session_ended(self, kind, reason):
        self.events.append(("ended", kind, reason))


def _params(**fields):
    values = dict(call_id="s1", callee="bob", sip_login="alice", sip_domain="127.0.0.1",
                  sip_port=5060, sip_outbound_proxy="", visible_name="", auth_name="alice",
                  sip_password="pw", sip_register_required=False)
    values.update(fields)
    return SimpleNamespace(**values)


def _start(make_ua, clock, user, **settings):
    ua = make_ua(**settings)
    session = ua.session(_params(), user)
    session.start()
    clock.advance(0)
    return ua, session


def _in_dialog(invite_request, method, cseq, body=b"", content_type="application/sdp"):
    headers = [("Via", "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK" + method + str(cseq)),
               ("From", f"<sip:bob@127.0.0.1>;tag=b1"), ("To", invite_request.get("From")),
               ("Call-ID", invite_request.call_id), ("CSeq", f"{cseq} {method}"),
               ("Contact", "<sip:bob@127.0.0.1:5060>"), ("Max-Forwards", "70")]
    if body:
        headers.append(("Content-Type", content_type))
    return Request(method, invite_request.get("Contact").strip("<>"), headers, body)


def _established(make_ua, sender, clock, user, **settings):
    ua, session = _start(make_ua, clock, user, **settings)
    sent = sender.requests("INVITE")[0]
    ua.transactions.receive(reply(sent, 200, body=ANSWER), PEER)
    return ua, session, sent


def test_an_invite_carries_the_users_offer_and_its_answer_establishes_the_session(
        make_ua, sender, clock):
    """The INVITE carries offer_body(); a 180 goes to provisional(), the 200 to answered()
    and, once ACKed, established(); the peer's BYE ends the session FINISH (HUNG_UP)."""
    user = RecordingUser()
    ua, session, sent = _established(make_ua, sender, clock, user)
    assert sent.body == OFFER and sent.call_id == session.sip_call_id
    ack, = sender.requests("ACK")
    assert ack.cseq.seq == sent.cseq.seq and ack.to.tag == "b1"
    ua.transactions.receive(_in_dialog(sent, "BYE", 1), PEER)
    assert user.events == ["prepare_offer", ("answered", ANSWER), "established",
                           ("ended", "FINISH", invite.HUNG_UP)]
    assert sender.responses(200)[-1].cseq.method == "BYE"


def test_a_200_the_user_cannot_use_is_acked_hung_up_and_ends_failed(make_ua, sender, clock):
    """answered() naming a reason: the 2xx is ACKed, a BYE follows and the session ends
    FAILED with that reason, never established."""
    user = RecordingUser(unusable="No common codecs")
    ua, session, sent = _established(make_ua, sender, clock, user)
    assert len(sender.requests("ACK")) == 1 and len(sender.requests("BYE")) == 1
    assert user.events[-1] == ("ended", "FAILED", "No common codecs")
    assert "established" not in user.events


def test_a_peers_offer_is_answered_with_the_users_answer_or_488(make_ua, sender, clock):
    """A re-INVITE with SDP is answered 200 with answer_offer()'s body; one the user cannot
    answer (SDPError) gets 488 and leaves the session up."""
    user = RecordingUser()
    ua, session, sent = _established(make_ua, sender, clock, user)
    ua.transactions.receive(_in_dialog(sent, "INVITE", 2, body=OFFER), PEER)
    ok = sender.responses(200)[-1]
    assert ok.body == ANSWER and ("offer", OFFER) in user.events
    ua.transactions.receive(_in_dialog(sent, "ACK", 2), PEER)
    ua.transactions.receive(_in_dialog(sent, "INVITE", 3, body=b"bad"), PEER)
    assert sender.responses(488) and not session.ended and user.events[-1] == ("offer", OFFER)


def test_an_offerless_reinvite_gets_the_users_reoffer_and_the_ack_answer_goes_back(
        make_ua, sender, clock):
    """A re-INVITE without SDP is answered with reoffer(); the answer in the ACK goes to
    ack_answer() with that offer."""
    user = RecordingUser()
    ua, session, sent = _established(make_ua, sender, clock, user)
    ua.transactions.receive(_in_dialog(sent, "INVITE", 2), PEER)
    assert sender.responses(200)[-1].body == OFFER
    ua.transactions.receive(_in_dialog(sent, "ACK", 2, body=ANSWER), PEER)
    assert user.events[-1] == ("ack_answer", OFFER, ANSWER)


def test_a_busy_callee_ends_the_session_busy(make_ua, sender, clock):
    """486 ends the session BUSY with the status line as the reason; Timer B with
    NO_RESPONSE."""
    user = RecordingUser()
    ua, session = _start(make_ua, clock, user)
    ua.transactions.receive(reply(sender.requests("INVITE")[0], 486), PEER)
    assert user.events[-1] == ("ended", "BUSY", "486 Busy Here")
    other = RecordingUser()
    _start(make_ua, clock, other)
    clock.advance(64 * 0.5 + 0.1)
    assert other.events[-1] == ("ended", "FAILED", invite.NO_RESPONSE)


def test_an_accepted_refer_gets_202_a_trying_notify_and_reaches_the_user(make_ua, sender, clock):
    """sip_accept_refer: the peer's REFER is answered 202, NOTIFY 'SIP/2.0 100 Trying'
    (Event refer;id=CSeq, subscription active) goes at once, then referred(target); a final
    notify_refer ends the subscription; REFER is in Allow."""
    user = RecordingUser()
    ua, session, sent = _established(make_ua, sender, clock, user, sip_accept_refer=True)
    assert "REFER" in sent.get("Allow")
    refer = _in_dialog(sent, "REFER", 4)
    refer.add("Refer-To", "<sip:carol@127.0.0.3>")
    ua.transactions.receive(refer, PEER)
    assert sender.responses()[-1].status == 202
    notify, = sender.requests("NOTIFY")
    assert (notify.get("Event"), notify.get("Subscription-State")) == ("refer;id=4",
                                                                       "active;expires=60")
    assert notify.body == b"SIP/2.0 100 Trying\r\n"
    assert user.events[-1] == ("referred", "sip:carol@127.0.0.3")
    session.notify_refer(486, "Busy Here")
    last = sender.requests("NOTIFY")[-1]
    assert last.body == b"SIP/2.0 486 Busy Here\r\n"
    assert last.get("Subscription-State") == "terminated;reason=noresource"
    session.notify_refer(200, "OK")  # the subscription is over: nothing more
    assert len(sender.requests("NOTIFY")) == 2
