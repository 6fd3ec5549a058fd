"""The WCS /call/* REST methods over real HTTP/1.1 bytes, against an in-memory call manager."""
from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sipgw.calls import CallError, CallRequest, CallStatus, Conflict, NotFound
from sipgw.rest.calls import CALL_NOT_FOUND, CallApi, parse_call_request
from sipgw.rest.errors import BadRequest
from sipgw.rest.router import RestResource

PASSWORD = "pw-Zq81!x"

# What the WCS SIP-as-RTMP page sends: every value a string, empty fields as "".
PAGE_BODY = {
    "toStream": "call_stream1",
    "hasAudio": "true",
    "hasVideo": "false",
    "callId": "v4pz6k1ujm",
    "sipLogin": "alice",
    "sipAuthenticationName": "alice-auth",
    "sipPassword": PASSWORD,
    "sipPort": "5070",
    "sipDomain": "sip.example.com",
    "sipOutboundProxy": "",
    "appKey": "defaultApp",
    "sipRegisterRequired": "true",
    "callee": "bob",
}
MINIMAL_BODY = {"callee": "bob", "sipLogin": "alice", "sipDomain": "sip.example.com"}


class RecordingCallManager:
    """Holds calls in a dict, records what it was asked, and refuses like the real manager would."""

    def __init__(self) -> None:
        self.started: list[CallRequest] = []
        self.calls: dict[str, dict] = {}
        self.terminated: list[str] = []
        self.dtmf: list[tuple[str, str, str]] = []
        self.finds: list[tuple[str | None, str | None]] = []

    def add_call(self, call_id: str, status: str = "ESTABLISHED", **extra) -> None:
        self.calls[call_id] = {"callId": call_id, "status": status, "callee": "bob", **extra}

    def startup(self, request: CallRequest) -> None:
        if request.call_id in self.calls:
            raise Conflict(f"Call with callId {request.call_id} already exists")
        self.started.append(request)
        self.add_call(request.call_id, "NEW")

    def find(self, call_id: str | None = None, status: str | None = None) -> list[dict]:
        self.finds.append((call_id, status))
        return [
            call
            for call in self.calls.values()
            if (call_id is None or call["callId"] == call_id)
            and (status is None or call["status"] == status)
        ]

    def terminate(self, call_id: str) -> None:
        if call_id not in self.calls:
            raise NotFound(CALL_NOT_FOUND)
        self.terminated.append(call_id)

    def send_dtmf(self, call_id: str, dtmf: str, kind: str) -> None:
        if call_id not in self.calls:
            raise NotFound(CALL_NOT_FOUND)
        self.dtmf.append((call_id, dtmf, kind))

    def hold(self, call_id: str, held: bool = True, for_transfer: bool = False) -> None:
        if call_id not in self.calls:
            raise NotFound(CALL_NOT_FOUND)
        wanted, now = ("ESTABLISHED", "HOLD") if held else ("HOLD", "ESTABLISHED")
        if self.calls[call_id]["status"] != wanted:
            raise Conflict(f"call {call_id} is not {wanted}")
        self.calls[call_id].update(status=now, holdForTransfer=held and for_transfer)

    def transfer(self, call_id: str, target: str) -> None:
        if call_id not in self.calls:
            raise NotFound(CALL_NOT_FOUND)
        if self.calls[call_id]["status"] not in ("ESTABLISHED", "HOLD"):
            raise Conflict(f"call {call_id} is not established")
        self.calls[call_id].update(target=target, transferStatus="PENDING")

    def active_calls(self) -> list[CallRequest]:
        ended = {s.value for s in CallStatus if s.ended}
        return [r for r in self.started if self.calls[r.call_id]["status"] not in ended]


class BrokenCallManager(RecordingCallManager):
    """Fails every startup with an unexpected error, as a bug in the user agent would."""

    def startup(self, request: CallRequest) -> None:
        raise RuntimeError("user agent exploded")


@pytest.fixture
def manager():
    return RecordingCallManager()


@pytest.fixture
def client(client_for, manager):
    return client_for(RestResource(CallApi(manager)))


