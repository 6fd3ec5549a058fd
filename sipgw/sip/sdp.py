"""Session descriptions (RFC 4566) and the offer/answer model (RFC 3264).

Pure: no I/O, no Twisted. Every malformed input raises ``SDPError`` (a ``ValueError``)
with a message naming the line that is wrong.

Perspective: a ``NegotiatedMedia`` says where *we* send (the peer's address and port, the
peer's payload type numbers) and what *we* do (``direction`` is ours, ``recv_pt`` is the
payload type the peer puts on the packets it sends us).
"""
from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass, field

from .sdes import mask

__all__ = [
    "SDPError", "Codec", "MediaDescription", "Origin", "SessionDescription", "NegotiatedMedia",
    "make_offer", "make_answer", "negotiate", "is_hold", "SUPPORTED_CODECS",
]


class SDPError(ValueError):
    """A session description that cannot be parsed or negotiated."""


DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
# RFC 3264 §6.1: the answer's direction mirrors the offer's.
_MIRROR = {"sendrecv": "sendrecv", "sendonly": "recvonly", "recvonly": "sendonly", "inactive": "inactive"}
# RFC 3264 §8.4 (and RFC 2543): c=0.0.0.0 asks the peer not to send.
_NULL_ADDRESS = "0.0.0.0"
# RFC 3551 §6: static payload types a peer may use without a=rtpmap.
_STATIC = {0: ("PCMU", 8000), 3: ("GSM", 8000), 8: ("PCMA", 8000), 9: ("G722", 8000), 18: ("G729", 8000)}
# Formats that ride beside the real codec and are never chosen as "the" codec.
_AUXILIARY = {"telephone-event", "cn", "red", "rtx", "ulpfec", "flexfec"}
_RTP_PROTOS = {"RTP/AVP", "RTP/AVPF"}
_SRTP_PROTOS = {"RTP/SAVP", "RTP/SAVPF"}  # with SDES keys (sdes.py)
_DIGITS = re.compile(r"[0-9]+")


def _number(text: str) -> int | None:
    """A non-negative decimal (ASCII digits only), or None."""
    if not _DIGITS.fullmatch(text):
        return None
    try:
        return int(text)
    except ValueError:  # longer than sys.get_int_max_str_digits()
        return None


@dataclass(frozen=True)
class Codec:
    """One RTP payload format: a=rtpmap (RFC 4566 §6) plus its a=fmtp parameters."""

    pt: int
    name: str
    clock: int
    channels: int = 1
    fmtp: str | None = None

    @property
    def rtpmap(self) -> str:
        """The a=rtpmap value, e.g. '111 opus/48000/2'."""
        channels = f"/{self.channels}" if self.channels != 1 else ""
        return f"{self.pt} {self.name}/{self.clock}{channels}"

    @property
    def parameters(self) -> dict[str, str]:
        """The fmtp 'key=value;...' pairs, keys lower-cased."""
        pairs = {}
        for part in (self.fmtp or "").split(";"):
            key, sep, value = part.partition("=")
            if sep:
                pairs.setdefault(key.strip().lower(), value.strip())
        return pairs

    @property
    def packetization_mode(self) -> int | None:
        """RFC 6184 §8.1: H264 packetization-mode, 0 when absent; None for other codecs."""
        if self.name.lower() != "h264":
            return None
        return _number(self.parameters.get("packetization-mode", "0")) or 0

    def matches(self, other: Codec) -> bool:
        """Same codec whatever the payload type: name, clock and channels (and H264 mode)."""
        return (self.name.lower() == other.name.lower() and self.clock == other.clock
                and self.channels == other.channels
                and self.packetization_mode == other.packetization_mode)


def _parse_rtpmap(value: str) -> tuple[str, int, int] | None:
    """'PCMU/8000' or 'opus/48000/2' -> (name, clock, channels); None if malformed."""
    parts = value.strip().split("/")
    if len(parts) not in (2, 3) or not parts[0]:
        return None
    clock = _number(parts[1])
    # RFC 7587 §7 says opus/48000/2, but many peers leave the /2 out: it is still stereo opus.
    channels = _number(parts[2]) if len(parts) == 3 else 2 if parts[0].lower() == "opus" else 1
    if not clock or not channels:
        return None
    return parts[0], clock, channels


