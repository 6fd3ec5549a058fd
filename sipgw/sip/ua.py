"""The user agent (RFC 3261 §8, §13-15): registrations and outgoing calls.

``UserAgent`` is the transaction user: it places the INVITE of every
``/call/startup``, registers accounts that ask for it, answers what peers send
inside a dialog (BYE, re-INVITE, INFO, OPTIONS), and keeps each call's WCS
status. It implements the manager interface the REST layer calls
(``startup``, ``find``, ``terminate``, ``send_dtmf``).
"""
from __future__ import annotations

import collections
import dataclasses
import random
import secrets
import time

from twisted.internet import defer
from twisted.logger import Logger

from ..calls import (NO_COMMON_CODECS, NORMAL_CLEARING, REQUEST_TIMEOUT, RTP_ACTIVITY,
                     SHUTDOWN, TERMINATED_BY_REST, CallError, CallRequest, CallStatus, Conflict,
                     NotFound, Unavailable)
from ..egress import EgressDenied, EgressPolicy
from ..rtp.session import MediaSession
from ..streams.registry import StreamExists, StreamRegistry
from ..streams.stream import Stream, StreamStatus
from . import sdes
from . import sdp as sdplib
from .auth import ChallengeAnswerer, DigestClient
from .dialog import Dialog
from . import redirect
from .body import sdp_of
from .prack import ReliableProvisionals
from .timer import SessionTimer
from .headers import HeaderError, URI, bracket
from .message import Request, Response, make_response
from .transaction import T1, T2, TransactionLayer, new_branch
from .registration import Registration, RegistrationIds, account_key, new_tag
from .resolver import Destination, Locator, default_port, fails_over, send_with_failover
from .transport import MAX_SERVER_NAMES, TLSClientSettings, TransportLayer, is_ip
from ..rtp.ports import PortPool, PortsExhausted

log = Logger(namespace="sipgw.sip.ua")

ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, PRACK, UPDATE, NOTIFY"
CREDENTIALS = ("Authorization", "Proxy-Authorization")
SESSION_EXPIRED = "Session timer expired"
TRANSFERRED = "Transferred"
DTMF_DURATION_MS = 160
# ACKs of our re-INVITEs' 2xx kept for their retransmissions (which stop within 64*T1): the
# latest few, so a long call with session refreshes does not keep one per refresh.
ACKS_KEPT = 4
# In-dialog next hops named by host name, located and kept per call: the peer's target
# refreshes (re-INVITE Contact) may name a new host each time.
HOPS_KEPT = 8
PICTURE_FAST_UPDATE = (b'<?xml version="1.0" encoding="utf-8" ?>\r\n<media_control><vc_primitive>'
                       b'<to_encoder><picture_fast_update/></to_encoder></vc_primitive>'
                       b'</media_control>\r\n')


_DIRECTIONS = frozenset({"sendrecv", "sendonly", "recvonly", "inactive"})
_QUIET_STATUSES = frozenset({CallStatus.TRYING, CallStatus.RING, CallStatus.RING_MEDIA,
                             CallStatus.SESSION_PROGRESS})


def _uri_transport(uri: URI) -> str | None:
    """The transport a URI asks for: its transport parameter, TLS for sips:, else None."""
    if "transport" in uri.params or uri.scheme == "sips":
        return uri.transport.upper()
    return None


def _held_answer(answer, media: dict, hold: str):
    """``answer`` and ``media`` with every stream kept from receiving (``hold``: sendonly or
    inactive), as an answer may narrow the offer's direction (RFC 3264 §6.1)."""
    narrow = {"sendrecv": hold, "recvonly": "inactive",
              "sendonly": "sendonly" if hold == "sendonly" else "inactive"}
    sections = [dataclasses.replace(m, attributes=[
        (narrow.get(k, k), v) if k in _DIRECTIONS else (k, v) for k, v in m.attributes])
        for m in answer.media]
    return (dataclasses.replace(answer, media=sections),
            {kind: dataclasses.replace(m, direction=narrow.get(m.direction, m.direction))
             for kind, m in media.items()})


def _tls_settings(config) -> TLSClientSettings | None:
    """The SIP TLS client settings, read at start when any is set (else made on first use)."""
    if config.sip_tls_ca_file or config.sip_tls_certificate:
        return TLSClientSettings(config.sip_tls_ca_file, config.sip_tls_certificate,
                                 config.sip_tls_private_key)
    return None


