"""REST hooks on a Clock with a fake HTTP client: allow/refuse, timeouts, bounded queues."""

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from sipgw.config import Config, ConfigError, load
from sipgw.egress import EgressDenied
from sipgw.hooks import UNREACHABLE, App, HookRefused, Hooks, parse_apps

from fakes import HeldHttpClient


def make(apps="app1=http://127.0.0.1:9091/App", **kwargs):
    clock, client = Clock(), HeldHttpClient()
    return clock, client, Hooks(clock, client, apps=parse_apps(apps), **kwargs)


def result_of(d):
    out = []
    d.addBoth(out.append)
    return out[0] if out else None


def test_connect_2xx_allows_4xx_refuses_with_the_reason():
    """connect answered 200 allows; 403 refuses with "403 Forbidden" in the info."""
    _, client, hooks = make()
    allowed = hooks.query("app1", "connect", {"appKey": "app1", "sessionId": "s1"})
    refused = hooks.query("app1", "connect", {"appKey": "app1", "sessionId": "s2"})
    assert [p[0] for p in client.posts] == ["http://127.0.0.1:9091/App/connect"] * 2
    assert client.posts[0][1] == {"appKey": "app1", "sessionId": "s1"}
    client.answer(0, 200)
    client.answer(1, 403)
    assert result_of(allowed) is None
    failure = result_of(refused)
    assert failure.check(HookRefused) and "403 Forbidden" in failure.value.info


def test_query_without_an_app_is_allowed_at_once():
    """No app for the appKey (nor defaultApp): nothing is sent, the query allows."""
    _, client, hooks = make()
    assert result_of(hooks.query("other", "connect", {})) is None
    assert client.posts == []


def test_query_timeout_refuses_by_default_and_allows_by_setting():
    """A hook unanswered after rest_request_timeout refuses, or allows with
    rest_hook_failure_allows."""
    for allows in (False, True):
        clock, client, hooks = make(timeout=5, failure_allows=allows)
        d = hooks.query("app1", "playStream", {"name": "s"})
        clock.advance(4.9)
        assert not d.called
        clock.advance(0.2)
        outcome = result_of(d)
        if allows:
            assert outcome is None
        else:
            assert outcome.check(HookRefused) and outcome.value.info == UNREACHABLE


def test_methods_filter_and_default_app():
    """An app receives only its listed methods; a client without appKey is defaultApp's."""
    _, client, hooks = make("defaultApp[CallStatusEvent]=http://127.0.0.1:1/d")
    hooks.event("", "CallStatusEvent", {"callId": "c1"}, key="c1")
    hooks.event("", "StreamStatusEvent", {"name": "x"}, key="x")
    assert [p[0] for p in client.posts] == ["http://127.0.0.1:1/d/CallStatusEvent"]


def test_events_of_one_call_go_in_order_one_at_a_time():
    """A call's second event is sent only once the first is answered."""
    _, client, hooks = make()
    hooks.event("app1", "CallStatusEvent", {"status": "PENDING"}, key="c1")
    hooks.event("app1", "CallStatusEvent", {"status": "TRYING"}, key="c1")
    hooks.event("app1", "CallStatusEvent", {"status": "PENDING"}, key="c2")
    assert [(p[1]["status"]) for p in client.posts] == ["PENDING", "PENDING"]
    client.answer(0)
    assert [(p[1]["status"]) for p in client.posts] == ["PENDING", "PENDING", "TRYING"]


def test_dead_app_server_costs_dropped_events_not_memory():
    """With the app server never answering: rest_max_connections in flight, rest_queue_size
    queued, every further event dropped and counted; the timeout frees the slots."""
    clock, client, hooks = make(timeout=5, max_connections=3, queue_size=10)
    for n in range(100):
        hooks.event("app1", "CallStatusEvent", {"n": n}, key=f"c{n}")
    assert len(client.posts) == 3
    assert hooks.queued("app1") == 10
    assert hooks.dropped == {"app1": 87}
    clock.advance(5)  # the three time out: three more go
    assert len(client.posts) == 6 and hooks.failed == {"app1": 3}
    assert hooks.queued("app1") == 7
    for _ in range(3):
        clock.advance(5)
    assert len(client.posts) == 13 and hooks.queued("app1") == 0
    clock.advance(5)
    assert hooks._queues == {}  # nothing left held


