"""REST hooks (WCS "REST methods"): the application server of an ``appKey`` in the loop.

Each app has a URL; WCS POSTs ``URL/<method>`` with a JSON body.  Two kinds of method:

- queries (``connect``, ``playStream``): the answer decides.  2xx allows; any other answer
  refuses with its status (``403 Forbidden``); a timeout, a connection error or a refused
  destination refuses too, unless ``rest_hook_failure_allows=true``.
- events (``ConnectionStatusEvent``, ``StreamStatusEvent``, ``CallStatusEvent``,
  ``PushStatusEvent``, ``RecordingStatusEvent``, ``TransferStatusEvent``,
  ``InjectionStatusEvent``): fire and forget, through a queue per app of ``rest_queue_size``
  events and ``rest_queue_bytes`` bytes (events are serialized when queued, so a client's
  large ``connection`` object costs its size once, and is bounded).  Events of one call or
  session are sent one after the other,
  in order; at most ``rest_max_connections`` requests per app are in flight.  A full queue
  drops the new event: counted (``dropped``) and logged at most once a minute.

Apps come from ``rest_apps`` (``KEY=URL`` or ``KEY[method+method]=URL``, comma-separated)
and ``/rest-api/app/add``.  Hook URLs obey ``rest_egress_allow``/``rest_egress_deny``: the
name when the app is added, the resolved address before each connection.  https is verified
as a browser would (Twisted's ``BrowserLikePolicyForHTTPS``).  Nothing here blocks: every
request is a Deferred on the reactor with ``rest_request_timeout``.
"""
from __future__ import annotations

import ipaddress
import json
from collections import deque
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from twisted.internet import defer
from twisted.logger import Logger

from .egress import EgressDenied, EgressPolicy
from .loglimit import LogLimiter, held_back
from .quotas import check

log = Logger(namespace="sipgw.hooks")

QUERIES = ("connect", "playStream")
EVENTS = ("ConnectionStatusEvent", "StreamStatusEvent", "CallStatusEvent", "PushStatusEvent",
          "RecordingStatusEvent", "TransferStatusEvent", "InjectionStatusEvent")
METHODS = QUERIES + EVENTS
DEFAULT_APP = "defaultApp"  # WCS's appKey when a client sends none
UNREACHABLE = "The application could not be asked (the reason is in sipgw's log)"
MAX_ANSWER = 65536  # bytes of an answer read (and discarded); beyond, the connection is cut


class HookRefused(Exception):
    """The app server refused a query (or could not be asked); ``info`` says why."""

    def __init__(self, info: str) -> None:
        super().__init__(info)
        self.info = info


@dataclass(frozen=True)
class App:
    """One application: its appKey, hook URL and the methods it receives (empty: all)."""

    app_key: str
    url: str
    methods: frozenset = frozenset()
    name: str = ""

    def wants(self, method: str) -> bool:
        return not self.methods or method in self.methods

    def to_json(self) -> dict:
        return {"name": self.name or self.app_key, "appKey": self.app_key, "url": self.url,
                "restMethods": sorted(self.methods or METHODS)}


