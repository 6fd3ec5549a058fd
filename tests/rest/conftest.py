"""A full HTTP round trip in memory: raw request bytes into a twisted.web Site over a
StringTransport, raw response bytes parsed back; a capture of twisted.logger events; and the
OpenAPI check: every exchange a test makes with the daemon's API is validated against
sipgw/rest/openapi.json when the test ends (requests the server accepted, and every answer),
so the description cannot drift from the server."""
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
EXCHANGES: list = []  # every HttpExchange of the running test, for the OpenAPI check


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
        self.site = site
        self.raw_request = raw_request
        EXCHANGES.append(self)
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


def exchange(site: Site, path: str, headers: dict[str, str] | None = None,
             peer: IPv4Address = CLIENT, method: str = "GET", body: bytes = b"") -> HttpExchange:
    """``method`` (GET unless told) of ``path`` (any path of ``site``, not only /rest-api/),
    answered or not yet."""
    lines = [f"{method} {path} HTTP/1.1", "Host: gateway.test", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
    return HttpExchange(site, raw, peer=peer)


def get(site: Site, path: str, headers: dict[str, str] | None = None,
        peer: IPv4Address = CLIENT, method: str = "GET", body: bytes = b"") -> HttpResponse:
    """``exchange(...)``'s finished response."""
    return exchange(site, path, headers, peer, method, body).response


@pytest.fixture
def http_get():
    """``get(site, path, headers=None, peer=CLIENT, method="GET", body=b"")``: one request
    to any path of a Site."""
    return get


@pytest.fixture
def http_exchange():
    """``exchange(...)``: as http_get, for an answer that comes later (``.done``)."""
    return exchange


@pytest.fixture
def http_response():
    """The HttpResponse class, to build answers for the OpenAPI check."""
    return HttpResponse


class OpenApiCheck:
    """Validates HTTP exchanges against an OpenAPI 3.1 document (JSON Schema 2020-12)."""

    URI = "urn:sipgw:openapi"

    def __init__(self, document: dict) -> None:
        from referencing import Registry, Resource
        from referencing.jsonschema import DRAFT202012
        self.document = document
        resource = Resource.from_contents(document, default_specification=DRAFT202012)
        self.registry = Registry().with_resource(self.URI, resource)

    def serves_the_api(self, site: Site) -> bool:
        """The site's /rest-api/ serves only documented routes (not a router test's own)."""
        rest = getattr(site.resource, "children", {}).get(b"rest-api")
        paths = getattr(rest, "paths", None)
        return bool(paths) and all("/rest-api" + p in self.document["paths"] for p in paths)

    @property
    def prefixes(self) -> set[str]:
        """First segments of the documented paths (``rest-api``, ``whep``, ``metrics`` ...)."""
        return {path.split("/")[1] for path in self.document["paths"]}

    def template_of(self, path: str) -> str:
        """The documented path ``path`` matches (``/whep/s1`` -> ``/whep/{streamName}``), or
        ``path`` itself."""
        if path in self.document["paths"]:
            return path
        segments = path.split("/")
        for template in self.document["paths"]:
            parts = template.split("/")
            if len(parts) == len(segments) and all(
                    p == s or (p.startswith("{") and p.endswith("}") and s)
                    for p, s in zip(parts, segments)):
                return template
        return path

    def schema_errors(self, pointer: str, instance: Any) -> list[str]:
        from jsonschema import Draft202012Validator
        validator = Draft202012Validator({"$ref": f"{self.URI}#{pointer}"}, registry=self.registry)
        return [f"{error.json_path}: {error.message}" for error in validator.iter_errors(instance)]

    def _response_spec(self, spec: dict, pointer: str) -> tuple[dict, str]:
        ref = spec.get("$ref")
        if ref is None:
            return spec, pointer
        pointer = ref[1:]
        node = self.document
        for part in pointer.split("/")[1:]:
            node = node[part.replace("~1", "/").replace("~0", "~")]
        return node, pointer

    def check(self, method: str, target: str, request_body: bytes,
              response: HttpResponse) -> list[str]:
        """What in this exchange the document does not say; [] when all of it is described."""
        target_path = target.split("?")[0]
        where = f"{method} {target_path} -> {response.code}"
        path = self.template_of(target_path)
        item = self.document["paths"].get(path)
        if item is None:  # an unknown path below a documented one: refused with an Error
            if path.split("/")[1] not in self.prefixes:
                return []  # the pages, served from files
            if response.code in (401, 403, 404):
                return [f"{where}: {e}" for e in self._error_body(response)]
            return [f"{where}: path not documented"]
        operation = item.get(method.lower())
        head = method == "HEAD"  # answered as GET, without the body
        if operation is None and head and "get" in item:
            operation, method = item["get"], "GET"
        if operation is None:
            if response.code in (401, 403, 405):  # a method the path does not take
                return [f"{where}: {e}" for e in self._error_body(response)]
            return [f"{where}: method not documented for the path"]
        escaped = path.replace("~", "~0").replace("/", "~1")
        pointer = f"/paths/{escaped}/{method.lower()}"
        spec = operation["responses"].get(str(response.code))
        if spec is None:
            return [f"{where}: status code not documented"]
        spec, spec_pointer = self._response_spec(spec, f"{pointer}/responses/{response.code}")
        errors = []
        content = spec.get("content") or {}
        content_type = response.headers.get("content-type", "").split(";")[0].strip()
        if head:
            pass
        elif not response.body:
            if content and "x-sipgw-empty-body" not in spec:
                errors.append("an empty body where the document says there is content")
        elif content_type not in content:
            errors.append(f"Content-Type {content_type!r} not documented")
        elif content_type == "application/json":
            media = spec_pointer + "/content/application~1json/schema"
            errors += self.schema_errors(media, json.loads(response.body))
        refused = response.body and "x-sipgw-refusal" in spec  # /call/send_dtmf's 200
        json_body = "application/json" in operation.get("requestBody", {}).get("content", {})
        if 200 <= response.code < 300 and json_body and not refused:
            raw = request_body.strip() or b"{}"
            errors += ["request " + e for e in self.schema_errors(
                pointer + "/requestBody/content/application~1json/schema", json.loads(raw))]
        return [f"{where}: {e}" for e in errors]

    def _error_body(self, response: HttpResponse) -> list[str]:
        if not response.body:
            return []
        return self.schema_errors("/components/schemas/Error", json.loads(response.body))


def _request_parts(raw: bytes) -> tuple[str, str, bytes] | None:
    """(method, target, body) of a raw HTTP/1.1 request; None when it is not one."""
    head, sep, rest = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if not sep or len(parts) != 3:
        return None
    headers = {name.strip().lower(): value.strip()
               for name, _, value in (line.partition(":") for line in lines[1:])}
    if headers.get("transfer-encoding") == "chunked":
        body = _dechunk(rest) or b""
    else:
        length = headers.get("content-length", "0")
        body = rest[: int(length)] if length.isdigit() else b""
    return parts[0], parts[1], body


@pytest.fixture(scope="session")
def openapi() -> OpenApiCheck:
    """The check of the shipped sipgw/rest/openapi.json."""
    from sipgw.rest.openapi import document
    return OpenApiCheck(document())


@pytest.fixture(autouse=True)
def every_exchange_is_documented(openapi):
    """After each test: every exchange with the daemon's API matches openapi.json."""
    EXCHANGES.clear()
    yield
    made, checked = list(EXCHANGES), []
    EXCHANGES.clear()
    check = openapi
    for one in made:
        parts = _request_parts(one.raw_request)
        if parts is None or not one.done or not check.serves_the_api(one.site):
            continue  # not HTTP, not answered, or a router test's own routes
        method, target, body = parts
        checked += check.check(method, target, body, one.response)
    assert checked == [], "exchanges openapi.json does not describe:\n" + "\n".join(checked)
