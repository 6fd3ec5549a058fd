"""The WCS ``/call/*`` REST methods: validate the body at the boundary, hand the call manager
typed values, and let ``sipgw.rest.errors`` turn refusals into responses.

Field names and value forms are the ones the WCS SIP-as-RTMP pages send: every value may
arrive as a string (``"5060"``, ``"true"``), an empty string means "not given".  Error
messages name the field and never echo a value (the body carries ``sipPassword``).
"""
from __future__ import annotations

import ipaddress
import re
import uuid
from typing import Any, Protocol

from sipgw.calls import CallError, CallRequest, CallStatus
from sipgw.config import Config
from sipgw.egress import EgressPolicy
from sipgw.quotas import DigitBuckets, check
from sipgw.sip.headers import URI, HeaderError
from sipgw.policy import Denied
from sipgw.rest.errors import ApiError, BadRequest, Conflict, NotFound, error_response
from sipgw.rest.fields import (NOT_IN_STREAM_NAME, boolean_field, missing,
                               string_field)
from sipgw.rest.router import Router

CALL_NOT_FOUND = "Call not found"
DTMF_KINDS = ("RFC2833", "INFO")
DEFAULT_SIP_PORT = 5060

_ID_MAX = 128
_NAME_MAX = 128
_URI_PART_MAX = 256
_PASSWORD_MAX = 256
_URL_MAX = 2048
_HOST_MAX = 253

_NOT_IN_DISPLAY_NAME = frozenset('<>"')
_NOT_IN_TARGET = frozenset('<>" \r\n\t')
_HOST_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOSTNAME = re.compile(rf"{_HOST_LABEL}(?:\.{_HOST_LABEL})*\.?")
_DTMF = re.compile(r"[0-9*#A-D]+")
_STATUSES = ", ".join(s.value for s in CallStatus)
# Keys a call object must never carry out of the gateway, whatever the manager returns.
_SECRET_KEYS = frozenset({"sipPassword", "password"})
# The fields of a WCS call object (REST API, "SIP as stream") sipgw has no value for: present,
# with WCS's value for a call it did not set ({} for custom, as WCS answers).
_WCS_CALL_FIELDS = {"custom": {}, "nodeId": None, "parentCallId": None, "rtmpUrl": None,
                    "rtmpStream": None, "rtmpStreamStatus": None, "inviteParameters": None,
                    "mediaProvider": None, "sipMessageRaw": None, "isMsrp": False,
                    "target": None, "holdForTransfer": False}


class CallManager(Protocol):
    """What ``CallApi`` needs from the user agent side."""

    def startup(self, request: CallRequest) -> None: ...

    def find(self, call_id: str | None = None, status: str | None = None) -> list[dict]: ...

    def terminate(self, call_id: str) -> None: ...

    def send_dtmf(self, call_id: str, dtmf: str, kind: str) -> None: ...

    def hold(self, call_id: str, held: bool = True, for_transfer: bool = False) -> None: ...

    def transfer(self, call_id: str, target: str) -> None: ...

    def active_calls(self) -> list[CallRequest]: ...