def check_url(url: str, egress: EgressPolicy | None = None, setting: str = "url") -> str:
    """``url`` if it can be a hook URL (http(s), a host, no credentials, egress allowed),
    else ValueError (EgressDenied for a refused destination) naming ``setting``."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ValueError(f"{setting}: not a URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{setting}: must be an http:// or https:// URL with a host")
    if parts.username or parts.password:
        raise ValueError(f"{setting}: must not carry credentials")
    if not url.isprintable() or any(c.isspace() for c in url):
        raise ValueError(f"{setting}: must not contain spaces or control characters")
    if egress is not None:
        egress.check(parts.hostname, setting)
    return url


def parse_apps(text: str, egress: EgressPolicy | None = None) -> list[App]:
    """``rest_apps``: ``KEY=URL`` or ``KEY[connect+CallStatusEvent]=URL``, comma-separated."""
    apps = []
    for item in (i.strip() for i in text.split(",")):
        if not item:
            continue
        head, sep, url = item.partition("=")
        key, _, methods_text = head.strip().partition("[")
        key = key.strip()
        if not sep or not key or (methods_text and not methods_text.endswith("]")):
            raise ValueError(f"rest_apps: {item!r} is not KEY=URL or KEY[method+method]=URL")
        methods = frozenset(m.strip() for m in methods_text.rstrip("]").split("+") if m.strip())
        unknown = sorted(methods - set(METHODS))
        if unknown:
            raise ValueError(f"rest_apps: {key}: unknown method(s) {', '.join(unknown)} "
                             f"(known: {', '.join(METHODS)})")
        apps.append(App(key, check_url(url.strip(), egress, "rest_apps"), methods))
    return apps


@dataclass
class _Queue:
    """The events waiting for one app: per key (a call or session) in order."""

    pending: dict = field(default_factory=dict)  # key -> deque of (method, JSON bytes)
    ready: deque = field(default_factory=deque)  # keys with pending events, none in flight
    busy: set = field(default_factory=set)  # keys with an event in flight
    size: int = 0
    bytes: int = 0
    in_flight: int = 0
    pumping: bool = False  # events that settle at once are sent by the loop, not recursion


class Hooks:
    """Apps by appKey, and the requests to them.  ``client.post(url, data)`` returns a
    Deferred firing with the HTTP status code (``AgentClient`` in the daemon)."""

    def __init__(self, reactor, client, *, timeout: float = 5, max_connections: int = 20,
                 queue_size: int = 1000, queue_bytes: int = 16 << 20, max_apps: int = 100,
                 failure_allows: bool = False,
                 egress: EgressPolicy | None = None, apps=()) -> None:
        self.reactor = reactor
        self.client = client
        self.timeout = timeout
        self.max_connections = max(1, max_connections)
        self.queue_size = queue_size
        self.queue_bytes = queue_bytes
        self.max_apps = max_apps
        self.failure_allows = failure_allows
        self.egress = egress or EgressPolicy()
        self.apps: dict[str, App] = {app.app_key: app for app in apps}
        self.dropped: dict[str, int] = {}  # events dropped per appKey (full queue)
        self.failed: dict[str, int] = {}  # events the app server did not take (error, timeout)
        self._queues: dict[str, _Queue] = {}
        self._log_limit = LogLimiter(reactor, interval=60)

    @classmethod
    def from_config(cls, config, reactor, client=None) -> "Hooks":
        egress = EgressPolicy.from_config(config, "rest")
        if client is None:
            client = AgentClient(reactor, egress, config.rest_max_connections)
        return cls(reactor, client, timeout=config.rest_request_timeout,
                   max_connections=config.rest_max_connections,
                   queue_size=config.rest_queue_size, queue_bytes=config.rest_queue_bytes,
                   max_apps=config.max_apps,
                   failure_allows=config.rest_hook_failure_allows, egress=egress,
                   apps=parse_apps(config.rest_apps, egress))

    # -- apps (/app/add, /app/find_all, /app/remove) ------------------------------------
    def add(self, app: App) -> None:
        """Adds or replaces; a new appKey beyond ``max_apps`` is refused (429)."""
        check_url(app.url, self.egress)
        if app.app_key not in self.apps:
            check(len(self.apps), self.max_apps, "apps", "max_apps", "appKey")
        self.apps[app.app_key] = app

    def remove(self, app_key: str) -> App | None:
        return self.apps.pop(app_key, None)

    def app_for(self, app_key, method: str) -> App | None:
        app = self.apps.get(app_key if isinstance(app_key, str) and app_key else DEFAULT_APP)
        return app if app is not None and app.wants(method) else None

    # -- queries: the answer allows or refuses ------------------------------------------
    def query(self, app_key, method: str, body: dict) -> defer.Deferred:
        """Fires None to allow, fails with HookRefused; allows at once without an app."""
        app = self.app_for(app_key, method)
        if app is None:
            return defer.succeed(None)
        d = self._post(app, method, _json(body))

        def answered(code):
            if 200 <= code < 300:
                return None
            log.info("hook {method} of {app}: refused ({code})", method=method,
                     app=app.app_key, code=code)
            raise HookRefused(f"Refused by the application: {code} {_reason(code)}")

        def failed(failure):
            if failure.check(HookRefused):
                return failure
            log.info("hook {method} of {app} failed: {why}", method=method, app=app.app_key,
                     why=_why(failure))
            if self.failure_allows:
                return None
            # the client learns no more (refused, timed out, TLS...): the reason is in the log
            raise HookRefused(UNREACHABLE)
        return d.addCallbacks(answered, failed)

    # -- events: fire and forget -------------------------------------------------------
    def event(self, app_key, method: str, body: dict, key: str = "") -> None:
        """Queue ``method`` for the app of ``app_key``; events of one ``key`` go in order."""
        app = self.app_for(app_key, method)
        if app is None:
            return
        queue = self._queues.setdefault(app.app_key, _Queue())
        data = _json(body) if queue.size < self.queue_size else b""
        if queue.size >= self.queue_size or queue.bytes + len(data) > self.queue_bytes:
            count = self.dropped[app.app_key] = self.dropped.get(app.app_key, 0) + 1
            held = self._log_limit.allow(("dropped", app.app_key))
            if held is not None:
                log.warn("hooks of {app}: queue full ({size} events, {bytes} bytes), event dropped "
                         "({count} in all){held}", app=app.app_key, size=queue.size,
                         bytes=queue.bytes, count=count,
                         held=held_back(held))
            return
        if key not in queue.pending:
            queue.pending[key] = deque()
            if key not in queue.busy:
                queue.ready.append(key)
        queue.pending[key].append((method, data))
        queue.size += 1
        queue.bytes += len(data)
        self._pump(app.app_key, queue)

    def queued(self, app_key: str) -> int:
        queue = self._queues.get(app_key)
        return queue.size if queue else 0

    def counters(self, app_key: str) -> dict:
        """What /app/find_all shows of an app's events: waiting, dropped, failed."""
        return {"queued": self.queued(app_key), "dropped": self.dropped.get(app_key, 0),
                "failed": self.failed.get(app_key, 0)}

    def _pump(self, app_key: str, queue: _Queue) -> None:
        if queue.pumping:
            return
        queue.pumping = True
        try:
            self._send_ready(app_key, queue)
        finally:
            queue.pumping = False

    def _send_ready(self, app_key: str, queue: _Queue) -> None:
        while queue.ready and queue.in_flight < self.max_connections:
            key = queue.ready.popleft()
            events = queue.pending[key]
            method, data = events.popleft()
            if not events:
                del queue.pending[key]
            queue.size -= 1
            queue.bytes -= len(data)
            queue.busy.add(key)
            queue.in_flight += 1
            app = self.apps.get(app_key)
            d = self._post(app, method, data) if app is not None else defer.succeed(200)
            d.addCallbacks(lambda code, m=method: self._sent(app_key, m, code),
                           lambda failure, m=method: self._sent(app_key, m, failure))
            d.addBoth(lambda _, k=key: self._done(app_key, queue, k))

    def _sent(self, app_key: str, method: str, result) -> None:
        if isinstance(result, int) and 200 <= result < 300:
            return
        self.failed[app_key] = self.failed.get(app_key, 0) + 1
        held = self._log_limit.allow(("failed", app_key))
        if held is not None:
            why = f"answered {result}" if isinstance(result, int) else _why(result)
            log.warn("hook {method} of {app}: {why}{held}", method=method, app=app_key, why=why,
                     held=held_back(held))

    def _done(self, app_key: str, queue: _Queue, key: str) -> None:
        queue.busy.discard(key)
        queue.in_flight -= 1
        if key in queue.pending:
            queue.ready.append(key)
        if not queue.size and not queue.in_flight:
            self._queues.pop(app_key, None)
        self._pump(app_key, queue)

    # -- one request ----------------------------------------------------------------------
    def _post(self, app: App, method: str, data: bytes) -> defer.Deferred:
        url = app.url.rstrip("/") + "/" + method
        try:
            inner = self.client.post(url, data)
        except Exception:  # noqa: BLE001 - a hook never breaks the caller
            return defer.fail()
        if self.timeout <= 0:
            return inner
        # Our own timer: whatever the client does once cancelled, the answer is settled (and
        # the slot in the queue freed) after rest_request_timeout.
        outer = defer.Deferred(lambda _: inner.cancel())

        def expire():
            outer.errback(defer.TimeoutError(f"no answer within {self.timeout} s"))
            inner.cancel()

        timer = self.reactor.callLater(self.timeout, expire)

        def settle(result):
            if timer.active():
                timer.cancel()
            if not outer.called:
                outer.callback(result)
        inner.addBoth(settle)
        return outer


