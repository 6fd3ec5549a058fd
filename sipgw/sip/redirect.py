"""Redirects (RFC 3261 §8.1.3.4, §21.3): where a 3xx sends the INVITE next.

Pure. The INVITE client keeps the targets it tried (``key``) so that a redirect back to
one of them (a loop) is not followed, and counts the redirects it followed.
"""
from __future__ import annotations

from .headers import URI

FOLLOWED = (300, 301, 302, 305)  # 380 (alternative service) describes, it does not redirect


def key(uri: URI) -> tuple:
    """What makes two targets the same (§19.1.4): scheme, user, host, port, transport."""
    return (uri.scheme, uri.user, uri.host.lower().strip("[]"), uri.port,
            (uri.params.get("transport") or "").lower())


def _q(contact) -> float:
    try:
        return float(contact.params.get("q", "1"))  # §20.10: q from 0 to 1, 1 when absent
    except ValueError:
        return 0.0


def next_target(response, tried: set) -> URI | None:
    """The Contact of a 3xx to try next: highest q first, SIP URIs only, none tried before."""
    if response.status not in FOLLOWED:
        return None
    contacts = sorted(response.contacts, key=_q, reverse=True)  # stable: server order among equals
    for contact in contacts:
        uri = contact.uri
        if uri.scheme in ("sip", "sips") and key(uri) not in tried:
            return uri
    return None
