"""Calls as WCS clients see them: the request that starts one, its status, its JSON.

Pure data and errors; the gateway's calls (``sipgw.gateway``) drive the state.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field


class CallStatus(str, enum.Enum):
    NEW = "NEW"
    PENDING = "PENDING"
    TRYING = "TRYING"
    RING = "RING"
    RING_MEDIA = "RING_MEDIA"
    SESSION_PROGRESS = "SESSION_PROGRESS"
    ESTABLISHED = "ESTABLISHED"
    HOLD = "HOLD"
    BUSY = "BUSY"
    FINISH = "FINISH"
    FAILED = "FAILED"

    @property
    def ended(self) -> bool:
        return self in (CallStatus.BUSY, CallStatus.FINISH, CallStatus.FAILED)


class CallError(Exception):
    """A request about calls that cannot be honoured; ``code`` is the HTTP status."""

    code = 400


class NotFound(CallError):
    code = 404


class Conflict(CallError):
    code = 409


class Unavailable(CallError):
    """The daemon is shutting down and takes no new calls."""

    code = 503


@dataclass(frozen=True)
class CallRequest:
    """A validated ``/call/startup`` body."""

    call_id: str
    callee: str
    sip_login: str
    sip_domain: str
    sip_password: str = field(default="", repr=False)
    sip_auth_name: str = ""
    sip_outbound_proxy: str = ""
    sip_port: int = 5060
    sip_register_required: bool = False
    to_stream: str = ""
    has_audio: bool = True
    has_video: bool = True
    app_key: str = ""
    visible_name: str = ""
    rtmp_url: str = field(default="", repr=False)  # SIP as RTMP (may hold credentials)
    rtmp_stream: str = ""
    sip_srtp: str = ""  # off, optional, mandatory; empty: the sip_srtp setting

    @property
    def auth_name(self) -> str:
        return self.sip_auth_name or self.sip_login

    @property
    def stream_name(self) -> str:
        return self.to_stream or self.call_id


# Reason strings WCS clients know (flashphoner constants).
NORMAL_CLEARING = "Normal call clearing"
REQUEST_TIMEOUT = "Failed by request timeout"
TERMINATED_BY_REST = "Stopped by rest /terminate"
RTP_ACTIVITY = "Failed by RTP activity"
NO_COMMON_CODECS = "No common codecs"
SHUTDOWN = "Stopped: server shutdown"