def with_(**changes):
    """PAGE_BODY with some fields changed; a value of ... removes the field."""
    body = dict(PAGE_BODY)
    for name, value in changes.items():
        if value is ...:
            body.pop(name, None)
        else:
            body[name] = value
    return body


# --- /call/startup -------------------------------------------------------------------------


def test_startup_from_the_wcs_page(client, manager):
    """The body the WCS page sends is accepted with an empty 200 and reaches the manager typed."""
    response = client.post("/call/startup", PAGE_BODY)
    assert (response.code, response.body) == (200, b"")
    assert manager.started == [
        CallRequest(
            call_id="v4pz6k1ujm",
            callee="bob",
            sip_login="alice",
            sip_domain="sip.example.com",
            sip_password=PASSWORD,
            sip_auth_name="alice-auth",
            sip_outbound_proxy="",
            sip_port=5070,
            sip_register_required=True,
            to_stream="call_stream1",
            has_audio=True,
            has_video=False,
            app_key="defaultApp",
            visible_name="",
        )
    ]


def test_startup_defaults():
    """Only callee, sipLogin and sipDomain are needed; the rest take WCS defaults."""
    request = parse_call_request(dict(MINIMAL_BODY, callId="c1"))
    assert (request.sip_port, request.has_audio, request.has_video) == (5060, True, True)
    assert request.sip_register_required is False
    assert (request.sip_password, request.sip_auth_name, request.sip_outbound_proxy) == ("", "", "")
    assert request.to_stream == "c1"


def test_startup_without_call_id_generates_one(client, manager):
    """A missing callId is generated (uuid-like), used as the stream name, and the answer is empty."""
    response = client.post("/call/startup", with_(callId=..., toStream=...))
    assert (response.code, response.body) == (200, b"")
    (request,) = manager.started
    assert len(request.call_id) == 36 and request.call_id.count("-") == 4
    assert request.to_stream == request.call_id


@pytest.mark.parametrize("value", ["", None], ids=["empty", "null"])
def test_to_stream_defaults_to_call_id(value):
    """An empty or null toStream means the stream is named after the callId."""
    assert parse_call_request(with_(toStream=value)).to_stream == "v4pz6k1ujm"


def test_unknown_fields_are_ignored():
    """Fields sipgw does not know (other WCS pages send more) are ignored."""
    assert parse_call_request(dict(MINIMAL_BODY, custom={"x": 1}, isMsrp=False)).callee == "bob"


@pytest.mark.parametrize(
    "value, expected",
    [(True, True), (False, False), ("true", True), ("false", False), ("TRUE", True), ("False", False)],
)
@pytest.mark.parametrize("field, attribute", [
    ("hasAudio", "has_audio"),
    ("hasVideo", "has_video"),
    ("sipRegisterRequired", "sip_register_required"),
])
def test_booleans(field, attribute, value, expected):
    """Booleans arrive as JSON true/false or as the strings "true"/"false"."""
    assert getattr(parse_call_request(with_(**{"hasVideo": "true", field: value})),
                   attribute) is expected


@pytest.mark.parametrize("audio, video", [("false", "false"), (False, "false"), (False, False)])
def test_neither_audio_nor_video_is_400(client, manager, audio, video):
    """hasAudio and hasVideo both false would make a stream carrying nothing: a 400 naming
    both fields; nothing is started."""
    response = client.post("/call/startup", with_(hasAudio=audio, hasVideo=video))
    assert response.code == 400
    assert response.json() == {"error": "hasAudio and hasVideo are both false: a call needs "
                               "audio or video", "field": "hasAudio"}
    assert manager.started == []


@pytest.mark.parametrize("field", ["hasAudio", "hasVideo", "sipRegisterRequired"])
@pytest.mark.parametrize("value", ["maybe", "yes", "1", 1, 0, [], {}], ids=repr)
def test_bad_boolean_is_400(client, manager, field, value):
    """Anything but true/false for a boolean field is a 400 naming the field."""
    response = client.post("/call/startup", with_(**{field: value}))
    assert response.code == 400
    assert response.json() == {"error": f"{field} must be true or false", "field": field}
    assert manager.started == []