@dataclass
class MediaDescription:
    """One m= section (RFC 4566 §5.14) with its c=, b= and a= lines."""

    kind: str
    port: int
    proto: str
    formats: list[str]
    connection: str | None = None
    attributes: list[tuple[str, str | None]] = field(default_factory=list)
    bandwidths: list[str] = field(default_factory=list)
    port_count: int | None = None  # the '/2' in 'm=video 5000/2 ...'

    def attribute(self, name: str) -> str | None:
        """The value of the first a=name:value line, or None."""
        return next((v for n, v in self.attributes if n == name and v is not None), None)

    @property
    def codecs(self) -> list[Codec]:
        """The RTP payload formats in m= order; formats without a usable rtpmap are skipped."""
        rtpmaps: dict[str, str] = {}
        fmtps: dict[str, str] = {}
        for name, value in self.attributes:
            if name in ("rtpmap", "fmtp") and value is not None:
                pt, _, rest = value.partition(" ")
                (rtpmaps if name == "rtpmap" else fmtps).setdefault(pt, rest.strip())
        codecs = []
        for fmt in self.formats:
            pt = _number(fmt)
            if pt is None or pt > 127:
                continue
            mapping = _parse_rtpmap(rtpmaps[fmt]) if fmt in rtpmaps else None
            if mapping is None and pt in _STATIC:
                mapping = (*_STATIC[pt], 1)
            if mapping is not None:
                codecs.append(Codec(pt, *mapping, fmtp=fmtps.get(fmt)))
        return codecs

    def direction(self, default: str = "sendrecv") -> str:
        """RFC 4566 §6 / RFC 3264 §5.1: this section's direction attribute, else the default."""
        return next((n for n, v in self.attributes if n in DIRECTIONS and v is None), default)

    @property
    def rtcp_port(self) -> int:
        """RFC 3605 a=rtcp port when given, else RTP port + 1 (RFC 3550 §11); 0 when rejected."""
        if self.port == 0:
            return 0
        value = self.attribute("rtcp")
        port = _number(value.split()[0]) if value and value.split() else None
        return port if port is not None and 0 < port < 65536 else self.port + 1

    def lines(self) -> list[str]:
        """The SDP lines of this section, without line ends."""
        port = f"{self.port}/{self.port_count}" if self.port_count is not None else str(self.port)
        lines = [" ".join([f"m={self.kind}", port, self.proto, *self.formats])]
        if self.connection is not None:
            lines.append(_c_line(self.connection))
        lines += [f"b={b}" for b in self.bandwidths]
        lines += [_a_line(a) for a in self.attributes]
        return lines


@dataclass
class Origin:
    """The o= line (RFC 4566 §5.2)."""

    username: str
    sess_id: int
    sess_version: int
    nettype: str = "IN"
    addrtype: str = "IP4"
    address: str = "0.0.0.0"

    def __str__(self) -> str:
        return (f"{self.username} {self.sess_id} {self.sess_version} "
                f"{self.nettype} {self.addrtype} {self.address}")


def _addrtype(address: str) -> str:
    return "IP6" if ":" in address else "IP4"


def _c_line(address: str) -> str:
    return f"c=IN {_addrtype(address)} {address}"


def _a_line(attribute: tuple[str, str | None]) -> str:
    name, value = attribute
    return f"a={name}" if value is None else f"a={name}:{value}"