class CallApi:
    """``/call/startup``, ``/call/find``, ``/call/find_all``, ``/call/terminate``, ``/call/send_dtmf``,
    ``/call/hold``, ``/call/unhold``, ``/call/transfer``.

    The egress policy (``sip_egress_*``) and the quotas (``max_calls*``, ``dtmf_*``) of the
    settings are checked here, before the manager sends anything.

    SIP as RTMP: a call with ``rtmpUrl`` + ``rtmpStream`` is republished by ``pushes`` (the
    ``/push/*`` engine) as ``rtmp_<rtmpStream>`` from its first media on; the RTMP target is
    checked (URL, ``rtmp_egress_*``, ``max_pushes``, 409 when a push already publishes there)
    before the call is placed."""

    router = Router()

    def __init__(self, manager: CallManager, config: Config | None = None, clock=None,
                 pushes=None, injections=None) -> None:
        self._manager = manager
        self._config = config = config or Config()
        self._egress = EgressPolicy.from_config(config, "sip")
        self._rtmp_egress = EgressPolicy.from_config(config, "rtmp")
        self._digits = DigitBuckets(config.dtmf_digits_per_second, config.dtmf_max_digits, clock)
        self._pushes = pushes  # sipgw.media.push.PushManager, for SIP as RTMP
        self._rtmp: dict[str, tuple] = {}  # callId -> (rtmpStream, its RtmpPush)
        self._injections = injections  # sipgw.injections.InjectionManager: /call/inject_*
        # The quotas' counts, kept up to date by the manager's status observer when it has
        # one (the call manager), instead of a scan of every call (retained ones too) per
        # startup.
        self._active: ActiveCalls | None = None
        observers = getattr(manager, "call_observers", None)
        if observers is not None:
            self._active = ActiveCalls()
            observers.append(self._active.observe)

    @router.route("/call/startup")
    def startup(self, request: Any, body: dict) -> None:
        """200 with an empty body: accepted, the call goes on asynchronously."""
        call = parse_call_request(body)
        for host, name in destinations(call):
            self._egress.check(host, name)
        self._check_quotas(call)
        if call.rtmp_url:
            self._check_rtmp(call)
        self._manager.startup(call)
        if call.rtmp_url:
            self._forget_pushes()
            self._rtmp[call.call_id] = (call.rtmp_stream, self._pushes.startup(
                call.stream_name, call.rtmp_url, published_name=_published(call),
                wait_for_media=True))
        return None

    def _check_quotas(self, call: CallRequest) -> None:
        max_calls, per_account = self._config.max_calls, self._config.max_calls_per_account
        if not (max_calls or per_account):
            return
        account = _account(call)
        if self._active is not None:
            total, mine = len(self._active), self._active.of(account)
        else:
            active = self._manager.active_calls()
            total, mine = len(active), sum(_account(c) == account for c in active)
        check(total, max_calls, "calls", "max_calls")
        check(mine, per_account, f"calls of the account {account}", "max_calls_per_account",
              "sipLogin")

    def _check_rtmp(self, call: CallRequest) -> None:
        from sipgw.media.push import PushError
        from sipgw.rest.push import admit
        if self._pushes is None:
            raise BadRequest("RTMP republishing is not available", "rtmpUrl")
        try:
            where = self._pushes.target(call.rtmp_url, _published(call))
        except PushError as exc:
            raise ApiError(exc.code, str(exc), exc.field) from None
        admit(self._rtmp_egress, self._pushes, self._config, call.rtmp_url)
        if self._pushes.in_use(where):
            raise Conflict(f"{_published(call)} is already published to this rtmpUrl",
                           "rtmpStream")

    def _forget_pushes(self) -> None:
        """Drop the pushes of calls the manager no longer lists (past call_retention)."""
        for call_id, (_, push) in list(self._rtmp.items()):
            if push.finished and not self._manager.find(call_id=call_id):
                del self._rtmp[call_id]

    def _shown(self, calls: list[dict]) -> list[dict]:
        """``_found`` plus each SIP-as-RTMP call's push: rtmpUrl (credentials hidden),
        rtmpStream, rtmpStreamStatus; and its ``injection``."""
        found = _found(calls)
        for call in found:
            rtmp_stream, push = self._rtmp.get(call.get("callId"), (None, None))
            if push is not None:
                call.update(rtmpUrl=push.shown_url, rtmpStream=rtmp_stream,
                            rtmpStreamStatus=push.state)
            if self._injections is not None:  # what /call/inject_* sends into it, or null
                call["injection"] = self._injections.status(call.get("callId"))
        return found

    @router.route("/call/find")
    def find(self, request: Any, body: dict) -> list[dict]:
        call_id = string_field(body, "callId", max_len=_ID_MAX, forbidden=NOT_IN_STREAM_NAME)
        status = _status(body)
        if not call_id and not status:
            raise BadRequest("callId or status is required", "callId")
        return self._shown(self._manager.find(call_id=call_id or None, status=status))

    @router.route("/call/find_all", get=True)
    def find_all(self, request: Any, body: dict) -> list[dict]:
        return self._shown(self._manager.find())

    @router.route("/call/terminate")
    def terminate(self, request: Any, body: dict) -> None:
        self._manager.terminate(_call_id(body))
        return None

    @router.route("/call/hold")
    def hold(self, request: Any, body: dict) -> None:
        """Re-INVITE with our SDP sendonly (``sip_hold_direction``); 409 unless ESTABLISHED.
        ``holdForTransfer`` (WebSDK ``Call.holdForTransfer()``): the same, the call then shows
        ``holdForTransfer: true`` till it is unheld."""
        self._manager.hold(_call_id(body), True,
                           boolean_field(body, "holdForTransfer", False))
        return None

    @router.route("/call/unhold")
    def unhold(self, request: Any, body: dict) -> None:
        """Re-INVITE with our SDP sendrecv; 409 unless HOLD."""
        self._manager.hold(_call_id(body), False)
        return None

    @router.route("/call/transfer")
    def transfer(self, request: Any, body: dict) -> None:
        """Blind transfer: REFER to ``target`` (a SIP URI, user@host or a user at the call's
        domain); its progress is the call's ``transferStatus`` and TransferStatusEvent."""
        call_id = _call_id(body)
        target = string_field(body, "target", required=True, max_len=_URI_PART_MAX,
                              forbidden=_NOT_IN_TARGET)
        self._manager.transfer(call_id, target)
        return None

    @router.route("/call/send_dtmf")
    def send_dtmf(self, request: Any, body: dict) -> list[dict] | None:
        """Empty 200: sent. The SIP-as-RTMP pages take any HTTP error as the call's end (they
        show FINISHED and stop polling), so digits refused for a call that exists (bad digits,
        rate, not established) answer 200 with the call as /call/find gives it, plus the
        refusal's ``error`` and ``field``; an unknown call is the 404 it should be."""
        call_id = _call_id(body)
        try:
            dtmf, kind = _dtmf(body, self._config.dtmf_max_digits), _dtmf_kind(body)
            self._digits.take(call_id, len(dtmf))
            self._manager.send_dtmf(call_id, dtmf, kind)
        except (ApiError, Denied, CallError) as exc:
            code, refusal = error_response(exc)
            calls = self._manager.find(call_id=call_id)
            if code == 404 or not calls:
                raise
            return [{**call, **refusal} for call in self._shown(calls)]
        return None