@pytest.mark.parametrize(
    "value, expected", [("5070", 5070), (5070, 5070), ("1", 1), (65535, 65535), ("", 5060), (None, 5060)]
)
def test_sip_port(value, expected):
    """sipPort is an integer or a digit string; empty means 5060."""
    assert parse_call_request(with_(sipPort=value)).sip_port == expected


@pytest.mark.parametrize(
    "value", ["0", 0, "65536", 70000, "-1", -1, "50 60", " 5060", "5060.0", 5060.0, True, "abc", "٥٠٦٠", []],
    ids=repr,
)
def test_bad_sip_port_is_400(client, value):
    """sipPort outside 1-65535 or not a whole number is a 400 naming sipPort."""
    response = client.post("/call/startup", with_(sipPort=value))
    assert response.code == 400
    assert response.json() == {"error": "sipPort must be an integer from 1 to 65535", "field": "sipPort"}


@pytest.mark.parametrize("field", ["callee", "sipLogin", "sipDomain"])
@pytest.mark.parametrize("value", [..., "", None], ids=["absent", "empty", "null"])
def test_required_field_missing_is_400(client, manager, field, value):
    """callee, sipLogin and sipDomain are required: missing, empty or null is a 400 naming it."""
    response = client.post("/call/startup", with_(**{field: value}))
    assert response.code == 400
    assert response.json() == {"error": f"{field} is required", "field": field}
    assert manager.started == []


STRING_FIELDS = [
    "callId", "callee", "sipLogin", "sipDomain", "sipAuthenticationName", "sipPassword",
    "sipOutboundProxy", "toStream", "appKey", "visibleName",
]


@pytest.mark.parametrize("field", STRING_FIELDS)
@pytest.mark.parametrize("value", [5, True, ["bob"], {"a": "b"}], ids=["int", "bool", "list", "object"])
def test_wrong_type_is_400(client, field, value):
    """A string field given a number, boolean, list or object is a 400 naming it."""
    response = client.post("/call/startup", with_(**{field: value}))
    assert response.code == 400
    assert response.json() == {"error": f"{field} must be a string", "field": field}


TOKEN_FIELDS = ["callId", "callee", "sipLogin", "sipDomain", "sipAuthenticationName", "toStream", "appKey"]


@pytest.mark.parametrize("field", TOKEN_FIELDS)
@pytest.mark.parametrize(
    "value, message",
    [
        ("bob\r\nX-Injected: 1", "must not contain control characters (CR, LF, ...)"),
        ("bob\n", "must not contain control characters (CR, LF, ...)"),
        ("bob\x00", "must not contain control characters (CR, LF, ...)"),
        ("bob smith", "must not contain spaces"),
        ("bob\u00a0", "must not contain control characters (CR, LF, ...)"),
        ("<sip:bob@x>", "must not contain any of < >"),
        ('bob"', 'must not contain any of "'),
    ],
    ids=["crlf", "lf", "nul", "space", "nbsp", "angle", "quote"],
)
def test_header_breaking_characters_are_400(client, manager, field, value, message):
    """Values that would break a SIP header (CR, LF, spaces, <>, quotes) are a 400 naming the field."""
    response = client.post("/call/startup", with_(**{field: value}))
    assert response.code == 400
    body = response.json()
    assert body["field"] == field
    assert body["error"] == f"{field} {message}"
    assert manager.started == []


@pytest.mark.parametrize("field", ["callId", "toStream"])
@pytest.mark.parametrize("value", ["../etc/passwd", "a\\b"])
def test_stream_names_have_no_path_separators(field, value):
    """callId and toStream become file names and RTMP paths, so / and \\ are refused."""
    with pytest.raises(BadRequest) as refused:
        parse_call_request(with_(**{field: value}))
    assert refused.value.field == field


