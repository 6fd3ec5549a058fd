"""The gateway's call (as PJSUA's ``pjsua_call.c`` sits on ``sip_inv.c``): one SIP INVITE
session bound to a ``MediaSession`` and the ``Stream`` viewers play, with its WCS status.

``Call`` is the ``InviteUser`` of its session (``sipgw/sip/invite.py``): it makes the SDP
offer from the RTP ports it binds, takes the answers into the media, answers the peer's
re-offers, maps SIP progress to WCS statuses and reasons, and carries the operations of
the REST and websocket layers (hold, transfer, DTMF, terminate).
"""
from __future__ import annotations

import dataclasses

from ..calls import (NORMAL_CLEARING, NO_COMMON_CODECS, REQUEST_TIMEOUT, RTP_ACTIVITY,
                     TERMINATED_BY_REST, CallError, CallRequest, CallStatus, Conflict)
from ..logtext import Logger  # the lean emit: three lines per call
from ..rtp.ports import PortsExhausted
from ..rtp.session import MediaSession
from ..sip import invite, sdes
from ..sip import sdp as sdplib
from ..sip.body import sdp_of
from ..sip.headers import HeaderError, URI
from ..sip.message import Request, Response

log = Logger(namespace="sipgw.gateway.call")

DTMF_DURATION_MS = 160
PICTURE_FAST_UPDATE = (b'<?xml version="1.0" encoding="utf-8" ?>\r\n<media_control><vc_primitive>'
                       b'<to_encoder><picture_fast_update/></to_encoder></vc_primitive>'
                       b'</media_control>\r\n')
_DIRECTIONS = frozenset({"sendrecv", "sendonly", "recvonly", "inactive"})
_QUIET_STATUSES = frozenset({CallStatus.TRYING, CallStatus.RING, CallStatus.RING_MEDIA,
                             CallStatus.SESSION_PROGRESS})
# The session's own words for its end, as WCS clients know them.
_WCS_REASONS = {invite.HUNG_UP: NORMAL_CLEARING, invite.NO_RESPONSE: REQUEST_TIMEOUT}


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


def _offer(manager, address: str, ports: dict, srtp_mode: str):
    """(our SDP offer from the RTP ``ports`` by kind, its SDES keys by kind): fresh keys
    unless ``srtp_mode`` is off, over RTP/SAVP when it is mandatory."""
    keys = {kind: sdes.offer_keys() for kind in ports} if srtp_mode != "off" else {}
    proto = "RTP/SAVP" if srtp_mode == "mandatory" else "RTP/AVP"
    offer = sdplib.make_offer(address, audio_port=ports.get("audio"),
                              video_port=ports.get("video"), session_id=manager.next_version(),
                              crypto=keys, proto=proto)
    return offer, keys


def parse_target(target: str, domain: str) -> URI:
    """A transfer target: a SIP URI, user@host, or a user at ``domain``."""
    try:
        if target.startswith(("sip:", "sips:")):
            return URI.parse(target)
        if "@" in target:
            return URI.parse(f"sip:{target}")
        return URI("sip", domain, user=target)
    except HeaderError as exc:
        raise CallError(f"target is not a SIP URI: {exc}") from None


class _Quiet:
    """An InviteUser that takes no part in the call: every event is ignored."""

    def prepare_offer(self) -> bool:
        return False

    def offer_body(self) -> bytes:
        return b""

    def provisional(self, response: Response) -> None:
        pass

    def answered(self, response: Response) -> str:
        return "Not in the call any more"

    def established(self, response: Response) -> None:
        pass

    def refreshed(self, response: Response) -> None:
        pass

    def answer_offer(self, request: Request) -> bytes:
        raise sdplib.SDPError("not in the call any more")

    def reoffer(self):
        return None

    def ack_answer(self, offer, body: bytes) -> None:
        pass

    def transfer_changed(self, status: str, sip_status: int, reason: str) -> None:
        pass

    def refer_refusal(self, target: URI) -> str:
        return "Not in the call any more"

    def referred(self, target: URI) -> None:
        pass

    def session_ended(self, kind: str, reason: str) -> None:
        pass


class _Retired(_Quiet):
    """The InviteUser of a dialog the call left (the callee transferred it, or the call
    ended while the transfer target was called): once it ends, it is closed and forgotten."""

    def __init__(self, session, sip):
        self.session, self.sip = session, sip

    def session_ended(self, kind: str, reason: str) -> None:
        self.session.close()
        self.sip.forget(self.session)