def test_large_events_are_bounded_by_bytes_too():
    """Events are held as JSON: rest_queue_bytes bounds a queue of large ConnectionStatusEvents
    (a client's 'connection' object can be large) however few they are."""
    _, client, hooks = make(timeout=0, max_connections=1, queue_size=1000, queue_bytes=100_000)
    big = {"custom": {"blob": "x" * 30_000}}
    for n in range(10):
        hooks.event("app1", "ConnectionStatusEvent", big, key=f"s{n}")
    assert len(client.posts) == 1  # one in flight, three fit in 100 kB, six dropped
    assert hooks.queued("app1") == 3 and hooks.dropped == {"app1": 6}
    assert hooks._queues["app1"].bytes <= 100_000
    for _ in range(4):
        client.answer(len(client.posts) - 1)
    assert len(client.posts) == 4 and hooks.queued("app1") == 0
    assert client.posts[-1][1] == big


def test_dropped_events_are_logged_once_a_minute():
    """Drops are logged at most once a minute per app, with the count held back."""
    from twisted.logger import globalLogPublisher
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        clock, client, hooks = make(max_connections=1, queue_size=1, timeout=0)
        for n in range(50):
            hooks.event("app1", "CallStatusEvent", {}, key=f"c{n}")
        clock.advance(61)
        hooks.event("app1", "CallStatusEvent", {}, key="late")
    finally:
        globalLogPublisher.removeObserver(events.append)
    drops = [e for e in events if e.get("log_namespace") == "sipgw.hooks"
             and "dropped" in e.get("log_format", "")]
    assert len(drops) == 2
    assert hooks.dropped == {"app1": 49}


def test_client_error_is_a_failure_not_an_exception():
    """A client that raises (bad URL, ...) fails the query, never the caller."""
    class RaisingClient:
        def post(self, url, data):
            raise RuntimeError("boom")
    hooks = Hooks(Clock(), RaisingClient(), apps=parse_apps("a=http://127.0.0.1/x"))
    assert result_of(hooks.query("a", "connect", {})).check(HookRefused)
    hooks.event("a", "CallStatusEvent", {}, key="c")
    assert hooks.failed == {"a": 1}


def test_settings_parse_and_egress():
    """rest_apps is KEY=URL or KEY[m+m]=URL; bad forms, unknown methods, credentials and
    denied destinations (link-local by default) stop the start, naming rest_apps."""
    apps = parse_apps("a=http://h:1/x, b[connect+CallStatusEvent]=https://app.example.org/w")
    assert apps[1] == App("b", "https://app.example.org/w",
                          frozenset({"connect", "CallStatusEvent"}))
    assert apps[1].to_json()["restMethods"] == ["CallStatusEvent", "connect"]
    for bad in ("a", "a=ftp://h/x", "a[nope]=http://h/x", "a=http://u:p@h/x",
                "a=http://169.254.169.254/latest"):
        with pytest.raises(ConfigError, match="rest_apps"):
            load(None, {"rest_apps": bad})
    with pytest.raises(ConfigError, match="rest_egress_deny"):
        load(None, {"rest_apps": "a=http://10.1.2.3/x", "rest_egress_deny": "10.0.0.0/8"})
    assert Config().rest_hook_failure_allows is False


def test_agent_client_connects_only_to_allowed_resolved_addresses():
    """The Agent's endpoints resolve the host (A and AAAA) and connect to the first address
    the egress policy allows: a name for link-local only is refused before any connection."""
    from twisted.internet.address import IPv4Address, IPv6Address
    from twisted.internet.testing import MemoryReactorClock

    from sipgw.egress import EgressPolicy
    from sipgw.hooks import AgentClient

    class FixedResolver:
        names = {"metadata.example": ["169.254.169.254"],
                 "app.example": ["169.254.169.254", "::1", "127.0.0.1"]}

        def resolveHostName(self, receiver, host, *args, **kwargs):
            receiver.resolutionBegan(None)
            for address in self.names[host]:
                kind = IPv6Address if ":" in address else IPv4Address
                receiver.addressResolved(kind("TCP", address, 0))
            receiver.resolutionComplete()
    reactor = MemoryReactorClock()
    reactor.nameResolver = FixedResolver()
    client = AgentClient(reactor, EgressPolicy.from_config(Config(), "rest"))
    failure = result_of(client.post("http://metadata.example/x", b"{}"))
    assert failure.check(EgressDenied) and reactor.tcpClients == []
    client.post("http://app.example:9/x", b"{}")
    client.post("http://127.0.0.1:9/x", b"{}")
    assert [(c[0], c[1]) for c in reactor.tcpClients] == [("::1", 9), ("127.0.0.1", 9)]