def destinations(call: CallRequest) -> list[tuple[str, str]]:
    """(host, field) of every SIP destination a call names: sipDomain, the outbound proxy's
    host and the callee's host (``user@host``)."""
    found = [(call.sip_domain, "sipDomain")]
    if call.sip_outbound_proxy:
        found.append((_host_of(_without_scheme(call.sip_outbound_proxy)), "sipOutboundProxy"))
    if "@" in call.callee:
        found.append((_host_of(call.callee.rpartition("@")[2]), "callee"))
    return found


def _host_of(text: str) -> str:
    """The host of ``host[:port][;params]`` (``[v6]`` and a bare IPv6 address too)."""
    text = text.partition(";")[0]
    if text.startswith("["):
        return text.partition("]")[0] + "]"
    return text if text.count(":") > 1 else text.partition(":")[0]


def _account(call: CallRequest) -> str:
    return f"{call.sip_login}@{call.sip_domain}"


class ActiveCalls:
    """The calls not ended yet, and how many per account, as a call manager's status observer
    sees them (every call is observed from its first status on: PENDING)."""

    def __init__(self) -> None:
        self._accounts: dict[object, str] = {}  # call -> account, while not ended
        self._per_account: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._accounts)

    def of(self, account: str) -> int:
        return self._per_account.get(account, 0)

    def observe(self, call) -> None:
        """A status change of ``call`` (an object with ``status`` and ``request``)."""
        if call.status.ended:
            account = self._accounts.pop(call, None)
            if account is not None:
                left = self._per_account[account] - 1
                if left:
                    self._per_account[account] = left
                else:
                    del self._per_account[account]
        elif call not in self._accounts:
            account = self._accounts[call] = _account(call.request)
            self._per_account[account] = self._per_account.get(account, 0) + 1


