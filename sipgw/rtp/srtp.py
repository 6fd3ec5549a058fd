"""SRTP and SRTCP (RFC 3711) for one stream through libsrtp (pylibsrtp): no hand-written
crypto here. Our key protects what we send, the peer's key unprotects what it sends."""
from __future__ import annotations

from pylibsrtp import Error, Policy, Session

# libsrtp keeps a stream (ROC, replay window) per inbound SSRC that authenticates: a peer
# changing SSRC without end would grow the session without end. The oldest are dropped.
MAX_INBOUND_SSRCS = 32

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
        self._in_ssrcs: dict[bytes, None] = {}  # inbound SSRCs with a libsrtp stream, oldest first

    def _inbound(self, ssrc: bytes) -> None:
        """An authentic packet of ``ssrc``: libsrtp holds a stream for it; past
        MAX_INBOUND_SSRCS the oldest stream is removed."""
        if ssrc in self._in_ssrcs:
            return
        self._in_ssrcs[ssrc] = None
        if len(self._in_ssrcs) > MAX_INBOUND_SSRCS:
            oldest = next(iter(self._in_ssrcs))
            del self._in_ssrcs[oldest]
            try:
                self._in.remove_stream(int.from_bytes(oldest, "big"))
            except Error:
                pass

    def protect(self, data: bytes) -> bytes:
        return self._out.protect(data)

    def protect_rtcp(self, data: bytes) -> bytes:
        return self._out.protect_rtcp(data)

    def unprotect(self, data: bytes) -> bytes | None:
        try:
            plain = self._in.unprotect(data)
        except (Error, ValueError):
            return None
        self._inbound(plain[8:12])
        return plain

    def unprotect_rtcp(self, data: bytes) -> bytes | None:
        try:
            plain = self._in.unprotect_rtcp(data)
        except (Error, ValueError):
            return None
        self._inbound(plain[4:8])
        return plain
