"""Klein-style routes on twisted.web: every WCS REST method is a POST with a JSON body; the
methods WCS also serves as GET (the WebSDK's REST module sends GET for every call without a
body: ``find_all``) are declared ``get=True`` and read a GET as an empty body, ``{}``.

An API is an object holding its dependencies; its methods are declared on a class-level
``Router``::

    class CallApi:
        router = Router()

        def __init__(self, manager):
            self._manager = manager

        @router.route("/call/terminate")
        def terminate(self, request, body: dict):
            self._manager.terminate(body["callId"])

``RestResource(CallApi(manager), ...)`` serves every route of every object it is given and
is mounted by the caller: ``root.putChild(b"rest-api", RestResource(...))``.

A handler returns a JSON-able value (200, ``application/json``), ``None`` (200 with an
empty body: WCS's "accepted"), a Deferred or a coroutine of either, or raises; exceptions
become responses in ``sipgw.rest.errors`` only.  Bodies are never logged: ``/call/startup``
carries the SIP password.
"""
from __future__ import annotations

import inspect
import json
from typing import Any, Callable

from twisted.internet import defer
from twisted.python.failure import Failure
from twisted.web import resource, server

from sipgw.logtext import Logger  # the lean emit: a line per request
from sipgw.policy import AccessPolicy, Denied, route_scope
from sipgw.rest.admission import admit, cors
from sipgw.rest.errors import ApiError, BadRequest, error_body, error_response

MAX_BODY = 64 * 1024
ALLOW_METHODS = b"POST, OPTIONS"
ALLOW_GET_METHODS = b"GET, POST, OPTIONS"
ALLOW_HEADERS = b"Authorization, Content-Type"
JSON_TYPE = b"application/json"
# Seconds a connection may sit idle (kept alive, or sending its request slowly) before it is
# closed; twisted.web's default is 12 hours, one socket each for whoever opens many.
IDLE_TIMEOUT = 60
_MAX_LOGGED_PATH = 200

_log = Logger(namespace="sipgw.rest")

Handler = Callable[[server.Request, dict], Any]


class Router:
    """A table of REST paths to method names, filled by the ``route`` decorator."""

    def __init__(self) -> None:
        self._names: dict[str, str] = {}

    def route(self, path: str, get: bool = False) -> Callable[[Callable], Callable]:
        """Declare the decorated method as the handler of ``path`` (e.g. ``"/call/find"``);
        ``get``: GET is served too, with the body ``{}``."""
        if not path.startswith("/") or path.endswith("/") or "//" in path:
            raise ValueError(f"route path must look like /a/b, not {path!r}")
        if path in self._names:
            raise ValueError(f"route {path} declared twice")

        def register(function: Callable) -> Callable:
            self._names[path] = function.__name__
            function.rest_get = get
            return function

        return register

    @property
    def paths(self) -> list[str]:
        return sorted(self._names)

    def get_paths(self, cls: type) -> list[str]:
        """The paths served as GET too, by ``cls`` (the class that holds this router)."""
        return sorted(p for p, name in self._names.items() if getattr(cls, name).rest_get)

    def bind(self, api: object) -> dict[str, Handler]:
        """The handlers of ``api`` (an instance of the class that holds this router)."""
        return {path: getattr(api, name) for path, name in self._names.items()}


def routes_of(api: object) -> dict[str, Handler]:
    """Every route declared by a ``Router`` on the class of ``api`` (or its bases)."""
    routers = []
    for cls in type(api).__mro__:
        routers.extend(v for v in vars(cls).values() if isinstance(v, Router))
    if not routers:
        raise TypeError(f"{type(api).__name__} declares no Router")
    table: dict[str, Handler] = {}
    for router in routers:
        for path, handler in router.bind(api).items():
            table.setdefault(path, handler)
    return table