@dataclass
class SessionDescription:
    """A whole SDP body. i=, u=, e=, p=, r=, z=, k= and unknown lines are not kept."""

    origin: Origin
    session_name: str = "-"
    connection: str | None = None
    times: list[tuple[int, int]] = field(default_factory=lambda: [(0, 0)])
    attributes: list[tuple[str, str | None]] = field(default_factory=list)
    bandwidths: list[str] = field(default_factory=list)
    media: list[MediaDescription] = field(default_factory=list)

    @classmethod
    def parse(cls, data: bytes | str) -> SessionDescription:
        """Parse an SDP body with CRLF or LF line ends."""
        if isinstance(data, bytes):
            try:
                data = data.decode("utf-8")
            except UnicodeDecodeError:
                raise SDPError("SDP is not valid UTF-8") from None
        origin: Origin | None = None
        name: str | None = None
        seen_version = False
        sdp = cls(origin=None, times=[])  # type: ignore[arg-type]  # filled in below
        m_lines: list[int] = []
        for number, line in enumerate(data.split("\n"), 1):
            line = line.removesuffix("\r")
            if not line:
                continue  # the body's final CRLF, or a stray blank line
            if "\r" in line or "\0" in line:
                raise SDPError(f"SDP line {number}: CR or NUL inside the line {mask(line)!r}")
            if len(line) < 2 or line[1] != "=" or not "a" <= line[0] <= "z":
                raise SDPError(f"SDP line {number}: not a <type>=<value> line {mask(line)!r}")
            kind, value = line[0], line[2:]
            current = sdp.media[-1] if sdp.media else None
            section = sdp if current is None else current  # where b= and a= lines go
            if not seen_version:
                # RFC 4566 §5: v=0 comes first.
                if line != "v=0":
                    raise SDPError(f"SDP line {number}: expected 'v=0' first, got {mask(line)!r}")
                seen_version = True
            elif kind in "vost" and current is not None:
                raise SDPError(f"SDP line {number}: {kind}= line after the first m= line")
            elif kind == "v":
                raise SDPError(f"SDP line {number}: second v= line")
            elif kind == "o":
                if origin is not None:
                    raise SDPError(f"SDP line {number}: second o= line")
                origin = _parse_origin(value, number, line)
            elif kind == "s":
                if name is not None:
                    raise SDPError(f"SDP line {number}: second s= line")
                name = value  # RFC 4566 wants it non-empty; 's=' is common enough to accept
            elif kind == "t":
                sdp.times.append(_parse_time(value, number, line))
            elif kind == "c":
                address = _parse_connection(value, number, line)
                # RFC 4566 §5.7: the first c= counts; more only matter for layered multicast.
                if current is None and sdp.connection is None:
                    sdp.connection = address
                elif current is not None and current.connection is None:
                    current.connection = address
            elif kind == "b":
                section.bandwidths.append(value)
            elif kind == "a":
                attr_name, sep, attr_value = value.partition(":")
                if not attr_name:
                    raise SDPError(f"SDP line {number}: bad a= line {mask(line)!r}")
                section.attributes.append((attr_name, attr_value if sep else None))
            elif kind == "m":
                sdp.media.append(_parse_media(value, number, line))
                m_lines.append(number)
            # RFC 4566 §5: i=, u=, e=, p=, r=, z=, k= and unknown types are skipped.
        if not seen_version:
            raise SDPError("SDP is empty")
        if origin is None:
            raise SDPError("SDP has no o= line")
        if name is None:
            raise SDPError("SDP has no s= line")
        for m, number in zip(sdp.media, m_lines):
            # RFC 4566 §5.7: every active stream needs a c= line, its own or the session's.
            if m.port != 0 and m.connection is None and sdp.connection is None:
                raise SDPError(f"SDP line {number}: m= line has no c= line and the session has none")
        sdp.origin, sdp.session_name = origin, name
        return sdp

    def __bytes__(self) -> bytes:
        lines = ["v=0", f"o={self.origin}", f"s={self.session_name}"]
        if self.connection is not None:
            lines.append(_c_line(self.connection))
        lines += [f"b={b}" for b in self.bandwidths]
        lines += [f"t={start} {stop}" for start, stop in self.times]
        lines += [_a_line(a) for a in self.attributes]
        for m in self.media:
            lines += m.lines()
        return ("\r\n".join(lines) + "\r\n").encode("utf-8")

    def media_address(self, m: MediaDescription) -> str:
        """Where the stream's RTP goes: the m= section's c= address, else the session's."""
        address = m.connection or self.connection
        if address is None:
            raise SDPError(f"no c= address for the {m.kind} stream")
        return address

    def media_direction(self, m: MediaDescription) -> str:
        """The stream's direction: its own attribute, else the session's, else sendrecv."""
        session = next((n for n, v in self.attributes if n in DIRECTIONS and v is None), "sendrecv")
        return m.direction(session)


