"""The REST router over real HTTP/1.1 bytes: routing, bodies, CORS, async answers, errors, logs."""
from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer

from sipgw.calls import CallError
from sipgw.calls import Conflict as CallConflict
from sipgw.calls import NotFound as CallNotFound
from sipgw.policy import AccessPolicy
from sipgw.rest.errors import (
    INTERNAL_ERROR,
    ApiError,
    BadRequest,
    Conflict,
    NotFound,
    error_response,
)
from sipgw.rest.router import MAX_BODY, RestResource, Router, parse_body

CORS_HEADERS = {
    "access-control-allow-methods": "POST, OPTIONS",
    "access-control-allow-headers": "Authorization, Content-Type",
}


class ScriptedApi:
    """One route, ``/do``, that records each body and answers with what ``behaviour`` does."""

    router = Router()

    def __init__(self, behaviour=lambda request, body: {"got": body}) -> None:
        self.behaviour = behaviour
        self.bodies: list[dict] = []
        self.requests: list = []

    @router.route("/do")
    def do(self, request, body):
        self.bodies.append(body)
        self.requests.append(request)
        return self.behaviour(request, body)


class AwaitingApi:
    """An ``async def`` route that answers once the test fires ``gate``."""

    router = Router()

    def __init__(self) -> None:
        self.gate: defer.Deferred = defer.Deferred()

    @router.route("/wait")
    async def wait(self, request, body):
        value = await self.gate
        return {"awaited": value, "body": body}


def raising(exc: BaseException):
    def behaviour(request, body):
        raise exc

    return behaviour


@pytest.fixture
def api():
    return ScriptedApi()


@pytest.fixture
def client(client_for, api):
    return client_for(RestResource(api))


# --- answers -------------------------------------------------------------------------------


def test_json_answer(client, api):
    """A handler's return value is sent as 200 application/json."""
    response = client.post("/do", {"callee": "bob", "n": [1, 2]})
    assert response.code == 200
    assert response.json() == {"got": {"callee": "bob", "n": [1, 2]}}


def test_none_is_an_empty_200(client_for):
    """A handler returning None answers 200 with an empty body and no content type (WCS 'accepted')."""
    client = client_for(RestResource(ScriptedApi(lambda request, body: None)))
    response = client.post("/do", {"a": 1})
    assert (response.code, response.body) == (200, b"")
    assert response.headers["content-length"] == "0"
    assert "content-type" not in response.headers


def test_non_ascii_answer_is_utf8(client_for):
    """JSON answers are UTF-8 on the wire."""
    client = client_for(RestResource(ScriptedApi(lambda request, body: {"name": "Zoë ☎"})))
    response = client.post("/do")
    assert response.body == '{"name": "Zoë ☎"}'.encode("utf-8")


@pytest.mark.parametrize("raw", [b"", b"  \r\n\t "], ids=["empty", "whitespace"])
def test_empty_body_is_an_empty_object(client, api, raw):
    """An empty (or blank) body reaches the handler as {}."""
    assert client.post("/do", raw=raw).json() == {"got": {}}
    assert api.bodies == [{}]


def test_chunked_body(client, api):
    """A chunked request body is read like any other."""
    exchange = client.send("POST", "/do", b'{"a": "b"}', chunked=True)
    assert exchange.response.json() == {"got": {"a": "b"}}


def test_handler_sees_the_request(client, api):
    """The handler gets the twisted.web request, e.g. to read a header."""
    client.post("/do", headers={"X-Trace": "t-1"})
    assert api.requests[0].getHeader(b"x-trace") == b"t-1"


def test_a_post_body_is_never_parsed_as_a_form(client, api, monkeypatch):
    """A POST body is JSON only: Twisted's form parsing (the Content-Type through the email
    package's header parser, on every POST) never runs."""
    from twisted.web import http
    parsed = []
    monkeypatch.setattr(http, "_parseContentType", lambda line: parsed.append(line) or b"")
    assert client.post("/do", {"a": "b"}).json() == {"got": {"a": "b"}}
    assert client.post("/do", raw=b"a=b", headers={
        "Content-Type": "application/x-www-form-urlencoded"}).code == 415
    assert parsed == [] and api.requests[0].args == {}


