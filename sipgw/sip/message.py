"""SIP requests and responses (RFC 3261 §7).

A message keeps its headers in order as (canonical name, value) pairs; typed
views (``via``, ``from_``, ``cseq`` ...) parse the raw value on access.
"""
from __future__ import annotations

from .headers import (LIST_HEADERS, Address, CSeq, HeaderError, URI, Via, canonical_name,
                      split_list)

REASONS = {
    100: "Trying", 180: "Ringing", 181: "Call Is Being Forwarded", 182: "Queued",
    183: "Session Progress", 200: "OK", 202: "Accepted", 400: "Bad Request",
    401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
    407: "Proxy Authentication Required", 408: "Request Timeout", 413: "Request Entity Too Large",
    415: "Unsupported Media Type", 480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist", 482: "Loop Detected", 483: "Too Many Hops",
    486: "Busy Here", 487: "Request Terminated", 488: "Not Acceptable Here", 491: "Request Pending",
    500: "Server Internal Error", 501: "Not Implemented", 503: "Service Unavailable",
    504: "Server Time-out", 505: "Version Not Supported", 513: "Message Too Large",
    600: "Busy Everywhere", 603: "Decline",
}


_UNSET = object()


class Message:
    """Headers and body shared by requests and responses."""

    def __init__(self, headers=None, body: bytes = b""):
        self.headers: list[tuple[str, str]] = [(canonical_name(n), v) for n, v in (headers or [])]
        self.body = body
        self._typed: dict[str, object] = {}  # parsed header values, dropped on any change

    def _parsed(self, key: str, build):
        """Parse a header value once; set/add/remove forget it (headers parsed once at the
        boundary, not in every layer)."""
        value = self._typed.get(key, _UNSET)  # not try/except: the first access is the
        if value is _UNSET:                   # common one, and a raised KeyError costs ~1 us
            value = self._typed[key] = build()
        return value

    def forget_parsed(self) -> None:
        """Let go of the parsed header values (the raw ones stay and are parsed again on
        access): for a message kept long only for its bytes."""
        self._typed = {}

    # -- raw header access ------------------------------------------------
    def get(self, name: str, default: str | None = None) -> str | None:
        name = canonical_name(name)
        for key, value in self.headers:
            if key == name:
                return value
        return default

    def get_all(self, name: str) -> list[str]:
        """Every value of a header, comma-separated lists split (RFC 3261 §7.3.1)."""
        name = canonical_name(name)
        values = [v for k, v in self.headers if k == name]
        if name in LIST_HEADERS:
            return [item for v in values for item in split_list(v)]
        return values

    def has_option_tag(self, name: str, tag: str) -> bool:
        """``tag`` is among the option tags of header ``name`` (Require, Supported;
        RFC 3261 §19.2), compared case-insensitively."""
        return tag.lower() in [t.strip().lower() for t in self.get_all(name)]

    def set(self, name: str, value: str) -> None:
        """Replace every value of a header by one."""
        self.remove(name)
        self.headers.append((canonical_name(name), value))
        self._typed.clear()

    def add(self, name: str, value: str, first: bool = False) -> None:
        entry = (canonical_name(name), value)
        self._typed.clear()
        if first:
            self.headers.insert(0, entry)
        else:
            self.headers.append(entry)

    def remove(self, name: str) -> None:
        name = canonical_name(name)
        self.headers = [(k, v) for k, v in self.headers if k != name]
        self._typed.clear()

    # -- typed views -------------------------------------------------------
    @property
    def vias(self) -> list[Via]:
        return self._parsed("vias", lambda: [Via.parse(v) for v in self.get_all("Via")])

    @property
    def top_via(self) -> Via:
        vias = self._typed.get("vias")  # the parser's check parsed them all already
        if vias:
            return vias[0]
        return self._parsed("top_via", lambda: Via.parse(self.get_all("Via")[0]))

    @property
    def from_(self) -> Address:
        return self._parsed("from", lambda: Address.parse(self.get("From") or ""))

    @property
    def to(self) -> Address:
        return self._parsed("to", lambda: Address.parse(self.get("To") or ""))

    @property
    def call_id(self) -> str:
        return self.get("Call-ID") or ""

    @property
    def cseq(self) -> CSeq:
        return self._parsed("cseq", lambda: CSeq.parse(self.get("CSeq") or ""))

    @property
    def contacts(self) -> list[Address]:
        return self._parsed("contacts", lambda: [Address.parse(v) for v in self.get_all("Contact")])

    @property
    def record_routes(self) -> list[Address]:
        return [Address.parse(v) for v in self.get_all("Record-Route")]

    @property
    def routes(self) -> list[Address]:
        return [Address.parse(v) for v in self.get_all("Route")]

    @property
    def content_type(self) -> str:
        return (self.get("Content-Type") or "").split(";")[0].strip().lower()

    def _header_bytes(self) -> bytes:
        lines = [f"{k}: {v}" for k, v in self.headers if k != "Content-Length"]
        lines.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and bytes(self) == bytes(other)

    __hash__ = None  # mutable, compared by value: not usable as a dict key


class Request(Message):
    def __init__(self, method: str, uri: URI, headers=None, body: bytes = b""):
        super().__init__(headers, body)
        self.method = method
        self.uri = uri

    @property
    def first_line(self) -> str:
        return f"{self.method} {self.uri} SIP/2.0"

    def __bytes__(self) -> bytes:
        return self.first_line.encode("utf-8") + b"\r\n" + self._header_bytes() + self.body

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.uri} call-id={self.call_id!r}>"


class Response(Message):
    def __init__(self, status: int, reason: str | None = None, headers=None, body: bytes = b""):
        super().__init__(headers, body)
        self.status = status
        self.reason = REASONS.get(status, "Unknown") if reason is None else reason

    @property
    def first_line(self) -> str:
        return f"SIP/2.0 {self.status} {self.reason}"

    def __bytes__(self) -> bytes:
        return self.first_line.encode("utf-8") + b"\r\n" + self._header_bytes() + self.body

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason} call-id={self.call_id!r}>"


def make_response(request: Request, status: int, reason: str | None = None, *,
                  to_tag: str | None = None, body: bytes = b"",
                  extra: list[tuple[str, str]] = ()) -> Response:
    """Build a response copying Via, From, To, Call-ID and CSeq (RFC 3261 §8.2.6.2)."""
    headers = [("Via", v) for v in request.get_all("Via")]
    to = request.get("To") or ""
    if to_tag and not _has_tag(to):
        to = f"{to};tag={to_tag}"
    headers += [("From", request.get("From") or ""), ("To", to),
                ("Call-ID", request.call_id), ("CSeq", request.get("CSeq") or "")]
    headers += list(extra)
    return Response(status, reason, headers, body)


def _has_tag(value: str) -> bool:
    """True when a To/From value carries a tag header parameter (not a 'tag' URI parameter)."""
    try:
        return Address.parse(value).tag is not None
    except HeaderError:  # unparseable: fall back to a textual look, never add a second tag
        return ";tag=" in value.replace(" ", "").lower()
