"""The INVITE session (RFC 3261 §13-15): the SIP side of one outgoing call.

``InviteSession`` is the client INVITE with its dialog usage, as PJSIP's ``sip_inv.c``
and sipgo's ``DialogClientSession`` are: it sends the INVITE (following RFC 3263
failover, redirects, challenges and 422), PRACKs reliable provisionals (RFC 3262,
``prack.py``), refreshes the session (RFC 4028, ``timer.py``), sends re-INVITE, UPDATE,
INFO, REFER, CANCEL and BYE in its dialog, and answers what the peer sends there.

It knows no media and no WCS status: SDP bodies come from and go to its ``user`` (the
gateway's call, ``sipgw/gateway/call.py``) through the methods ``InviteUser`` lists, and
so do the session's progress and its end.
"""
from __future__ import annotations

import collections
import functools
import random
from typing import Protocol

from twisted.internet import defer
from twisted.logger import Logger

from .. import entropy
from . import redirect
from . import sdp as sdplib
from .auth import ChallengeAnswerer, DigestClient
from .body import sdp_of
from .dialog import Dialog
from .headers import Address, HeaderError, URI
from .message import Request, Response, make_response
from .prack import ReliableProvisionals
from .registration import Registration, RegistrationFailed, account_key, new_tag
from .resolver import Destination, fails_over
from .timer import SessionTimer
from .transaction import T1, T2, new_branch

log = Logger(namespace="sipgw.sip.invite")

ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, PRACK, UPDATE, NOTIFY"


def allow(config) -> str:
    """Our Allow header: REFER too when the peer's transfers are accepted (sip_accept_refer)."""
    return ALLOW + ", REFER" if config.sip_accept_refer else ALLOW

CREDENTIALS = ("Authorization", "Proxy-Authorization")
# Reasons of a session's end that the SIP layer names; the gateway shows its own words for
# the first two (WCS's 'Normal call clearing', 'Failed by request timeout').
HUNG_UP = "BYE from the peer"
NO_RESPONSE = "No response to the INVITE"
SESSION_EXPIRED = "Session timer expired"
TRANSFERRED = "Transferred"
# How a session ends: the kinds ``InviteUser.session_ended`` is given.
FINISH, FAILED, BUSY = "FINISH", "FAILED", "BUSY"
# ACKs of our re-INVITEs' 2xx kept for their retransmissions (which stop within 64*T1): the
# latest few, so a long call with session refreshes does not keep one per refresh.
ACKS_KEPT = 4
TRANSFER_LIVE = ("PENDING", "ACCEPTED", "TRYING")


class InviteUser(Protocol):
    """What an ``InviteSession`` asks of the layer above (the gateway's call)."""

    def prepare_offer(self) -> bool:
        """Our first SDP offer made (media bound); False when the call ended instead."""

    def offer_body(self) -> bytes:
        """Our current SDP offer (INVITE, refresh re-INVITE)."""

    def provisional(self, response: Response) -> None:
        """A 1xx to the INVITE (with an early answer in its body, maybe)."""

    def answered(self, response: Response) -> str:
        """The first 2xx: its answer taken; "" if media can flow, else why not."""

    def established(self, response: Response) -> None:
        """The session is up (after the ACK of the first 2xx)."""

    def refreshed(self, response: Response) -> None:
        """A 2xx with SDP to a refresh re-INVITE of ours."""

    def answer_offer(self, request: Request) -> bytes:
        """Our SDP answer to a peer's in-dialog offer; raises sdp.SDPError."""

    def reoffer(self):
        """A new version of our offer for the 2xx to an offerless re-INVITE (None: none)."""

    def ack_answer(self, offer, body: bytes) -> None:
        """The answer in an ACK to ``reoffer()``'s ``offer``; raises sdp.SDPError."""

    def transfer_changed(self, status: str, sip_status: int, reason: str) -> None:
        """Our REFER's progress moved (``InviteSession.transfer_status``)."""

    def refer_refusal(self, target: URI) -> str:
        """Why the peer's REFER to ``target`` cannot be carried out now; "" if it can."""

    def referred(self, target: URI) -> None:
        """The peer's REFER to ``target`` was accepted (sip_accept_refer): place the new
        INVITE; its progress goes back with ``notify_refer``."""

    def session_ended(self, kind: str, reason: str) -> None:
        """The session is over: ``kind`` FINISH, FAILED or BUSY, ``reason`` why."""


def uri_transport(uri: URI) -> str | None:
    """The transport a URI asks for: its transport parameter, TLS for sips:, else None."""
    if "transport" in uri.params or uri.scheme == "sips":
        return uri.transport.upper()
    return None


