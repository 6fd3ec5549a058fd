"""Bytes to SIP messages (RFC 3261 §7, §18.3): one datagram, or a TCP stream.

Pure. Anything malformed raises ``ParseError``; when the bytes were a request
whose Via, From, To, Call-ID and CSeq could be read, the error carries enough
to answer 400 (RFC 3261 §21.4.1) without state.
"""
from __future__ import annotations

import re

from .headers import HeaderError, URI, Address, canonical_name, is_token
from .message import Message, Request, Response

MAX_MESSAGE_SIZE = 65535  # bytes; larger messages are refused (RFC 3261 §18.1.1 UDP limit)
REQUIRED = ("To", "From", "CSeq", "Call-ID", "Via")  # RFC 3261 §8.1.1
_SINGLE = ("To", "From", "Call-ID", "CSeq", "Max-Forwards", "Content-Type")  # at most once
_LINES = re.compile(r"\r?\n")
# re.ASCII: DIGIT is 0-9 only (RFC 5234); a bare \d would also match '٢' and int() would take it.
_REQUEST_LINE = re.compile(r"^([A-Za-z0-9\-.!%*_+`'~]+) (\S+) SIP/(\d+\.\d+)$", re.ASCII)
_STATUS_LINE = re.compile(r"^SIP/(\d+\.\d+) (\d{3})(?: (.*))?$", re.ASCII)  # reason may be empty


class ParseError(ValueError):
    """Bytes that are not a valid SIP message; ``request`` is set when a 400 can be sent,
    ``response`` when a broken response still names its client transaction (``salvage``)."""

    def __init__(self, message: str, request: Request | None = None, status: int = 400):
        super().__init__(message)
        self.request = request
        self.status = status
        self.response: Response | None = None


_SALVAGED = {"via": "Via", "v": "Via", "cseq": "CSeq", "call-id": "Call-ID", "i": "Call-ID",
             "from": "From", "f": "From", "to": "To", "t": "To"}


def salvage(head: bytes) -> Response | None:
    """What a transaction needs from a response that does not parse (top Via, CSeq, Call-ID):
    a final failure response, so the call does not wait for Timer B/F (RFC 3261 §17.1.1.2).
    Its status when the status line reads as a final failure, else 500; None for a
    provisional (a final one will follow) or when the transaction cannot be named."""
    text = head.decode("latin-1")
    lines = re.split(r"\r?\n", text)
    status_match = re.match(r"SIP/2\.0 ([3-6]\d\d)\b", lines[0], re.ASCII)
    if not lines[0].startswith("SIP/") or re.match(r"SIP/2\.0 1\d\d\b", lines[0]):
        return None
    headers: dict[str, str] = {}
    vias = 0
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        key = _SALVAGED.get(name.strip().lower())
        if colon and key == "Via":
            vias += value.count(",") + 1
        if colon and key and key not in headers:
            headers[key] = value.strip()
    if vias != 1:  # §18.1.2: a response with other Vias than ours is not ours
        return None
    status = int(status_match.group(1)) if status_match else 500
    response = Response(status, "Unparseable response" if not status_match else None,
                        list(headers.items()))
    try:
        if not response.top_via.branch or len(response.get("CSeq", "").split()) != 2 \
                or not response.call_id:
            return None
        response.cseq  # noqa: B018 - parse to check
    except (HeaderError, IndexError, KeyError, ValueError):
        return None
    return response


def _salvaging(error: ParseError, head: bytes) -> ParseError:
    error.response = salvage(head)
    return error


def _split_head(data: bytes) -> tuple[bytes, bytes]:
    for sep in (b"\r\n\r\n", b"\n\n"):
        idx = data.find(sep)
        if idx >= 0:
            return data[:idx], data[idx + len(sep):]
    raise ParseError("no blank line after the headers")


def _unfold(head: str) -> list[str]:
    """Split the head into lines, joining folded continuation lines (RFC 3261 §7.3.1)."""
    if "\n " not in head and "\n\t" not in head:  # nothing folded: the common case
        return _LINES.split(head)
    lines: list[str] = []
    for line in _LINES.split(head):
        if line[:1] in (" ", "\t") and lines:
            lines[-1] += " " + line.strip()
        else:
            lines.append(line)
    return lines