@pytest.mark.parametrize(
    "field, limit",
    [("callId", 128), ("callee", 256), ("sipLogin", 128), ("sipDomain", 253),
     ("sipAuthenticationName", 128), ("sipPassword", 256), ("toStream", 128), ("appKey", 128),
     ("visibleName", 128)],
)
def test_length_caps(field, limit):
    """Each string field has a length cap; at the cap it passes, one over is a 400 naming it."""
    fill = "a" * limit if field != "sipDomain" else ("a" * 62 + ".") * 4 + "a" * (limit - 252)
    assert len(fill) == limit
    parse_call_request(with_(**{field: fill}))
    with pytest.raises(BadRequest) as refused:
        parse_call_request(with_(**{field: fill + "a"}))
    assert refused.value.field == field
    assert refused.value.message == f"{field} must be at most {limit} characters"


def test_visible_name_may_have_spaces():
    """visibleName is a display name: spaces and non-ASCII letters are fine."""
    assert parse_call_request(with_(visibleName="Zoë Smith")).visible_name == "Zoë Smith"


@pytest.mark.parametrize("value", ["Zoë <x>", 'a"b', "a\r\nb"])
def test_visible_name_refuses_header_breakers(value):
    """visibleName still refuses quotes, <> and control characters."""
    with pytest.raises(BadRequest) as refused:
        parse_call_request(with_(visibleName=value))
    assert refused.value.field == "visibleName"


@pytest.mark.parametrize("value", ["sip.example.com", "10.0.0.1", "::1", "[2001:db8::1]", "pbx_1.lan", "sip.example.com."])
def test_sip_domain_hosts(value):
    """sipDomain takes a host name, IPv4 or IPv6 address."""
    assert parse_call_request(with_(sipDomain=value)).sip_domain == value


@pytest.mark.parametrize("value", ["sip.example.com:5060", "a@b", "a;b", "-bad.example", "a..b", "[10.0.0.1]", "x" * 64 + ".com"])
def test_bad_sip_domain_is_400(client, value):
    """A sipDomain that is not a host (a port, user, parameter, bad label) is a 400 naming it."""
    response = client.post("/call/startup", with_(sipDomain=value))
    assert response.json() == {"error": "sipDomain must be a host name or IP address", "field": "sipDomain"}


@pytest.mark.parametrize(
    "value", ["proxy.example.com", "proxy.example.com:5080", "10.0.0.1:5060", "[2001:db8::1]:5060", "[::1]", "2001:db8::1",
              "sips:proxy.example.com", "proxy.example.com:5061;transport=tls", "sip:10.0.0.1;transport=TLS",
              "sips:[2001:db8::1]:5061;transport=tls"]
)
def test_outbound_proxy(value):
    """sipOutboundProxy takes host, host:port, or an IPv6 address with or without brackets and port,
    with a sip: or sips: prefix and ;transport=udp, tcp or tls."""
    assert parse_call_request(with_(sipOutboundProxy=value)).sip_outbound_proxy == value


@pytest.mark.parametrize(
    "value", ["proxy:99999", "proxy:", "proxy:0", ":5060", "pro xy", "<proxy>", "[::1]:x", "[::1", "[nothost]:5060", "a:b:c",
              "sips:proxy;transport=udp", "proxy;transport=sctp"]
)
def test_bad_outbound_proxy_is_400(client, value):
    """A sipOutboundProxy that is not host or host:port is a 400 naming it."""
    response = client.post("/call/startup", with_(sipOutboundProxy=value))
    assert response.code == 400
    assert response.json()["field"] == "sipOutboundProxy"


def test_duplicate_call_id_is_409(client, manager):
    """The manager's Conflict for a callId in use is a 409 with its message."""
    assert client.post("/call/startup", PAGE_BODY).code == 200
    response = client.post("/call/startup", PAGE_BODY)
    assert response.code == 409
    assert response.json() == {"error": "Call with callId v4pz6k1ujm already exists", "field": None}


def test_startup_while_shutting_down_is_503(client, manager, monkeypatch):
    """The user agent's Unavailable during a shutdown is a 503 with its message."""
    from sipgw.calls import Unavailable

    def refuse(request):
        raise Unavailable("The server is shutting down")
    monkeypatch.setattr(manager, "startup", refuse)
    response = client.post("/call/startup", PAGE_BODY)
    assert response.code == 503
    assert response.json() == {"error": "The server is shutting down", "field": None}