def _without_scheme(value: str) -> str:
    return value.partition(":")[2] if value.startswith(("sip:", "sips:")) else value


def _is_proxy(value: str) -> bool:
    """host[:port][;transport=udp|tcp|tls], with or without a sip: or sips: prefix."""
    text = _without_scheme(value)
    hostport, _, params = text.partition(";")
    if not _is_host_port(hostport):
        return False
    if not params:
        return True
    try:
        uri = URI.parse(("sips:" if value.startswith("sips:") else "sip:") + text)
    except HeaderError:
        return False
    allowed = ("tls",) if uri.scheme == "sips" else ("udp", "tcp", "tls")
    return set(uri.params) <= {"transport", "lr"} and uri.transport in allowed


def parse_call_request(body: dict) -> CallRequest:
    """The ``/call/startup`` body as a ``CallRequest``; ``BadRequest`` names the first bad field."""
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    call_id = string_field(body, "callId", max_len=_ID_MAX, forbidden=NOT_IN_STREAM_NAME)
    if not call_id:
        call_id = str(uuid.uuid4())
    callee = string_field(body, "callee", required=True, max_len=_URI_PART_MAX)
    sip_login = string_field(body, "sipLogin", required=True, max_len=_NAME_MAX)
    sip_domain = string_field(body, "sipDomain", required=True, max_len=_HOST_MAX)
    if not _is_host(sip_domain):
        raise BadRequest("sipDomain must be a host name or IP address", "sipDomain")
    proxy = string_field(body, "sipOutboundProxy", max_len=_HOST_MAX + 8)
    if proxy and not _is_proxy(proxy):
        raise BadRequest("sipOutboundProxy must be [sip:|sips:]host or host:port, optionally "
                         "with ;transport=udp, tcp or tls", "sipOutboundProxy")
    srtp = string_field(body, "sipSrtp", max_len=16).lower()
    if srtp not in ("", "off", "optional", "mandatory"):
        raise BadRequest("sipSrtp must be off, optional or mandatory", "sipSrtp")
    to_stream = string_field(body, "toStream", max_len=_NAME_MAX, forbidden=NOT_IN_STREAM_NAME)
    rtmp_url = string_field(body, "rtmpUrl", max_len=_URL_MAX)
    rtmp_stream = string_field(body, "rtmpStream", max_len=_NAME_MAX, forbidden=NOT_IN_STREAM_NAME)
    if bool(rtmp_url) != bool(rtmp_stream):
        missing_field = "rtmpStream" if rtmp_url else "rtmpUrl"
        raise BadRequest(f"{missing_field} is required with "
                         f"{'rtmpUrl' if rtmp_url else 'rtmpStream'}", missing_field)
    return CallRequest(
        call_id=call_id,
        callee=callee,
        sip_login=sip_login,
        sip_domain=sip_domain,
        sip_password=_password(body),
        sip_auth_name=string_field(body, "sipAuthenticationName", max_len=_NAME_MAX),
        sip_outbound_proxy=proxy,
        sip_port=_port(body, "sipPort", DEFAULT_SIP_PORT),
        sip_register_required=boolean_field(body, "sipRegisterRequired", False),
        to_stream=to_stream or rtmp_stream or call_id,
        has_audio=_has_media(body),
        has_video=boolean_field(body, "hasVideo", True),
        app_key=string_field(body, "appKey", max_len=_NAME_MAX),
        visible_name=string_field(
            body, "visibleName", max_len=_NAME_MAX, forbidden=_NOT_IN_DISPLAY_NAME, spaces=True
        ),
        rtmp_url=rtmp_url,
        rtmp_stream=rtmp_stream,
        sip_srtp=srtp,
    )