class _ReferredLeg(_Quiet):
    """The InviteUser of the INVITE a callee's REFER asked for (RFC 3515 §2.4.2), till it
    is answered: its own offer from the call's RTP ports, its progress NOTIFYed in the old
    dialog; answered, it becomes the call's session (``Call.take_leg``)."""

    def __init__(self, call: "Call", target: URI):
        self.call = call
        self.target = target
        self.offer: sdplib.SessionDescription | None = None
        self.srtp_offered: dict = {}
        self.media: dict = {}
        self.keys: dict = {}
        self.remote_sdp = b""
        self.session = call.manager.sip.session(call.request, self)

    def prepare_offer(self) -> bool:
        call = self.call
        ours = call.offer  # the same address and ports, new SDES keys for a new dialog
        ports = {m.kind: m.port for m in ours.media}
        self.offer, self.srtp_offered = _offer(call.manager, ours.media_address(ours.media[0]),
                                               ports, call.srtp_mode)
        return True

    def offer_body(self) -> bytes:
        return bytes(self.offer)

    def provisional(self, response: Response) -> None:
        if response.status > 100:
            self.call.session.notify_refer(response.status, response.reason)

    def answered(self, response: Response) -> str:
        try:
            answer = sdplib.SessionDescription.parse(sdp_of(response))
            self.media = sdplib.negotiate(self.offer, answer)
            self.keys = sdes.agree(self.call.srtp_mode, self.srtp_offered, answer)
        except (sdplib.SDPError, sdes.CryptoError) as exc:
            return str(exc)
        self.remote_sdp = sdp_of(response)
        return ""

    def established(self, response: Response) -> None:
        self.call.take_leg(self)

    def session_ended(self, kind: str, reason: str) -> None:
        self.call.leg_failed(self, kind, _WCS_REASONS.get(reason, reason))


