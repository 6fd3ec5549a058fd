"""Typed SIP header values: URIs, name-addrs, Via, CSeq (RFC 3261 §19, §20, §25).

Pure: no I/O, no Twisted. Every parser raises ``HeaderError`` (a ``ValueError``)
with a message naming what is wrong.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field


class HeaderError(ValueError):
    """A header value that does not follow the RFC 3261 grammar."""


# RFC 3261 §7.3.3 and the IANA registry of compact forms.
COMPACT_FORMS = {
    "a": "Accept-Contact", "b": "Referred-By", "c": "Content-Type", "d": "Request-Disposition",
    "e": "Content-Encoding", "f": "From", "i": "Call-ID", "j": "Reject-Contact",
    "k": "Supported", "l": "Content-Length", "m": "Contact", "n": "Identity-Info",
    "o": "Event", "r": "Refer-To", "s": "Subject", "t": "To", "u": "Allow-Events",
    "v": "Via", "x": "Session-Expires", "y": "Identity",
}
_SPECIAL_CASE = {
    "call-id": "Call-ID", "cseq": "CSeq", "www-authenticate": "WWW-Authenticate",
    "mime-version": "MIME-Version", "rack": "RAck", "rseq": "RSeq", "sip-etag": "SIP-ETag",
    "sip-if-match": "SIP-If-Match",
}
# Headers whose values may be written as one comma-separated list (RFC 3261 §7.3.1).
# Authorization-style headers are deliberately absent: their values contain commas.
LIST_HEADERS = frozenset({
    "Via", "Contact", "Route", "Record-Route", "Allow", "Supported", "Require",
    "Proxy-Require", "Unsupported", "Accept", "Accept-Encoding", "Accept-Language",
    "Allow-Events", "Content-Encoding", "In-Reply-To", "Alert-Info", "Call-Info",
    "Error-Info", "Path", "Service-Route",
})

TOKEN_CHARS = r"A-Za-z0-9\-.!%*_+`'~"
_TOKEN_RE = re.compile(rf"^[{TOKEN_CHARS}]+$")


@functools.lru_cache(maxsize=512)
def canonical_name(name: str) -> str:
    """Return the canonical spelling of a header name (compact forms expanded)."""
    if not name or not _TOKEN_RE.match(name):
        raise HeaderError(f"bad header name {name!r}")
    lower = name.lower()
    if len(lower) == 1 and lower in COMPACT_FORMS:
        return COMPACT_FORMS[lower]
    if lower in _SPECIAL_CASE:
        return _SPECIAL_CASE[lower]
    return "-".join(part.capitalize() for part in lower.split("-"))


def is_token(text: str) -> bool:
    return bool(_TOKEN_RE.match(text))


def split_list(value: str) -> list[str]:
    """Split a comma-separated header value, respecting quotes and <...>."""
    if "," not in value and '"' not in value:  # one item, e.g. a Contact or a To
        value = value.strip()
        return [value] if value else []
    if '"' not in value and "<" not in value:  # the common case, e.g. a Via list
        return [item for item in (part.strip() for part in value.split(",")) if item]
    items, buf, quoted, angle, escape = [], [], False, False, False
    for ch in value:
        if escape:
            buf.append(ch)
            escape = False
            continue
        if quoted and ch == "\\":
            escape = True
        elif ch == '"':
            quoted = not quoted
        elif not quoted and ch == "<":
            angle = True
        elif not quoted and ch == ">":
            angle = False
        elif ch == "," and not quoted and not angle:
            items.append("".join(buf).strip())
            buf = []
            continue
        buf.append(ch)
    if quoted:
        raise HeaderError(f"unbalanced quotes in {value!r}")
    items.append("".join(buf).strip())
    return [item for item in items if item]


def _split_params(text: str) -> list[str]:
    """Split ';'-separated parameters, respecting quoted strings."""
    if '"' not in text:  # the common case: nothing quoted
        return text.split(";")
    parts, buf, quoted, escape = [], [], False, False
    for ch in text:
        if escape:  # quoted-pair (RFC 3261 §25.1): '\"' does not end the quoted string
            escape = False
        elif quoted and ch == "\\":
            escape = True
        elif ch == '"':
            quoted = not quoted
        elif ch == ";" and not quoted:
            parts.append("".join(buf))
            buf = []
            continue
        buf.append(ch)
    if quoted:
        raise HeaderError(f"unbalanced quotes in {text!r}")
    parts.append("".join(buf))
    return parts


def parse_params(text: str) -> dict[str, str | None]:
    """Parse ``;a=b;c`` into an ordered dict with lower-case names."""
    params: dict[str, str | None] = {}
    if not text:  # most URIs and many headers have none
        return params
    token = _TOKEN_RE.match
    for part in text.split(";") if '"' not in text else _split_params(text):
        name, sep, val = part.partition("=")  # LWS around SEMI and EQUAL: stripped below
        name = name.strip()
        if not sep and not name:
            continue  # an empty part (the one before the first ';', or ';;')
        if not token(name):
            raise HeaderError(f"bad parameter name {name!r}")
        params[name.lower()] = val.strip() if sep else None
    return params


def format_params(params: dict[str, str | None]) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params.items())


def unquote(text: str) -> str:
    """Remove surrounding quotes and backslash escapes of a quoted-string."""
    text = text.strip()
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        return re.sub(r"\\(.)", r"\1", text[1:-1])
    return text


def quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def bracket(host: str) -> str:
    """A host as it goes in a URI, Via or Contact: an IPv6 address in brackets (RFC 3261
    §25.1 IPv6reference)."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+\-.]*$")