def _json(body: dict) -> bytes:
    return json.dumps(body, default=str).encode("utf-8")


def _reason(code: int) -> str:
    from http import HTTPStatus
    try:
        return HTTPStatus(code).phrase
    except ValueError:
        return ""


def _why(failure) -> str:
    if failure.check(defer.TimeoutError, defer.CancelledError):
        return "no answer in time"
    if failure.check(EgressDenied):
        return failure.value.message
    reasons = getattr(failure.value, "reasons", None)  # ResponseFailed & co: a list
    if reasons:
        return _why(reasons[0])
    return failure.getErrorMessage()[:200] or failure.type.__name__


# -- the HTTP client: twisted.web's Agent, egress checked on the resolved address --------------
class AgentClient:
    """POSTs JSON with a bounded persistent pool; https verified as a browser does."""

    def __init__(self, reactor, egress: EgressPolicy, max_connections: int = 20) -> None:
        from twisted.web.client import (Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool,
                                        _HTTP11ClientFactory)

        class QuietFactory(_HTTP11ClientFactory):
            noisy = False  # no "Starting factory" line per connection

        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = max(1, max_connections)
        self.pool._factory = QuietFactory
        endpoints = _EgressEndpoints(reactor, egress, BrowserLikePolicyForHTTPS())
        self.agent = Agent.usingEndpointFactory(reactor, endpoints, pool=self.pool)
        fresh = HTTPConnectionPool(reactor, persistent=False)
        fresh._factory = QuietFactory
        self.fresh_agent = Agent.usingEndpointFactory(reactor, endpoints, pool=fresh)

    def post(self, url: str, data: bytes) -> defer.Deferred:
        """Fires the answer's status code.  A request that got no answer at all (a kept-alive
        connection the server had closed meanwhile: HTTP/1.0 servers close without saying
        so) is sent once more, on a new connection."""
        from twisted.web._newclient import (RequestNotSent, RequestTransmissionFailed,
                                            ResponseNeverReceived)

        def again(failure):  # the cases twisted.web's own retry logic retries
            failure.trap(RequestNotSent, RequestTransmissionFailed, ResponseNeverReceived)
            if any(r.check(defer.CancelledError) for r in getattr(failure.value, "reasons", ())):
                return failure  # cancelled (rest_request_timeout): no second try
            return self._request(url, data, self.fresh_agent)
        return self._request(url, data).addErrback(again).addCallback(_discard_body)

    def _request(self, url: str, data: bytes, agent=None) -> defer.Deferred:
        from io import BytesIO

        from twisted.web.client import FileBodyProducer
        from twisted.web.http_headers import Headers
        headers = Headers({b"Content-Type": [b"application/json"], b"User-Agent": [b"sipgw"]})
        return (agent or self.agent).request(b"POST", url.encode("ascii"), headers,
                                             FileBodyProducer(BytesIO(data)))

    def close(self) -> defer.Deferred:
        return self.pool.closeCachedConnections()