def test_call_request_repr_hides_password():
    """The parsed request's repr (what a log line would show) has no password."""
    assert PASSWORD not in repr(parse_call_request(PAGE_BODY))


@pytest.mark.parametrize(
    "manager_class, body, code",
    [
        (RecordingCallManager, PAGE_BODY, 200),
        (RecordingCallManager, with_(hasAudio="maybe"), 400),
        (RecordingCallManager, with_(sipPassword=12345), 400),
        (RecordingCallManager, with_(sipPassword="x" * 300), 400),
        (BrokenCallManager, PAGE_BODY, 500),
    ],
    ids=["accepted", "bad-field", "bad-password-type", "password-too-long", "manager-bug"],
)
def test_password_never_leaves(client_for, logs, manager_class, body, code):
    """Whatever the outcome, the password is in no response and no log event or traceback."""
    client = client_for(RestResource(CallApi(manager_class())))
    response = client.post("/call/startup", body)
    assert response.code == code
    secret = str(body["sipPassword"])
    assert secret.encode() not in response.body
    assert logs.events
    assert secret not in logs.everything()


def test_duplicate_startup_log_has_no_password(client, logs):
    """A 409 leaves no trace of the password either."""
    client.post("/call/startup", PAGE_BODY)
    client.post("/call/startup", PAGE_BODY)
    assert PASSWORD not in logs.everything()
    assert logs.request_lines() == ["POST /rest-api/call/startup -> 200", "POST /rest-api/call/startup -> 409"]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=5,
)
startup_fields = st.sampled_from(list(PAGE_BODY) + ["visibleName", "extra"])


@given(
    st.dictionaries(startup_fields, json_values | st.sampled_from(list(PAGE_BODY.values()))),
    st.text(max_size=30).map(lambda s: "§pw§" + s),  # "§" is in no error message
)
def test_parse_call_request_any_body(body, password):
    """Any JSON object gives a CallRequest or a BadRequest naming a field, never echoing the password."""
    body["sipPassword"] = password
    try:
        request = parse_call_request(body)
    except BadRequest as refused:
        assert refused.code == 400
        assert refused.field in set(PAGE_BODY) | {"visibleName"}
        assert password not in refused.message
    else:
        assert request.sip_password == password
        assert 1 <= request.sip_port <= 65535
        assert request.call_id and request.callee and request.sip_login and request.sip_domain


# --- /call/find and /call/find_all ---------------------------------------------------------


WCS_UNKNOWN = {"custom": {}, "nodeId": None, "parentCallId": None, "rtmpUrl": None,
               "rtmpStream": None, "rtmpStreamStatus": None, "inviteParameters": None,
               "mediaProvider": None, "sipMessageRaw": None, "isMsrp": False, "target": None,
               "holdForTransfer": False}


def test_found_calls_have_every_wcs_field(client, manager):
    """A found call carries every field of WCS's call object; those sipgw cannot know are
    present with WCS's value for "not set" (null, {} for custom), the manager's win."""
    manager.add_call("c1", appKey="app")
    (call,) = client.post("/call/find", {"callId": "c1"}).json()
    assert call == {**WCS_UNKNOWN, "callId": "c1", "status": "ESTABLISHED", "callee": "bob",
                    "appKey": "app"}


def test_find_by_call_id(client, manager):
    """/call/find {callId} answers a JSON array of matching calls."""
    manager.add_call("c1")
    manager.add_call("c2")
    response = client.post("/call/find", {"callId": "c2"})
    assert response.code == 200
    assert response.json() == [{**WCS_UNKNOWN, "callId": "c2", "status": "ESTABLISHED",
                                "callee": "bob"}]
    assert manager.finds == [("c2", None)]


@pytest.mark.parametrize("status", ["RING", "ring"])
def test_find_by_status(client, manager, status):
    """/call/find {status} filters by a known status, case-insensitively."""
    manager.add_call("c1", "RING")
    manager.add_call("c2", "ESTABLISHED")
    assert [c["callId"] for c in client.post("/call/find", {"status": status}).json()] == ["c1"]
    assert manager.finds == [(None, "RING")]


