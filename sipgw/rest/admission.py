"""The HTTP side of ``sipgw.policy`` for every resource on the REST and HLS ports (the REST
API, /metrics, /health, /whep/, HLS): who is admitted, and which pages may read the answer.

Resources call ``admit`` and ``cors``; they never read the client address, the
Authorization header or the Origin header themselves.
"""
from __future__ import annotations

from sipgw.policy import AccessPolicy, Denied

CHALLENGE = b'Bearer realm="sipgw"'


def admit(request, access: AccessPolicy, scope: str) -> None:
    """Raise ``Denied`` unless the client of ``request`` may use ``scope``: a trusted address,
    or a bearer token with the scope.  A 401 gets its ``WWW-Authenticate`` challenge."""
    host = getattr(request.getClientAddress(), "host", "")
    try:
        access.check(host, request.getHeader(b"authorization"), scope)
    except Denied as denied:
        if denied.code == 401:
            request.setHeader(b"WWW-Authenticate", CHALLENGE)
        raise


def cors(request, access: AccessPolicy, *, headers: bytes, methods: bytes | None = None,
         expose: bytes | None = None) -> None:
    """``Vary: Origin``, and the CORS headers when the page's origin is allowed
    (``rest_cors_origin``); nothing more for any other page."""
    request.setHeader(b"Vary", b"Origin")
    origin = access.allowed_origin(request.getHeader(b"origin"))
    if origin is None:
        return
    request.setHeader(b"Access-Control-Allow-Origin", origin)
    if methods is not None:
        request.setHeader(b"Access-Control-Allow-Methods", methods)
    request.setHeader(b"Access-Control-Allow-Headers", headers)
    if expose is not None:
        request.setHeader(b"Access-Control-Expose-Headers", expose)
