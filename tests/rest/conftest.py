"""A full HTTP round trip in memory: raw request bytes into a twisted.web Site over a
StringTransport, raw response bytes parsed back; and a capture of twisted.logger events."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Site

from sipgw.rest.router import RestSite

CLIENT = IPv4Address("TCP", "127.0.0.1", 40312)


@dataclass
class HttpResponse:
    code: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        assert self.headers.get("content-type") == "application/json"
        return json.loads(self.body)


class HttpExchange:
    """One request on its own connection; ``response`` parses what the server wrote so far."""

    def __init__(self, site: Site, raw_request: bytes, head: bool = False,
                 peer: IPv4Address = CLIENT) -> None:
        self.head = head
        self.transport = StringTransport(peerAddress=peer)
        self.protocol = site.buildProtocol(peer)
        self.protocol.makeConnection(self.transport)
        self.protocol.dataReceived(raw_request)

    @property
    def done(self) -> bool:
        return _parse(self.transport.value(), self.head) is not None

    @property
    def response(self) -> HttpResponse:
        parsed = _parse(self.transport.value(), self.head)
        assert parsed is not None, f"incomplete response: {self.transport.value()!r}"
        return parsed

    def disconnect(self) -> None:
        from twisted.internet.error import ConnectionDone

        self.protocol.connectionLost(Failure(ConnectionDone()))


class RestClient:
    """Speaks HTTP/1.1 to ``/rest-api/`` of a Site holding only the resource under test."""

    def __init__(self, rest_resource: Resource, peer: IPv4Address = CLIENT) -> None:
        root = Resource()
        root.putChild(b"rest-api", rest_resource)
        self.site = RestSite(root, max_body=rest_resource.max_body, reactor=Clock(), timeout=None)
        self.peer = peer

    def send(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        chunked: bool = False,
    ) -> HttpExchange:
        lines = [f"{method} /rest-api{path} HTTP/1.1", "Host: gateway.test"]
        # JSON unless a test says otherwise; a header given as None is left out.
        for name, value in {"Content-Type": "application/json", **(headers or {})}.items():
            if value is not None:
                lines.append(f"{name}: {value}")
        if chunked:
            lines.append("Transfer-Encoding: chunked")
            payload = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) if body else b"0\r\n\r\n"
        else:
            lines.append(f"Content-Length: {len(body)}")
            payload = body
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        return HttpExchange(self.site, head + payload, head=method == "HEAD", peer=self.peer)

    def post(self, path: str, body: Any = None, raw: bytes | None = None, **kw: Any) -> HttpResponse:
        """POST ``body`` as JSON (or ``raw`` bytes as they are) and return the finished response."""
        if raw is None:
            raw = b"" if body is None else json.dumps(body).encode("utf-8")
        return self.send("POST", path, raw, **kw).response


def _parse(data: bytes, head: bool = False) -> HttpResponse | None:
    head, sep, rest = data.partition(b"\r\n\r\n")
    if not sep:
        return None
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    code = int(status_line.split(" ")[1])
    headers: dict[str, str] = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        assert name.lower() not in headers, f"duplicate header {name}"
        headers[name.lower()] = value.strip()
    if code == 204 or head:
        return HttpResponse(code, headers, rest)
    if headers.get("transfer-encoding") == "chunked":
        body = _dechunk(rest)
        return None if body is None else HttpResponse(code, headers, body)
    length = int(headers["content-length"])
    if len(rest) < length:
        return None
    return HttpResponse(code, headers, rest[:length])


def _dechunk(data: bytes) -> bytes | None:
    body = b""
    while True:
        size_line, sep, data = data.partition(b"\r\n")
        if not sep:
            return None
        size = int(size_line, 16)
        if size == 0:
            return body
        body, data = body + data[:size], data[size + 2 :]


class LogCapture:
    """Every twisted.logger event emitted while a test runs."""

    def __init__(self) -> None:
        self.events: list[dict] = []

    def request_lines(self) -> list[str]:
        """The formatted lines the REST layer logged."""
        return [formatEvent(e) for e in self.events if e.get("log_namespace") == "sipgw.rest"]

    def failures(self) -> list[Failure]:
        return [e["log_failure"] for e in self.events if "log_failure" in e]

    def everything(self) -> str:
        """All text any observer could write: formatted events, their fields, tracebacks."""
        parts = []
        for event in self.events:
            parts.append(formatEvent(event))
            parts.append(repr(event))
            failure = event.get("log_failure")
            if failure is not None:
                parts.append(failure.getTraceback())
        return "\n".join(parts)


@pytest.fixture
def logs():
    """A LogCapture observing the global log publisher for the test's duration."""
    capture = LogCapture()
    observer = capture.events.append
    globalLogPublisher.addObserver(observer)
    yield capture
    globalLogPublisher.removeObserver(observer)


@pytest.fixture
def client_for():
    """Builds a RestClient in front of a given RestResource."""
    return RestClient


def get(site: Site, path: str, headers: dict[str, str] | None = None,
        peer: IPv4Address = CLIENT, method: str = "GET", body: bytes = b"") -> HttpResponse:
    """``method`` (GET unless told) of ``path`` (any path of ``site``, not only /rest-api/)
    and the finished response."""
    lines = [f"{method} {path} HTTP/1.1", "Host: gateway.test", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
    return HttpExchange(site, raw, peer=peer).response


@pytest.fixture
def http_get():
    """``get(site, path, headers=None, peer=CLIENT, method="GET", body=b"")``: one request
    to any path of a Site."""
    return get