def test_watch_reports_calls_streams_pushes_and_recordings_in_order():
    """watch(): every call status change is a CallStatusEvent, the call's stream publishing
    and ending a StreamStatusEvent, push and recording state changes PushStatusEvent and
    RecordingStatusEvent, all to the call's app, in order (one key: the callId)."""
    from types import SimpleNamespace

    from sipgw.calls import CallRequest, CallStatus
    from sipgw.hooks import watch
    from sipgw.media.worker import MediaJob
    from sipgw.streams.registry import StreamRegistry
    from sipgw.streams.stream import Stream

    _, client, hooks = make("shop=http://127.0.0.1:9/shop", timeout=0)
    request = CallRequest("c1", "bob", "alice", "example.org", app_key="shop")
    call = SimpleNamespace(request=request, status=CallStatus.PENDING,
                           to_json=lambda: {"callId": "c1", "status": call.status.value,
                                            "appKey": "shop",
                                            "history": []})
    ua = SimpleNamespace(calls={"c1": call}, call_observers=[], transfer_observers=[],
                         streams=StreamRegistry())
    media = SimpleNamespace(pushes=SimpleNamespace(observers=[]),
                            recorders=SimpleNamespace(observers=[]))
    watch(hooks, ua, media)
    stream = ua.streams.add(Stream("s1", call_id="c1"))
    for observer in ua.call_observers:  # what Call.set_status does
        observer(call)
    job = MediaJob(Clock(), stream)
    job.to_json = lambda: {"status": job.state}
    job.observers = media.pushes.observers
    job._set_state("PUBLISHING", "")
    while any(not d.called for _, _, d in client.posts):  # the app answers each in turn
        client.answer([d.called for _, _, d in client.posts].index(False))
    sent = [(url.rsplit("/", 1)[1], body["status"]) for url, body, _ in client.posts]
    assert sent == [("StreamStatusEvent", "PENDING"), ("CallStatusEvent", "PENDING"),
                    ("PushStatusEvent", "PUBLISHING")]
    assert all(body["appKey"] == "shop" and body["callId"] == "c1"
               for _, body, _ in client.posts)
    assert "history" not in client.posts[1][1]


def test_watch_reports_each_transfer_step_as_a_transfer_status_event():
    """watch(): each step of /call/transfer (the UA's transfer observers) is a
    TransferStatusEvent to the call's app with callId, target, status, sipStatus, info."""
    from types import SimpleNamespace

    from sipgw.calls import CallRequest
    from sipgw.hooks import watch
    from sipgw.streams.registry import StreamRegistry

    _, client, hooks = make("shop=http://127.0.0.1:9/shop", timeout=0)
    call = SimpleNamespace(request=CallRequest("c1", "bob", "alice", "example.org",
                                               app_key="shop"),
                           transfer_target="sip:carol@example.org", transfer_status="TRYING")
    ua = SimpleNamespace(calls={"c1": call}, call_observers=[], transfer_observers=[],
                         streams=StreamRegistry())
    watch(hooks, ua)
    for observer in ua.transfer_observers:  # what Call.transfer_changed does
        observer(call, 100, "Trying")
    url, body, _ = client.posts[0]
    assert url == "http://127.0.0.1:9/shop/TransferStatusEvent"
    assert body == {"callId": "c1", "appKey": "shop", "target": "sip:carol@example.org",
                    "status": "TRYING", "sipStatus": 100, "info": "Trying"}