def test_find_by_both(client, manager):
    """callId and status together narrow the search together."""
    manager.add_call("c1", "RING")
    assert client.post("/call/find", {"callId": "c1", "status": "FINISH"}).code == 404
    assert manager.finds == [("c1", "FINISH")]


def test_find_nothing_is_404(client):
    """A find matching nothing is the 404 the SIP-as-RTMP pages read as "finished"."""
    response = client.post("/call/find", {"callId": "nope"})
    assert response.code == 404
    assert response.json() == {"error": "Call not found", "field": None}


@pytest.mark.parametrize("body", [{}, {"callId": ""}, {"status": None}])
def test_find_needs_call_id_or_status(client, manager, body):
    """/call/find without callId or status is a 400; the manager is not asked."""
    response = client.post("/call/find", body)
    assert response.code == 400
    assert response.json() == {"error": "callId or status is required", "field": "callId"}
    assert manager.finds == []


@pytest.mark.parametrize("status", ["DONE", 3, True])
def test_find_bad_status_is_400(client, status):
    """An unknown status is a 400 listing the statuses."""
    response = client.post("/call/find", {"status": status})
    assert response.code == 400
    body = response.json()
    assert body["field"] == "status"
    assert body["error"] == "status must be one of " + ", ".join(s.value for s in CallStatus)


def test_find_empty_status_means_not_given(client, manager):
    """An empty status is "not given": callId alone is searched."""
    client.post("/call/find", {"callId": "c1", "status": ""})
    assert manager.finds == [("c1", None)]


def test_find_bad_call_id_is_400(client):
    """A callId of the wrong type is a 400 naming callId."""
    assert client.post("/call/find", {"callId": 7}).json() == {"error": "callId must be a string", "field": "callId"}


def test_find_all(client, manager):
    """/call/find_all answers every call."""
    manager.add_call("c1")
    manager.add_call("c2", "RING")
    assert [c["callId"] for c in client.post("/call/find_all").json()] == ["c1", "c2"]
    assert manager.finds == [(None, None)]


def test_find_all_empty_is_404(client):
    """/call/find_all with no calls is a 404, as WCS answers."""
    response = client.post("/call/find_all", {})
    assert response.code == 404
    assert response.json() == {"error": "Call not found", "field": None}


def test_found_calls_never_carry_a_password(client, manager):
    """Even if the manager leaked a password key into a call object, the answer drops it."""
    manager.add_call("c1", sipPassword=PASSWORD, password=PASSWORD)
    for path, body in [("/call/find", {"callId": "c1"}), ("/call/find_all", {})]:
        response = client.post(path, body)
        assert response.json() == [{**WCS_UNKNOWN, "callId": "c1", "status": "ESTABLISHED",
                                    "callee": "bob"}]
        assert PASSWORD.encode() not in response.body


# --- /call/terminate -----------------------------------------------------------------------


def test_terminate(client, manager):
    """/call/terminate on a known call is an empty 200."""
    manager.add_call("c1")
    response = client.post("/call/terminate", {"callId": "c1"})
    assert (response.code, response.body) == (200, b"")
    assert manager.terminated == ["c1"]


def test_terminate_unknown_is_404(client):
    """/call/terminate on an unknown call is the manager's 404."""
    response = client.post("/call/terminate", {"callId": "nope"})
    assert response.code == 404
    assert response.json() == {"error": "Call not found", "field": None}


@pytest.mark.parametrize("body", [{}, {"callId": ""}, {"callId": 5}, {"callId": "a b"}])
def test_terminate_bad_call_id_is_400(client, manager, body):
    """/call/terminate needs a callId string."""
    response = client.post("/call/terminate", body)
    assert response.code == 400
    assert response.json()["field"] == "callId"
    assert manager.terminated == []


# --- /call/hold, /call/unhold -------------------------------------------------------------


