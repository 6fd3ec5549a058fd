"""Message bodies: the SDP of a message, found in a multipart body too (RFC 5621 §3).

Pure. Peers (ISUP gateways, emergency calls with a PIDF) send ``multipart/mixed`` bodies
with the session description as one part.
"""
from __future__ import annotations

from .headers import HeaderError, parse_params

SDP = "application/sdp"


def _boundary(content_type: str) -> str | None:
    _, _, params = content_type.partition(";")
    try:
        value = parse_params(params).get("boundary") if params else None
    except HeaderError:
        return None
    return value.strip('"') if value else None


def sdp_of(message) -> bytes:
    """The SDP of a message: its body when application/sdp, the first application/sdp part
    of a multipart/* body (nested ones too), else b""."""
    return _find(message.content_type, message.get("Content-Type") or "", message.body)


def _find(kind: str, content_type: str, body: bytes, depth: int = 0) -> bytes:
    if kind == SDP:
        return body
    boundary = _boundary(content_type) if kind.startswith("multipart/") and depth < 3 else None
    if not boundary:
        return b""
    delimiter = b"--" + boundary.encode("utf-8", "replace")
    for part in body.split(delimiter)[1:]:  # RFC 2046 §5.1.1: text before the first is a preamble
        if part.startswith(b"--"):
            break  # the close delimiter
        head, sep, content = part.lstrip(b" \t").partition(b"\r\n\r\n")
        if not sep:
            head, sep, content = part.partition(b"\n\n")
        headers = {}
        for line in head.decode("utf-8", "replace").splitlines():
            name, colon, value = line.partition(":")
            if colon:
                headers[name.strip().lower()] = value.strip()
        part_type = headers.get("content-type", "text/plain")
        found = _find(part_type.split(";")[0].strip().lower(), part_type,
                      content.removesuffix(b"\r\n").removesuffix(b"\n"), depth + 1)
        if found:
            return found
    return b""