def _parse_origin(value: str, number: int, line: str) -> Origin:
    parts = value.split()
    ids = [_number(p) for p in parts[1:3]]
    if len(parts) != 6 or None in ids:
        raise SDPError(f"SDP line {number}: bad o= line {line!r}")
    return Origin(parts[0], ids[0], ids[1], parts[3], parts[4], parts[5])  # type: ignore[arg-type]


def _parse_time(value: str, number: int, line: str) -> tuple[int, int]:
    parts = [_number(p) for p in value.split()]
    if len(parts) != 2 or None in parts:
        raise SDPError(f"SDP line {number}: bad t= line {line!r}")
    return parts[0], parts[1]  # type: ignore[return-value]


def _parse_connection(value: str, number: int, line: str) -> str:
    parts = value.split()
    if len(parts) != 3 or parts[0] != "IN" or parts[1] not in ("IP4", "IP6"):
        raise SDPError(f"SDP line {number}: bad c= line {line!r}")
    return parts[2]


def _parse_media(value: str, number: int, line: str) -> MediaDescription:
    parts = value.split()
    if len(parts) < 3:
        raise SDPError(f"SDP line {number}: bad m= line {line!r}")
    port_text, slash, count_text = parts[1].partition("/")
    port = _number(port_text)
    count = _number(count_text) if slash else None
    if port is None or port > 65535 or (slash and not count):
        raise SDPError(f"SDP line {number}: bad m= line {line!r}")
    return MediaDescription(parts[0], port, parts[2], parts[3:], port_count=count)


# --- offer / answer (RFC 3264) ---------------------------------------------------------

SUPPORTED_CODECS: dict[str, list[Codec]] = {
    "audio": [
        Codec(0, "PCMU", 8000),
        Codec(8, "PCMA", 8000),
        Codec(111, "opus", 48000, 2),
        Codec(101, "telephone-event", 8000, fmtp="0-16"),  # RFC 4733 §7.1.1
    ],
    "video": [
        Codec(102, "H264", 90000, fmtp="profile-level-id=42e01f;packetization-mode=1"),
        Codec(103, "H264", 90000, fmtp="profile-level-id=42e01f;packetization-mode=0"),
    ],
}


@dataclass
class NegotiatedMedia:
    """What one accepted stream agreed on, seen from our side (see the module docstring)."""

    kind: str
    address: str
    port: int
    rtcp_port: int
    codec: Codec                 # with the peer's payload type: use it when sending
    dtmf_pt: int | None          # the peer's telephone-event payload type
    direction: str               # ours: "recvonly" means we only receive
    packetization_mode: int | None
    recv_pt: int | None = None       # our payload type for the codec: the peer sends with it
    recv_dtmf_pt: int | None = None  # our telephone-event payload type
    # Every codec of the m-line both sides listed, by either side's payload type: the peer
    # may send any of them and switch mid-call (RFC 3264 §5.1, §6.1).
    recv_codecs: dict[int, Codec] = field(default_factory=dict)


def _media_section(kind: str, port: int, codecs: list[Codec], direction: str,
                   proto: str = "RTP/AVP", extra: list[tuple[str, str | None]] | None = None,
                   ) -> MediaDescription:
    attributes: list[tuple[str, str | None]] = []
    for codec in codecs:
        attributes.append(("rtpmap", codec.rtpmap))
        if codec.fmtp:
            attributes.append(("fmtp", f"{codec.pt} {codec.fmtp}"))
    attributes += extra or []
    attributes += [("rtcp", str(port + 1)), (direction, None)]  # RFC 3605 §2.1
    return MediaDescription(kind, port, proto, [str(c.pt) for c in codecs], attributes=attributes)


def _check_port(name: str, port: int | None) -> None:
    if port is not None and not 0 < port < 65535:
        raise ValueError(f"{name} must be 1-65534, got {port}")