class AnswerTooLarge(Exception):
    """An HTTP answer longer than its reader's limit (the connection was cut)."""


def read_body(response, limit: int = MAX_ANSWER, keep: bool = True) -> defer.Deferred:
    """The answer's body, read up to ``limit`` bytes (beyond, the connection is cut and it
    fails with AnswerTooLarge); ``keep=False`` drops it as it comes (a hook's answer) and
    fires the code instead, however long it was."""
    from twisted.internet.protocol import Protocol
    from twisted.web.client import ResponseDone, PotentialDataLoss

    class Reader(Protocol):
        size = 0

        def dataReceived(self, data):
            self.size += len(data)
            if self.size > limit:
                self.transport.stopProducing()
            elif keep:
                chunks.append(data)

        def connectionLost(self, reason):
            if done.called:  # cancelled
                return
            if self.size > limit:
                if keep:
                    done.errback(AnswerTooLarge(f"answer over {limit} bytes"))
                else:
                    done.callback(response.code)
            elif reason.check(ResponseDone, PotentialDataLoss):
                done.callback(b"".join(chunks) if keep else response.code)
            else:
                done.errback(reason)

    chunks: list = []
    reader = Reader()
    # cancelled (a timeout) while the body trickles: the connection is cut
    done = defer.Deferred(lambda _: reader.transport and reader.transport.stopProducing())
    response.deliverBody(reader)
    return done