class RestResource(resource.Resource):
    """Serves the routes of ``apis`` below the point where it is mounted (``/rest-api/``)."""

    isLeaf = True

    def __init__(
        self,
        *apis: object,
        access: AccessPolicy | None = None,
        max_body: int = MAX_BODY,
    ) -> None:
        super().__init__()
        self._routes: dict[str, Handler] = {}
        for api in apis:
            for path, handler in routes_of(api).items():
                if path in self._routes:
                    raise ValueError(f"route {path} served by two API objects")
                self._routes[path] = handler
        self._access = access or AccessPolicy()
        self.max_body = max_body

    @property
    def paths(self) -> list[str]:
        return sorted(self._routes)

    def render(self, request: server.Request) -> bytes | int:
        path = _route_path(request.postpath)
        method = request.method.decode("ascii", "replace")
        if method == "OPTIONS":
            # CORS preflight (the pages POST application/json, which is not "simple").
            # Answered for any path so that the real POST gets a readable 404.
            self._respond(request, method, path, 204, None)
            request.finish()  # a returned b"" would add Content-Length, not allowed on a 204
            return server.NOT_DONE_YET
        try:
            admit(request, self._access, route_scope(path))
        except Denied as denied:
            return self._fail(request, method, path, Failure(ApiError(denied.code, denied.message)))
        handler = self._routes.get(path)
        if handler is None:
            return self._fail(request, method, path, Failure(_unknown_method(path)))
        get = getattr(handler, "rest_get", False)
        if method != "POST" and not (get and method == "GET"):
            request.setHeader(b"Allow", ALLOW_GET_METHODS if get else ALLOW_METHODS)
            verbs = "GET or POST" if get else "POST"
            refusal = ApiError(405, f"{method} not allowed: {path} takes {verbs}")
            return self._fail(request, method, path, Failure(refusal))
        try:
            if method == "GET":
                body = {}
            else:
                _require_json(request)
                body = self._read_body(request)
            result = handler(request, body)
        except Exception:
            return self._fail(request, method, path, Failure())
        if inspect.iscoroutine(result) or isinstance(result, defer.Deferred):
            self._answer_later(request, method, path, defer.ensureDeferred(result))
            return server.NOT_DONE_YET
        return self._succeed(request, method, path, result)

    def _read_body(self, request: server.Request) -> dict:
        declared = request.getHeader(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            raise _too_large(self.max_body)
        content = request.content
        raw = b""
        if content is not None:
            content.seek(0)
            raw = content.read(self.max_body + 1)
        if len(raw) > self.max_body:
            raise _too_large(self.max_body)
        return parse_body(raw)

    def _answer_later(
        self, request: server.Request, method: str, path: str, d: defer.Deferred
    ) -> None:
        gone: list[Failure] = []
        request.notifyFinish().addErrback(gone.append)

        def write(payload: bytes) -> None:
            if gone:
                _log.info(
                    "{method} /rest-api{path}: client went away before the answer",
                    method=method,
                    path=_loggable(path),
                )
                return
            request.write(payload)
            request.finish()

        d.addCallbacks(
            lambda result: self._succeed(request, method, path, result),
            lambda failure: self._fail(request, method, path, failure),
        )
        d.addCallback(write)
        d.addErrback(lambda f: _log.failure("writing a REST answer failed", failure=f))

    def _succeed(self, request: server.Request, method: str, path: str, result: Any) -> bytes:
        if result is None:
            return self._respond(request, method, path, 200, None)
        try:
            payload = json.dumps(result, ensure_ascii=False, allow_nan=False).encode("utf-8")
        except (TypeError, ValueError):
            return self._fail(request, method, path, Failure())
        return self._respond(request, method, path, 200, payload)

    def _fail(
        self,
        request: server.Request,
        method: str,
        path: str,
        failure: Failure,
    ) -> bytes:
        code, body = error_response(failure.value)
        if code >= 500:
            # The traceback goes to the log only; the client gets a generic message.
            _log.failure(
                "{method} /rest-api{path} failed",
                failure=failure,
                method=method,
                path=_loggable(path),
            )
        payload = json.dumps(body, ensure_ascii=False).encode("utf-8")
        return self._respond(request, method, path, code, payload)

    def _respond(
        self,
        request: server.Request,
        method: str,
        path: str,
        code: int,
        payload: bytes | None,
    ) -> bytes:
        request.setResponseCode(code)
        cors(request, self._access, methods=ALLOW_METHODS, headers=ALLOW_HEADERS)
        if payload is None:
            # An empty answer must not get twisted.web's text/html default.
            request.defaultContentType = None
        else:
            request.setHeader(b"Content-Type", b"application/json")
        if code != 204:
            request.setHeader(b"Content-Length", b"%d" % len(payload or b""))
        _log.info(
            "{method} /rest-api{path} -> {code}",
            method=method,
            path=_loggable(path),
            code=code,
        )
        return payload or b""


class LimitedRequest(server.Request):
    """A request whose body is refused (413, connection closed) as soon as it is known to
    exceed ``max_body``: from Content-Length, or while reading a chunked body; it is never
    spooled to a temporary file and its handler never runs."""

    max_body = MAX_BODY
    _refused = False
    _received = 0

    def __init__(self, *args, **kwargs) -> None:
        # The API takes JSON: never parse a POST body as a form (Twisted does it through
        # the email package's header parser, about 8 % of a /call/startup).
        kwargs["parsePOSTFormSubmission"] = False
        super().__init__(*args, **kwargs)

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > self.max_body:
            self.requestHeaders.removeHeader(b"expect")  # no "100 Continue" after the 413
            self._refuse()
        super().gotLength(min(length if length is not None else self.max_body, self.max_body))

    def handleContentChunk(self, data: bytes) -> None:
        self._received += len(data)
        if self._received > self.max_body:
            self._refuse()
        if not self._refused:
            super().handleContentChunk(data)

    def process(self) -> None:
        if not self._refused:
            super().process()

    def _refuse(self) -> None:
        if self._refused:
            return
        self._refused = True
        payload = json.dumps(error_body(_too_large(self.max_body).message)).encode("utf-8")
        transport = self.channel.transport
        transport.write(b"HTTP/1.1 413 Request Entity Too Large\r\nContent-Type: application/json"
                        b"\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                        % (len(payload), payload))
        transport.loseConnection()
        # The body is refused before requestReceived: method and uri are not set yet; the
        # request line is still the channel's.  The query is left out of the log.
        method = getattr(self.channel, "_command", self.method)
        uri = getattr(self.channel, "_path", self.uri)
        _log.info("{method} {path} -> 413 (body over {limit} bytes, not read)",
                  method=method.decode("ascii", "replace"),
                  path=_loggable(uri.split(b"?")[0].decode("utf-8", "replace")),
                  limit=self.max_body)


class RestSite(server.Site):
    """The Site for the REST API and the pages: bodies capped at ``max_body`` before they are
    read; idle connections closed after ``IDLE_TIMEOUT`` s (``timeout=``); no access log (the
    REST layer logs one line per request itself)."""

    def __init__(self, root, max_body: int = MAX_BODY, **kwargs: Any) -> None:
        kwargs.setdefault("timeout", IDLE_TIMEOUT)
        super().__init__(root, **kwargs)
        self.requestFactory = type("Request", (LimitedRequest,), {"max_body": max_body})

    def log(self, request: server.Request) -> None:
        pass


def _require_json(request: server.Request) -> None:
    """415 unless the body is declared JSON: a cross-origin page can only send text/plain,
    form data or multipart without a CORS preflight (no CSRF through simple requests)."""
    declared = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
    if declared != JSON_TYPE:
        raise ApiError(415, "Content-Type must be application/json")


def parse_body(raw: bytes) -> dict:
    """The JSON object in ``raw``; an empty body is ``{}``."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("body is not UTF-8") from None
    if not text.strip():
        return {}
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise BadRequest("body is nested too deeply") from None
    except ValueError as exc:
        raise BadRequest(f"body is not JSON: {_json_reason(exc)}") from None
    if not isinstance(value, dict):
        raise BadRequest("body must be a JSON object")
    try:  # a \ud800 escape alone is no character: nothing could store or echo it as UTF-8
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest("body holds a lone surrogate escape (\\ud800-\\udfff)") from None
    return value


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _json_reason(exc: ValueError) -> str:
    # Only the position: the text around it may be the SIP password.
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at line {exc.lineno} column {exc.colno}"
    return str(exc)


def _route_path(postpath: list[bytes]) -> str:
    path = "/" + "/".join(segment.decode("utf-8", "replace") for segment in postpath)
    return path.rstrip("/") or "/"


def _unknown_method(path: str) -> ApiError:
    return ApiError(404, f"unknown REST method {_loggable(path)}")


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"body is larger than {limit} bytes")


def _loggable(path: str) -> str:
    """``path`` on one line: control characters escaped, length capped."""
    escaped = "".join(c if c.isprintable() else repr(c)[1:-1] for c in path)
    if len(escaped) > _MAX_LOGGED_PATH:
        escaped = escaped[:_MAX_LOGGED_PATH] + "..."
    return escaped