def test_hold_then_unhold(client, manager):
    """/call/hold on an ESTABLISHED call and /call/unhold on a HOLD one are empty 200s."""
    manager.add_call("c1")
    response = client.post("/call/hold", {"callId": "c1"})
    assert (response.code, response.body) == (200, b"")
    assert manager.calls["c1"]["status"] == "HOLD"
    response = client.post("/call/unhold", {"callId": "c1"})
    assert (response.code, response.body) == (200, b"")
    assert manager.calls["c1"]["status"] == "ESTABLISHED"


def test_hold_for_transfer_is_shown_until_unhold(client, manager):
    """/call/hold with holdForTransfer true (WebSDK holdForTransfer) shows it in /call/find
    till /call/unhold; a value other than true or false is a 400 naming it."""
    manager.add_call("c1")
    bad = client.post("/call/hold", {"callId": "c1", "holdForTransfer": "maybe"})
    assert (bad.code, bad.json()["field"]) == (400, "holdForTransfer")
    assert client.post("/call/hold", {"callId": "c1", "holdForTransfer": True}).code == 200
    assert client.post("/call/find", {"callId": "c1"}).json()[0]["holdForTransfer"] is True
    assert client.post("/call/unhold", {"callId": "c1"}).code == 200
    assert client.post("/call/find", {"callId": "c1"}).json()[0]["holdForTransfer"] is False


@pytest.mark.parametrize("path", ["/call/hold", "/call/unhold"])
def test_hold_unhold_refusals(client, manager, path):
    """404 for an unknown call, 409 for a call in the wrong status, 400 without a callId."""
    manager.add_call("ringing", "RING")
    assert client.post(path, {"callId": "nope"}).code == 404
    response = client.post(path, {"callId": "ringing"})
    assert response.code == 409 and "not" in response.json()["error"]
    response = client.post(path, {})
    assert (response.code, response.json()["field"]) == (400, "callId")


# --- /call/transfer ------------------------------------------------------------------------


def test_transfer_then_find_shows_its_target_and_status(client, manager):
    """/call/transfer is an empty 200; /call/find then shows target and transferStatus."""
    manager.add_call("c1")
    response = client.post("/call/transfer", {"callId": "c1", "target": "sip:carol@example.com"})
    assert (response.code, response.body) == (200, b"")
    found = client.post("/call/find", {"callId": "c1"}).json()[0]
    assert (found["target"], found["transferStatus"]) == ("sip:carol@example.com", "PENDING")


@pytest.mark.parametrize("body, code, field", [
    ({"callId": "nope", "target": "carol"}, 404, None),
    ({"callId": "ringing", "target": "carol"}, 409, None),
    ({"callId": "c1"}, 400, "target"),
    ({"callId": "c1", "target": "<sip:x@y>"}, 400, "target"),
    ({"target": "carol"}, 400, "callId"),
])
def test_transfer_refusals(client, manager, body, code, field):
    """404 unknown call, 409 not established, 400 naming a missing or unusable field."""
    manager.add_call("c1")
    manager.add_call("ringing", "RING")
    response = client.post("/call/transfer", body)
    assert response.code == code
    assert response.json()["field"] == field


# --- /call/send_dtmf -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "body, sent",
    [
        ({"dtmf": "1"}, ("1", "RFC2833")),
        ({"dtmf": "0123456789*#ABCD", "type": "RFC2833"}, ("0123456789*#ABCD", "RFC2833")),
        ({"dtmf": "#", "type": "INFO"}, ("#", "INFO")),
        ({"dtmf": "a", "type": "info"}, ("A", "INFO")),
        ({"dtmf": "5", "type": ""}, ("5", "RFC2833")),
    ],
)
def test_send_dtmf(client, manager, body, sent):
    """/call/send_dtmf passes digits and type (default RFC2833) to the manager; the answer is empty."""
    manager.add_call("c1")
    response = client.post("/call/send_dtmf", {"callId": "c1", **body})
    assert (response.code, response.body) == (200, b"")
    assert manager.dtmf == [("c1", *sent)]