def _parse_head(head: bytes) -> tuple[Message, int | None]:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        # RFC 3261 allows UTF-8 only in a few places; latin-1 keeps bytes intact.
        text = head.decode("latin-1")
    lines = _unfold(text)
    first = lines[0]
    headers = []
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon:
            raise ParseError(f"header line without ':' {line[:60]!r}")
        try:
            headers.append((canonical_name(name.strip()), value.strip()))
        except HeaderError as exc:
            raise ParseError(str(exc)) from None
    if first.startswith("SIP/"):
        match = _STATUS_LINE.match(first)
        if not match:
            raise ParseError(f"bad status line {first[:80]!r}")
        if match.group(1) != "2.0":
            raise ParseError(f"unsupported SIP version {match.group(1)}", status=505)
        status = int(match.group(2))
        if not 100 <= status <= 699:
            raise ParseError(f"status code out of range: {status}")
        message: Message = Response(status, match.group(3) or "")
        message.headers = headers  # canonical names already (not through Message's check again)
    else:
        match = _REQUEST_LINE.match(first)
        if not match:
            raise ParseError(f"bad request line {first[:80]!r}", _opaque_request(first, headers))
        try:
            uri = URI.parse(match.group(2))
        except HeaderError as exc:
            raise ParseError(f"bad Request-URI: {exc}", _opaque_request(first, headers)) from None
        message = Request(match.group(1), uri)
        message.headers = headers
        if match.group(3) != "2.0":
            raise ParseError(f"unsupported SIP version {match.group(3)}", _answerable(message), 505)
        if uri.headers:  # RFC 3261 §19.1.1 table 1: no headers in a Request-URI
            raise ParseError(f"Request-URI with headers {match.group(2)[:80]!r}",
                             _answerable(message))
    length_values = message.get_all("Content-Length")
    length = None
    if length_values:
        if len(set(length_values)) > 1 or not _is_digits(length_values[0]):
            raise ParseError(f"bad Content-Length {length_values!r}", _answerable(message))
        length = int(length_values[0])
    return message, length


def _is_digits(text: str) -> bool:
    """1*DIGIT with ASCII digits only (str.isdigit() also accepts '²', which int() refuses)."""
    return text.isascii() and text.isdigit()


def _opaque_request(first: str, headers) -> Request | None:
    """A request whose start line is broken, kept only to answer it 400 when its
    headers allow (RFC 4475 §3.1.2.9-3.1.2.12 expect that answer)."""
    parts = first.split()
    if not parts or not is_token(parts[0]) or parts[0] == "ACK":
        return None
    return _answerable(Request(parts[0], URI(scheme="", host=""), headers))


def _answerable(message: Message) -> Request | None:
    """The request itself when it has what a stateless 400 needs, else None: a stateless
    answer copies CSeq as it is, so only Via must parse (the answer is routed by it)."""
    if not isinstance(message, Request):
        return None
    try:
        message.vias  # noqa: B018 - all of them parsed once, kept for _validate
    except HeaderError:
        pass  # a bad Via further down: only the top one must parse here
    try:
        message.top_via  # noqa: B018 - parse to check
    except (HeaderError, IndexError):
        return None
    if len((message.get("CSeq") or "").split()) != 2:
        return None
    if not message.call_id or message.get("From") is None or message.get("To") is None:
        return None
    return message


def _validate(message: Message) -> None:
    """Check the headers every message needs (RFC 3261 §8.1.1, §20)."""
    request = _answerable(message)
    counts: dict[str, int] = {}
    for name, _ in message.headers:
        counts[name] = counts.get(name, 0) + 1
    for name in REQUIRED:
        if name not in counts:
            raise ParseError(f"missing {name} header", request)
    for name in _SINGLE:
        if counts.get(name, 0) > 1:
            raise ParseError(f"more than one {name} header", request)
    try:
        if not message.vias:
            raise ParseError("empty Via header", None)
        cseq = message.cseq
        message.from_
        message.to
        # Responses too: the dialog layer reads Contact and Record-Route of a 2xx (§12.1.2).
        message.contacts  # noqa: B018 - parsed once here, kept for the dialog layer
        for name in ("Record-Route", "Route"):
            for value in message.get_all(name):
                Address.parse(value)
        if isinstance(message, Request):
            if cseq.method != message.method:
                raise ParseError(f"CSeq method {cseq.method} does not match {message.method}",
                                 request)
            max_forwards = message.get("Max-Forwards")
            if max_forwards is not None and not (_is_digits(max_forwards)
                                                 and int(max_forwards) <= 255):
                raise ParseError(f"bad Max-Forwards {max_forwards!r}", request)
    except HeaderError as exc:
        raise ParseError(str(exc), request) from None
    if not is_token(message.call_id.split("@")[0]):
        raise ParseError(f"bad Call-ID {message.call_id!r}", request)