@pytest.mark.parametrize("path", ["/do/", "/do?x=1"])
def test_trailing_slash_and_query_are_ignored(client, path):
    """A trailing slash or a query string still reaches the route."""
    assert client.post(path).code == 200


def test_unknown_method_is_404(client):
    """An unknown REST path is a 404 naming the path."""
    response = client.post("/x/y", {})
    assert response.code == 404
    assert response.json() == {"error": "unknown REST method /x/y", "field": None}


def test_rest_root_is_404(client):
    """POST to /rest-api/ itself is an unknown method."""
    assert client.post("/").json()["error"] == "unknown REST method /"


def test_unknown_path_with_control_characters_is_escaped(client, logs):
    """A percent-encoded newline in the path comes back escaped and is logged on one line."""
    response = client.post("/x%0Ainjected")
    assert response.json()["error"] == "unknown REST method /x\\ninjected"
    (line,) = logs.request_lines()
    assert "\n" not in line


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "HEAD"])
def test_other_http_methods_are_405(client, api, method):
    """Anything but POST and OPTIONS on a route is 405 with an Allow header; the handler never runs."""
    response = client.send(method, "/do").response
    assert response.code == 405
    assert response.headers["allow"] == "POST, OPTIONS"
    if method != "HEAD":
        assert response.json() == {
            "error": f"{method} not allowed: /do takes POST",
            "field": None,
        }
    assert api.bodies == []


class ListingApi:
    """``/list``, served as GET too (like every WCS ``find_all``)."""

    router = Router()

    def __init__(self) -> None:
        self.bodies: list[dict] = []

    @router.route("/list", get=True)
    def listing(self, request, body):
        self.bodies.append(body)
        return [body]


def test_get_route_reads_a_get_as_an_empty_body(client_for):
    """A route declared get=True answers GET (as the WebSDK sends it: no body, no
    Content-Type) with the handler run on {}; POST still works."""
    api = ListingApi()
    client = client_for(RestResource(api))
    response = client.send("GET", "/list", headers={"Content-Type": None}).response
    assert (response.code, response.json()) == (200, [{}])
    assert client.post("/list", {"a": 1}).json() == [{"a": 1}]
    refused = client.send("PUT", "/list").response
    assert (refused.code, refused.headers["allow"]) == (405, "GET, POST, OPTIONS")
    assert refused.json()["error"] == "PUT not allowed: /list takes GET or POST"
    assert api.bodies == [{}, {"a": 1}]


def test_every_find_all_serves_get():
    """The WebSDK's findAll() sends GET: every WCS find_all route serves it, nothing else does."""
    from sipgw.rest.calls import CallApi
    from sipgw.rest.push import PushApi
    from sipgw.rest.recorder import RecorderApi
    from sipgw.rest.streams import StreamApi
    served = [p for cls in (CallApi, StreamApi, PushApi, RecorderApi)
              for p in cls.router.get_paths(cls)]
    assert sorted(served) == ["/call/find_all", "/push/find_all", "/recorder/find_all",
                              "/stream/find_all"]


# --- CORS ----------------------------------------------------------------------------------

PAGE = "http://127.0.0.1:5173"  # a page served from this machine: a loopback origin


def test_preflight(client, api):
    """OPTIONS from a loopback page is a 204 CORS preflight naming that origin, no body."""
    response = client.send(
        "OPTIONS",
        "/do",
        headers={"Origin": PAGE, "Access-Control-Request-Method": "POST"},
    ).response
    assert response.code == 204
    assert response.body == b""
    for name, value in {**CORS_HEADERS, "access-control-allow-origin": PAGE}.items():
        assert response.headers[name] == value
    assert "content-length" not in response.headers
    assert "content-type" not in response.headers
    assert api.bodies == []


def test_preflight_on_unknown_path(client):
    """A preflight succeeds for any path, so the page can read the 404 of the real POST."""
    assert client.send("OPTIONS", "/nope", headers={"Origin": PAGE}).response.code == 204


@pytest.mark.parametrize("origin", ["http://pages.test", "http://127.0.0.1.evil.test",
                                    "null", "http://localhost.evil.test:8081"])
def test_no_cors_for_other_origins(client, origin):
    """A page from anywhere but this machine gets no CORS header, on the preflight or the POST."""
    preflight = client.send("OPTIONS", "/do", headers={"Origin": origin}).response
    answer = client.post("/do", headers={"Origin": origin})
    for response in (preflight, answer):
        assert not any(h.startswith("access-control-") for h in response.headers)