def _discard_body(response) -> defer.Deferred:
    """Read (and drop) the answer so the connection goes back to the pool; fires the code."""
    return read_body(response, MAX_ANSWER, keep=False)


class _EgressEndpoints:
    """Agent endpoints that resolve the host, check the address with the egress policy,
    then connect to that address (so a name cannot smuggle a denied one)."""

    def __init__(self, reactor, egress: EgressPolicy, tls_policy) -> None:
        self.reactor = reactor
        self.egress = egress
        self.tls_policy = tls_policy

    def endpointForURI(self, uri):
        return _EgressEndpoint(self, uri.scheme, uri.host.decode("ascii"), uri.port)


class _EgressEndpoint:
    def __init__(self, owner: _EgressEndpoints, scheme: bytes, host: str, port: int) -> None:
        self.owner, self.scheme, self.host, self.port = owner, scheme, host.strip("[]"), port

    def connect(self, factory) -> defer.Deferred:
        from twisted.internet.endpoints import (TCP4ClientEndpoint, TCP6ClientEndpoint,
                                                wrapClientTLS)
        owner = self.owner
        try:
            ipaddress.ip_address(self.host)
            resolved = defer.succeed([self.host])
        except ValueError:
            resolved = _resolve(owner.reactor, self.host)

        def connect(addresses):
            denied = None
            for address in addresses:  # the first the egress policy allows
                try:
                    owner.egress.check(self.host, "rest_apps", resolved=address)
                    break
                except EgressDenied as exc:
                    denied = denied or exc
            else:
                raise denied or EgressDenied(f"{self.host} has no address")
            kind = TCP6ClientEndpoint if ":" in address else TCP4ClientEndpoint
            endpoint = kind(owner.reactor, address, self.port, timeout=30)
            if self.scheme == b"https":
                endpoint = wrapClientTLS(
                    owner.tls_policy.creatorForNetloc(self.host.encode("idna"), self.port),
                    endpoint)
            return endpoint.connect(factory)
        return resolved.addCallback(connect)