class Call:
    """One outgoing call: its INVITE session, its media and stream, its WCS status."""

    def __init__(self, manager, request: CallRequest):
        self.manager = manager
        self.request = request
        self.started_at = manager.reactor.seconds()  # /call/startup: the setup time's origin
        self.status = CallStatus.NEW
        self.history: list[str] = [CallStatus.NEW.value]
        self.reason = ""
        self.ended_at: float | None = None
        self.offer: sdplib.SessionDescription | None = None
        self.srtp_mode = "off"
        self.srtp_offered: dict[str, list[sdes.Crypto]] = {}  # our SDES keys per kind
        self.srtp_keys: dict[str, tuple] = {}  # (ours, the peer's) Crypto in use per kind
        self.remote_sdp: bytes = b""
        self.media: dict = {}
        self.answer_error = ""  # why the SDP answer was refused, the call's FAILED reason
        self.remote_media: dict = {}
        self.stream = None
        self.media_session = None
        self._holding: sdplib.SessionDescription | None = None  # our hold re-INVITE's old offer
        self.held = False  # on hold from the app (/call/hold answered)
        self.hold_for_transfer = False  # held by /call/hold with holdForTransfer
        self.leg: _ReferredLeg | None = None  # the INVITE a callee's REFER asked for
        self.session = manager.sip.session(request, self)

    # -- what the session holds, under the names the rest of sipgw reads ------------
    @property
    def sip_call_id(self) -> str:
        return self.session.sip_call_id

    @property
    def dialog(self):
        return self.session.dialog

    @property
    def sip_status(self) -> int:
        return self.session.sip_status

    @property
    def transfer_status(self) -> str | None:
        return self.session.transfer_status

    @property
    def transfer_target(self) -> str | None:
        return self.session.transfer_target

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
        for observer in self.manager.call_observers:  # hooks, metrics
            try:
                observer(self)
            except Exception:  # an observer's bug never stops the call's status change
                log.failure("call {call_id}: status observer failed", call_id=self.request.call_id)
        if status.ended:
            self.manager.call_ended(self)

    def to_json(self) -> dict:
        r = self.request
        return {"callId": r.call_id, "status": self.status.value, "sipStatus": self.sip_status,
                "info": self.reason, "caller": r.sip_login,
                "callee": r.callee, "incoming": False, "hasAudio": r.has_audio,
                "hasVideo": r.has_video, "streamName": r.stream_name, "appKey": r.app_key,
                "sessionId": self.sip_call_id, "visibleName": r.visible_name,
                "sdp": sdes.mask(self.remote_sdp.decode("utf-8", "replace")),
                "target": self.transfer_target, "transferStatus": self.transfer_status,
                "holdForTransfer": self.hold_for_transfer, "history": list(self.history)}

    # -- the InviteUser interface (sipgw/sip/invite.py) -----------------------------
    def prepare_offer(self) -> bool:
        """Bind an RTP/RTCP pair per media kind and build the SDP offer from them."""
        r, config, manager = self.request, self.manager.config, self.manager
        kinds = [k for k, wanted in (("audio", r.has_audio), ("video", r.has_video)) if wanted]
        session = MediaSession(
            manager.reactor, call_id=r.call_id, stream=self.stream,
            bind_address=config.sip_bind_address, ports=manager.ports,
            kinds=kinds or ["audio"], rtp_timeout=config.rtp_activity_timeout,
            send_silence=config.rtp_session_init_always, on_timeout=self.rtp_timed_out,
            on_keyframe_info=self.request_picture_update,
            probation_packets=config.rtp_probation_packets,
            max_packets_per_second=config.rtp_max_packets_per_second,
            receive_buffer=config.rtp_receive_buffer_bytes, timers=manager.sip.timers)
        try:
            ports = session.open()
        except PortsExhausted as exc:
            self.set_status(CallStatus.FAILED, str(exc))
            return False
        self.media_session = session
        self.stream._on_keyframe_request = session.request_keyframe
        self.stream.counters_source = session.counters
        address = config.media_address or manager.sip.transport.sent_by(self.session.dest.host)
        self.srtp_mode = r.sip_srtp or config.sip_srtp
        self.offer, self.srtp_offered = _offer(manager, address, ports, self.srtp_mode)
        return True

    def offer_body(self) -> bytes:
        return bytes(self.offer)

    def provisional(self, response: Response) -> None:
        if response.status == 100:
            self.set_status(CallStatus.TRYING)
        elif sdp_of(response):
            self.take_answer(response)
            self.set_status(CallStatus.RING_MEDIA)
        elif response.status == 183:
            self.set_status(CallStatus.SESSION_PROGRESS)
        else:
            self.set_status(CallStatus.RING)

    def answered(self, response: Response) -> str:
        if response.body:
            self.take_answer(response)
        return "" if self.media else (self.answer_error or NO_COMMON_CODECS)

    def established(self, response: Response) -> None:
        self.set_status(CallStatus.ESTABLISHED)
        if self.media_session is not None:
            self.media_session.established()

    def refreshed(self, response: Response) -> None:
        self.take_answer(response)

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
            self._secure(keys)
            self.media_session.negotiate(self.media)

    def _secure(self, keys: dict) -> None:
        """SRTP with ``keys`` (kind -> (our Crypto, the peer's)) from now on; a kind whose keys
        did not change keeps its SRTP contexts (rollover counter, replay window)."""
        changed = {kind: pair for kind, pair in keys.items() if self.srtp_keys.get(kind) != pair}
        if not changed:
            return
        log.info("call {call_id}: SRTP ({suites}) on {kinds}", call_id=self.request.call_id,
                 suites=", ".join(sorted({k[0].suite for k in changed.values()})),
                 kinds=", ".join(sorted(changed)))
        self.srtp_keys.update(changed)
        if self.media_session is not None:
            self.media_session.secure(changed)

    def answer_offer(self, request: Request) -> bytes:
        """Our answer to the peer's offer (RFC 3264 §6), applied to the media; raises SDPError."""
        offer = sdplib.SessionDescription.parse(sdp_of(request))
        try:  # RFC 4568 §7.1.4: the keys of an SRTP call answered, kept or re-keyed
            keys = sdes.answer_keys(self.srtp_mode, offer, self.srtp_keys)
        except sdes.CryptoError as exc:
            raise sdplib.SDPError(str(exc)) from None
        ours = self.offer
        answer, media = sdplib.make_answer(
            offer, address=ours.media_address(ours.media[0]),
            audio_port=self._our_port("audio"), video_port=self._our_port("video"),
            session_id=ours.origin.sess_id, version=self.manager.next_version(),
            crypto={kind: pair[0] for kind, pair in keys.items()})
        if self.held:  # held from the app: the answer keeps us not receiving (RFC 3264 §6.1)
            answer, media = _held_answer(answer, media, self.manager.config.sip_hold_direction)
        self.remote_media = media
        self._secure(keys)
        if self.media_session is not None:
            self.media_session.negotiate(media)
        self.remote_sdp = sdp_of(request)
        held = self.held or sdplib.is_hold(offer)
        self.set_status(CallStatus.HOLD if held else CallStatus.ESTABLISHED)
        return bytes(answer)

    def _our_port(self, kind: str) -> int | None:
        if self.offer is None:
            return None
        for m in self.offer.media:
            if m.kind == kind:
                return m.port
        return None

    def reoffer(self):
        """Our offer again, a new version of it (RFC 3264 §8), for an offerless re-INVITE."""
        if self.offer is None:
            return None
        return dataclasses.replace(self.offer, origin=dataclasses.replace(
            self.offer.origin, sess_version=self.manager.next_version()))

    def ack_answer(self, offer, body: bytes) -> None:
        """The answer in the ACK to ``offer``: media moves to its address and codec."""
        answer = sdplib.SessionDescription.parse(body)
        media = sdplib.negotiate(offer, answer)
        try:
            keys = sdes.agree(self.srtp_mode, self.srtp_offered, answer)
        except sdes.CryptoError as exc:
            raise sdplib.SDPError(str(exc)) from None
        self.remote_media, self.remote_sdp = media, body
        self._secure(keys)
        if self.media_session is not None:
            self.media_session.negotiate(media)
        self.set_status(CallStatus.HOLD if sdplib.is_hold(answer) else CallStatus.ESTABLISHED)

    def transfer_changed(self, status: str, sip_status: int, reason: str) -> None:
        for observer in self.manager.transfer_observers:  # hooks: TransferStatusEvent
            try:
                observer(self, sip_status, reason)
            except Exception:
                log.failure("call {call_id}: transfer observer failed",
                            call_id=self.request.call_id)

    def session_ended(self, kind: str, reason: str) -> None:
        if self.leg is not None and not self.status.ended:
            # The transferor hung up while the transfer target is called (RFC 5589 §6
            # allows it): the call lives on in the new INVITE.
            log.info("call {call_id}: transferor gone ({reason}), the transfer goes on",
                     call_id=self.request.call_id, reason=reason)
            self.session.close()
            self.manager.sip.forget(self.session)
            return
        self.set_status(CallStatus(kind), _WCS_REASONS.get(reason, reason))

    # -- the callee's transfer (sip_accept_refer, RFC 3515) --------------------------------
    def refer_refusal(self, target: URI) -> str:
        if self.status not in (CallStatus.ESTABLISHED, CallStatus.HOLD) or self.leg is not None:
            return f"call is {self.status.value}"
        if self.transfer_status in invite.TRANSFER_LIVE:
            return "a transfer of ours is in progress"
        return ""

    def referred(self, target: URI) -> None:
        log.info("call {call_id}: the callee transfers it to {target}",
                 call_id=self.request.call_id, target=str(target))
        self.leg = _ReferredLeg(self, target)
        self.leg.session.start_to(target, self.session.registration)

    def take_leg(self, leg: _ReferredLeg) -> None:
        """The transfer target answered: its dialog is the call's from now on, its media
        feeds the same stream; the old dialog gets the final NOTIFY and a BYE."""
        old, self.session, self.leg = self.session, leg.session, None
        leg.session.user = self
        if not old.ended:
            old.notify_refer(200, "OK")
            old.user = _Retired(old, self.manager.sip)
            old.bye(invite.TRANSFERRED)
        self.offer, self.srtp_offered, self.media = leg.offer, leg.srtp_offered, leg.media
        self.remote_sdp, self.held, self.hold_for_transfer = leg.remote_sdp, False, False
        plain = {kind: None for kind in self.srtp_keys if kind not in leg.keys}
        self.srtp_keys = {}  # the new dialog's keys, or plain RTP (sip_srtp=optional)
        self._secure(leg.keys)
        if self.media_session is not None:
            self.media_session.secure(plain)
            self.media_session.negotiate(self.media)
        log.info("call {call_id}: transferred to {target}", call_id=self.request.call_id,
                 target=str(leg.target))
        self.set_status(CallStatus.ESTABLISHED)

    def leg_failed(self, leg: _ReferredLeg, kind: str, reason: str) -> None:
        """The INVITE to the transfer target failed: the old dialog is told (a final
        NOTIFY) and the call goes on there; with the transferor gone the call ends."""
        if self.leg is not leg:
            return
        self.leg = None
        leg.session.close()
        self.manager.sip.forget(leg.session)
        log.info("call {call_id}: transfer by the callee failed: {reason}",
                 call_id=self.request.call_id, reason=reason)
        if self.session.ended:
            self.set_status(CallStatus(kind), reason)
            return
        status = leg.session.sip_status
        if status >= 300:  # the target's final response, else no SIP answer at all
            self.session.notify_refer(status, reason.removeprefix(f"{status} "))
        else:
            self.session.notify_refer(503, "Service Unavailable")

    def _drop_leg(self, reason: str) -> None:
        """A transfer target still called is hung up (CANCEL or BYE) and left alone."""
        leg, self.leg = self.leg, None
        if leg is not None:
            leg.session.user = _Retired(leg.session, self.manager.sip)
            leg.session.terminate(reason)

    def close(self) -> None:
        """The call ended: its sessions stop, and what only a live call uses (our offers, the
        negotiated media, the SDES keys) is let go: /call/find shows none of it."""
        self._drop_leg(self.reason or TERMINATED_BY_REST)
        self.session.close()
        self.offer = self._holding = None
        self.media, self.remote_media, self.srtp_offered, self.srtp_keys = {}, {}, {}, {}

    # -- operations (REST, websocket, media) --------------------------------------
    def terminate(self, reason: str = TERMINATED_BY_REST) -> None:
        """``/call/terminate``: CANCEL before the answer, BYE after (§9, §15); a transfer
        target being called is hung up too."""
        self._drop_leg(reason)
        if self.session.ended:  # the transferor left already: nothing else carries the call
            self.set_status(CallStatus.FINISH, reason)
        else:
            self.session.terminate(reason)

    def fail(self, reason: str) -> None:
        self._drop_leg(reason)
        if self.session.ended:
            self.set_status(CallStatus.FAILED, reason)
        else:
            self.session.fail(reason)

    def hold(self, held: bool, for_transfer: bool = False) -> None:
        """RFC 3264 §8.4: re-INVITE with our offer ``sip_hold_direction`` (held) or sendrecv;
        HOLD or ESTABLISHED once answered.  Conflict unless ESTABLISHED (hold) / HOLD (unhold)
        with no re-INVITE in flight."""
        wanted = CallStatus.ESTABLISHED if held else CallStatus.HOLD
        if self.status != wanted or self.dialog is None:
            raise Conflict(f"call {self.request.call_id} is {self.status.value}, "
                           f"not {wanted.value}")
        if self.leg is not None:
            raise Conflict(f"call {self.request.call_id}: the callee is transferring it")
        if self._holding is not None or self.session.reinviting:  # §14.1: one at a time
            raise Conflict(f"call {self.request.call_id}: a re-INVITE is in progress")
        direction = self.manager.config.sip_hold_direction if held else "sendrecv"
        offer = self.offer
        version = self.manager.next_version()
        self.offer = dataclasses.replace(
            offer, origin=dataclasses.replace(offer.origin, sess_version=version),
            media=[dataclasses.replace(m, attributes=[
                (direction, None) if k in _DIRECTIONS else (k, v) for k, v in m.attributes])
                for m in offer.media])
        self._holding = offer  # the offer to go back to if the peer refuses
        self.session.reinvite(bytes(self.offer),
                              lambda response: self._held(response, held, for_transfer))

    def _held(self, response: Response, held: bool, for_transfer: bool = False) -> None:
        previous, self._holding = self._holding, None
        if response.status >= 300:
            self.offer = previous
            log.warn("call {call_id}: {what} refused: {status}", call_id=self.request.call_id,
                     what="hold" if held else "unhold", status=response.status)
            return
        if response.body:
            self.take_answer(response)
        self.held, self.hold_for_transfer = held, held and for_transfer
        self.set_status(CallStatus.HOLD if held else CallStatus.ESTABLISHED)

    def transfer(self, target: URI) -> None:
        """Blind transfer (RFC 3515): REFER to ``target``; see InviteSession.refer."""
        if (self.status not in (CallStatus.ESTABLISHED, CallStatus.HOLD) or self.dialog is None
                or self.transfer_status in invite.TRANSFER_LIVE or self.leg is not None):
            raise Conflict(f"call {self.request.call_id} is {self.status.value}"
                           + (f", transfer {self.transfer_status}" if self.transfer_status else ""))
        self.session.refer(target)

    def send_dtmf(self, dtmf: str, kind: str) -> None:
        if self.dialog is None or self.status.ended:
            raise CallError(f"call {self.request.call_id} is not established "
                            f"({self.status.value})")
        if kind.upper() != "INFO":
            try:
                self.media_session.send_dtmf(dtmf, DTMF_DURATION_MS)
            except (ValueError, AttributeError) as exc:
                raise CallError(f"cannot send RFC2833 DTMF: {exc}") from None
            return
        for digit in dtmf:
            body = f"Signal={digit}\r\nDuration={DTMF_DURATION_MS}\r\n".encode()
            self.session.send_info("application/dtmf-relay", body)

    def rtp_timed_out(self) -> None:
        """No RTP for rtp_activity_timeout: hang up and fail (WCS 'Failed by RTP activity')."""
        self.fail(RTP_ACTIVITY)

    def request_picture_update(self) -> None:
        """SIP INFO picture_fast_update for callees that ignore RTCP PLI/FIR; one waiting in
        the queue is enough."""
        self.session.send_info("application/media_control+xml", PICTURE_FAST_UPDATE, once=True)