def make_offer(address: str, *, audio_port: int | None, video_port: int | None, session_id: int,
               version: int = 1, video_framerate: int | None = None, crypto: dict | None = None,
               proto: str = "RTP/AVP") -> SessionDescription:
    """Our offer (RFC 3264 §5): every supported codec, sendrecv, RTCP on port + 1; with
    ``crypto`` (kind -> a=crypto values, RFC 4568) the keys of each stream, over ``proto``."""
    crypto = crypto or {}
    if audio_port is None and video_port is None:
        raise ValueError("make_offer needs an audio_port or a video_port")
    _check_port("audio_port", audio_port)
    _check_port("video_port", video_port)
    media = []
    if audio_port is not None:
        media.append(_media_section("audio", audio_port, SUPPORTED_CODECS["audio"], "sendrecv",
                                    proto, [("crypto", str(c)) for c in crypto.get("audio", ())]))
    if video_port is not None:
        extra = [("framerate", str(video_framerate))] if video_framerate else []  # RFC 4566 §6
        extra += [("crypto", str(c)) for c in crypto.get("video", ())]
        media.append(_media_section("video", video_port, SUPPORTED_CODECS["video"], "sendrecv",
                                    proto, extra))
    origin = Origin("-", session_id, version, "IN", _addrtype(address), address)
    return SessionDescription(origin, "sipgw", address, [(0, 0)], [], [], media)


def _find(codec: Codec, pool: list[Codec]) -> Codec | None:
    return next((c for c in pool if c.matches(codec)), None)


def _pick(answer: list[Codec], offer: list[Codec]) -> tuple[Codec, Codec, Codec | None, Codec | None] | None:
    """RFC 3264 §7: the first answer codec the offer also has, matched by name, not payload type.

    Returns (answer codec, offer codec, answer telephone-event, offer telephone-event).
    """
    found = [(a, _find(a, offer)) for a in answer]
    pairs = [(a, o) for a, o in found if o is not None]
    codecs = [p for p in pairs if p[0].name.lower() not in _AUXILIARY]
    if not codecs:
        return None
    answer_codec, offer_codec = codecs[0]
    events = [p for p in pairs if p[0].name.lower() == "telephone-event"]
    # RFC 4733: events share the audio's clock, so prefer the matching telephone-event.
    events.sort(key=lambda p: p[0].clock != answer_codec.clock)
    answer_dtmf, offer_dtmf = events[0] if events else (None, None)
    return answer_codec, offer_codec, answer_dtmf, offer_dtmf


def _receivable(answer: list[Codec], offer: list[Codec]) -> dict[int, Codec]:
    """The media codecs both lists hold, by the payload types of each (RFC 3264 §6.1)."""
    found = [(a, _find(a, offer)) for a in answer if a.name.lower() not in _AUXILIARY]
    return {pt: a for a, o in found if o is not None for pt in (o.pt, a.pt)}


@functools.lru_cache(maxsize=1024)  # pure: a peer's few media addresses, parsed once each
def _is_ip_literal(address: str) -> bool:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True


def _agreed(kind: str, remote: SessionDescription, remote_m: MediaDescription,
            remote_codec: Codec, local_codec: Codec,
            remote_dtmf: Codec | None, local_dtmf: Codec | None,
            receivable: dict[int, Codec]) -> NegotiatedMedia:
    address = remote.media_address(remote_m)
    if not _is_ip_literal(address):  # RTP goes there: never a name to resolve (or fail on)
        raise SDPError(f"c= address {address!r} of the {kind} stream is not an IP address") from None
    direction = _MIRROR[remote.media_direction(remote_m)]
    if address == _NULL_ADDRESS:  # RFC 3264 §8.4: "do not send to me"
        direction = {"sendrecv": "recvonly", "sendonly": "inactive"}.get(direction, direction)
    return NegotiatedMedia(
        kind=kind, address=address, port=remote_m.port, rtcp_port=remote_m.rtcp_port,
        codec=remote_codec, dtmf_pt=remote_dtmf.pt if remote_dtmf else None,
        direction=direction, packetization_mode=remote_codec.packetization_mode,
        recv_pt=local_codec.pt, recv_dtmf_pt=local_dtmf.pt if local_dtmf else None,
        recv_codecs=receivable)