def _resolve(reactor, host: str) -> defer.Deferred:
    """Every address of ``host`` (A and AAAA, through the reactor's resolver, off the
    reactor thread), or DNSLookupError."""
    from twisted.internet.error import DNSLookupError
    found, d = [], defer.Deferred()

    class Receiver:
        def resolutionBegan(self, resolution):
            pass

        def addressResolved(self, address):
            if address.host not in found:
                found.append(address.host)

        def resolutionComplete(self):
            if found:
                d.callback(found)
            else:
                d.errback(DNSLookupError(host))

    reactor.nameResolver.resolveHostName(Receiver(), host)
    return d


# -- what is reported: the call layer's and the stream registry's changes -------------------
def watch(hooks: Hooks, ua, media=None) -> None:
    """CallStatusEvent on every status change of a call (the UA's observer hook),
    TransferStatusEvent on each step of a /call/transfer, InjectionStatusEvent on each
    state change of a /call/inject_stream or /call/inject_sound,
    StreamStatusEvent when a call's stream is published and when it ends, and with ``media``
    (pushes and recorders) PushStatusEvent and RecordingStatusEvent on their state changes."""
    def call_changed(call) -> None:
        if hooks.app_for(call.request.app_key, "CallStatusEvent") is None:
            return  # no JSON built for nobody: this runs for every status of every call
        body = call.to_json()
        body.pop("history", None)
        hooks.event(call.request.app_key, "CallStatusEvent", body, key=call.request.call_id)

    def stream_changed(stream, event: str) -> None:
        call = ua.calls.get(stream.call_id)
        app_key = call.request.app_key if call is not None else ""
        if hooks.app_for(app_key, "StreamStatusEvent") is None:
            return
        body = {"mediaSessionId": stream.media_session_id, "name": stream.name,
                "published": True, "status": stream.status.value, "info": stream.info,
                "appKey": app_key or DEFAULT_APP, "callId": stream.call_id,
                "hasAudio": stream.has_audio, "hasVideo": stream.has_video}
        # the call's key: its stream's events and its own stay in one order
        hooks.event(app_key, "StreamStatusEvent", body, key=stream.call_id)

    def job_changed(method: str, job) -> None:
        call = ua.calls.get(job.stream.call_id)
        app_key = call.request.app_key if call is not None else ""
        if hooks.app_for(app_key, method) is None:
            return
        body = {**job.to_json(), "appKey": app_key or DEFAULT_APP, "callId": job.stream.call_id}
        hooks.event(app_key, method, body, key=job.stream.call_id)

    def transfer_changed(call, sip_status: int, reason: str) -> None:
        body = {"callId": call.request.call_id, "appKey": call.request.app_key or DEFAULT_APP,
                "target": call.transfer_target, "status": call.transfer_status,
                "sipStatus": sip_status, "info": reason}
        hooks.event(call.request.app_key, "TransferStatusEvent", body, key=call.request.call_id)

    def injection_changed(injection) -> None:
        call = ua.calls.get(injection.call_id)
        app_key = call.request.app_key if call is not None else ""
        if hooks.app_for(app_key, "InjectionStatusEvent") is None:
            return
        body = {**injection.to_json(), "callId": injection.call_id,
                "appKey": app_key or DEFAULT_APP}
        hooks.event(app_key, "InjectionStatusEvent", body, key=injection.call_id)

    ua.call_observers.append(_safe(call_changed))
    ua.transfer_observers.append(_safe(transfer_changed))
    ua.streams.listeners.append(_safe(stream_changed))
    if media is not None:
        media.pushes.observers.append(_safe(lambda push: job_changed("PushStatusEvent", push)))
        media.recorders.observers.append(
            _safe(lambda recording: job_changed("RecordingStatusEvent", recording)))
        injections = getattr(media, "injections", None)
        if injections is not None:
            injections.observers.append(_safe(injection_changed))


def _safe(observer):
    """``observer`` run inside the call layer: a bug in a hook is logged, never raised into
    the call's status change (which must go on to end the call, free its ports...)."""
    def run(*args) -> None:
        try:
            observer(*args)
        except Exception:  # noqa: BLE001
            log.failure("REST hook observer failed")
    return run