class InviteSession:
    """One outgoing INVITE and its dialog (§13.2, §12), driven by ``ua`` (sipgw.sip.ua).

    ``params`` holds the call's SIP parameters (``sipgw.calls.CallRequest`` has them:
    callee, sip_login, sip_domain, sip_port, sip_outbound_proxy, visible_name, auth_name,
    sip_password, sip_register_required, call_id for the log)."""

    def __init__(self, ua, params, user: InviteUser):
        self.ua = ua
        self.params = params
        self.user = user
        self.name = params.call_id  # how the log names this session
        self.sip_call_id = f"{entropy.token_hex(12)}@sipgw"
        self.local_tag = new_tag()
        self.cseq = 0
        self.sip_status = 0  # the last status the INVITE got
        self.dest: Destination | None = None
        self.hops: dict[tuple, Destination] = {}  # in-dialog next hops named by host name
        self.invite: Request | None = None
        self.invite_tx = None
        self.provisional = False
        self.dialog: Dialog | None = None
        self.confirmed = False  # the first 2xx answered with media: the session is up
        self.ended = False
        self.ack: Request | None = None
        self.registration: Registration | None = None
        self.cancel_requested = False
        self.cancel_reason = ""
        self._auth = ChallengeAnswerer(DigestClient(params.auth_name, params.sip_password))
        self._timers: list = []
        self._pending_2xx: tuple | None = None  # (response, source, interval, elapsed)
        self._reoffer = None  # our offer in a 200 to an offerless re-INVITE, answered in the ACK
        self._reinviting = False  # a re-INVITE of ours (not a refresh) awaits its answer
        self.reliable = ReliableProvisionals()  # RFC 3262, per INVITE sent
        self.early: dict[str, Dialog] = {}  # early dialogs by To tag (PRACKs go in them)
        self.acks: dict[int, Request] = {}  # ACKs of our re-INVITEs, by CSeq
        self.peer_allow: list[str] = []
        self.target: URI | None = None  # the Request-URI a redirect gave (§8.1.3.4)
        self.tried: set[tuple] = set()  # targets the INVITE went to (loop detection)
        self.redirects = 0
        config = ua.config
        self.timer = None
        if config.sip_session_timers:
            self.timer = SessionTimer(ua.reactor, expires=config.sip_session_expires,
                                      min_se=config.sip_min_se, refresh=self.refresh_session,
                                      expire=self.session_expired)
        self._bye_sent = False
        self._cancel_sent = False
        self._infos: collections.deque = collections.deque()  # INFOs waiting their turn
        self._info_out = False
        self.transfer_status: str | None = None  # our REFER's progress (see refer())
        self.transfer_target: str | None = None
        self._transfer_timer = None
        self.refer_in: Request | None = None  # the peer's REFER we are carrying out

    # -- life ----------------------------------------------------------------
    def later(self, delay: float, fn, *args):
        call = self.ua.reactor.callLater(delay, fn, *args)
        self._timers.append(call)
        return call

    def later_fixed(self, delay: float, fn, *args):
        """``later`` for a delay that is a constant or a setting, never a value a peer
        chose: one reactor timer per such length for all sessions (``timerqueue.py``)."""
        call = self.ua.timers.callLater(delay, fn, *args)
        self._timers.append(call)
        return call

    def _end(self, kind: str, reason: str) -> None:
        if not self.ended:
            self.user.session_ended(kind, reason)

    def close(self) -> None:
        """The call is over (whoever decided it): no timer fires any more, the account's
        registration is released (unregistered after its last call)."""
        self.ended = True
        for call in self._timers:
            if call.active():
                call.cancel()
        self._timers = []
        if self.timer is not None:
            self.timer.stop()
            self.timer = None  # it holds our methods: no cycle left for the cyclic collector
        self.invite_tx = None  # (the same: its on_response is ours)
        registration, self.registration = self.registration, None
        if registration is not None:
            registration.release()
        # Kept for call_retention and late retransmissions only: the headers parsed from our
        # INVITE and ACK are let go (parsed again if read), less for the cyclic GC to walk.
        for message in (self.invite, self.ack):
            if message is not None:
                message.forget_parsed()

    # -- placing the INVITE ------------------------------------------------------
    def start(self) -> None:
        """Locate the first hop, register when asked, have the offer made, send the INVITE."""
        defer.ensureDeferred(self._place()).addErrback(self._place_failed)

    def start_to(self, target: URI, registration: Registration | None = None) -> None:
        """Place the INVITE to ``target`` (a REFER's Refer-To, RFC 3515 §2.4.2): to its host
        (RFC 3263), or through the outbound proxy when there is one; sip_egress checked;
        ``registration`` (the referring call's) used too."""
        self.target = target
        if registration is not None:
            registration.users += 1
            self.registration = registration
        defer.ensureDeferred(self._place_to(target)).addErrback(self._place_failed)

    async def _place_to(self, target: URI) -> None:
        ua = self.ua
        if self.params.sip_outbound_proxy:
            transport, host, port = ua.first_hop(self.params)
        else:
            transport, host, port = uri_transport(target), target.host.strip("[]"), target.port
        try:
            dest = await ua.resolve(transport, host, port)
        except Exception as exc:
            self._end(FAILED, f"Cannot resolve {host}: {exc.__class__.__name__}")
            return
        allowed = ua.allowed(host, dest)
        if allowed is None:
            self._end(FAILED, f"Transfer to {host} denied by sip_egress")
            return
        self.dest = allowed
        self._invite_with_offer()

    def _invite_with_offer(self) -> None:
        """The first INVITE, once the user made its offer; the ring timeout from then."""
        if self.ended or not self.user.prepare_offer() or self.ended:
            return
        self.send_invite()
        if self.ua.config.sip_ring_timeout:
            self.later_fixed(self.ua.config.sip_ring_timeout, self._ring_timeout)

    async def _place(self) -> None:
        ua, r = self.ua, self.params
        transport, host, port = ua.first_hop(r)
        try:
            dest = await ua.resolve(transport, host, port)
        except Exception as exc:  # DNS failure: the call fails, the daemon goes on
            self._end(FAILED, f"Cannot resolve {host}: {exc.__class__.__name__}")
            return
        if self.ended:  # terminated during the lookup: use no registration
            return
        # The name was checked at the REST layer; each address it resolved to is checked here.
        field = "sipOutboundProxy" if r.sip_outbound_proxy else "sipDomain"
        allowed = ua.allowed(host, dest)
        if allowed is None:
            self._end(FAILED, ua.egress_refusal(host, field, dest))
            return
        self.dest = allowed
        if r.sip_register_required:
            key = account_key(r)
            registration = ua.registrations.get(key)
            if registration is None:
                registration = ua.registrations[key] = Registration(ua, r, self.dest)
            registration.users += 1
            self.registration = registration
            try:
                await registration.ensure()
            except RegistrationFailed as exc:
                self._end(FAILED, str(exc))
                return
            self.dest = registration.dest  # the target that answered (RFC 3263 §4.3)
        self._invite_with_offer()

    def _place_failed(self, failure) -> None:
        log.failure("placing call {call_id} failed", failure, call_id=self.name)
        self._end(FAILED, "Internal error")

    def _ring_timeout(self) -> None:
        if self.dialog is None:
            self.fail(f"No answer within {self.ua.config.sip_ring_timeout} s")

    def target_uri(self) -> URI:
        if self.target is not None:
            return self.target
        r = self.params
        user, _, host = r.callee.partition("@")
        port = None
        if not host:
            # sipPort is the SIP server's port: it stays in the Request-URI when an outbound
            # proxy carries the request, so the server still recognises itself.
            host = r.sip_domain
            if r.sip_port != 5060:
                port = r.sip_port
        elif host.count(":") == 1 or host.startswith("["):  # callee user@host:port, [v6]:port
            try:
                parsed = URI.parse(f"sip:{host}")
                host, port = parsed.host, parsed.port
            except HeaderError:
                pass
        # §25.1: '#' is not in user-unreserved ("*72#100" dialled as a feature code).
        return URI("sip", host, user=user.replace("#", "%23"), port=port)

    def send_invite(self, auth_headers=()) -> None:
        ua, r = self.ua, self.params
        self.cseq += 1
        target = self.target_uri()
        aor = URI("sip", r.sip_domain, user=r.sip_login)
        display = f'"{r.visible_name}" ' if r.visible_name else ""
        headers = [("Via", ua.via(self.dest)), ("Max-Forwards", "70"),
                   ("From", f"{display}<{aor}>;tag={self.local_tag}"), ("To", f"<{target}>"),
                   ("Call-ID", self.sip_call_id), ("CSeq", f"{self.cseq} INVITE"),
                   ("Contact", self.contact()), ("Allow", allow(ua.config)),
                   ("Accept", "application/sdp"),
                   ("User-Agent", ua.config.sip_user_agent), ("Content-Type", "application/sdp")]
        headers += self.extension_headers() + list(auth_headers)
        self.invite = Request("INVITE", target, headers, self.user.offer_body())
        self.provisional = False
        self.reliable, self.early = ReliableProvisionals(), {}
        self._cancel_sent = False
        dest = self.dest
        self.invite_tx = ua.transactions.send_request(
            self.invite, dest.transport, dest.host, dest.port, self.on_invite_response)

    def contact(self) -> str:
        return self.ua.contact(self.params.sip_login, self.dest)

    def extension_headers(self) -> list[tuple[str, str]]:
        """Supported (RFC 3262 §3, RFC 4028 §7.1) and the session timer's headers."""
        timer = self.timer.request_headers() if self.timer is not None else []
        return self.ua.supported() + timer

    def on_invite_response(self, response: Response) -> None:
        status = response.status
        self.sip_status = status
        if getattr(response, "local", False) and status == 500:
            self.fail(response.reason)  # our own handler failed (TransactionLayer)
            return
        if status < 200:
            if self.ua.config.sip_100rel:
                process, rack = self.reliable.rack(response)
                if not process:
                    return  # RFC 3262 §4: a retransmitted (or out of order) reliable 1xx
                if rack is not None:
                    self._prack(response, rack)
            self.provisional = True
            if self.cancel_requested:
                self.send_cancel()
                return
            self.user.provisional(response)
            return
        if status < 300:
            self.on_2xx(response)
            return
        if fails_over(response) and self.dest.rest and not self.cancel_requested:
            # RFC 3263 §4.3: a timeout, transport error or 503: the next target.
            log.info("call {call_id}: {status} from {dest}, trying {next}",
                     call_id=self.name, status=status, dest=repr(self.dest),
                     next=repr(self.dest.next()))
            self.dest = self.dest.next()
            self.send_invite()
            return
        if 300 <= status < 400 and not self.cancel_requested and self._redirect(response):
            return
        if status in (401, 407) and not self.cancel_requested:
            headers = self._auth.headers_for(response, "INVITE", str(self.invite.uri),
                                             self.invite.body)
            if headers is not None:
                self.send_invite(headers)
                return
        if (status == 422 and self.timer is not None and not self.cancel_requested
                and self.timer.too_small(response)):
            # RFC 4028 §7.4: again with the Min-SE asked for (and the credentials known).
            self.send_invite(self._auth.credentials("INVITE", str(self.invite.uri),
                                                    self.invite.body) or ())
            return
        if self.cancel_requested and status == 487:
            self._end(FINISH, self.cancel_reason)
        elif getattr(response, "local", False) and status == 408:
            self._end(FAILED, NO_RESPONSE)
        elif status in (486, 600):
            self._end(BUSY, f"{status} {response.reason}")
        else:
            self._end(FAILED, f"{status} {response.reason}")

    def _redirect(self, response: Response) -> bool:
        """§8.1.3.4: the INVITE again to the best Contact of a 3xx (305: through it), at most
        sip_max_redirects times, never to a target tried before (a loop)."""
        if self.redirects >= self.ua.config.sip_max_redirects:
            return False
        self.tried.add(redirect.key(self.invite.uri))
        uri = redirect.next_target(response, self.tried)
        if uri is None:
            return False
        self.redirects += 1
        self.tried.add(redirect.key(uri))
        proxy = response.status == 305  # §21.3.6: the same request, through that proxy
        if not proxy:
            self.target = uri
        log.info("call {call_id}: {status} to {uri}", call_id=self.name,
                 status=response.status, uri=str(uri))
        self.invite, self.provisional = None, False  # till the next INVITE: nothing to CANCEL
        defer.ensureDeferred(self._follow(uri, proxy)).addErrback(self._place_failed)
        return True

    async def _follow(self, uri: URI, proxy: bool) -> None:
        """Send a redirected INVITE (§8.1.3.4) to the new target's host, or through the
        outbound proxy when there is one; a 305's proxy is always used."""
        if proxy or not self.params.sip_outbound_proxy:
            host = uri.host.strip("[]")
            try:
                dest = await self.ua.resolve(uri_transport(uri), host, uri.port)
            except Exception as exc:
                self._end(FAILED, f"Cannot resolve {host}: {exc.__class__.__name__}")
                return
            allowed = self.ua.allowed(host, dest)
            if allowed is None:
                self._end(FAILED, f"Redirect to {host} denied by sip_egress")
                return
            self.dest = allowed
        if not self.ended:
            self.send_invite()

    def _prack(self, response: Response, rack: str) -> None:
        """RFC 3262 §7.2: PRACK a reliable provisional response in its early dialog."""
        tag = response.to.tag
        if not tag:
            return
        dialog = self.early.get(tag)
        if dialog is None:
            try:
                dialog = self.early[tag] = Dialog.from_uac(self.invite, response)
            except (ValueError, HeaderError):
                return
        prack = dialog.create_request("PRACK", via=self.ua.via(self.dest_for_dialog(dialog)),
                                      headers=[("RAck", rack)])
        self.send_request(prack, dialog=dialog)

    def on_2xx(self, response: Response) -> None:
        """A 2xx to the INVITE, first or retransmitted (§13.2.2.4)."""
        if self.dialog is None:
            try:
                self.dialog = Dialog.from_uac(self.invite, response)
            except (ValueError, HeaderError) as exc:
                log.warn("call {call_id}: bad 2xx: {error}", call_id=self.name, error=str(exc))
                self._end(FAILED, f"Bad 200 OK: {exc}")
                return
            self.ack = self._ack_for(self.invite, self.invite.cseq.seq)
            early = self.early.get(self.dialog.remote_tag)
            if early is not None:  # its PRACKs used CSeq numbers of the dialog (RFC 3262 §7.2)
                self.dialog.local_seq = max(self.dialog.local_seq, early.local_seq)
        elif response.to.tag != self.dialog.remote_tag:
            # A second fork answered (§13.2.2.4): ACK it and hang it up.
            self._ack_and_bye_fork(response)
            return
        self.ua.send_in_dialog(self, self.acks.get(response.cseq.seq, self.ack))
        if self.ended:
            # The call ended before this answer (ring timeout, a CANCEL that crossed the
            # 200, a local failure): the callee is answered now, so hang it up (§15).
            self._send_bye_request()
            return
        if self.confirmed:
            return  # a retransmitted 2xx: the ACK above is all it needs
        unusable = self.user.answered(response)
        if self.cancel_requested:
            self.bye(self.cancel_reason)
            return
        if unusable:
            # Media cannot flow: never show ESTABLISHED while the BYE is outstanding.
            self.bye(unusable, FAILED, wait=False)
            return
        self.peer_allow = [m.strip().upper() for m in response.get_all("Allow")]
        if self.timer is not None:
            self.timer.answered(response)
        self.confirmed = True
        self.user.established(response)

    def _ack_for(self, invite: Request, cseq: int) -> Request:
        """The ACK of a 2xx with CSeq number ``cseq`` to ``invite`` (§13.2.2.4): in the
        dialog, a new branch, the INVITE's credentials (§22.1)."""
        return self.dialog.create_request(
            "ACK", via=self.ua.via(self.dest_for_dialog(), new_branch()), cseq=cseq,
            headers=[(k, v) for k, v in invite.headers if k in CREDENTIALS])

    def _ack_2xx(self, invite: Request, response: Response) -> None:
        """ACK the 2xx ``response`` to our re-INVITE ``invite``, end to end; kept by CSeq
        for the 2xx's retransmissions (``on_2xx``)."""
        ack = self.acks[response.cseq.seq] = self._ack_for(invite, response.cseq.seq)
        while len(self.acks) > ACKS_KEPT:
            del self.acks[next(iter(self.acks))]
        self.ua.send_in_dialog(self, ack)

    def _ack_and_bye_fork(self, response: Response) -> None:
        """A second fork's dialog, ACKed and hung up like any other: its own route set and
        remote target, named hops resolved, sip_egress checked (§12.2.1.1)."""
        try:
            fork = Dialog.from_uac(self.invite, response)
        except (ValueError, HeaderError):
            return
        via = self.ua.via(self.dest_for_dialog(fork))
        ack = fork.create_request("ACK", via=via, cseq=self.invite.cseq.seq,
                                  headers=[(k, v) for k, v in self.invite.headers
                                           if k in CREDENTIALS])
        self.ua.send_in_dialog(self, ack, dialog=fork)
        self.send_request(fork.create_request("BYE", via=self.ua.via(self.dest_for_dialog(fork))),
                          lambda r: None, dialog=fork)

    def stray_2xx(self, response: Response) -> None:
        """A 2xx retransmission of the INVITE after its transaction ended: ACK again."""
        if self.invite is not None:
            self.on_2xx(response)

    # -- session timer (RFC 4028) -------------------------------------------------
    def refresh_session(self) -> None:
        """§10: refresh by UPDATE when the peer allows it (no SDP), else by re-INVITE with
        our unchanged offer (RFC 3264 §8: the same o= version)."""
        if self.ended or self.dialog is None:
            return
        headers = self.extension_headers()
        via = self.ua.via(self.dest_for_dialog())
        if "UPDATE" in self.peer_allow:
            request = self.dialog.create_request("UPDATE", via=via, contact=self.contact(),
                                                 headers=headers)
        else:
            request = self.dialog.create_request(
                "INVITE", via=via, contact=self.contact(),
                headers=headers + [("Content-Type", "application/sdp")],
                body=self.user.offer_body())
        self.send_request(request, lambda response: self._refreshed(request, response))

    def _refreshed(self, request: Request, response: Response) -> None:
        status = response.status
        if 200 <= status < 300 and request.method == "INVITE":
            self._ack_2xx(request, response)  # even when the call ended meanwhile
        if status < 200 or self.ended:
            return
        if status < 300:
            if request.method == "INVITE" and response.body:
                self.user.refreshed(response)
            self.dialog.update_target(response)  # §12.2.1.2: a target refresh
            self.timer.answered(response)
        elif status == 422 and self.timer.too_small(response):
            self.refresh_session()  # RFC 4028 §7.4
        elif status == 491:
            self.later(random.uniform(2.1, 4.0), self.refresh_session)  # §14.1, we own the Call-ID
        else:
            self._dialog_gone(response)

    def session_expired(self) -> None:
        """RFC 4028 §10: no refresh came within the session interval: BYE."""
        self.bye(SESSION_EXPIRED, FAILED, wait=False)

    def timer_headers(self, request: Request) -> list[tuple[str, str]]:
        """The session timer headers of our 2xx to a peer's re-INVITE or UPDATE (§9)."""
        return self.timer.refreshed_by_peer(request) if self.timer is not None else []

    # -- a re-INVITE of ours with a new offer (hold, RFC 3264 §8) --------------------
    @property
    def reinviting(self) -> bool:
        """A re-INVITE is in progress, ours or the peer's (§14.1: one at a time)."""
        return self._reinviting or self._pending_2xx is not None

    def reinvite(self, body: bytes, done) -> None:
        """A re-INVITE carrying ``body``; ``done(response)`` with its final response unless
        the session ended meanwhile (a refusal then ends it if it says the dialog is gone)."""
        self._reinviting = True
        request = self.dialog.create_request(
            "INVITE", via=self.ua.via(self.dest_for_dialog()), contact=self.contact(),
            headers=self.extension_headers() + [("Content-Type", "application/sdp")], body=body)
        self.send_request(request, lambda response: self._reinvited(request, response, done))

    def _reinvited(self, request: Request, response: Response, done) -> None:
        status = response.status
        if 200 <= status < 300:
            self._ack_2xx(request, response)  # even when the call ended meanwhile
        if status < 200 or not self._reinviting:
            return
        self._reinviting = False
        if self.ended:
            return
        if status >= 300:
            done(response)
            self._dialog_gone(response)
            return
        self.dialog.update_target(response)
        if self.timer is not None:
            self.timer.answered(response)
        done(response)

    # -- blind transfer (RFC 3515) ------------------------------------------------
    def refer(self, target: URI) -> None:
        """REFER in the dialog with Refer-To ``target``; its answer and the NOTIFYs' sipfrag
        (RFC 3515 §2.4.5) move ``transfer_status``: ACCEPTED, TRYING, COMPLETED (then BYE,
        RFC 5589 §6) or FAILED."""
        self.transfer_target = str(target)
        request = self.dialog.create_request(
            "REFER", via=self.ua.via(self.dest_for_dialog()), contact=self.contact(),
            headers=[("Refer-To", f"<{target}>")])
        self._set_transfer("PENDING")
        self.send_request(request, self._referred)

    def _referred(self, response: Response) -> None:
        if response.status < 200 or self.transfer_status != "PENDING":
            return
        if response.status < 300:
            self._set_transfer("ACCEPTED", response.status)
            timeout = self.ua.config.sip_transfer_timeout
            if timeout:
                self._transfer_timer = self.later(timeout, self._transfer_timed_out)
        else:
            self._set_transfer("FAILED", response.status, response.reason)
            self._dialog_gone(response)

    def _notified(self, request: Request, tx) -> None:
        """A NOTIFY of our REFER's implicit subscription (RFC 3515 §2.4.4): answered (before
        any BYE it leads to), its sipfrag moves ``transfer_status``."""
        code = self._notify_status(request)
        tx.respond(make_response(request, code))
        if code != 200 or self.transfer_status not in TRANSFER_LIVE:
            return
        fragment = request.body.split(b"\n", 1)[0].split(None, 2)
        sip_status = int(fragment[1])
        reason = fragment[2].decode("utf-8", "replace").strip() if len(fragment) > 2 else ""
        status = "TRYING" if sip_status < 200 else "COMPLETED" if sip_status < 300 else "FAILED"
        self._set_transfer(status, sip_status, reason)
        if status == "COMPLETED":
            self.bye(TRANSFERRED)  # RFC 5589 §6: the transferor ends the call

    def _transfer_timed_out(self) -> None:
        """No final NOTIFY within sip_transfer_timeout: the transfer failed, the call
        stays up (RFC 3515 §2.4.5 leaves the subscription's end to the notifier)."""
        if self.transfer_status in TRANSFER_LIVE and not self.ended:
            self._set_transfer("FAILED", 0, "Timeout")

    def _notify_status(self, request: Request) -> int:
        if self.transfer_status is None:
            return 481  # RFC 6665 §4.1.3: no such subscription
        if not request.get("Event", "").strip().lower().startswith("refer"):
            return 489
        fragment = request.body.split(b"\n", 1)[0].split(None, 2)
        if len(fragment) < 2 or not fragment[0].startswith(b"SIP/") or not fragment[1].isdigit():
            return 400
        return 200

    def _set_transfer(self, status: str, sip_status: int = 0, reason: str = "") -> None:
        self.transfer_status = status
        if status not in TRANSFER_LIVE and self._transfer_timer is not None:
            if self._transfer_timer.active():
                self._transfer_timer.cancel()
            self._transfer_timer = None
        log.info("call {call_id} transfer to {target} {status} {code} {reason}",
                 call_id=self.name, target=self.transfer_target, status=status,
                 code=sip_status or "", reason=reason)
        self.user.transfer_changed(status, sip_status, reason)

    def dest_for_dialog(self, dialog: Dialog | None = None) -> Destination:
        return self.ua.in_dialog_destination(self, dialog)

    # -- ending ------------------------------------------------------------
    def terminate(self, reason: str) -> None:
        """CANCEL before the answer, BYE after (§9, §15)."""
        if self.ended:
            return
        if self.dialog is not None:
            self.bye(reason)
            return
        self.cancel_requested = True
        self.cancel_reason = reason
        if self.invite is None:
            self._end(FINISH, reason)
        elif self.provisional:
            self.send_cancel()
        # else: §9.1, wait for a provisional response before sending CANCEL.

    def fail(self, reason: str) -> None:
        """End the session FAILED on a local decision: BYE after the answer (§15), CANCEL
        before it once a provisional came (§9.1); a later 2xx is BYEd by ``on_2xx``."""
        if self.ended:
            return
        if self.dialog is not None:
            self.bye(reason, FAILED, wait=False)
            return
        self.cancel_requested = True
        if self.provisional:
            self.send_cancel()
        self._end(FAILED, reason)

    def send_cancel(self) -> None:
        """CANCEL with the INVITE's Request-URI, Call-ID, From, To, top Via (§9.1); one per
        INVITE, however many provisional responses come."""
        if self._cancel_sent:
            return
        self._cancel_sent = True
        inv = self.invite
        headers = [("Via", inv.get_all("Via")[0]), ("Max-Forwards", "70"),
                   ("From", inv.get("From")), ("To", inv.get("To")), ("Call-ID", inv.call_id),
                   ("CSeq", f"{inv.cseq.seq} CANCEL")]
        headers += [("Route", r) for r in inv.get_all("Route")]
        cancel = Request("CANCEL", inv.uri, headers)
        # The INVITE's own transport: TCP when it was too large for UDP (§18.1.1).
        self.ua.transactions.send_request(cancel, self.invite_tx.transport, self.dest.host,
                                          self.dest.port, lambda r: None)
        # If no final response arrives, the INVITE is as good as cancelled (§9.1).
        self.later_fixed(64 * T1, self._end, FINISH, self.cancel_reason)

    def bye(self, reason: str, kind: str = FINISH, wait: bool = True) -> None:
        """BYE (§15.1.1); the session ends when it is answered, or at once unless ``wait``."""
        if self.ended or self._bye_sent:
            return
        self._send_bye_request(lambda r: self._end(kind, reason) if r.status >= 200 else None)
        if not wait:
            self._end(kind, reason)

    def _send_bye_request(self, on_response=None) -> None:
        """One BYE per dialog, whatever asks for it."""
        if self._bye_sent:
            return
        self._bye_sent = True
        bye = self.dialog.create_request("BYE", via=self.ua.via(self.dest_for_dialog()),
                                         headers=[("User-Agent", self.ua.config.sip_user_agent)])
        self.send_request(bye, on_response)

    def send_request(self, request: Request, on_response=None,
                     dialog: Dialog | None = None) -> None:
        """An in-dialog request (of ``dialog``: an early one, else the session's). A 401/407
        to it is answered (§22.2): the request goes again with a new CSeq and branch and
        credentials for every realm known (§22.3)."""
        handle = functools.partial(self._in_dialog_answer, request, on_response, dialog,
                                   self._auth.chain())
        self.ua.send_in_dialog(self, request, handle, dialog)

    def _in_dialog_answer(self, request: Request, on_response, dialog: Dialog | None,
                          answerer, response: Response) -> None:
        """``send_request``'s: a challenge answered by the request again (a partial, not a
        closure calling itself: that would be a reference cycle holding the session)."""
        if response.status in (401, 407):
            credentials = answerer.headers_for(response, request.method, str(request.uri),
                                               request.body)
            if credentials is not None:
                retry = self._resubmit(request, credentials, dialog or self.dialog)
                handle = functools.partial(self._in_dialog_answer, request, on_response, dialog,
                                           answerer)
                self.ua.send_in_dialog(self, retry, handle, dialog)
                return
        if on_response is not None:
            on_response(response)

    def _resubmit(self, request: Request, credentials, dialog: Dialog) -> Request:
        dialog.local_seq += 1
        headers = [("Via", self.ua.via(self.dest_for_dialog(dialog))),
                   ("CSeq", f"{dialog.local_seq} {request.method}")]
        headers += [(k, v) for k, v in request.headers
                    if k not in ("Via", "CSeq") and k not in CREDENTIALS]
        return Request(request.method, request.uri, headers + list(credentials), request.body)

    # -- INFO -----------------------------------------------------------------
    def send_info(self, content_type: str, body: bytes, once: bool = False) -> None:
        """INFOs go one at a time, each once the one before is answered: concurrent ones may
        arrive reordered (DTMF digits). ``once``: not queued again while one waits (a callee
        that lets INFOs time out would grow the queue by one every keyframe request)."""
        if self.dialog is None or self.ended:
            return
        if once and (content_type, body) in self._infos:
            return
        self._infos.append((content_type, body))
        self._next_info()

    def _next_info(self) -> None:
        if self._info_out or not self._infos or self.ended:
            return
        content_type, body = self._infos.popleft()
        info = self.dialog.create_request("INFO", via=self.ua.via(self.dest_for_dialog()),
                                          headers=[("Content-Type", content_type)], body=body)
        self._info_out = True
        self.send_request(info, self._info_answered)

    def _info_answered(self, response: Response) -> None:
        if response.status < 200:
            return
        self._info_out = False
        # A 408 is left to the RTP timeout here: a callee that drops INFO (picture_fast_update)
        # must not lose its call for it.
        if not self._dialog_gone(response, (481,)):
            self._next_info()

    def _dialog_gone(self, response: Response, statuses=(408, 481)) -> bool:
        """§12.2.1.2: a 481 or 408 to an in-dialog request ends the dialog: BYE, FAILED."""
        if response.status not in statuses:
            return False
        self.bye(f"{response.status} {response.reason}", FAILED, wait=False)
        return True

    # -- requests from the peer in the dialog (UAS, §12.2.2) ------------------------
    def matches(self, request: Request) -> bool:
        return self.dialog is not None and self.dialog.matches(request)

    def receive(self, request: Request, tx) -> None:
        """A request of the peer in our dialog (``matches``)."""
        if not self.dialog.accept_remote_seq(request):
            tx.respond(make_response(request, 500, "CSeq out of order"))
            return
        method = request.method
        if self.ended and method in ("INVITE", "UPDATE"):
            # The session is over (its BYE went or came): no offer is answered in it any
            # more (RFC 5057 §5.2: the invite usage is gone), whatever the call still keeps.
            tx.respond(make_response(request, 481, "Call/Transaction Does Not Exist"))
            return
        if method == "BYE":
            tx.respond(make_response(request, 200))
            self._end(FINISH, HUNG_UP)
        elif method == "INVITE":
            self._reinvite(request, tx)
        elif method == "UPDATE":
            self._update(request, tx)
        elif method == "INFO":
            tx.respond(make_response(request, 200))
        elif method == "NOTIFY":
            self._notified(request, tx)
        elif method == "REFER":
            self._refer_received(request, tx)
        else:
            tx.respond(make_response(request, 501, extra=[("Allow", allow(self.ua.config))]))

    def _refer_received(self, request: Request, tx) -> None:
        """The peer transfers the call (RFC 3515 §2.4.2): refused (403) unless
        sip_accept_refer; else 202, a NOTIFY 'SIP/2.0 100 Trying' at once (§2.4.4), and the
        user places the new INVITE. Blind transfer only: a Refer-To with headers (Replaces)
        or another method is refused."""
        if not self.ua.config.sip_accept_refer:
            tx.respond(make_response(request, 403, "Transfer not accepted"))
            return
        try:
            target = Address.parse(request.get("Refer-To") or "").uri
        except HeaderError:
            tx.respond(make_response(request, 400, "Bad Refer-To"))
            return
        if target.scheme not in ("sip", "sips"):
            tx.respond(make_response(request, 416))
            return
        if target.headers or (target.params.get("method") or "INVITE").upper() != "INVITE":
            tx.respond(make_response(request, 403, "Only blind transfer is accepted"))
            return
        if self.refer_in is not None or self.ended:
            tx.respond(make_response(request, 491))  # one transfer at a time
            return
        refusal = self.user.refer_refusal(target)
        if refusal:
            tx.respond(make_response(request, 403, refusal))
            return
        self.refer_in = request
        tx.respond(make_response(request, 202, extra=[("Contact", self.contact())]))
        self.notify_refer(100, "Trying")
        self.user.referred(target)

    def notify_refer(self, status: int, reason: str) -> None:
        """NOTIFY of the peer's REFER (RFC 3515 §2.4.4): the new INVITE's status as a
        sipfrag; a final one ends the implicit subscription."""
        refer = self.refer_in
        if refer is None or self.ended or self.dialog is None:
            return
        final = status >= 200
        if final:
            self.refer_in = None
        notify = self.dialog.create_request(
            "NOTIFY", via=self.ua.via(self.dest_for_dialog()), contact=self.contact(),
            headers=[("Event", f"refer;id={refer.cseq.seq}"),
                     ("Subscription-State",
                      "terminated;reason=noresource" if final else "active;expires=60"),
                     ("Content-Type", "message/sipfrag;version=2.0")],
            body=f"SIP/2.0 {status} {reason}\r\n".encode())
        self.send_request(notify)

    def _reinvite(self, request: Request, tx) -> None:
        """A re-INVITE from the peer (§14.2): answer its offer, or offer in the 200."""
        if self._pending_2xx is not None:
            tx.respond(make_response(request, 491))
            return
        body = self._answer_or_488(request, tx)
        if body is None:
            return
        if not body:
            # §14.2 / RFC 3264 §8: no offer in the re-INVITE: ours goes in the 200, a new
            # version of it; the answer comes in the ACK (see acked()).
            self._reoffer = self.user.reoffer()
            body = bytes(self._reoffer) if self._reoffer is not None else b""
        self.dialog.update_target(request)  # §12.2.2: only a successful re-INVITE refreshes
        response = self._ok(request, body)
        tx.respond(response)
        # §13.3.1.4: the UAS core retransmits 2xx until the ACK arrives.
        self._pending_2xx = (response, tx.source, T1, T1)
        self.later(T1, self._retransmit_2xx, response)

    def _update(self, request: Request, tx) -> None:
        """UPDATE (RFC 3311 §5.2): a session refresh (RFC 4028 §9), with or without an offer."""
        body = self._answer_or_488(request, tx)
        if body is not None:
            self.dialog.update_target(request)
            tx.respond(self._ok(request, body))

    def _answer_or_488(self, request: Request, tx) -> bytes | None:
        """Our SDP answer to the request's offer (b"" without one), or None once an
        unusable offer was answered 488 (RFC 3261 §14.2)."""
        if not sdp_of(request):
            return b""
        try:
            return self.user.answer_offer(request)
        except sdplib.SDPError as exc:
            tx.respond(make_response(request, 488, extra=[("Warning", f'399 sipgw "{exc}"')]))
            return None

    def _ok(self, request: Request, body: bytes) -> Response:
        return make_response(request, 200, extra=[("Contact", self.contact()),
                                                  ("Allow", allow(self.ua.config))]
                             + self.timer_headers(request)
                             + ([("Content-Type", "application/sdp")] if body else []),
                             body=body)

    def _retransmit_2xx(self, response: Response) -> None:
        pending = self._pending_2xx
        if pending is None or pending[0] is not response or self.ended:
            return
        _, source, interval, elapsed = pending
        if elapsed >= 64 * T1:
            self._pending_2xx = None
            self.bye("No ACK for 200 OK")  # §13.3.1.4
            return
        self.ua.transactions.count_retransmission("INVITE")
        self.ua.transport.send_response(response, source)
        interval = min(interval * 2, T2)
        self._pending_2xx = (response, source, interval, elapsed + interval)
        self.later(interval, self._retransmit_2xx, response)

    def acked(self, request: Request) -> None:
        """The ACK of our 2xx to a peer's re-INVITE; it carries the answer to the offer of
        a 200 to an offerless re-INVITE (§13.3.1.4, §14.2): none or an unusable one ends
        the call."""
        if self._pending_2xx is None:
            return
        self._pending_2xx = None
        offer, self._reoffer = self._reoffer, None
        if offer is None:
            return
        body = sdp_of(request)
        try:
            if not body:
                raise sdplib.SDPError("no SDP answer in the ACK")
            self.user.ack_answer(offer, body)
        except sdplib.SDPError as exc:
            self.bye(f"Bad answer in ACK: {exc}", FAILED, wait=False)
