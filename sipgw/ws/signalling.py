"""WCS websocket signalling (as ``flashphoner-core.js`` speaks it) for stream players.

Every frame is JSON ``{"message": NAME, "data": [obj, ...]}``. A client sends
``connection`` (answered ``getUserData``), then ``playStream`` with its
recvonly offer (answered ``setRemoteSDP`` and ``notifyStreamStatusEvent``
PLAYING once the WebRTC connection is up, or at the first frame), ``stopStream``, ``ping``/``pong``.
Wrong field types, missing fields and bad JSON get a ``fail`` (``FIELDS``).

Keep-alive as WCS: once established, the server sends a JSON ``ping`` every
``keep_alive.server_interval`` ms (WebSDK sessions with ``receiveProbes`` fail without one);
the client's ``pong`` resets the count, and after ``keep_alive.probes`` pings unanswered
the connection is closed.

MSE players (``mediaProvider: "MSE"``, the WebSDK's choice on a page that is not a secure
context) are served as WCS serves them (``sipgw/ws/mse.py``): the provider's second websocket to
the same URL says ``connectMediaTransport`` with the session's authToken and gets the media as
binary tags. Other providers (``WSPlayer``, ``Flash``) get FAILED saying so.

Every other message ``flashphoner-core.js`` sends gets the reply its handler there
expects, so the page's state stays sane: ``availableStream`` is answered in kind,
``snapshot`` with a ``snapshotFailed`` stream event, ``publishStream`` with FAILED,
``sendData`` with a FAILED ``DataStatusEvent``, ``call``/``answer`` with a FAILED call
status; ``sendStreamEvent`` (a publisher's mute events) needs none. A ``fail`` never
carries ``apiMethod: "StreamStatusEvent"``: the WebSDK would take it as the stream's new
status and set it to ``undefined``. Nothing a client sends drops the socket, except invalid
UTF-8 (RFC 6455 §8.1), not saying ``connection`` in time or a refused auth token.
"""
from __future__ import annotations

import asyncio
import json
import secrets

from autobahn.twisted.websocket import (ConnectionDeny, WebSocketServerFactory,
                                       WebSocketServerProtocol)
from twisted.internet import defer, task
from twisted.internet.interfaces import IProtocolNegotiationFactory
from twisted.logger import Logger
from zope.interface import implementer

from ..hooks import DEFAULT_APP, HookRefused
from ..loglimit import LogLimiter, held_back
from ..policy import AccessPolicy, token_matches
from ..quotas import QuotaExceeded, TokenBuckets, check
from ..webrtc.viewer import NoCommonCodecs, Viewer
from .mse import MseViewer, plays_audio

log = Logger(namespace="sipgw.ws")

# Info texts of the WebSDK's STREAM_STATUS_INFO (constants.js), as WCS sends them.
STREAM_NOT_FOUND = "Stream not found"
STOPPED_BY_PUBLISHER_STOP = "Stopped by publisher stop"
STOPPED_BY_USER = "Stopped by user"
MEDIASESSION_ID_IN_USE = "MediaSessionId is already in use"
MAX_MESSAGE = 256 * 1024
PROVIDERS = ("WebRTC", "MSE")  # the WebSDK media providers sipgw plays with


# The fields sipgw reads from each message's object, and their JSON type (null = absent).
FIELDS = {"connection": {"appKey": str, "authToken": str},
          "playStream": {"mediaSessionId": str, "name": str, "sdp": str},
          "stopStream": {"mediaSessionId": str},
          "connectMediaTransport": {"authToken": str}}
_JSON_TYPES = {str: "a string"}


def _text(value):
    """``value`` if it is a string (safe to echo back and to use as a key), else None."""
    return value if isinstance(value, str) else None


def _check_fields(name: str, data) -> str:
    """What is wrong with a message's ``data`` (a list holding one object), or ''."""
    fields = FIELDS.get(name)
    if fields is None:
        return ""
    if not isinstance(data, list) or not data or not isinstance(data[0], dict):
        return f"{name}: data must be a list holding one object"
    for field, kind in fields.items():
        value = data[0].get(field)
        if value is not None and not isinstance(value, kind):
            return f"{name}: {field} must be {_JSON_TYPES[kind]}"
    return ""