def _published(call: CallRequest) -> str:
    """The name a SIP-as-RTMP call gets on the RTMP server (the pages show rtmp_<rtmpStream>)."""
    return "rtmp_" + call.rtmp_stream


def _has_media(body: dict) -> bool:
    """hasAudio; with hasVideo also false the stream would carry nothing: 400 naming both."""
    has_audio = boolean_field(body, "hasAudio", True)
    if not has_audio and not boolean_field(body, "hasVideo", True):
        raise BadRequest("hasAudio and hasVideo are both false: a call needs audio or video",
                         "hasAudio")
    return has_audio


def _password(body: dict) -> str:
    value = body.get("sipPassword")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise BadRequest("sipPassword must be a string", "sipPassword")
    if len(value) > _PASSWORD_MAX:
        raise BadRequest(f"sipPassword must be at most {_PASSWORD_MAX} characters", "sipPassword")
    return value


def _port(body: dict, name: str, default: int) -> int:
    value = body.get(name)
    if missing(value):
        return default
    port = _port_number(value)
    if port is None:
        raise BadRequest(f"{name} must be an integer from 1 to 65535", name)
    return port


def _port_number(value: Any) -> int | None:
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 5:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if 1 <= value <= 65535 else None


def _is_host(text: str) -> bool:
    if text.startswith("[") and text.endswith("]"):
        return _is_ipv6(text[1:-1])
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return len(text) <= _HOST_MAX and _HOSTNAME.fullmatch(text) is not None


def _is_ipv6(text: str) -> bool:
    try:
        return isinstance(ipaddress.ip_address(text), ipaddress.IPv6Address)
    except ValueError:
        return False


def _is_host_port(text: str) -> bool:
    """``host``, ``host:port``, ``[v6]``, ``[v6]:port`` or a bare IPv6 address."""
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or not _is_ipv6(host):
            return False
        return not rest or (rest.startswith(":") and _port_number(rest[1:]) is not None)
    if text.count(":") > 1:
        return _is_ipv6(text)
    host, colon, port = text.partition(":")
    return _is_host(host) and (not colon or _port_number(port) is not None)


def _call_id(body: dict) -> str:
    return string_field(body, "callId", required=True, max_len=_ID_MAX, forbidden=NOT_IN_STREAM_NAME)


def _status(body: dict) -> str | None:
    value = body.get("status")
    if missing(value):
        return None
    if isinstance(value, str) and value.upper() in CallStatus.__members__:
        return CallStatus[value.upper()].value
    raise BadRequest(f"status must be one of {_STATUSES}", "status")


def _dtmf(body: dict, max_digits: int) -> str:
    value = body.get("dtmf")
    if missing(value):
        raise BadRequest("dtmf is required", "dtmf")
    if isinstance(value, str) and len(value) <= max_digits and _DTMF.fullmatch(value.upper()):
        return value.upper()
    raise BadRequest(f"dtmf must be 1 to {max_digits} of 0-9 * # A-D", "dtmf")


def _dtmf_kind(body: dict) -> str:
    value = body.get("type")
    if missing(value):
        return DTMF_KINDS[0]
    if isinstance(value, str) and value.upper() in DTMF_KINDS:
        return value.upper()
    raise BadRequest("type must be RFC2833 or INFO", "type")


def _found(calls: list[dict]) -> list[dict]:
    if not calls:
        raise NotFound(CALL_NOT_FOUND)
    return [{**_WCS_CALL_FIELDS, **{k: v for k, v in call.items() if k not in _SECRET_KEYS}}
            for call in calls]
