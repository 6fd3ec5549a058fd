"""SRTP and SRTCP (RFC 3711) for one stream through libsrtp (pylibsrtp): no hand-written
crypto here. Our key protects what we send, the peer's key unprotects what it sends."""
from __future__ import annotations

from pylibsrtp import Error, Policy, Session

PROFILES = {"AES_CM_128_HMAC_SHA1_80": Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
            "AES_CM_128_HMAC_SHA1_32": Policy.SRTP_PROFILE_AES128_CM_SHA1_32}


class SrtpContext:
    """``unprotect``/``unprotect_rtcp`` return None for a packet that fails authentication
    (or replay) checks; the caller counts it."""

    def __init__(self, suite: str, local_key: bytes, remote_key: bytes):
        profile = PROFILES[suite]
        self._out = Session(Policy(key=local_key, ssrc_type=Policy.SSRC_ANY_OUTBOUND,
                                   srtp_profile=profile))
        self._in = Session(Policy(key=remote_key, ssrc_type=Policy.SSRC_ANY_INBOUND,
                                  srtp_profile=profile))

    def protect(self, data: bytes) -> bytes:
        return self._out.protect(data)

    def protect_rtcp(self, data: bytes) -> bytes:
        return self._out.protect_rtcp(data)

    def unprotect(self, data: bytes) -> bytes | None:
        try:
            return self._in.unprotect(data)
        except (Error, ValueError):
            return None

    def unprotect_rtcp(self, data: bytes) -> bytes | None:
        try:
            return self._in.unprotect_rtcp(data)
        except (Error, ValueError):
            return None