_FORBIDDEN_IN_URI = re.compile(r"[ \t<>\r\n]")


@dataclass
class URI:
    """A sip:/sips:/tel: URI (RFC 3261 §19.1)."""

    scheme: str
    host: str
    user: str | None = None
    password: str | None = None
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    headers: str | None = None

    # §25.1 hostnames have no '_', but peers' do (and the REST layer takes them): liberal.
    _HOSTPORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._]+)(?::(\d{1,5}))?$", re.ASCII)

    # The usual sip: URI, read in one match: a lower-case scheme, an optional user (no ':'
    # password, '@', ';', '?'), a host name or IPv4 address, a port, parameters, nothing
    # quoted or escaped that the general path below would read otherwise. Anything else
    # (sips with upper case, IPv6, passwords, headers...) goes the general way.
    _PLAIN = re.compile(r"(sips?):(?:([^:@;?<>\s\"\[\]]+)@)?([A-Za-z0-9\-._]+)(?::(\d{1,5}))?"
                        r"((?:;[^?@<>\s\"]*)?)", re.ASCII)

    @classmethod
    def parse(cls, text: str) -> "URI":
        text = text.strip()
        plain = cls._PLAIN.fullmatch(text)
        if plain is not None:
            scheme, user, host, port, paramtext = plain.groups()
            if port is not None:
                port = int(port)
                if not 0 < port < 65536:
                    raise HeaderError(f"bad URI {text!r}: port out of range")
            return cls(scheme, host, user, None, port, parse_params(paramtext), None)
        scheme, sep, rest = text.partition(":")
        if not sep or not _SCHEME.match(scheme):
            raise HeaderError(f"bad URI {text!r}: no scheme")
        scheme = scheme.lower()
        if _FORBIDDEN_IN_URI.search(rest):
            raise HeaderError(f"bad URI {text!r}: forbidden character")
        if scheme not in ("sip", "sips"):
            # Other schemes (tel:, http:, urn:) are kept opaque.
            return cls(scheme=scheme, host=rest)
        # The last '@' ends the userinfo: '@' may not appear unescaped in uri-parameters
        # or headers, while '?', ';' and ',' may appear in the user part (§25.1 user-unreserved).
        userinfo, at, hostpart = rest.rpartition("@")
        hostpart, _, headers = hostpart.partition("?")
        user = password = None
        if at:
            user, _, pw = userinfo.partition(":")
            password = pw if _ else None
            if not user:
                raise HeaderError(f"bad URI {text!r}: empty user")
        hostport, _, paramtext = hostpart.partition(";")
        match = cls._HOSTPORT.match(hostport)
        if not match:
            raise HeaderError(f"bad URI {text!r}: bad host {hostport!r}")
        port = int(match.group(2)) if match.group(2) else None
        if port is not None and not 0 < port < 65536:
            raise HeaderError(f"bad URI {text!r}: port out of range")
        return cls(scheme=scheme, host=match.group(1), user=user, password=password, port=port,
                   params=parse_params(paramtext), headers=headers or None)

    def __str__(self) -> str:
        if self.scheme not in ("sip", "sips"):
            return f"{self.scheme}:{self.host}"
        out = self.scheme + ":"
        if self.user is not None:
            out += self.user
            if self.password is not None:
                out += ":" + self.password
            out += "@"
        out += bracket(self.host)
        if self.port is not None:
            out += f":{self.port}"
        out += format_params(self.params)
        if self.headers:
            out += "?" + self.headers
        return out

    @property
    def transport(self) -> str:
        value = self.params.get("transport")
        return (value or ("tls" if self.scheme == "sips" else "udp")).lower()

    def replace(self, **changes) -> "URI":
        values = dict(self.__dict__)
        values["params"] = dict(self.params)
        values.update(changes)
        return URI(**values)