def parse(data: bytes, max_size: int = MAX_MESSAGE_SIZE) -> Message:
    """Parse one whole message, as received in a UDP datagram (RFC 3261 §18.3)."""
    if len(data) > max_size:
        raise ParseError(f"message of {len(data)} bytes is larger than {max_size}", status=513)
    try:
        head, body = _split_head(data.lstrip(b"\r\n"))
    except ParseError as exc:  # a datagram cut short: its headers may still name the transaction
        raise _salvaging(exc, data.lstrip(b"\r\n")) from None
    try:
        message, length = _parse_head(head)
        if length is not None:
            if length > len(body):
                raise ParseError(f"Content-Length {length} is larger than the body "
                                 f"({len(body)} bytes)", _answerable(message))
            body = body[:length]  # §18.3: extra bytes in a datagram are discarded
        message.body = body
        _validate(message)
    except ParseError as exc:
        raise _salvaging(exc, head) from None
    return message


class StreamParser:
    """Frames messages out of a byte stream by Content-Length (RFC 3261 §18.3).

    ``feed`` returns the complete messages, in order, with a ``ParseError`` in place of each
    malformed one: a message whose headers end can be skipped (by its Content-Length when
    it can be read, else as having no body), so the next one is still read. Only a framing
    error that leaves the stream unusable (a message beyond the size limit) raises
    ParseError: the connection should be closed. CRLF keep-alives (RFC 5626 §3.5.1)
    between messages are skipped.

    Incremental: each byte is searched for the end of the headers once (the search resumes
    where the last one stopped) and the headers are parsed once, however the message is cut
    into reads; ``scanned`` counts the bytes searched, so a message costs O(its size).
    """

    def __init__(self, max_size: int = MAX_MESSAGE_SIZE):
        self._buffer = bytearray()
        self._max_size = max_size
        self._searched = 0  # bytes of the buffer already searched for the end of the headers
        # (message or the error that replaces it, body start, end, head bytes)
        self._head: tuple[Message | ParseError, int, int, bytes] | None = None
        self.scanned = 0

    @property
    def pending(self) -> bool:
        """A message has begun but is not complete."""
        return bool(self._buffer)

    def feed(self, data: bytes) -> list[Message | ParseError]:
        buffer = self._buffer
        buffer += data
        messages: list[Message | ParseError] = []
        while True:
            if self._head is None:
                if not self._searched and buffer[:1] in (b"\r", b"\n"):
                    del buffer[:len(buffer) - len(buffer.lstrip(b"\r\n"))]
                start = max(0, self._searched - 3)
                self.scanned += len(buffer) - start
                idx = buffer.find(b"\r\n\r\n", start)
                if idx < 0:
                    self._searched = len(buffer)
                    if len(buffer) > self._max_size:
                        raise ParseError("headers larger than the size limit", status=513)
                    return messages
                head = bytes(buffer[:idx])
                try:
                    message, length = _parse_head(head)
                    if length is None:
                        raise ParseError("missing Content-Length on a stream transport",
                                         _answerable(message))
                except ParseError as exc:
                    message, length = _salvaging(exc, head), _stream_length(head)
                end = idx + 4 + length
                if end > self._max_size:
                    raise ParseError(f"message of {end} bytes is larger than {self._max_size}",
                                     status=513)
                self._head = (message, idx + 4, end, head)
            message, body_start, end, head = self._head
            if len(buffer) < end:
                return messages
            body = bytes(buffer[body_start:end])
            del buffer[:end]
            self._head = None
            self._searched = 0
            if isinstance(message, Message):
                message.body = body
                try:
                    _validate(message)
                except ParseError as exc:
                    message = _salvaging(exc, head)
            messages.append(message)


def _stream_length(head: bytes) -> int:
    """The Content-Length of headers that do not parse, to skip their body; 0 when it
    cannot be read (the next message is then looked for right after the headers)."""
    found = re.search(rb"^(?:content-length|l)[ \t]*:[ \t]*(\d{1,9})[ \t]*$", head,
                      re.I | re.M)
    return int(found.group(1)) if found else 0