def _refused(response) -> dict:
    """The refusal of digits for a live call: 200 with the call as /call/find gives it."""
    assert response.code == 200
    (call,) = response.json()
    assert call["callId"] == "c1" and call["status"] == "ESTABLISHED"
    return {"error": call["error"], "field": call["field"]}


@pytest.mark.parametrize("dtmf", ["12x", "E", " 1", 5, ["1"], "1" * 33])
def test_bad_dtmf_is_refused(client, manager, dtmf):
    """dtmf must be 1 to dtmf_max_digits (32) of 0-9 * # A-D."""
    manager.add_call("c1")
    response = client.post("/call/send_dtmf", {"callId": "c1", "dtmf": dtmf})
    assert _refused(response) == {"error": "dtmf must be 1 to 32 of 0-9 * # A-D", "field": "dtmf"}
    assert manager.dtmf == []


@pytest.mark.parametrize("dtmf", ["", None])
def test_missing_dtmf_is_refused(client, manager, dtmf):
    """An empty or null dtmf is refused saying it is required."""
    manager.add_call("c1")
    response = client.post("/call/send_dtmf", {"callId": "c1", "dtmf": dtmf})
    assert _refused(response) == {"error": "dtmf is required", "field": "dtmf"}


@pytest.mark.parametrize("kind", ["SIP", "INBAND", 2833])
def test_bad_dtmf_type_is_refused(client, manager, kind):
    """type must be RFC2833 or INFO."""
    manager.add_call("c1")
    response = client.post("/call/send_dtmf", {"callId": "c1", "dtmf": "1", "type": kind})
    assert _refused(response) == {"error": "type must be RFC2833 or INFO", "field": "type"}


def test_dtmf_refused_by_the_call_keeps_the_page_polling(client, manager):
    """The SIP-as-RTMP pages show FINISHED and stop polling on any HTTP error: digits the
    call refuses (not established yet) answer 200 with the call and its real status, plus
    the reason; the answer's [0].status is what the page shows."""
    manager.add_call("c1", "RING")
    manager.send_dtmf = lambda *a: (_ for _ in ()).throw(CallError("call c1 is not established"))
    response = client.post("/call/send_dtmf", {"callId": "c1", "dtmf": "1"})
    assert response.code == 200
    assert response.json() == [{**WCS_UNKNOWN, "callId": "c1", "status": "RING",
                                "callee": "bob", "error": "call c1 is not established",
                                "field": None}]


def test_send_dtmf_needs_call_id(client):
    """/call/send_dtmf without callId is a 400 naming callId."""
    response = client.post("/call/send_dtmf", {"dtmf": "1"})
    assert response.json() == {"error": "callId is required", "field": "callId"}


def test_send_dtmf_unknown_call_is_404(client):
    """/call/send_dtmf to an unknown call is the manager's 404."""
    assert client.post("/call/send_dtmf", {"callId": "nope", "dtmf": "1"}).code == 404


def test_call_api_routes():
    """CallApi serves exactly the eight WCS call methods."""
    assert RestResource(CallApi(RecordingCallManager())).paths == [
        "/call/find",
        "/call/find_all",
        "/call/hold",
        "/call/send_dtmf",
        "/call/startup",
        "/call/terminate",
        "/call/transfer",
        "/call/unhold",
    ]


def test_call_request_is_frozen():
    """The parsed request cannot be changed after validation."""
    with pytest.raises(dataclasses.FrozenInstanceError):
        parse_call_request(PAGE_BODY).callee = "mallory"  # type: ignore[misc]


@pytest.mark.parametrize("value,expected", [("mandatory", "mandatory"), ("Optional", "optional"),
                                            ("off", "off"), ("", "")])
def test_sip_srtp_is_taken_per_call(value, expected):
    """sipSrtp: off, optional or mandatory (any case); empty leaves it to sip_srtp."""
    assert parse_call_request(with_(sipSrtp=value)).sip_srtp == expected


def test_bad_sip_srtp_is_400(client):
    """Any other sipSrtp is a 400 naming it."""
    response = client.post("/call/startup", with_(sipSrtp="always"))
    assert response.json() == {"error": "sipSrtp must be off, optional or mandatory", "field": "sipSrtp"}