def negotiate(offer: SessionDescription, answer: SessionDescription) -> dict[str, NegotiatedMedia]:
    """Read the peer's answer to our offer: the first accepted stream of each kind."""
    # RFC 3264 §6: the answer has exactly as many m= lines as the offer, in the same order.
    # Fewer is tolerated (canned answers such as SIPp's): the missing streams count as rejected.
    if len(answer.media) > len(offer.media):
        raise SDPError(f"answer has {len(answer.media)} m= lines but the offer has {len(offer.media)}")
    result: dict[str, NegotiatedMedia] = {}
    for index, (o, a) in enumerate(zip(offer.media, answer.media), 1):
        if a.kind != o.kind:
            raise SDPError(f"answer m= line {index} is {a.kind!r} but the offer's is {o.kind!r}")
        if a.port == 0 or o.port == 0 or a.kind in result:
            continue  # RFC 3264 §6: port 0 rejects the stream
        answer_codecs, offer_codecs = a.codecs, o.codecs  # each parsed from its lines once
        pick = _pick(answer_codecs, offer_codecs)
        if pick is not None:
            answer_codec, offer_codec, answer_dtmf, offer_dtmf = pick
            result[a.kind] = _agreed(a.kind, answer, a, answer_codec, offer_codec,
                                     answer_dtmf, offer_dtmf,
                                     _receivable(answer_codecs, offer_codecs))
    if not result:
        raise SDPError("No common codecs")
    return result


def _answer_codecs(kind: str, offered: list[Codec]) -> list[Codec]:
    """The offered codecs we support, in the offer's order, with the offer's payload types
    (RFC 3264 §6.1 SHOULD) and our own fmtp (what we can receive)."""
    ours = SUPPORTED_CODECS.get(kind, [])
    found = [(c, _find(c, ours)) for c in offered]
    return [Codec(c.pt, c.name, c.clock, c.channels, mine.fmtp) for c, mine in found if mine]


def make_answer(offer: SessionDescription, *, address: str, audio_port: int | None,
                video_port: int | None, session_id: int, version: int,
                crypto: dict | None = None,
                ) -> tuple[SessionDescription, dict[str, NegotiatedMedia]]:
    """Answer the peer's offer (RFC 3264 §6): one m= line per offered one, port 0 for refused.
    ``crypto`` (kind -> our a=crypto value, RFC 4568 §7.1.2) makes that kind's stream
    answerable over RTP/SAVP(F) too, with our crypto line in it."""
    crypto = crypto or {}
    _check_port("audio_port", audio_port)
    _check_port("video_port", video_port)
    ports = {"audio": audio_port, "video": video_port}
    media: list[MediaDescription] = []
    result: dict[str, NegotiatedMedia] = {}
    for m in offer.media:
        port = ports.get(m.kind)
        protos = _RTP_PROTOS | (_SRTP_PROTOS if m.kind in crypto else set())
        usable = port is not None and m.port != 0 and m.proto in protos and m.kind not in result
        codecs = _answer_codecs(m.kind, m.codecs) if usable else []
        pick = _pick(codecs, m.codecs)
        if port is None or pick is None:
            # RFC 3264 §6: a refused stream keeps its m= line, with port 0 and the offered formats.
            media.append(MediaDescription(m.kind, 0, m.proto, list(m.formats)))
            continue
        answer_codec, offer_codec, answer_dtmf, offer_dtmf = pick
        agreed = _agreed(m.kind, offer, m, offer_codec, answer_codec, offer_dtmf, answer_dtmf,
                         _receivable(codecs, m.codecs))
        result[m.kind] = agreed
        extra = [("crypto", str(crypto[m.kind]))] if m.kind in crypto else []
        media.append(_media_section(m.kind, port, codecs, agreed.direction, proto=m.proto,
                                    extra=extra))
    if not result:
        raise SDPError("No common codecs")
    origin = Origin("-", session_id, version, "IN", _addrtype(address), address)
    return SessionDescription(origin, "sipgw", address, [(0, 0)], [], [], media), result


def is_hold(sdp: SessionDescription) -> bool:
    """RFC 3264 §8.4: every active stream is sendonly or inactive, or has c=0.0.0.0."""
    active = [m for m in sdp.media if m.port != 0]
    return bool(active) and all(
        sdp.media_direction(m) in ("sendonly", "inactive") or sdp.media_address(m) == _NULL_ADDRESS
        for m in active)