class SignallingProtocol(WebSocketServerProtocol):
    def __init__(self):
        super().__init__()
        self.established = False
        self.viewers: dict[str, Viewer | MseViewer] = {}
        self.media_viewer: MseViewer | None = None  # this socket is an MSE media transport
        self.session_id = secrets.token_hex(8)
        self.app_key = DEFAULT_APP
        self._asking: set = set()  # "connection" and mediaSessionIds whose hook is asked
        self._connection: dict = {}  # the client's 'connection' object, for the hooks
        self._connect_timer = None
        self._keep_alive = None
        self._missed = 0  # pings sent since the client last answered
        self._counted_host = None  # the address counted in factory.clients while open
        self._rate = None  # this connection's message bucket (ws_messages_per_second)

    # -- websocket events --------------------------------------------------------
    def onConnect(self, request):
        """Without ws_auth_tokens only clients inside trusted_networks may connect (403)."""
        host = getattr(self.transport.getPeer(), "host", "")
        if not self.factory.auth_tokens and not self.factory.access.trusts(host):
            log.info("ws {peer}: refused, not in trusted_networks", peer=self.peer)
            raise ConnectionDeny(403, "not in trusted_networks and no token configured")
        self.factory.admit(self, host)
        return None

    def onOpen(self):
        timeout = self.factory.config.ws_connection_timeout
        if timeout:
            self._connect_timer = self.factory.reactor.callLater(timeout, self._no_connection)

    def _no_connection(self):
        self._connect_timer = None
        if not self.established and self.media_viewer is None:
            log.info("ws {peer}: no 'connection' within the timeout, closing", peer=self.peer)
            self.sendClose(4000, "no connection message")

    def onMessage(self, payload: bytes, isBinary: bool):
        if not self.factory.within_rate(self):
            return
        if isBinary:
            self.fail("binary", "binary frames are not supported")
            return
        try:
            frame = json.loads(payload.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            self.fail("unknown", "frame is not JSON")
            return
        if not isinstance(frame, dict) or not isinstance(frame.get("message"), str):
            self.fail("unknown", "frame has no 'message'")
            return
        data = frame.get("data")
        obj = data[0] if isinstance(data, list) and data and isinstance(data[0], dict) else {}
        name = frame["message"][:64]
        media_session_id = _text(obj.get("mediaSessionId"))
        handler = self.HANDLERS.get(name)
        if handler is None:
            self.fail(name, f"{name} is not supported by sipgw", media_session_id)
            return
        if (name not in ("connection", "ping", "pong", "connectMediaTransport")
                and not self.established):
            self.fail(name, "send 'connection' first", media_session_id)
            return
        problem = _check_fields(name, data)
        if problem:
            self.fail(name, problem, media_session_id)
            return
        handler(self, obj)

    def onClose(self, wasClean, code, reason):
        self.factory.release(self)
        if self.established:
            self._connection_event("DISCONNECTED")
            if self.factory.sessions.get(self.session_id) is self:
                del self.factory.sessions[self.session_id]
        if self.media_viewer is not None:
            viewer, self.media_viewer = self.media_viewer, None
            viewer.socket_closed()
        if self._connect_timer is not None and self._connect_timer.active():
            self._connect_timer.cancel()
        self._stop_keep_alive()
        for media_session_id in list(self.viewers):
            self._stop_viewer(media_session_id, notify=False)

    # -- sending -------------------------------------------------------------
    def send(self, message: str, *data) -> None:
        if self.state == WebSocketServerProtocol.STATE_OPEN:
            self.sendMessage(json.dumps({"message": message, "data": list(data)}).encode())

    def fail(self, api_method: str, info: str, media_session_id=None) -> None:
        """A warning for the page (the WebSDK's WARN callback); it changes no stream."""
        self.send("fail", {"apiMethod": api_method, "id": media_session_id, "info": info})

    def status(self, media_session_id: str, name: str, status: str, info: str = "",
               published: bool = False) -> None:
        event = {"mediaSessionId": media_session_id, "name": name, "published": published,
                 "status": status, "info": info}
        self.send("notifyStreamStatusEvent", event)
        self._hook_event("StreamStatusEvent", dict(event))

    # -- REST hooks (sipgw/hooks.py): the app server of this session's appKey --------------
    def _hook_body(self, body: dict) -> dict:
        return {**body, "appKey": self.app_key, "sessionId": self.session_id}

    def _hook_event(self, method: str, body: dict) -> None:
        hooks = self.factory.hooks
        if hooks is not None:
            hooks.event(self.app_key, method, self._hook_body(body), key=self.session_id)

    def _connection_event(self, status: str, info: str = "") -> None:
        """ConnectionStatusEvent: as WCS, the client's 'connection' fields and the status."""
        self._hook_event("ConnectionStatusEvent", {**self._connection, "status": status,
                                                   "info": info})

    def _ask(self, what: str, method: str, body: dict, then, refused) -> None:
        """``then()`` when the app allows (at once without hooks), else ``refused(info)``."""
        hooks = self.factory.hooks
        if hooks is None:
            then()
            return
        self._asking.add(what)

        def answered(result):
            self._asking.discard(what)
            if self.state != WebSocketServerProtocol.STATE_OPEN:
                return
            if result is None:
                then()
            else:
                refused(result.value.info if result.check(HookRefused) else "refused")
        hooks.query(self.app_key, method, self._hook_body(body)).addBoth(answered)

    # -- handlers --------------------------------------------------------------
    def on_connection(self, obj: dict) -> None:
        tokens = self.factory.auth_tokens
        if tokens and not (token_matches(obj.get("authToken"), tokens)
                           or token_matches(obj.get("appKey"), tokens)):
            log.info("ws {peer}: connection refused (bad appKey/authToken)", peer=self.peer)
            self.fail("connection", "authentication failed")
            self.sendClose(4003, "authentication failed")
            return
        if "connection" in self._asking:
            return
        self.app_key = _text(obj.get("appKey")) or DEFAULT_APP
        self._connection = dict(obj)
        if tokens and token_matches(obj.get("authToken"), tokens):
            del self._connection["authToken"]  # sipgw's own credential: not for the app server
        self._ask("connection", "connect", self._connection, self._established,
                  self._connect_refused)

    def _connect_refused(self, info: str) -> None:
        """The app server refused (or could not be asked): fail, FAILED, close."""
        log.info("ws {peer}: connection refused by the app ({info})", peer=self.peer, info=info)
        self.fail("connection", info)
        self._connection_event("FAILED", info)
        self.sendClose(4003, info[:100])

    def _established(self) -> None:
        first = not self.established
        self.established = True
        self.factory.sessions[self.session_id] = self
        if self._connect_timer is not None and self._connect_timer.active():
            self._connect_timer.cancel()
        self.send("getUserData", {"authToken": self.session_id, "sessionId": self.session_id,
                                  "status": "ESTABLISHED", "mediaProviders": list(PROVIDERS)})
        self._start_keep_alive()
        if first:
            self._connection_event("ESTABLISHED")

    # -- keep-alive (WCS keep_alive.*) -------------------------------------------------
    def _start_keep_alive(self) -> None:
        interval = self.factory.config.keep_alive_server_interval
        if interval > 0 and self._keep_alive is None:
            self._keep_alive = task.LoopingCall(self._probe)
            self._keep_alive.clock = self.factory.reactor
            self._keep_alive.start(interval / 1000, now=False)

    def _stop_keep_alive(self) -> None:
        if self._keep_alive is not None and self._keep_alive.running:
            self._keep_alive.stop()

    def _probe(self) -> None:
        probes = self.factory.config.keep_alive_probes
        if probes and self._missed >= probes:
            log.info("ws {peer}: no pong to {n} pings, closing", peer=self.peer, n=self._missed)
            self._stop_keep_alive()
            self.sendClose(4001, "keep-alive: no pong")
            return
        self._missed += 1
        self.send("ping")

    def on_ping(self, obj: dict) -> None:
        """The WebSDK's own ping (``pingInterval``): it shows the client alive; no answer, the
        WebSDK has no handler for ``pong`` and logs it as unknown."""
        self._missed = 0

    def on_pong(self, obj: dict) -> None:
        self._missed = 0

    def on_play_stream(self, obj: dict) -> None:
        media_session_id = obj.get("mediaSessionId")
        name = obj.get("name")
        sdp = obj.get("sdp")
        if not isinstance(media_session_id, str) or not media_session_id:
            self.fail("playStream", "mediaSessionId is required")
            return
        if not isinstance(name, str) or not name:
            self.status(media_session_id, "", "FAILED", "name is required")
            return
        if media_session_id in self.viewers or media_session_id in self._asking:
            self.status(media_session_id, name, "FAILED", MEDIASESSION_ID_IN_USE)
            return
        try:  # players asked about count too: each holds a hook query (and its message)
            check(len(self.viewers) + len(self._asking),
                  self.factory.config.max_viewers_per_connection,
                  "streams played on this connection", "max_viewers_per_connection")
        except QuotaExceeded as exc:
            self.status(media_session_id, name, "FAILED", exc.message)
            return
        asked = {k: v for k, v in obj.items() if k != "sdp"}
        provider = obj.get("mediaProvider") or "WebRTC"
        self._ask(media_session_id, "playStream", asked,
                  lambda: self._play(media_session_id, name, sdp, provider),
                  lambda info: self.status(media_session_id, name, "FAILED", info))

    def _play(self, media_session_id: str, name: str, sdp, provider="WebRTC") -> None:
        if media_session_id in self.viewers:
            self.status(media_session_id, name, "FAILED", MEDIASESSION_ID_IN_USE)
            return
        stream = self.factory.registry.playable(name)
        if stream is None or stream.ended:
            self.status(media_session_id, name, "FAILED", STREAM_NOT_FOUND)
            return
        if provider not in PROVIDERS:
            shown = provider if isinstance(provider, str) else "this media provider"
            self.status(media_session_id, name, "FAILED",
                        f"{shown[:32]} is not supported by sipgw: play with WebRTC or MSE")
            return
        if provider != "MSE" and (not isinstance(sdp, str) or "v=0" not in sdp):
            self.status(media_session_id, name, "FAILED", "playStream needs the offer SDP")
            return
        config = self.factory.config
        try:
            check(len(self.viewers), config.max_viewers_per_connection,
                  "streams played on this connection", "max_viewers_per_connection")
            check(self.factory.viewers_of(stream), config.max_viewers_per_stream,
                  f"viewers of {name}", "max_viewers_per_stream")
        except QuotaExceeded as exc:
            self.status(media_session_id, name, "FAILED", exc.message)
            return
        if provider == "MSE":
            self._play_mse(media_session_id, stream)
            return
        viewer = Viewer(stream, media_session_id=media_session_id,
                        ice_servers=self.factory.ice_servers,
                        on_state=lambda status, info: self._viewer_state(media_session_id, name,
                                                                         status, info))
        self.viewers[media_session_id] = viewer
        self.factory.watch(stream, self, media_session_id)
        log.info("ws {peer}: play {name} as {id}", peer=self.peer, name=name, id=media_session_id)
        future = asyncio.ensure_future(viewer.answer(sdp))
        d = defer.Deferred.fromFuture(future)
        d.addCallbacks(lambda answer: self._answered(media_session_id, name, answer),
                       lambda failure: self._answer_failed(media_session_id, name, failure))

    def _play_mse(self, media_session_id: str, stream) -> None:
        """An MSE player: answered now, its media go to the websocket that says
        connectMediaTransport with this session's authToken."""
        name = stream.name
        if not stream.has_video and not plays_audio(stream):
            self.status(media_session_id, name, "FAILED", "No common codecs")
            return
        config = self.factory.config
        viewer = MseViewer(self.factory.reactor, stream, media_session_id,
                           on_state=lambda status, info: self._viewer_state(
                               media_session_id, name, status, info),
                           queue_bytes=config.mse_send_queue_bytes,
                           transport_timeout=config.ws_connection_timeout)
        self.viewers[media_session_id] = viewer
        self.factory.watch(stream, self, media_session_id)
        log.info("ws {peer}: play {name} as {id} over MSE", peer=self.peer, name=name,
                 id=media_session_id)
        self.send("setRemoteSDP", media_session_id, viewer.answer())

    def on_connect_media_transport(self, obj: dict) -> None:
        """The MSE provider's media websocket: bound to the oldest MSE player of the session
        whose authToken it gives that has no media socket yet."""
        owner = self.factory.sessions.get(obj.get("authToken") or "")
        viewer = None
        if owner is not None and owner is not self and self.media_viewer is None:
            viewer = next((v for v in owner.viewers.values()
                           if isinstance(v, MseViewer) and not v.attached and not v.closed),
                          None)
        if viewer is None:
            log.info("ws {peer}: connectMediaTransport for no waiting MSE player", peer=self.peer)
            self.fail("connectMediaTransport", "no MSE player waiting for this authToken")
            self.sendClose(4003, "no MSE player waiting")
            return
        if self._connect_timer is not None and self._connect_timer.active():
            self._connect_timer.cancel()
        self.media_viewer = viewer
        viewer.attach(self)
        self._start_keep_alive()

    def _answered(self, media_session_id: str, name: str, answer: str) -> None:
        if media_session_id in self.viewers:
            self.send("setRemoteSDP", media_session_id, answer)

    def _answer_failed(self, media_session_id: str, name: str, failure) -> None:
        if failure.check(NoCommonCodecs):
            info = "No common codecs"
        else:
            info = f"Bad SDP: {failure.getErrorMessage()}"[:200]
            log.info("ws play {id} failed: {info}", id=media_session_id, info=info)
        self._stop_viewer(media_session_id, notify=False)
        self.status(media_session_id, name, "FAILED", info)

    def _viewer_state(self, media_session_id: str, name: str, status: str, info: str) -> None:
        if media_session_id not in self.viewers:
            return
        if status in ("STOPPED", "FAILED"):
            self._stop_viewer(media_session_id, notify=False)
        self.status(media_session_id, name, status, info)

    def on_stop_stream(self, obj: dict) -> None:
        media_session_id = obj.get("mediaSessionId")
        if not media_session_id:
            self.fail("stopStream", "mediaSessionId is required")
            return
        viewer = self.viewers.get(media_session_id)
        if viewer is None:  # already ended (FAILED, the call gone): STOPPED releases it too
            name = obj.get("name")
            self.status(media_session_id, name if isinstance(name, str) else "", "STOPPED")
            return
        self._stop_viewer(media_session_id, notify=False)
        self.status(media_session_id, viewer.stream.name, "STOPPED", STOPPED_BY_USER)

    def on_available_stream(self, obj: dict) -> None:
        """``availableStream`` answered in kind: ``status`` "true"/"false" (the WebSDK compares
        with the string), ``info`` the reason."""
        name = obj.get("name")
        stream = self.factory.registry.get(name=name) if isinstance(name, str) and name else None
        available = stream is not None and not stream.ended
        self.send("availableStream", {"id": _text(obj.get("mediaSessionId")), "name": _text(name),
                                      "status": "true" if available else "false",
                                      "info": "" if available else STREAM_NOT_FOUND})

    def on_snapshot(self, obj: dict) -> None:
        self.send("notifyStreamEvent", {"mediaSessionId": _text(obj.get("mediaSessionId")),
                                        "name": _text(obj.get("name")), "type": "snapshotFailed",
                                        "payload": {"info": "snapshots are not supported"}})

    def on_stream_event(self, obj: dict) -> None:
        """``sendStreamEvent``: a publisher's mute/unmute/data events, relayed by WCS to its
        players; sipgw's clients only play, so there is nobody to relay to."""

    def on_publish_stream(self, obj: dict) -> None:
        name = obj.get("name")
        self.status(_text(obj.get("mediaSessionId")), name if isinstance(name, str) else "", "FAILED",
                    "publishing is not supported by sipgw", published=True)

    def on_unpublish_stream(self, obj: dict) -> None:
        name = obj.get("name")
        self.status(_text(obj.get("mediaSessionId")), name if isinstance(name, str) else "",
                    "UNPUBLISHED", published=True)

    def on_send_data(self, obj: dict) -> None:
        """``sendData`` goes to a REST application in WCS; sipgw has none: FAILED settles the
        page's promise."""
        self.send("DataStatusEvent", {"operationId": _text(obj.get("operationId")), "status": "FAILED",
                                      "info": "no REST application to send data to"})

    def on_call(self, obj: dict) -> None:
        """SIP calls from the page (``call``, ``answer``): FAILED releases the WebSDK's call;
        sipgw places calls over REST (/call/startup)."""
        self.send("finish", {"callId": _text(obj.get("callId")), "status": "FAILED",
                             "info": "calls over the websocket are not supported by sipgw: "
                                     "use /rest-api/call/startup"})

    def on_call_control(self, obj: dict, name: str = "") -> None:
        """``hold``, ``unhold``, ``transfer`` act on the page's own call, which sipgw never
        has (``call`` fails): a fail saying which REST method does it."""
        self.fail(name, f"{name} over the websocket is not supported by sipgw (a player owns "
                        f"no call): use /rest-api/call/{name}")

    def stream_ended(self, media_session_id: str, stream) -> None:
        """The call behind a played stream ended: STOPPED "Stopped by publisher stop" as WCS
        says it, or FAILED with the stream's reason."""
        if media_session_id not in self.viewers:
            return
        self._stop_viewer(media_session_id, notify=False)
        if stream.status.value == "FAILED":
            self.status(media_session_id, stream.name, "FAILED", stream.info)
        else:
            self.status(media_session_id, stream.name, "STOPPED", STOPPED_BY_PUBLISHER_STOP)

    def _stop_viewer(self, media_session_id: str, notify: bool) -> None:
        viewer = self.viewers.pop(media_session_id, None)
        if viewer is not None:
            self.factory.unwatch(viewer.stream, self, media_session_id)
            if isinstance(viewer, MseViewer):
                viewer.close_now()
            else:
                defer.Deferred.fromFuture(asyncio.ensure_future(viewer.close()))

    HANDLERS = {"connection": on_connection, "ping": on_ping, "pong": on_pong,
                "playStream": on_play_stream, "stopStream": on_stop_stream,
                "availableStream": on_available_stream, "snapshot": on_snapshot,
                "sendStreamEvent": on_stream_event, "publishStream": on_publish_stream,
                "unPublishStream": on_unpublish_stream, "sendData": on_send_data,
                "call": on_call, "answer": on_call,
                "connectMediaTransport": on_connect_media_transport,
                **{name: (lambda self, obj, name=name: self.on_call_control(obj, name))
                   for name in ("hold", "unhold", "transfer")}}


@implementer(IProtocolNegotiationFactory)
class SignallingFactory(WebSocketServerFactory):
    protocol = SignallingProtocol

    def acceptableProtocols(self) -> list[bytes]:
        """ALPN for wss: http/1.1. Without an ALPN choice the OpenSSL that pyOpenSSL bundles
        (4.0) fails Chromium's TLS handshake ("internal error", ERR_SSL_PROTOCOL_ERROR in the
        browser); with one it completes, as the https REST listener's (twisted.web) does."""
        return [b"http/1.1"]

    def __init__(self, config, registry, reactor, url: str | None = None, hooks=None):
        super().__init__(url, reactor=reactor)
        self.config = config
        self.hooks = hooks  # sipgw.hooks.Hooks: connect/playStream asked, events told
        self.registry = registry
        self.reactor = reactor
        self.ice_servers = [u.strip() for u in config.webrtc_ice_servers.split(",") if u.strip()]
        self.auth_tokens = {t.strip() for t in config.ws_auth_tokens.split(",") if t.strip()}
        self.access = AccessPolicy.from_config(config)
        self.setProtocolOptions(maxMessagePayloadSize=MAX_MESSAGE,
                                maxFramePayloadSize=MAX_MESSAGE, failByDrop=False,
                                autoPingInterval=30,
                                autoPingTimeout=30)
        self._watchers: dict[str, set] = {}  # stream mediaSessionId -> {(proto, viewer id)}
        self.clients: dict[str, int] = {}  # open connections per client address
        self.open_sockets: set = set()  # the open (admitted) protocols
        self._closed: list = []  # (protocol set, Deferred) of close_all() calls still waiting
        self._refusals = LogLimiter(reactor)
        self.sessions: dict[str, SignallingProtocol] = {}  # authToken -> established session
        registry.listeners.append(self._stream_event)

    # -- limits: connections in all and per address, messages per second per connection --
    def admit(self, proto, host: str) -> None:
        """Counts ``proto``'s connection, or refuses it (503) beyond ws_max_connections or
        ws_max_connections_per_address."""
        config = self.config
        total, mine = sum(self.clients.values()), self.clients.get(host, 0)
        for count, limit, setting in ((total, config.ws_max_connections, "ws_max_connections"),
                                      (mine, config.ws_max_connections_per_address,
                                       "ws_max_connections_per_address")):
            if limit and count >= limit:
                held = self._refusals.allow(setting)
                if held is not None:
                    log.warn("ws {peer}: refused, {count} connections reach {setting}={limit}"
                             "{held}", peer=proto.peer, count=count, setting=setting,
                             limit=limit, held=held_back(held))
                raise ConnectionDeny(503, f"too many websocket connections ({setting}={limit})")
        self.clients[host] = mine + 1
        self.open_sockets.add(proto)
        proto._counted_host = host
        rate = config.ws_messages_per_second
        proto._rate = TokenBuckets(rate, 2 * rate, clock=self.reactor, max_keys=1)

    def release(self, proto) -> None:
        self.open_sockets.discard(proto)
        for waiting, d in list(self._closed):
            waiting.discard(proto)
            if not waiting and not d.called:
                d.callback(None)
        host, proto._counted_host = proto._counted_host, None
        if host is not None:
            left = self.clients.get(host, 1) - 1
            if left > 0:
                self.clients[host] = left
            else:
                self.clients.pop(host, None)

    def close_all(self, timeout: float = 2.0) -> defer.Deferred:
        """At shutdown: every open websocket closed with 1001 "going away" (their DISCONNECTED
        hooks go out); fires when all have closed, or after ``timeout`` seconds."""
        waiting = set(self.open_sockets)
        d = defer.Deferred()
        if not waiting:
            d.callback(None)
            return d
        entry = (waiting, d)
        self._closed.append(entry)
        timer = self.reactor.callLater(timeout, lambda: d.called or d.callback(None))
        d.addBoth(lambda r: (timer.active() and timer.cancel(), self._closed.remove(entry), r)[2])
        for proto in list(waiting):
            if proto.state == WebSocketServerProtocol.STATE_OPEN:
                proto.sendClose(1001, "sipgw is shutting down")
            else:
                proto.dropConnection(abort=True)
        return d

    def within_rate(self, proto) -> bool:
        """False (the message is dropped, the client told once every 10 s) beyond
        ws_messages_per_second, after a burst of twice as many."""
        if proto._rate is None or proto._rate.allow(None):
            return True
        if self._refusals.allow(("rate", id(proto))) is not None:
            proto.fail("unknown", "too many messages: at most ws_messages_per_second="
                       f"{self.config.ws_messages_per_second}; this one was dropped")
        return False

    def watch(self, stream, proto, media_session_id) -> None:
        self._watchers.setdefault(stream.media_session_id, set()).add((proto, media_session_id))

    def unwatch(self, stream, proto, media_session_id) -> None:
        watchers = self._watchers.get(stream.media_session_id)
        if watchers is not None:
            watchers.discard((proto, media_session_id))
            if not watchers:
                del self._watchers[stream.media_session_id]

    def _stream_event(self, stream, event: str) -> None:
        if event != "ended":
            return
        for proto, media_session_id in list(self._watchers.pop(stream.media_session_id, ())):
            proto.stream_ended(media_session_id, stream)

    def viewers_of(self, stream) -> int:
        return len(self._watchers.get(stream.media_session_id, ()))

    def viewer_count(self) -> int:
        return sum(len(w) for w in self._watchers.values())