@pytest.mark.parametrize("origin", ["http://localhost:8081", "https://[::1]", "http://127.0.0.1"])
def test_loopback_origins_by_default(client, origin):
    """Pages served from this machine (127.0.0.1, localhost, [::1], any port) get CORS."""
    assert client.post("/do", headers={"Origin": origin}).headers[
        "access-control-allow-origin"] == origin


def test_configured_origin(client_for):
    """Access-Control-Allow-Origin comes from the rest_cors_origin list, echoing the origin."""
    access = AccessPolicy(origins="https://pages.example, https://other.example")
    client = client_for(RestResource(ScriptedApi(), access=access))
    response = client.post("/do", headers={"Origin": "https://other.example"})
    assert response.headers["access-control-allow-origin"] == "https://other.example"
    assert "access-control-allow-origin" not in client.post(
        "/do", headers={"Origin": PAGE}).headers
    preflight = client.send("OPTIONS", "/do", headers={"Origin": "https://pages.example"}).response
    assert preflight.headers["access-control-allow-origin"] == "https://pages.example"


@pytest.mark.parametrize(
    "behaviour, path, code",
    [
        (lambda request, body: {"ok": True}, "/do", 200),
        (lambda request, body: None, "/do", 200),
        (raising(BadRequest("no", "f")), "/do", 400),
        (None, "/unknown", 404),
        (raising(RuntimeError("bug")), "/do", 500),
    ],
    ids=["200", "200-empty", "400", "404", "500"],
)
def test_cors_headers_on_every_answer(client_for, behaviour, path, code):
    """Every answer to an allowed origin, error or not, carries the CORS headers."""
    client = client_for(RestResource(ScriptedApi(behaviour)))
    response = client.post(path, headers={"Origin": PAGE})
    assert response.code == code
    for name, value in {**CORS_HEADERS, "access-control-allow-origin": PAGE}.items():
        assert response.headers[name] == value


# --- malformed bodies ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, message",
    [
        (b"{callee: bob}", "body is not JSON: Expecting property name enclosed in double quotes"),
        (b'{"a": 1', "body is not JSON: Expecting ',' delimiter"),
        (b'{"a": NaN}', "body is not JSON: NaN is not JSON"),
        (b'{"a": Infinity}', "body is not JSON: Infinity is not JSON"),
        (b"[1, 2]", "body must be a JSON object"),
        (b'"text"', "body must be a JSON object"),
        (b"42", "body must be a JSON object"),
        (b"null", "body must be a JSON object"),
        (b'{"callee": "\xff"}', "body is not UTF-8"),
        ('{"a": 1}'.encode("utf-16"), "body is not UTF-8"),
        (b"\xef\xbb\xbf{}", "body is not JSON: Unexpected UTF-8 BOM"),
        (b"[" * 60000, "body is nested too deeply"),
        (b'{"options": {"x": "\\ud800x"}}', "body holds a lone surrogate escape"),
    ],
    ids=[
        "bare-words",
        "truncated",
        "nan",
        "infinity",
        "array",
        "string",
        "number",
        "null",
        "latin1",
        "utf16",
        "bom",
        "deep",
        "lone-surrogate",  # found by bench/fuzz.py: echoed back, it was a 500
    ],
)
def test_malformed_body_is_400(client, api, raw, message):
    """A body that is not a UTF-8 JSON object is a 400 with field null; the handler never runs."""
    response = client.post("/do", raw=raw)
    assert response.code == 400
    body = response.json()
    assert body["error"].startswith(message)
    assert body["field"] is None
    assert api.bodies == []


def test_json_error_never_quotes_the_body(client):
    """The 400 for bad JSON names a position, not the text (which may hold the password)."""
    response = client.post("/do", raw=b'{"sipPassword": hunter2}')
    assert "hunter2" not in response.body.decode()


@given(st.binary(max_size=200))
def test_parse_body_raises_only_bad_request(raw):
    """Any bytes give a dict or BadRequest, nothing else."""
    try:
        assert isinstance(parse_body(raw), dict)
    except BadRequest:
        pass


# --- size limit ----------------------------------------------------------------------------