@dataclass
class Address:
    """A name-addr or addr-spec with header parameters (From, To, Contact, Route...)."""

    uri: URI
    display: str | None = None
    params: dict[str, str | None] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> "Address":
        text = text.strip()
        if text == "*":
            return cls(uri=URI(scheme="*", host=""))
        display = None
        if text.startswith('"'):
            match = re.match(r'^"((?:[^"\\]|\\.)*)"\s*', text)
            if not match:
                raise HeaderError(f"bad display name in {text!r}")
            display = re.sub(r"\\(.)", r"\1", match.group(1))
            text = text[match.end():]
            if not text.startswith("<"):
                raise HeaderError(f"quoted display name without <uri> in {text!r}")
        if "<" in text:
            before, _, after = text.partition("<")
            if display is None and before.strip():
                # §25.1 wants tokens or a quoted-string; peers write "Reception (ext. 5)" or
                # UTF-8 unquoted: read as it is (liberal). A stray quote is refused, and a
                # comma, which splits list headers (RFC 4475 §3.1.2.13 "baddn" refuses it).
                display = " ".join(before.split())
                if '"' in display or "," in display:
                    raise HeaderError(f"bad display name {display!r}")
            uritext, close, paramtext = after.partition(">")
            if not close:
                raise HeaderError(f"missing '>' in {text!r}")
            if uritext != uritext.strip():  # LAQUOT/RAQUOT allow no LWS inside <> (§25.1)
                raise HeaderError(f"whitespace inside <> in {text!r}")
            if paramtext.strip() and not paramtext.strip().startswith(";"):
                raise HeaderError(f"junk after '>' in {text!r}")
            return cls(uri=URI.parse(uritext), display=display, params=parse_params(paramtext))
        # addr-spec: parameters after the URI belong to the header (RFC 3261 §20.10);
        # SEMI and EQUAL allow LWS around them, the URI itself has none.
        uritext, _, paramtext = text.partition(";")
        uritext = uritext.strip()
        if any(c in uritext for c in " \t"):
            raise HeaderError(f"bad address {text!r}")
        if "?" in uritext:  # §20: a URI with ',', ';' or '?' MUST be enclosed in <>
            raise HeaderError(f"URI with '?' not enclosed in <> in {text!r}")
        return cls(uri=URI.parse(uritext), params=parse_params(paramtext))

    def __str__(self) -> str:
        if self.uri.scheme == "*":
            return "*"
        out = f"<{self.uri}>"
        if self.display:
            out = f"{quote(self.display)} {out}"
        return out + format_params(self.params)

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")


@dataclass
class Via:
    """One Via header value (RFC 3261 §20.42, RFC 3581 rport)."""

    transport: str
    host: str
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)

    _RE = re.compile(r"^SIP\s*/\s*2\.0\s*/\s*([A-Za-z]+)\s+([^\s;:]+|\[[^\]]+\])(?:\s*:\s*(\d+))?\s*(;.*)?$",
                     re.S | re.ASCII)

    @classmethod
    def parse(cls, text: str) -> "Via":
        match = cls._RE.match(text.strip())
        if not match:
            raise HeaderError(f"bad Via {text!r}")
        port = int(match.group(3)) if match.group(3) else None
        if port is not None and not 0 < port < 65536:
            raise HeaderError(f"bad Via {text!r}: port out of range")
        return cls(transport=match.group(1).upper(), host=match.group(2), port=port,
                   params=parse_params(match.group(4) or ""))

    def __str__(self) -> str:
        port = f":{self.port}" if self.port is not None else ""
        return f"SIP/2.0/{self.transport} {self.host}{port}{format_params(self.params)}"

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")


@dataclass(frozen=True)
class CSeq:
    seq: int
    method: str

    @classmethod
    def parse(cls, text: str) -> "CSeq":
        parts = text.split()
        if (len(parts) != 2 or not (parts[0].isascii() and parts[0].isdigit())
                or not is_token(parts[1])):
            raise HeaderError(f"bad CSeq {text!r}")
        seq = int(parts[0])
        if seq >= 2**31:  # RFC 3261 §8.1.1.5
            raise HeaderError(f"bad CSeq {text!r}: sequence number too large")
        return cls(seq, parts[1])

    def __str__(self) -> str:
        return f"{self.seq} {self.method}"