def test_https_hooks_are_verified_tls():
    """An https hook URL connects through TLS with the browser-like (verifying) policy."""
    from twisted.internet.testing import MemoryReactorClock
    from twisted.protocols.tls import TLSMemoryBIOFactory

    from sipgw.egress import EgressPolicy
    from sipgw.hooks import AgentClient
    reactor = MemoryReactorClock()
    client = AgentClient(reactor, EgressPolicy())
    client.post("https://127.0.0.1:8443/x", b"{}")
    factory = reactor.tcpClients[0][2]._wrappedFactory  # the endpoint's wrapper around it
    assert isinstance(factory, TLSMemoryBIOFactory)
    from twisted.web.client import BrowserLikePolicyForHTTPS
    assert isinstance(client.agent._endpointFactory.tls_policy, BrowserLikePolicyForHTTPS)


def test_a_request_that_never_settles_still_ends_at_the_timeout():
    """A client that goes on waiting even once cancelled (a retry that hangs) cannot hold a
    slot: at rest_request_timeout the query refuses and the event counts as failed."""
    class RetryingForeverClient:
        def post(self, url, data):
            return defer.Deferred().addErrback(lambda _: defer.Deferred())
    clock = Clock()
    hooks = Hooks(clock, RetryingForeverClient(), timeout=2, max_connections=1,
                  apps=parse_apps("a=http://127.0.0.1/x"))
    query = hooks.query("a", "connect", {})
    hooks.event("a", "CallStatusEvent", {}, key="c1")
    hooks.event("a", "CallStatusEvent", {}, key="c2")
    clock.advance(2)
    assert result_of(query).check(HookRefused)
    assert hooks.failed == {"a": 1} and hooks.queued("a") == 0  # c2 went out
    clock.advance(2)
    assert hooks.failed == {"a": 2} and hooks._queues == {}


def test_events_settled_at_once_do_not_recurse():
    """Thousands of queued events that settle at once (their app removed meanwhile) drain in
    a loop, not one stack frame per event."""
    _, client, hooks = make(max_connections=1, queue_size=5000)
    for n in range(3000):
        hooks.event("app1", "CallStatusEvent", {}, key=f"c{n}")
    hooks.remove("app1")
    client.answer(0)
    assert hooks._queues == {} and len(client.posts) == 1


def test_a_failing_hook_never_breaks_the_call_layer():
    """An error while building an event is logged; the status change that caused it goes on."""
    from types import SimpleNamespace

    from sipgw.calls import CallRequest
    from sipgw.hooks import watch
    from sipgw.streams.registry import StreamRegistry

    _, client, hooks = make("defaultApp=http://127.0.0.1:9/d")

    def broken():
        raise RuntimeError("bug")
    call = SimpleNamespace(request=CallRequest("c1", "bob", "alice", "example.org"),
                           to_json=broken)
    ua = SimpleNamespace(calls={}, call_observers=[], transfer_observers=[], streams=StreamRegistry())
    watch(hooks, ua)
    from twisted.logger import globalLogPublisher
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        for observer in ua.call_observers:
            observer(call)  # does not raise
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert any(e.get("log_failure") for e in events) and client.posts == []


def test_watch_reports_injection_changes_as_injection_status_events():
    """watch(): each state change of a call's injection (/call/inject_*) is an
    InjectionStatusEvent to the call's app: the injection as /call/find shows it, with callId
    and appKey."""
    from types import SimpleNamespace

    from sipgw.calls import CallRequest
    from sipgw.hooks import watch
    from sipgw.streams.registry import StreamRegistry

    _, client, hooks = make("shop=http://127.0.0.1:9/shop", timeout=0)
    call = SimpleNamespace(request=CallRequest("c1", "bob", "alice", "example.org",
                                               app_key="shop"))
    ua = SimpleNamespace(calls={"c1": call}, call_observers=[], transfer_observers=[],
                         streams=StreamRegistry())
    injections = SimpleNamespace(observers=[])
    media = SimpleNamespace(pushes=SimpleNamespace(observers=[]),
                            recorders=SimpleNamespace(observers=[]), injections=injections)
    watch(hooks, ua, media)
    injection = SimpleNamespace(call_id="c1", to_json=lambda: {"type": "sound",
                                                               "status": "INJECTING"})
    for observer in injections.observers:  # what MediaJob._set_state does
        observer(injection)
    url, body, _ = client.posts[0]
    assert url == "http://127.0.0.1:9/shop/InjectionStatusEvent"
    assert body == {"type": "sound", "status": "INJECTING", "callId": "c1", "appKey": "shop"}