def padded(size: int) -> bytes:
    """A JSON object of exactly ``size`` bytes."""
    raw = b'{"pad": ""}'
    return raw[:-2] + b"x" * (size - len(raw)) + raw[-2:]


def test_body_at_the_limit_is_accepted(client):
    """A body of exactly 64 KiB is read."""
    assert client.post("/do", raw=padded(MAX_BODY)).code == 200


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_body_over_the_limit_is_413(client, api, chunked):
    """A body over 64 KiB is a 413, whether its length was declared or not."""
    exchange = client.send("POST", "/do", padded(MAX_BODY + 1), chunked=chunked)
    assert exchange.response.code == 413
    assert exchange.response.json() == {
        "error": f"body is larger than {MAX_BODY} bytes",
        "field": None,
    }
    assert api.bodies == []


def test_limit_is_a_setting(client_for):
    """max_body sets the limit."""
    client = client_for(RestResource(ScriptedApi(), max_body=16))
    assert client.post("/do", raw=padded(16)).code == 200
    assert client.post("/do", raw=padded(17)).code == 413


# --- deferred and coroutine handlers -------------------------------------------------------


def test_deferred_answer(client_for):
    """A handler's Deferred holds the answer back until it fires."""
    pending = defer.Deferred()
    client = client_for(RestResource(ScriptedApi(lambda request, body: pending)))
    exchange = client.send("POST", "/do")
    assert not exchange.done
    pending.callback({"late": True})
    assert exchange.response.code == 200
    assert exchange.response.json() == {"late": True}


def test_deferred_none_is_an_empty_200(client_for):
    """A Deferred firing None is an empty 200."""
    client = client_for(RestResource(ScriptedApi(lambda request, body: defer.succeed(None))))
    response = client.post("/do")
    assert (response.code, response.body) == (200, b"")


def test_async_def_handler(client_for):
    """An async def route is run with ensureDeferred and answers when its await completes."""
    api = AwaitingApi()
    client = client_for(RestResource(api))
    exchange = client.send("POST", "/wait", b'{"x": 1}')
    assert not exchange.done
    api.gate.callback("opened")
    assert exchange.response.json() == {"awaited": "opened", "body": {"x": 1}}


def test_async_error_is_mapped(client_for):
    """A coroutine raising a typed error gets the same mapping as a plain handler."""

    async def conflict(request, body):
        raise CallConflict("callId already in use")

    client = client_for(RestResource(ScriptedApi(conflict)))
    response = client.post("/do")
    assert response.code == 409
    assert response.json() == {"error": "callId already in use", "field": None}


def test_failed_deferred_is_500_without_traceback(client_for, logs):
    """A Deferred failing with an unexpected error is a generic 500; the traceback is only logged."""
    pending = defer.Deferred()
    client = client_for(RestResource(ScriptedApi(lambda request, body: pending)))
    exchange = client.send("POST", "/do")
    pending.errback(ZeroDivisionError("detail only for the log"))
    assert exchange.response.code == 500
    assert exchange.response.json() == {"error": INTERNAL_ERROR, "field": None}
    (failure,) = logs.failures()
    assert failure.check(ZeroDivisionError)


def test_client_gone_before_async_answer(client_for, logs):
    """If the client disconnects before a Deferred fires, the answer is dropped quietly."""
    pending = defer.Deferred()
    client = client_for(RestResource(ScriptedApi(lambda request, body: pending)))
    exchange = client.send("POST", "/do")
    exchange.disconnect()
    pending.callback({"late": True})
    assert exchange.transport.value() == b""
    assert logs.failures() == []
    assert "POST /rest-api/do: client went away before the answer" in logs.request_lines()


# --- error mapping -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "exc, code, body",
    [
        (BadRequest("callee is required", "callee"), 400, {"error": "callee is required", "field": "callee"}),
        (NotFound("Call not found"), 404, {"error": "Call not found", "field": None}),
        (Conflict("in use", "callId"), 409, {"error": "in use", "field": "callId"}),
        (ApiError(418, "teapot"), 418, {"error": "teapot", "field": None}),
        (CallError("bad call"), 400, {"error": "bad call", "field": None}),
        (CallNotFound("Call not found"), 404, {"error": "Call not found", "field": None}),
        (CallConflict(), 409, {"error": "Conflict", "field": None}),
    ],
    ids=["bad-request", "not-found", "conflict", "api-error", "call-error", "call-not-found", "call-conflict-no-message"],
)
def test_typed_errors_map_to_status(client_for, exc, code, body):
    """ApiError subclasses and sipgw.calls.CallError subclasses map to their code and message."""
    client = client_for(RestResource(ScriptedApi(raising(exc))))
    response = client.post("/do")
    assert response.code == code
    assert response.json() == body