class Call:
    """One outgoing call: INVITE client side (§13.2), its dialog, and WCS status."""

    def __init__(self, ua: "UserAgent", request: CallRequest):
        self.ua = ua
        self.request = request
        self.started_at = ua.reactor.seconds()  # /call/startup: the setup time's origin
        self.status = CallStatus.NEW
        self.history: list[str] = [CallStatus.NEW.value]
        self.sip_status = 0
        self.reason = ""
        self.sip_call_id = f"{secrets.token_hex(12)}@sipgw"
        self.local_tag = new_tag()
        self.cseq = 0
        self.dest: Destination | None = None
        self.hops: dict[tuple, Destination] = {}  # in-dialog next hops named by host name
        self.invite: Request | None = None
        self.invite_tx = None
        self.provisional = False
        self.dialog: Dialog | None = None
        self.ack: Request | None = None
        self.offer: sdplib.SessionDescription | None = None
        self.srtp_mode = "off"
        self.srtp_offered: dict[str, list[sdes.Crypto]] = {}  # our SDES keys per kind
        self.remote_sdp: bytes = b""
        self.media: dict = {}
        self.answer_error = ""  # why the SDP answer was refused, the call's FAILED reason
        self.remote_media: dict = {}
        self.registration: Registration | None = None
        self.cancel_requested = False
        self.cancel_reason = TERMINATED_BY_REST
        self.ended_at: float | None = None
        self._auth = None
        self._timers: list = []
        self._pending_2xx: tuple | None = None  # (response, reinvite tx) awaiting ACK
        self.reoffer: sdplib.SessionDescription | None = None  # in a 200, answered in the ACK
        self.reliable = ReliableProvisionals()  # RFC 3262, per INVITE sent
        self.early: dict[str, Dialog] = {}  # early dialogs by To tag (PRACKs go in them)
        self.acks: dict[int, Request] = {}  # ACKs of our refresh re-INVITEs, by CSeq
        self.peer_allow: list[str] = []
        self.target: URI | None = None  # the Request-URI a redirect gave (§8.1.3.4)
        self.tried: set[tuple] = set()  # targets the INVITE went to (loop detection)
        self.redirects = 0
        config = ua.config
        self.timer = SessionTimer(ua.reactor, expires=config.sip_session_expires,
                                  min_se=config.sip_min_se, refresh=self.refresh_session,
                                  expire=self.session_expired) if config.sip_session_timers else None
        self._bye_sent = False
        self._cancel_sent = False
        self._infos: collections.deque = collections.deque()  # INFOs waiting their turn
        self._info_out = False
        self.stream = None
        self.media_session = None
        self._holding: sdplib.SessionDescription | None = None  # our hold re-INVITE's old offer
        self.held = False  # on hold from the app (/call/hold answered)
        self.transfer_status: str | None = None  # our REFER's progress (see transfer())
        self.transfer_target: str | None = None

    # -- status --------------------------------------------------------------
    def set_status(self, status: CallStatus, reason: str = "") -> None:
        if self.status.ended:
            return
        if status == self.status and not reason:
            return
        self.status = status
        if reason:
            self.reason = reason
        self.history.append(status.value)
        # The start, the answer and the end at info; the steps between at debug.
        emit = log.debug if status in _QUIET_STATUSES else log.info
        emit("call {call_id} {status}{reason}", call_id=self.request.call_id,
             status=status.value, reason=f" ({reason})" if reason else "")
        for observer in self.ua.call_observers:  # hooks, metrics
            try:
                observer(self)
            except Exception:  # an observer's bug never stops the call's status change
                log.failure("call {call_id}: status observer failed", call_id=self.request.call_id)
        if status.ended:
            self.ua.call_ended(self)

    def to_json(self) -> dict:
        r = self.request
        return {"callId": r.call_id, "status": self.status.value, "sipStatus": self.sip_status,
                "info": self.reason, "caller": r.sip_login,
                "callee": r.callee, "incoming": False, "hasAudio": r.has_audio,
                "hasVideo": r.has_video, "streamName": r.stream_name, "appKey": r.app_key,
                "sessionId": self.sip_call_id, "visibleName": r.visible_name,
                "sdp": sdes.mask(self.remote_sdp.decode("utf-8", "replace")),
                "target": self.transfer_target, "transferStatus": self.transfer_status,
                "history": list(self.history)}

    def later(self, delay: float, fn, *args):
        call = self.ua.reactor.callLater(delay, fn, *args)
        self._timers.append(call)
        return call

    def cancel_timers(self) -> None:
        for call in self._timers:
            if call.active():
                call.cancel()
        self._timers = []
        if self.timer is not None:
            self.timer.stop()

    # -- INVITE ------------------------------------------------------------
    def target_uri(self) -> URI:
        if self.target is not None:
            return self.target
        r = self.request
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
        ua, r = self.ua, self.request
        self.cseq += 1
        target = self.target_uri()
        aor = URI("sip", r.sip_domain, user=r.sip_login)
        display = f'"{r.visible_name}" ' if r.visible_name else ""
        body = bytes(self.offer)
        headers = [("Via", ua.via(self.dest)), ("Max-Forwards", "70"),
                   ("From", f"{display}<{aor}>;tag={self.local_tag}"), ("To", f"<{target}>"),
                   ("Call-ID", self.sip_call_id), ("CSeq", f"{self.cseq} INVITE"),
                   ("Contact", ua.contact(r.sip_login, self.dest)), ("Allow", ALLOW),
                   ("Accept", "application/sdp"),
                   ("User-Agent", ua.config.sip_user_agent), ("Content-Type", "application/sdp")]
        headers += self.extension_headers() + list(auth_headers)
        self.invite = Request("INVITE", target, headers, body)
        self.provisional = False
        self.reliable, self.early = ReliableProvisionals(), {}
        self._cancel_sent = False
        self.invite_tx = ua.transactions.send_request(
            self.invite, self.dest.transport, self.dest.host, self.dest.port, self.on_invite_response)

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
            if status == 100:
                self.set_status(CallStatus.TRYING)
            elif sdp_of(response):
                self.take_answer(response)
                self.set_status(CallStatus.RING_MEDIA)
            elif status == 183:
                self.set_status(CallStatus.SESSION_PROGRESS)
            else:
                self.set_status(CallStatus.RING)
            return
        if status < 300:
            self.on_2xx(response)
            return
        if fails_over(response) and self.dest.rest and not self.cancel_requested:
            # RFC 3263 §4.3: a timeout, transport error or 503: the next target.
            log.info("call {call_id}: {status} from {dest}, trying {next}",
                     call_id=self.request.call_id, status=status, dest=repr(self.dest),
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
            self.set_status(CallStatus.FINISH, self.cancel_reason)
        elif getattr(response, "local", False) and status == 408:
            self.set_status(CallStatus.FAILED, REQUEST_TIMEOUT)
        elif status in (486, 600):
            self.set_status(CallStatus.BUSY, f"{status} {response.reason}")
        else:
            self.set_status(CallStatus.FAILED, f"{status} {response.reason}")

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
        log.info("call {call_id}: {status} to {uri}", call_id=self.request.call_id,
                 status=response.status, uri=str(uri))
        self.invite, self.provisional = None, False  # till the next INVITE: nothing to CANCEL
        defer.ensureDeferred(self.ua.follow(self, uri, proxy)).addErrback(
            self.ua._place_failed, self)
        return True

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

    def take_answer(self, response: Response) -> None:
        body = sdp_of(response)
        try:
            answer = sdplib.SessionDescription.parse(body)
            media = sdplib.negotiate(self.offer, answer)
            keys = sdes.agree(self.srtp_mode, self.srtp_offered, answer)
        except (sdplib.SDPError, sdes.CryptoError) as exc:
            log.warn("call {call_id}: unusable SDP answer: {error}",
                     call_id=self.request.call_id, error=str(exc))
            self.answer_error = str(exc)
            return
        self.media = media
        self.remote_sdp = body
        if self.media_session is not None:
            if keys:
                log.info("call {call_id}: SRTP ({suites}) on {kinds}", call_id=self.request.call_id,
                         suites=", ".join(sorted({k[0].suite for k in keys.values()})),
                         kinds=", ".join(sorted(keys)))
                self.media_session.secure(keys)
            self.media_session.negotiate(self.media)

    def on_2xx(self, response: Response) -> None:
        if self.dialog is None:
            try:
                self.dialog = Dialog.from_uac(self.invite, response)
            except (ValueError, HeaderError) as exc:
                log.warn("call {call_id}: bad 2xx: {error}", call_id=self.request.call_id,
                         error=str(exc))
                self.set_status(CallStatus.FAILED, f"Bad 200 OK: {exc}")
                return
            self.ack = self._ack_for(self.invite, self.invite.cseq.seq)
            early = self.early.get(self.dialog.remote_tag)
            if early is not None:  # its PRACKs used CSeq numbers of the dialog (RFC 3262 §7.2)
                self.dialog.local_seq = max(self.dialog.local_seq, early.local_seq)
        elif response.to.tag != self.dialog.remote_tag:
            # A second fork answered (§13.2.2.4): ACK it and hang it up.
            self.ua.ack_and_bye_fork(self, response)
            return
        self.ua.send_in_dialog(self, self.acks.get(response.cseq.seq, self.ack))
        if self.status.ended:
            # The call ended before this answer (ring timeout, a CANCEL that crossed the
            # 200, a local failure): the callee is answered now, so hang it up (§15).
            self._send_bye_request()
            return
        if self.status in (CallStatus.ESTABLISHED, CallStatus.HOLD):
            return  # a retransmitted 2xx: the ACK above is all it needs
        if response.body:
            self.take_answer(response)
        if self.cancel_requested:
            self.send_bye(self.cancel_reason)
            return
        if not self.media:
            # Media cannot flow: never show ESTABLISHED while the BYE is outstanding.
            self.send_bye(self.answer_error or NO_COMMON_CODECS, CallStatus.FAILED, wait=False)
            return
        self.peer_allow = [m.strip().upper() for m in response.get_all("Allow")]
        if self.timer is not None:
            self.timer.answered(response)
        self.set_status(CallStatus.ESTABLISHED)
        if self.media_session is not None:
            self.media_session.established()

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

    # -- session timer (RFC 4028) -------------------------------------------------
    def refresh_session(self) -> None:
        """§10: refresh by UPDATE when the peer allows it (no SDP), else by re-INVITE with
        our unchanged offer (RFC 3264 §8: the same o= version)."""
        if self.status.ended or self.dialog is None:
            return
        headers = self.extension_headers()
        contact = self.ua.contact(self.request.sip_login, self.dest)
        if "UPDATE" in self.peer_allow:
            request = self.dialog.create_request("UPDATE", via=self.ua.via(self.dest_for_dialog()),
                                                 contact=contact, headers=headers)
        else:
            request = self.dialog.create_request(
                "INVITE", via=self.ua.via(self.dest_for_dialog()), contact=contact,
                headers=headers + [("Content-Type", "application/sdp")], body=bytes(self.offer))
        self.send_request(request, lambda response: self._refreshed(request, response))

    def _refreshed(self, request: Request, response: Response) -> None:
        status = response.status
        if 200 <= status < 300 and request.method == "INVITE":
            self._ack_2xx(request, response)  # even when the call ended meanwhile
        if status < 200 or self.status.ended:
            return
        if status < 300:
            if request.method == "INVITE" and response.body:
                self.take_answer(response)
            self.dialog.update_target(response)  # §12.2.1.2: a target refresh
            self.timer.answered(response)
        elif status == 422 and self.timer.too_small(response):
            self.refresh_session()  # RFC 4028 §7.4
        elif status == 491:
            self.later(random.uniform(2.1, 4.0), self.refresh_session)  # §14.1, we own the Call-ID
        else:
            self._dialog_gone(response)

    # -- hold from the app (/call/hold, /call/unhold) -------------------------------
    def hold(self, held: bool) -> None:
        """RFC 3264 §8.4: re-INVITE with our offer ``sip_hold_direction`` (held) or sendrecv;
        HOLD or ESTABLISHED once answered.  Conflict unless ESTABLISHED (hold) / HOLD (unhold)
        with no re-INVITE of ours in flight."""
        wanted = CallStatus.ESTABLISHED if held else CallStatus.HOLD
        if self.status != wanted or self.dialog is None:
            raise Conflict(f"call {self.request.call_id} is {self.status.value}, not {wanted.value}")
        if self._holding is not None or self._pending_2xx is not None:  # §14.1: one at a time
            raise Conflict(f"call {self.request.call_id}: a re-INVITE is in progress")
        direction = self.ua.config.sip_hold_direction if held else "sendrecv"
        self.ua._session_version += 1
        offer = self.offer
        self.offer = dataclasses.replace(
            offer, origin=dataclasses.replace(offer.origin, sess_version=self.ua._session_version),
            media=[dataclasses.replace(m, attributes=[
                (direction, None) if k in _DIRECTIONS else (k, v) for k, v in m.attributes])
                for m in offer.media])
        self._holding = offer  # the offer to go back to if the peer refuses
        request = self.dialog.create_request(
            "INVITE", via=self.ua.via(self.dest_for_dialog()),
            contact=self.ua.contact(self.request.sip_login, self.dest),
            headers=self.extension_headers() + [("Content-Type", "application/sdp")],
            body=bytes(self.offer))
        self.send_request(request, lambda response: self._held(request, response, held))

    def _held(self, request: Request, response: Response, held: bool) -> None:
        status = response.status
        if 200 <= status < 300:
            self._ack_2xx(request, response)  # even when the call ended meanwhile
        if status < 200 or self._holding is None:
            return
        previous, self._holding = self._holding, None
        if self.status.ended:
            return
        if status >= 300:
            self.offer = previous
            log.warn("call {call_id}: {what} refused: {status}", call_id=self.request.call_id,
                     what="hold" if held else "unhold", status=status)
            self._dialog_gone(response)
            return
        if response.body:
            self.take_answer(response)
        self.dialog.update_target(response)
        if self.timer is not None:
            self.timer.answered(response)
        self.held = held
        self.set_status(CallStatus.HOLD if held else CallStatus.ESTABLISHED)

    # -- blind transfer from the app (/call/transfer, RFC 3515) -----------------------
    def transfer(self, target: URI) -> None:
        """REFER in the dialog with Refer-To ``target``; its answer and the NOTIFYs' sipfrag
        (RFC 3515 §2.4.5) move ``transfer_status``: ACCEPTED, TRYING, COMPLETED (then BYE,
        RFC 5589 §6) or FAILED."""
        if (self.status not in (CallStatus.ESTABLISHED, CallStatus.HOLD) or self.dialog is None
                or self.transfer_status in ("PENDING", "ACCEPTED", "TRYING")):
            raise Conflict(f"call {self.request.call_id} is {self.status.value}"
                           + (f", transfer {self.transfer_status}" if self.transfer_status else ""))
        self.transfer_target = str(target)
        request = self.dialog.create_request(
            "REFER", via=self.ua.via(self.dest_for_dialog()),
            contact=self.ua.contact(self.request.sip_login, self.dest),
            headers=[("Refer-To", f"<{target}>")])
        self.set_transfer("PENDING")
        self.send_request(request, self._referred)

    def _referred(self, response: Response) -> None:
        if response.status < 200 or self.transfer_status != "PENDING":
            return
        if response.status < 300:
            self.set_transfer("ACCEPTED", response.status)
        else:
            self.set_transfer("FAILED", response.status, response.reason)
            self._dialog_gone(response)

    def notified(self, request: Request, respond) -> None:
        """A NOTIFY of our REFER's implicit subscription (RFC 3515 §2.4.4): ``respond`` the
        status (before any BYE it leads to), its sipfrag moves ``transfer_status``."""
        code = self._notify_status(request)
        respond(code)
        if code != 200 or self.transfer_status not in ("PENDING", "ACCEPTED", "TRYING"):
            return
        fragment = request.body.split(b"\n", 1)[0].split(None, 2)
        sip_status = int(fragment[1])
        reason = fragment[2].decode("utf-8", "replace").strip() if len(fragment) > 2 else ""
        status = "TRYING" if sip_status < 200 else "COMPLETED" if sip_status < 300 else "FAILED"
        self.set_transfer(status, sip_status, reason)
        if status == "COMPLETED":
            self.send_bye(TRANSFERRED)  # RFC 5589 §6: the transferor ends the call

    def _notify_status(self, request: Request) -> int:
        if self.transfer_status is None:
            return 481  # RFC 6665 §4.1.3: no such subscription
        if not request.get("Event", "").strip().lower().startswith("refer"):
            return 489
        fragment = request.body.split(b"\n", 1)[0].split(None, 2)
        if len(fragment) < 2 or not fragment[0].startswith(b"SIP/") or not fragment[1].isdigit():
            return 400
        return 200

    def set_transfer(self, status: str, sip_status: int = 0, reason: str = "") -> None:
        self.transfer_status = status
        log.info("call {call_id} transfer to {target} {status} {code} {reason}",
                 call_id=self.request.call_id, target=self.transfer_target, status=status,
                 code=sip_status or "", reason=reason)
        for observer in self.ua.transfer_observers:  # hooks: TransferStatusEvent
            try:
                observer(self, sip_status, reason)
            except Exception:
                log.failure("call {call_id}: transfer observer failed",
                            call_id=self.request.call_id)

    def session_expired(self) -> None:
        """RFC 4028 §10: no refresh came within the session interval: BYE."""
        self.send_bye(SESSION_EXPIRED, CallStatus.FAILED, wait=False)

    def timer_headers(self, request: Request) -> list[tuple[str, str]]:
        """The session timer headers of our 2xx to a peer's re-INVITE or UPDATE (§9)."""
        return self.timer.refreshed_by_peer(request) if self.timer is not None else []

    def dest_for_dialog(self, dialog: Dialog | None = None) -> Destination:
        return self.ua.in_dialog_destination(self, dialog)

    # -- ending ------------------------------------------------------------
    def terminate(self, reason: str = TERMINATED_BY_REST) -> None:
        """``/call/terminate``: CANCEL before the answer, BYE after (§9, §15)."""
        if self.status.ended:
            return
        if self.dialog is not None:
            self.send_bye(reason)
            return
        self.cancel_requested = True
        self.cancel_reason = reason
        if self.invite is None:
            self.set_status(CallStatus.FINISH, reason)
        elif self.provisional:
            self.send_cancel()
        # else: §9.1, wait for a provisional response before sending CANCEL.

    def fail(self, reason: str) -> None:
        """End the call FAILED on a local decision: BYE after the answer (§15), CANCEL
        before it once a provisional came (§9.1); a later 2xx is BYEd by ``on_2xx``."""
        if self.status.ended:
            return
        if self.dialog is not None:
            self.send_bye(reason, CallStatus.FAILED, wait=False)
            return
        self.cancel_requested = True
        if self.provisional:
            self.send_cancel()
        self.set_status(CallStatus.FAILED, reason)

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
        self.later(64 * T1, self.set_status, CallStatus.FINISH, self.cancel_reason)

    def send_bye(self, reason: str, status: CallStatus = CallStatus.FINISH,
                 wait: bool = True) -> None:
        """BYE (§15.1.1); the call ends when it is answered, or at once unless ``wait``."""
        if self.status.ended or self._bye_sent:
            return
        self._send_bye_request(lambda r: self.set_status(status, reason)
                               if r.status >= 200 else None)
        if not wait:
            self.set_status(status, reason)

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
        """An in-dialog request (of ``dialog``: an early one, else the call's). A 401/407 to
        it is answered (§22.2): the request goes again with a new CSeq and branch and
        credentials for every realm known (§22.3)."""
        answerer = self._auth.chain() if self._auth is not None else None

        def handle(response: Response) -> None:
            if response.status in (401, 407) and answerer is not None:
                credentials = answerer.headers_for(response, request.method, str(request.uri),
                                                   request.body)
                if credentials is not None:
                    retry = self._resubmit(request, credentials, dialog or self.dialog)
                    self.ua.send_in_dialog(self, retry, handle, dialog)
                    return
            if on_response is not None:
                on_response(response)
        self.ua.send_in_dialog(self, request, handle, dialog)

    def _resubmit(self, request: Request, credentials, dialog: Dialog) -> Request:
        dialog.local_seq += 1
        headers = [("Via", self.ua.via(self.dest_for_dialog(dialog))),
                   ("CSeq", f"{dialog.local_seq} {request.method}")]
        headers += [(k, v) for k, v in request.headers
                    if k not in ("Via", "CSeq") and k not in CREDENTIALS]
        return Request(request.method, request.uri, headers + list(credentials), request.body)

    def rtp_timed_out(self) -> None:
        """No RTP for rtp_activity_timeout: hang up and fail (WCS 'Failed by RTP activity')."""
        self.send_bye(RTP_ACTIVITY, CallStatus.FAILED, wait=False)

    def request_picture_update(self) -> None:
        """SIP INFO picture_fast_update for callees that ignore RTCP PLI/FIR; one waiting in
        the queue is enough (a callee that lets INFOs time out would grow it by one every
        keyframe request)."""
        info = ("application/media_control+xml", PICTURE_FAST_UPDATE)
        if self.dialog is not None and not self.status.ended and info not in self._infos:
            self.send_info(*info)

    def send_info(self, content_type: str, body: bytes) -> None:
        """INFOs go one at a time, each once the one before is answered: concurrent ones may
        arrive reordered (DTMF digits)."""
        self._infos.append((content_type, body))
        self._next_info()

    def _next_info(self) -> None:
        if self._info_out or not self._infos or self.status.ended:
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
        self.send_bye(f"{response.status} {response.reason}", CallStatus.FAILED, wait=False)
        return True


class UserAgent:
    """Transaction user for every call and registration of this daemon."""

    def __init__(self, reactor, config, ports=None, streams: StreamRegistry | None = None,
                 dns=None):
        self.reactor = reactor
        self.config = config
        # RFC 3263 through twisted.names (``dns``: an IResolver, else sip_dns_servers')
        # A records for an IPv4 socket, AAAA for an IPv6 one, both for a dual-stack "::".
        ipv6 = ":" in config.sip_bind_address
        self.locator = Locator(reactor, dns, config.sip_dns_servers, ipv6=ipv6,
                               ipv4=not ipv6 or config.sip_bind_address == "::")
        self.ports = ports or PortPool(config.media_port_from, config.media_port_to,
                                       config.sip_bind_address)
        self.transactions = TransactionLayer(reactor, tu=self,
                                             max_server=config.sip_max_server_transactions,
                                             requests_per_source=config.sip_max_requests_per_source)
        self.transport = TransportLayer(reactor, self.transactions,
                                        bind_address=config.sip_bind_address,
                                        port=config.sip_local_port,
                                        advertised_address=config.sip_address,
                                        max_size=config.sip_max_message_size,
                                        max_tcp_connections=config.sip_max_tcp_connections,
                                        tcp_idle_timeout=config.sip_tcp_idle_timeout,
                                        tcp_message_timeout=config.sip_tcp_message_timeout,
                                        tls=_tls_settings(config))
        self.transactions.sender = self.transport
        self.calls: dict[str, Call] = {}  # by WCS callId
        self.call_observers: list = []  # callables(call) on every status change
        self.transfer_observers: list = []  # callables(call, sip_status, reason)
        self.by_sip_call_id: dict[str, Call] = {}
        self.streams = streams if streams is not None else StreamRegistry()
        self.registrations: dict[tuple, Registration] = {}
        self.register_ids = RegistrationIds()  # one Call-ID per account per boot (§10.2)
        self.egress = EgressPolicy.from_config(config, "sip")
        self._ended: collections.deque[Call] = collections.deque()  # in order of ending
        self._prune_timer = None
        self._session_version = int(time.time())
        self.accepting = True
        self.leaving: set[Registration] = set()  # unregistering (or registering, unused)
        self.unregistered = 0
        self._stopping: set[Call] = set()  # calls ended by stop(), not ended yet
        self._drained: defer.Deferred | None = None

    def start(self) -> None:
        self.transport.start()

    def stop(self, timeout: float | None = None) -> defer.Deferred:
        """Ordered shutdown within ``timeout`` (default ``shutdown_timeout``): refuse new
        calls; CANCEL calls not answered yet (§9.1) and BYE established ones (§15.1) while
        the sockets stay open, so retransmissions go on; each account is unregistered
        (Expires: 0, §10.2.2) when its last call ends.  Once every call and REGISTER is
        answered, or at the deadline, calls still up are ended, every transaction is
        dropped and the sockets close.  Fires with counts for the summary line."""
        self.accepting = False
        timeout = self.config.shutdown_timeout if timeout is None else timeout
        self.unregistered = 0  # counted from here: what this stop removed
        live = [c for c in self.calls.values() if not c.status.ended]
        self._stopping = set(live)
        self._drained = defer.Deferred()
        self._drained.addTimeout(timeout, self.reactor, onTimeoutCancel=lambda result, t: None)
        for call in live:
            call.terminate(SHUTDOWN)
        self._check_drained()
        return self._drained.addCallback(lambda _: self._close(live))

    def _check_drained(self) -> None:
        d = self._drained
        if d is not None and not d.called and not self._stopping and not self.leaving:
            d.callback(None)

    def _close(self, live: list[Call]):
        answered = sum(1 for call in live if call.status.ended)
        for call in live:  # the deadline passed: end what is left, unanswered
            call.set_status(CallStatus.FINISH, SHUTDOWN)
        summary = {"calls": len(live), "answered": answered, "unregistered": self.unregistered,
                   "not_unregistered": len(self.leaving)}
        self.transactions.close()  # no retransmission may outlive the sockets
        if self._prune_timer is not None and self._prune_timer.active():
            self._prune_timer.cancel()
        return defer.maybeDeferred(self.transport.stop).addCallback(lambda _: summary)

    def registration_left(self, registration: Registration, removed: bool) -> None:
        """A released registration is done: unregistered (``removed``), or it never was."""
        self.leaving.discard(registration)
        self.unregistered += removed
        self._check_drained()

    def supported(self) -> list[tuple[str, str]]:
        """The Supported header of the extensions turned on (RFC 3262 §3, RFC 4028 §3)."""
        config = self.config
        tags = [t for t, on in (("100rel", config.sip_100rel),
                                ("timer", config.sip_session_timers)) if on]
        return [("Supported", ", ".join(tags))] if tags else []

    # -- addressing --------------------------------------------------------
    def via(self, dest: Destination, branch: str | None = None) -> str:
        host = bracket(self.transport.sent_by(dest.host))
        # TLS: no listener here, so ask the server to send back over this connection
        # (RFC 5923 alias; Kamailio: tcp_accept_aliases).
        alias = ";alias" if dest.transport == "TLS" else ""
        return (f"SIP/2.0/{dest.transport} {host}:{self.transport.port};"
                f"branch={branch or new_branch()};rport{alias}")

    def contact(self, user: str, dest: Destination) -> str:
        host, port = self.transport.contact_address(dest.transport, dest.host, dest.port)
        params = f";transport={dest.transport.lower()}" if dest.transport != "UDP" else ""
        return f"<sip:{user}@{bracket(host)}:{port}{params}>"

    def first_hop(self, r: CallRequest) -> tuple[str | None, str, int | None]:
        """(transport, host, port) for out-of-dialog requests: the outbound proxy if
        given, else the domain at sipPort. None where nothing was asked: RFC 3263 finds it
        (sipPort 5060 is the default WCS forms always send, so it counts as none)."""
        transport = "TCP" if self.config.sip_use_tcp_transport else None
        domain_port = r.sip_port if r.sip_port != 5060 else None
        if r.sip_outbound_proxy:
            scheme, text = "sip", r.sip_outbound_proxy
            if text.startswith(("sip:", "sips:")):
                scheme, _, text = text.partition(":")
            hostport = text.split(";")[0]
            if hostport.count(":") > 1 and "[" not in hostport:  # a bare IPv6 address
                text = f"[{hostport}]" + text[len(hostport):]
            uri = URI.parse(f"{scheme}:{text}")
            return _uri_transport(uri) or transport, uri.host, uri.port or domain_port
        return transport, r.sip_domain, domain_port

    def resolve(self, transport: str | None, host: str, port: int | None,
                default_transport: str = "UDP") -> defer.Deferred:
        """A Deferred Destination chain for a URI's parts (RFC 3263 §4); a TLS target's
        certificate is then checked against ``host`` (RFC 5922 §7.2)."""
        def named(dest):
            names = self.transport.server_names
            for target in (tuple(dest), *dest.rest):
                if target[0] == "TLS" and not is_ip(host):
                    names.pop((target[1], target[2]), None)
                    names[(target[1], target[2])] = host.strip("[]")
            while len(names) > MAX_SERVER_NAMES:
                del names[next(iter(names))]
            return dest
        return self.locator.locate(host, port, transport, default_transport).addCallback(named)

    def in_dialog_destination(self, call: Call, dialog: Dialog | None = None) -> Destination:
        """Next hop of an in-dialog request (of ``dialog``: an early one, else the call's):
        the top route, else the outbound proxy, else the remote target (§12.2.1.1)."""
        dialog = dialog or call.dialog
        if not dialog.route_set and call.request.sip_outbound_proxy:
            return call.dest
        uri = dialog.next_hop()
        transport = _uri_transport(uri) or call.dest.transport
        host = uri.host.strip("[]")
        if not is_ip(host):  # resolved by send_in_dialog (RFC 3263 §4); till then the first hop
            return call.hops.get(self._named_hop(call, dialog), call.dest)
        return Destination(transport, host, uri.port or default_port(transport))

    def _named_hop(self, call: Call, dialog: Dialog | None = None) -> tuple | None:
        """(transport, host, port) of an in-dialog next hop that is a host name, else None."""
        dialog = dialog or call.dialog
        if dialog is None or (not dialog.route_set and call.request.sip_outbound_proxy):
            return None
        uri = dialog.next_hop()
        if is_ip(uri.host):
            return None
        return (_uri_transport(uri), uri.host, uri.port)

    def send_in_dialog(self, call: Call, request: Request, on_response=None,
                       dialog: Dialog | None = None) -> None:
        hop = self._named_hop(call, dialog)
        if hop is not None and hop not in call.hops:
            # A Route or Contact naming a host: locate it first (RFC 3263 §4).
            def located(dest):
                call.hops[hop] = self._allowed(hop[1], dest) or dest  # none: refused below
                while len(call.hops) > HOPS_KEPT:  # the oldest go (located again if named)
                    del call.hops[next(iter(call.hops))]
                self.send_in_dialog(call, request, on_response, dialog)

            def failed(failure):
                log.warn("call {call_id}: cannot resolve {host}: {why}", host=hop[1],
                         call_id=call.request.call_id, why=failure.getErrorMessage())
                if on_response is not None and request.method != "ACK":
                    on_response(self._refused(request, 503, f"Cannot resolve {hop[1]}"))
            self.resolve(hop[0], hop[1], hop[2], call.dest.transport).addCallbacks(located, failed)
            return
        dest = self.in_dialog_destination(call, dialog)
        if not self.egress.allows(hop[1] if hop else dest.host, resolved=dest.host):
            # The peer's Contact or Record-Route names a denied address: send nothing there;
            # the request fails at once as if refused (a BYE still ends the call).
            log.warn("call {call_id}: {method} to {host} refused by sip_egress",
                     call_id=call.request.call_id, method=request.method, host=dest.host)
            if on_response is not None and request.method != "ACK":
                self.reactor.callLater(0, on_response,
                                       self._refused(request, 403, "Denied by sip_egress"))
            return
        if request.method == "ACK":
            self.transport.send(request, dest.transport, dest.host, dest.port)
            return

        def moved(nxt):  # later requests go to the target that answered (RFC 3263 §4.3)
            if hop is None:
                call.dest = nxt  # the outbound proxy's next address
            else:
                call.hops[hop] = nxt
        send_with_failover(self.transactions, request, dest, on_response or (lambda r: None),
                           moved)

    def _allowed(self, name: str, dest: Destination) -> Destination | None:
        """The targets ``name`` resolved to that sip_egress allows, in order; None if none."""
        allowed = [t for t in (tuple(dest), *dest.rest) if self.egress.allows(name, resolved=t[1])]
        return Destination.chain(allowed) if allowed else None

    @staticmethod
    def _refused(request: Request, status: int, reason: str) -> Response:
        refused = make_response(request, status, reason)
        refused.local = True
        return refused

    # -- the manager interface (REST) -----------------------------------------
    def startup(self, request: CallRequest) -> None:
        if not self.accepting:
            raise Unavailable("The server is shutting down")
        existing = self.calls.get(request.call_id)
        if existing is not None and not existing.status.ended:
            raise Conflict(f"callId {request.call_id} is already in use")
        if self.streams.get(request.stream_name) is not None:
            raise Conflict("Stream name is already in use")
        if existing is not None:
            self._forget(existing)
        call = Call(self, request)
        call._auth = ChallengeAnswerer(DigestClient(request.auth_name, request.sip_password))
        self.calls[request.call_id] = call
        self.by_sip_call_id[call.sip_call_id] = call
        call.stream = Stream(request.stream_name, has_audio=request.has_audio,
                             has_video=request.has_video, call_id=request.call_id,
                             on_terminate=call.terminate,
                             gop_max_bytes=self.config.stream_gop_cache_max_bytes,
                             sink_max_bytes=self.config.sink_queue_max_bytes)
        try:
            self.streams.add(call.stream)
        except StreamExists as exc:
            raise Conflict(str(exc)) from None
        call.set_status(CallStatus.PENDING)
        defer.ensureDeferred(self._place(call)).addErrback(self._place_failed, call)

    async def _place(self, call: Call) -> None:
        r = call.request
        transport, host, port = self.first_hop(r)
        try:
            dest = await self.resolve(transport, host, port)
        except Exception as exc:  # DNS failure: the call fails, the daemon goes on
            call.set_status(CallStatus.FAILED, f"Cannot resolve {host}: {exc.__class__.__name__}")
            return
        if call.status.ended:  # terminated during the lookup: use no registration
            return
        # The name was checked at the REST layer; each address it resolved to is checked here.
        field = "sipOutboundProxy" if r.sip_outbound_proxy else "sipDomain"
        allowed = self._allowed(host, dest)
        if allowed is None:
            try:
                self.egress.check(host, field, resolved=dest.host)
            except EgressDenied as exc:
                call.set_status(CallStatus.FAILED, exc.message)
            return
        call.dest = allowed
        if r.sip_register_required:
            key = account_key(r)
            registration = self.registrations.get(key)
            if registration is None:
                registration = self.registrations[key] = Registration(self, r, call.dest)
            registration.users += 1
            call.registration = registration
            await registration.ensure()
            call.dest = registration.dest  # the target that answered (RFC 3263 §4.3)
        if call.status.ended:
            return
        self._prepare_offer(call)
        if call.status.ended:
            return
        call.send_invite()
        if self.config.sip_ring_timeout:
            call.later(self.config.sip_ring_timeout, self._ring_timeout, call)

    async def follow(self, call: Call, uri: URI, proxy: bool) -> None:
        """Send a redirected INVITE (§8.1.3.4) to the new target's host, or through the
        outbound proxy when there is one; a 305's proxy is always used."""
        if proxy or not call.request.sip_outbound_proxy:
            host = uri.host.strip("[]")
            try:
                dest = await self.resolve(_uri_transport(uri), host, uri.port)
            except Exception as exc:
                call.set_status(CallStatus.FAILED,
                                f"Cannot resolve {host}: {exc.__class__.__name__}")
                return
            allowed = self._allowed(host, dest)
            if allowed is None:
                call.set_status(CallStatus.FAILED, f"Redirect to {host} denied by sip_egress")
                return
            call.dest = allowed
        if not call.status.ended:
            call.send_invite()

    def _place_failed(self, failure, call: Call) -> None:
        reason = failure.getErrorMessage() if failure.check(CallError) else "Internal error"
        if not failure.check(CallError):
            log.failure("placing call {call_id} failed", failure, call_id=call.request.call_id)
        call.set_status(CallStatus.FAILED, reason)

    def _prepare_offer(self, call: Call) -> None:
        """Bind an RTP/RTCP pair per media kind and build the SDP offer from them."""
        r = call.request
        kinds = [k for k, wanted in (("audio", r.has_audio), ("video", r.has_video)) if wanted]
        session = MediaSession(
            self.reactor, call_id=r.call_id, stream=call.stream,
            bind_address=self.config.sip_bind_address, ports=self.ports,
            kinds=kinds or ["audio"], rtp_timeout=self.config.rtp_activity_timeout,
            send_silence=self.config.rtp_session_init_always, on_timeout=call.rtp_timed_out,
            on_keyframe_info=call.request_picture_update,
            probation_packets=self.config.rtp_probation_packets,
            max_packets_per_second=self.config.rtp_max_packets_per_second)
        try:
            ports = session.open()
        except PortsExhausted as exc:
            call.set_status(CallStatus.FAILED, str(exc))
            return
        call.media_session = session
        call.stream._on_keyframe_request = session.request_keyframe
        call.stream.counters_source = session.counters
        address = self.config.media_address or self.transport.sent_by(call.dest.host)
        self._session_version += 1
        call.srtp_mode = r.sip_srtp or self.config.sip_srtp
        if call.srtp_mode != "off":
            call.srtp_offered = {kind: sdes.offer_keys() for kind in ports}
        proto = "RTP/SAVP" if call.srtp_mode == "mandatory" else "RTP/AVP"
        call.offer = sdplib.make_offer(address, audio_port=ports.get("audio"),
                                       video_port=ports.get("video"),
                                       session_id=self._session_version,
                                       crypto=call.srtp_offered, proto=proto)

    def _ring_timeout(self, call: Call) -> None:
        if call.dialog is None:
            call.fail(f"No answer within {self.config.sip_ring_timeout} s")

    def find(self, call_id: str | None = None, status: str | None = None) -> list[dict]:
        """The calls asked for, at most ``call_find_limit`` of them (the most recently
        started): building the answer runs on the reactor, so one request stays short."""
        if call_id is not None:
            calls = [self.calls[call_id]] if call_id in self.calls else []
        else:
            calls = list(self.calls.values())
        if status is not None:
            calls = [c for c in calls if c.status.value == status.upper()]
        return [c.to_json() for c in calls[-self.config.call_find_limit:]]

    def terminate(self, call_id: str) -> None:
        call = self.calls.get(call_id)
        if call is None:
            raise NotFound("Call not found")
        call.terminate()

    def hold(self, call_id: str, held: bool = True) -> None:
        """``/call/hold`` (``held``) and ``/call/unhold``."""
        call = self.calls.get(call_id)
        if call is None:
            raise NotFound("Call not found")
        call.hold(held)

    def transfer(self, call_id: str, target: str) -> None:
        """``/call/transfer``: ``target`` a SIP URI, user@host, or a user at the call's domain."""
        call = self.calls.get(call_id)
        if call is None:
            raise NotFound("Call not found")
        try:
            if target.startswith(("sip:", "sips:")):
                uri = URI.parse(target)
            elif "@" in target:
                uri = URI.parse(f"sip:{target}")
            else:
                uri = URI("sip", call.request.sip_domain, user=target)
        except HeaderError as exc:
            raise CallError(f"target is not a SIP URI: {exc}") from None
        call.transfer(uri)

    def send_dtmf(self, call_id: str, dtmf: str, kind: str) -> None:
        call = self.calls.get(call_id)
        if call is None:
            raise NotFound("Call not found")
        if call.dialog is None or call.status.ended:
            raise CallError(f"call {call_id} is not established ({call.status.value})")
        if kind.upper() != "INFO":
            try:
                call.media_session.send_dtmf(dtmf, DTMF_DURATION_MS)
            except (ValueError, AttributeError) as exc:
                raise CallError(f"cannot send RFC2833 DTMF: {exc}") from None
            return
        for digit in dtmf:
            body = f"Signal={digit}\r\nDuration={DTMF_DURATION_MS}\r\n".encode()
            call.send_info("application/dtmf-relay", body)

    def active_calls(self) -> list[CallRequest]:
        return [c.request for c in self.calls.values() if not c.status.ended]

    def call_ended(self, call: Call) -> None:
        """Release everything the call holds; each step runs whatever the previous ones raised
        (a half-done teardown would keep the call, its stream name and its ports for ever)."""
        call.ended_at = self.reactor.seconds()
        steps = [call.cancel_timers, lambda: self._end_media(call),
                 lambda: self._end_stream(call), lambda: self._end_registration(call),
                 lambda: self._retain(call)]
        for step in steps:
            try:
                step()
            except Exception:
                log.failure("call {call_id}: teardown step failed", call_id=call.request.call_id)

    @staticmethod
    def _end_media(call: Call) -> None:
        if call.media_session is not None:
            call.media_session.close()

    def _end_stream(self, call: Call) -> None:
        if call.stream is not None:
            try:
                failed = call.status != CallStatus.FINISH
                call.stream.end(StreamStatus.FAILED if failed else StreamStatus.UNPUBLISHED,
                                call.reason)
            finally:
                self.streams.remove(call.stream)

    @staticmethod
    def _end_registration(call: Call) -> None:
        registration, call.registration = call.registration, None
        if registration is not None:
            registration.release()

    def _retain(self, call: Call) -> None:
        self._ended.append(call)
        self._prune()
        if call in self._stopping:
            self._stopping.discard(call)
            self._check_drained()

    def _prune(self) -> None:
        """Forget ended calls once ``call_retention`` seconds old, and the oldest beyond
        ``call_retention_max``; one timer for the oldest instead of one per call."""
        now, ended, config = self.reactor.seconds(), self._ended, self.config
        while ended and (len(ended) > config.call_retention_max
                         or ended[0].ended_at + config.call_retention <= now):
            self._forget(ended.popleft())
        if ended and (self._prune_timer is None or not self._prune_timer.active()):
            self._prune_timer = self.reactor.callLater(
                ended[0].ended_at + config.call_retention - now, self._prune)

    def _forget(self, call: Call) -> None:
        if self.calls.get(call.request.call_id) is call:
            del self.calls[call.request.call_id]
        self.by_sip_call_id.pop(call.sip_call_id, None)

    def _call_for(self, message) -> Call | None:
        return self.by_sip_call_id.get(message.call_id)

    # -- the transaction user interface ---------------------------------------
    def request(self, request: Request, tx) -> None:
        method = request.method
        call = self._call_for(request)
        # Requests outside our dialogs are answered statelessly, once (or dropped when
        # sip_answer_unsolicited=false): never retransmitted, no state left behind.
        if method == "OPTIONS":
            tx.respond_once(make_response(request, 200, to_tag=new_tag(), extra=[
                ("Allow", ALLOW), ("Accept", "application/sdp"), *self.supported(),
                ("User-Agent", self.config.sip_user_agent)]))
            return
        if method == "CANCEL":
            # We never have an unanswered INVITE from a peer for long: nothing to cancel.
            self._unsolicited(tx, make_response(request, 481))
            return
        if call is None or call.dialog is None or not call.dialog.matches(request):
            if method == "INVITE" and not request.to.tag:
                self._unsolicited(tx, make_response(request, 603, "Incoming calls are not accepted",
                                                    to_tag=new_tag()))
            else:
                self._unsolicited(tx, make_response(request, 481))
            return
        if not call.dialog.accept_remote_seq(request):
            tx.respond(make_response(request, 500, "CSeq out of order"))
            return
        if method == "BYE":
            tx.respond(make_response(request, 200))
            call.set_status(CallStatus.FINISH, NORMAL_CLEARING)
        elif method == "INVITE":
            self._reinvite(call, request, tx)
        elif method == "UPDATE":
            self._update(call, request, tx)
        elif method == "INFO":
            tx.respond(make_response(request, 200))
        elif method == "NOTIFY":
            call.notified(request, lambda code: tx.respond(make_response(request, code)))
        elif method == "REFER":  # sipgw places no call on the callee's behalf (RFC 3515 §2.4.2)
            tx.respond(make_response(request, 403, "Transfer not accepted"))
        else:
            tx.respond(make_response(request, 501, extra=[("Allow", ALLOW)]))

    def _unsolicited(self, tx, response: Response) -> None:
        if self.config.sip_answer_unsolicited:
            tx.respond_once(response)
        else:
            tx.drop()

    def _reinvite(self, call: Call, request: Request, tx) -> None:
        """A re-INVITE from the peer (§14.2): answer its offer, reflect hold."""
        if call._pending_2xx is not None:
            tx.respond(make_response(request, 491))
            return
        body = self._answer_or_488(call, request, tx)
        if body is None:
            return
        if not body and call.offer is not None:
            # §14.2 / RFC 3264 §8: no offer in the re-INVITE: ours goes in the 200, a new
            # version of it; the answer comes in the ACK (see ack()).
            self._session_version += 1
            call.reoffer = dataclasses.replace(call.offer, origin=dataclasses.replace(
                call.offer.origin, sess_version=self._session_version))
            body = bytes(call.reoffer)
        call.dialog.update_target(request)  # §12.2.2: only a successful re-INVITE refreshes
        response = self._ok(call, request, body)
        tx.respond(response)
        # §13.3.1.4: the UAS core retransmits 2xx until the ACK arrives.
        call._pending_2xx = (response, tx.source, T1, T1)
        call.later(T1, self._retransmit_2xx, call, response)

    def _update(self, call: Call, request: Request, tx) -> None:
        """UPDATE (RFC 3311 §5.2): a session refresh (RFC 4028 §9), with or without an offer."""
        body = self._answer_or_488(call, request, tx)
        if body is not None:
            call.dialog.update_target(request)
            tx.respond(self._ok(call, request, body))

    def _answer_or_488(self, call: Call, request: Request, tx) -> bytes | None:
        """Our SDP answer to the request's offer (b"" without one), or None once an
        unusable offer was answered 488 (RFC 3261 §14.2)."""
        if not sdp_of(request):
            return b""
        try:
            return self._answer_offer(call, request)
        except sdplib.SDPError as exc:
            tx.respond(make_response(request, 488, extra=[("Warning", f'399 sipgw "{exc}"')]))
            return None

    def _ok(self, call: Call, request: Request, body: bytes) -> Response:
        return make_response(request, 200, extra=[
            ("Contact", self.contact(call.request.sip_login, call.dest)), ("Allow", ALLOW)]
            + call.timer_headers(request)
            + ([("Content-Type", "application/sdp")] if body else []), body=body)

    def _answer_offer(self, call: Call, request: Request) -> bytes:
        """Our answer to the peer's offer (RFC 3264 §6), applied to the media; raises SDPError."""
        offer = sdplib.SessionDescription.parse(sdp_of(request))
        self._session_version += 1
        ours = call.offer
        answer, media = sdplib.make_answer(
            offer, address=ours.media_address(ours.media[0]),
            audio_port=self._our_port(call, "audio"), video_port=self._our_port(call, "video"),
            session_id=ours.origin.sess_id, version=self._session_version)
        if call.held:  # held from the app: the answer keeps us not receiving (RFC 3264 §6.1)
            answer, media = _held_answer(answer, media, self.config.sip_hold_direction)
        call.remote_media = media
        if call.media_session is not None:
            call.media_session.negotiate(media)
        call.remote_sdp = sdp_of(request)
        held = call.held or sdplib.is_hold(offer)
        call.set_status(CallStatus.HOLD if held else CallStatus.ESTABLISHED)
        return bytes(answer)

    def _our_port(self, call: Call, kind: str) -> int | None:
        if call.offer is None:
            return None
        for m in call.offer.media:
            if m.kind == kind:
                return m.port
        return None

    def _retransmit_2xx(self, call: Call, response: Response) -> None:
        pending = call._pending_2xx
        if pending is None or pending[0] is not response or call.status.ended:
            return
        _, source, interval, elapsed = pending
        if elapsed >= 64 * T1:
            call._pending_2xx = None
            call.send_bye("No ACK for 200 OK")  # §13.3.1.4
            return
        self.transactions.count_retransmission("INVITE")
        self.transport.send_response(response, source)
        interval = min(interval * 2, T2)
        call._pending_2xx = (response, source, interval, elapsed + interval)
        call.later(interval, self._retransmit_2xx, call, response)

    def ack(self, request: Request, source) -> None:
        call = self._call_for(request)
        if call is not None and call._pending_2xx is not None:
            call._pending_2xx = None
            offer, call.reoffer = call.reoffer, None
            if offer is not None:
                self._ack_answer(call, offer, request)

    def _ack_answer(self, call: Call, offer, request: Request) -> None:
        """The answer to the offer of our 200 to an offerless re-INVITE (§13.3.1.4, §14.2):
        media moves to its address and codec; none or an unusable one ends the call."""
        body = sdp_of(request)
        try:
            if not body:
                raise sdplib.SDPError("no SDP answer in the ACK")
            answer = sdplib.SessionDescription.parse(body)
            media = sdplib.negotiate(offer, answer)
        except sdplib.SDPError as exc:
            call.send_bye(f"Bad answer in ACK: {exc}", CallStatus.FAILED, wait=False)
            return
        call.remote_media, call.remote_sdp = media, body
        if call.media_session is not None:
            call.media_session.negotiate(media)
        call.set_status(CallStatus.HOLD if sdplib.is_hold(answer) else CallStatus.ESTABLISHED)

    def stray_response(self, response: Response, source) -> None:
        """2xx retransmissions of an INVITE arrive here (§13.2.2.4): ACK again."""
        call = self._call_for(response)
        if (call is not None and call.invite is not None and response.cseq.method == "INVITE"
                and 200 <= response.status < 300):
            call.on_2xx(response)

    def ack_and_bye_fork(self, call: Call, response: Response) -> None:
        fork = Dialog.from_uac(call.invite, response)
        dest = call.dest
        ack = fork.create_request("ACK", via=self.via(dest), cseq=call.invite.cseq.seq)
        self.transport.send(ack, dest.transport, dest.host, dest.port)
        bye = fork.create_request("BYE", via=self.via(dest))
        self.transactions.send_request(bye, dest.transport, dest.host, dest.port, lambda r: None)