def test_unexpected_error_is_a_generic_500(client_for, logs):
    """Any other exception is a 500 that says nothing; the traceback goes to the log only."""
    client = client_for(RestResource(ScriptedApi(raising(KeyError("internal-detail")))))
    response = client.post("/do")
    assert response.code == 500
    assert response.json() == {"error": INTERNAL_ERROR, "field": None}
    assert b"internal-detail" not in response.body
    assert b"Traceback" not in response.body
    (failure,) = logs.failures()
    assert "internal-detail" in failure.getTraceback()
    assert "in do" in failure.getTraceback()  # the handler's frame was captured


def test_unserialisable_answer_is_500(client_for, logs):
    """A handler returning something JSON cannot encode is a 500, logged."""
    client = client_for(RestResource(ScriptedApi(lambda request, body: {"when": object()})))
    assert client.post("/do").code == 500
    (failure,) = logs.failures()
    assert failure.check(TypeError)


def test_error_response_for_unknown_exception():
    """error_response turns anything unexpected into a 500 with the generic message."""
    assert error_response(ValueError("x")) == (500, {"error": INTERNAL_ERROR, "field": None})


# --- logging -------------------------------------------------------------------------------


def test_one_log_line_per_request(client, logs):
    """Each request logs exactly one line: method, path, status."""
    client.post("/do", {"a": 1})
    client.post("/missing")
    client.send("OPTIONS", "/do")
    assert logs.request_lines() == [
        "POST /rest-api/do -> 200",
        "POST /rest-api/missing -> 404",
        "OPTIONS /rest-api/do -> 204",
    ]


@pytest.mark.parametrize(
    "behaviour",
    [lambda request, body: None, raising(BadRequest("nope", "callee")), raising(RuntimeError("bug"))],
    ids=["200", "400", "500"],
)
def test_body_is_never_logged(client_for, logs, behaviour):
    """No log event, field or traceback holds anything from the body."""
    client = client_for(RestResource(ScriptedApi(behaviour)))
    client.post("/do", {"sipPassword": "pw-3f9a7c", "callee": "callee-77e1"})
    text = logs.everything()
    assert logs.events
    assert "pw-3f9a7c" not in text
    assert "callee-77e1" not in text


# --- route declaration ---------------------------------------------------------------------


def test_route_declared_twice():
    """A Router refuses the same path twice."""
    router = Router()
    router.route("/a/b")(lambda self, request, body: None)
    with pytest.raises(ValueError, match="declared twice"):
        router.route("/a/b")


@pytest.mark.parametrize("path", ["a/b", "/a/b/", "/a//b"])
def test_route_path_shape(path):
    """A route path is /segment/segment, no trailing or doubled slash."""
    with pytest.raises(ValueError, match="route path"):
        Router().route(path)


def test_two_apis_on_one_path():
    """Two API objects cannot serve the same path."""
    with pytest.raises(ValueError, match="/do served by two"):
        RestResource(ScriptedApi(), ScriptedApi())


def test_object_without_router():
    """An object declaring no Router is refused at construction."""
    with pytest.raises(TypeError, match="declares no Router"):
        RestResource(object())


def test_several_apis_and_inherited_routes(client_for):
    """Routes of several objects are served together; a subclass inherits and may override them."""

    class LouderApi(ScriptedApi):
        def do(self, request, body):
            return {"loud": True}

    resource = RestResource(LouderApi(), AwaitingApi())
    assert resource.paths == ["/do", "/wait"]
    assert client_for(resource).post("/do").json() == {"loud": True}


def test_error_body_is_valid_json_for_any_message():
    """Error bodies stay valid JSON whatever the message holds."""
    code, body = error_response(BadRequest('quote " and \\ backslash', "f"))
    assert json.loads(json.dumps(body)) == body
