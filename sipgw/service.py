"""The one place that wires the layers into a MultiService."""
from __future__ import annotations

import gc
import os

from twisted.application import internet, service
from twisted.internet import defer
from twisted.logger import FilteringLogObserver, Logger, PredicateResult, globalLogPublisher
from twisted.web import resource, static

from .logtext import speed_up_text_observers
from .rtp.ports import PortPool
from .sip.transport import PEM_CERTIFICATE
from .gateway.manager import CallManager


log = Logger(namespace="sipgw.service")

WEB_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "web")


def _drop_udp_port_chatter(event) -> object:
    """Twisted logs 'starting on N' and '(UDP Port N Closed)' for every RTP/RTCP socket:
    at hundreds of calls a second that is most of the log and a good part of the CPU."""
    message = event.get("message") or ("",)  # legacy log.msg events
    text = event.get("log_text") or (message[0] if isinstance(message, tuple) else "")
    if not isinstance(text, str):
        return PredicateResult.maybe
    if text.startswith("(UDP Port ") or text.startswith("_Socket starting on "):
        return PredicateResult.no
    return PredicateResult.maybe


def _filter_log_observers(predicate) -> None:
    """Put ``predicate`` in front of the observers twistd installed."""
    observers = globalLogPublisher._observers
    for i, observer in enumerate(observers):
        if not isinstance(observer, FilteringLogObserver):
            observers[i] = FilteringLogObserver(observer, [predicate])


_frozen = False


def freeze_startup_objects() -> None:
    """What the imports and the wiring made lives as long as the daemon: out of the cyclic
    collector's way (each full collection walked its ~70,000 objects again: 18 ms). And the
    youngest generation collected every 10,000 allocations instead of 700: at 400 calls/s a
    full collection ran every 2 s and walked every retained call (40-200 ms, the REST answers
    waiting behind it: p99 167-181 ms), now 14 times less often (p99 51-57 ms; the same CPU
    per call). Once per process."""
    global _frozen
    if not _frozen:
        _frozen = True
        gc.freeze()
        gc.set_threshold(10000, 10, 10)


class _CallsService(service.Service):
    """The calls and their SIP user agent."""

    name = "sip"

    def __init__(self, calls: CallManager):
        self.calls = calls

    def startService(self):
        super().startService()
        _filter_log_observers(_drop_udp_port_chatter)
        speed_up_text_observers(globalLogPublisher._observers, self.calls.reactor)
        freeze_startup_objects()
        self.calls.start()

    def stopService(self):
        super().stopService()
        return self.calls.stop()  # fires with its counts once the sockets are closed


class _MediaService(service.Service):
    """RTMP pushes and recordings; stopping it finalizes every open recording and closes
    every push, both within ``timeout`` seconds."""

    name = "media"

    def __init__(self, pushes, recorders, timeout: float = 10.0, hls=None, injections=None):
        self.pushes = pushes
        self.recorders = recorders
        self.injections = injections  # InjectionManager: /call/inject_*
        self.hls = hls  # HlsManager: its muxing jobs stop with the rest, nothing to finalize
        self.timeout = timeout

    def stopService(self):
        super().stopService()
        if self.hls is not None:
            self.hls.close(self.timeout)
        if self.injections is not None:
            self.injections.close(self.timeout)
        d = defer.gatherResults([self.recorders.close(self.timeout),
                                 self.pushes.close(self.timeout)], consumeErrors=True)
        return d.addCallback(lambda r: {"finalized": r[0][0], "not_finalized": r[0][1],
                                        "pushes": r[1][0], "pushes_aborted": r[1][1]})


class _Daemon(service.MultiService):
    """Every service of the daemon; stopping it (SIGTERM) goes in order, see ``stopService``."""

    def __init__(self, reactor):
        super().__init__()
        self.reactor = reactor

    def stopService(self):
        """(1) Close the REST and websocket listeners and take no new call; (2) end every
        call and unregister every account while SIP stays open, finalize recordings and
        close pushes, all within ``shutdown_timeout``; (3) close the SIP sockets and the
        hooks' connections, after the open websockets are closed (1001); then log one summary
        line."""
        service.Service.stopService(self)
        return defer.ensureDeferred(self._stop())

    async def _stop(self) -> None:
        started = self.reactor.seconds()
        sip, media = self.getServiceNamed("sip"), self.getServiceNamed("media")
        late = [s for s in self if s.name == "hooks"]  # the calls' last events still go out
        sip.calls.accepting = False
        await defer.DeferredList([defer.maybeDeferred(s.stopService) for s in self
                                  if s not in (sip, media, *late)])
        results = await defer.DeferredList([defer.maybeDeferred(sip.stopService),
                                            defer.maybeDeferred(media.stopService)],
                                           consumeErrors=True)
        counts = {}
        for ok, result in results:
            if ok:
                counts.update(result)
            else:
                log.failure("shutdown step failed", result)
        signalling = getattr(self, "signalling", None)
        if signalling is not None:  # players were told STOPPED with their streams: close
            await signalling.close_all()
        await defer.DeferredList([defer.maybeDeferred(s.stopService) for s in late])
        log.info("stopped in {seconds:.2f} s: {calls} call(s) ended ({answered} answered, "
                 "the rest at the deadline), {unregistered} registration(s) removed "
                 "({not_unregistered} not), {finalized} recording(s) finalized "
                 "({not_finalized} not), {pushes} push(es) closed ({pushes_aborted} aborted)",
                 seconds=self.reactor.seconds() - started,
                 **{k: counts.get(k, "?") for k in (
                     "calls", "answered", "unregistered", "not_unregistered", "finalized",
                     "not_finalized", "pushes", "pushes_aborted")})


def make_media(config, reactor, registry, calls: dict | None = None) -> _MediaService:
    """/push/* and recording (sip_record_stream): PyAV work on worker threads; ``calls``
    (the call manager's, by callId) give recordings their call's {login} and {sessionId}."""
    from .config import ConfigError
    from .egress import EgressPolicy
    from .media.keyframes import PeriodicKeyframes
    from .media.push import PushManager
    from .media.recorder import BadFileName, Limits, RecorderManager, Rotation
    keyframes = PeriodicKeyframes(reactor, config.periodic_fir_request_interval / 1000
                                  if config.periodic_fir_request else 0)
    pushes = PushManager(reactor, registry, reconnect_min=config.rtmp_reconnect_delay,
                         reconnect_max=config.rtmp_reconnect_max_delay,
                         timeout=config.rtmp_timeout,
                         egress=EgressPolicy.from_config(config, "rtmp"), keyframes=keyframes)
    try:
        rotation = Rotation.parse(config.record_rotation)
    except ValueError as exc:
        raise ConfigError(f"record_rotation: {exc}") from None
    try:
        recorders = RecorderManager(reactor, registry, config.record_dir,
                                    config.record_file_template, auto=config.sip_record_stream,
                                    limits=Limits.from_config(config), keyframes=keyframes,
                                    owner=lambda stream: _owner((calls or {}).get(stream.call_id)),
                                    rotation=rotation)
    except BadFileName as exc:
        raise ConfigError(f"record_file_template: {exc}") from None
    from .media.hls import HlsManager
    hls = HlsManager(reactor, registry, target=config.hls_target_duration,
                     count=config.hls_segments, max_bytes=config.hls_max_bytes,
                     idle=config.hls_idle_timeout, keyframes=keyframes,
                     part=config.hls_part_duration, max_held=config.hls_max_blocked_requests,
                     block_timeout=config.hls_blocking_timeout)
    from .injections import InjectionManager
    injections = InjectionManager(reactor, calls if calls is not None else {}, registry,
                                  max_injections=config.max_injections,
                                  queue_frames=config.inject_queue_frames,
                                  buffer_frames=max(1, config.inject_buffer_ms // 20))
    return _MediaService(pushes, recorders, timeout=config.shutdown_timeout, hls=hls,
                         injections=injections)


def _owner(call) -> dict:
    """The {login} and {sessionId} of a recording's call (none for a stream without one)."""
    if call is None:
        return {}
    return {"login": call.request.sip_login, "sessionId": call.sip_call_id}


class _HooksService(service.Service):
    """REST hooks (sipgw/hooks.py); stopping it closes the idle connections to app servers."""

    name = "hooks"

    def __init__(self, hooks):
        self.hooks = hooks

    def stopService(self):
        super().stopService()
        close = getattr(self.hooks.client, "close", None)
        return close() if close is not None else None


def make_hooks(config, reactor, ua: CallManager, media=None) -> _HooksService:
    """The apps of rest_apps, told of every call's, stream's, push's and recording's
    status changes."""
    from .hooks import Hooks, watch
    hooks = Hooks.from_config(config, reactor)
    watch(hooks, ua, media)
    return _HooksService(hooks)


def make_root(config, ua: CallManager, media: _MediaService | None = None, hooks=None,
              metrics=None, health=None) -> resource.Resource:
    """The REST port's tree: pages, /rest-api/, and /metrics and /health when given."""
    from .policy import AccessPolicy
    from .rest import CallApi, RestResource
    from .rest.metrics import HealthResource, MetricsResource
    from .rest.streams import StreamApi
    from .rest.openapi import OpenApi
    injections = media.injections if media is not None else None
    apis = [CallApi(ua, config, ua.reactor, pushes=media.pushes if media else None,
                    injections=injections),
            StreamApi(ua.streams), OpenApi()]
    if injections is not None:
        from .rest.inject import InjectApi
        apis.append(InjectApi(injections, config))
    if hooks is not None:
        from .rest.apps import AppApi
        apis.append(AppApi(hooks))
    if media is not None:
        from .rest.push import PushApi
        from .rest.recorder import RecorderApi
        apis += [PushApi(media.pushes, config), RecorderApi(media.recorders, ua.streams, config)]
    root = static.File(WEB_DIR)  # the daemon's own pages (SIP as stream, Player)
    access = AccessPolicy.from_config(config)
    root.putChild(b"rest-api", RestResource(*apis, access=access, max_body=config.rest_max_body))
    if metrics is not None:
        root.putChild(b"metrics", MetricsResource(metrics, access))
    if health is not None:
        root.putChild(b"health", HealthResource(health, access))
    return root


def wss_options(certificate: str, private_key: str):
    """The TLS options of every TLS listener (wss and https REST): the whole chain of
    ``certificate`` (a fullchain.pem: the leaf first, then its intermediates) is served, so
    clients that know only the root verify it."""
    from OpenSSL import SSL
    from twisted.internet import ssl
    from twisted.internet.error import VerifyError

    from .config import ConfigError
    try:
        with open(certificate, "rb") as cert, open(private_key, "rb") as key:
            chain, key_pem = PEM_CERTIFICATE.findall(cert.read()), key.read()
    except OSError as exc:
        raise ConfigError(f"wss_certificate/wss_private_key: {exc.filename}: {exc.strerror}") \
            from None
    if not chain:
        raise ConfigError(f"wss_certificate={certificate}: no PEM certificate in it")
    try:
        leaf = ssl.PrivateCertificate.loadPEM(chain[0] + b"\n" + key_pem)
        options = ssl.CertificateOptions(
            privateKey=leaf.privateKey.original, certificate=leaf.original,
            extraCertChain=[ssl.Certificate.loadPEM(pem).original for pem in chain[1:]])
        options.getContext()  # the key must match the leaf: say so at start, not per client
    except (SSL.Error, VerifyError, ValueError) as exc:
        raise ConfigError(f"wss_certificate/wss_private_key cannot be used: {exc}") from None
    return options


def make_signalling(config, ua: CallManager, reactor, parent: service.MultiService,
                    hooks=None, tls=None) -> None:
    """Websocket signalling for players: ws on ws_port, wss when a certificate is set
    (``tls``: its ``wss_options``, when the caller has them already)."""
    from .webrtc.viewer import pin_ice_host
    from .ws.signalling import SignallingFactory
    pin_ice_host(config.webrtc_ice_address)
    factory = SignallingFactory(config, ua.streams, reactor, hooks=hooks)
    ws = internet.TCPServer(config.ws_port, factory, interface=config.ws_bind_address,
                            reactor=reactor)
    ws.setName("ws")
    ws.setServiceParent(parent)
    if config.wss_certificate:
        options = tls or wss_options(config.wss_certificate, config.wss_private_key)
        wss = internet.SSLServer(config.wss_port, factory, options,
                                 interface=config.ws_bind_address, reactor=reactor)
        wss.setName("wss")
        wss.setServiceParent(parent)
    parent.signalling = factory


def make_service(config, reactor) -> service.MultiService:
    top = _Daemon(reactor)
    ports = PortPool(config.media_port_from, config.media_port_to,
                     config.sip_bind_address)
    ua = CallManager(reactor, config, ports=ports)  # the calls, and their SIP user agent
    _CallsService(ua).setServiceParent(top)
    media = make_media(config, reactor, ua.streams, ua.calls)
    media.setServiceParent(top)  # added after the UA: stopped before it
    ua.call_observers.append(media.injections.call_changed)  # a call's end stops its injection
    hooks = make_hooks(config, reactor, ua, media)
    hooks.setServiceParent(top)
    from .metrics import Health, HealthService, LagMonitor, Metrics
    from .rest.router import RestSite
    viewers: dict = {}  # filled below, once the players' factories exist
    metrics = Metrics(ua, media, viewers)
    LagMonitor(reactor, metrics.reactor_lag).setServiceParent(top)
    health = Health()
    site = RestSite(make_root(config, ua, media, hooks.hooks, metrics, health),
                    max_body=config.rest_max_body)
    rest = internet.TCPServer(config.rest_port, site, interface=config.rest_bind_address,
                              reactor=reactor)
    rest.setName("rest")
    rest.setServiceParent(top)
    health.parts.update(sip=lambda: ua.sip.transport.listening, rest=lambda: rest.running)
    tls = None
    if config.wss_certificate:  # https REST (WCS https.port) with the wss certificate
        tls = wss_options(config.wss_certificate, config.wss_private_key)  # read once, for both
        https = internet.SSLServer(config.https_port, site, tls,
                                   interface=config.rest_bind_address, reactor=reactor)
        https.setName("https")
        https.setServiceParent(top)
    make_signalling(config, ua, reactor, top, hooks.hooks, tls)
    from .policy import AccessPolicy
    from .rest.whep import WhepResource
    access = AccessPolicy.from_config(config)
    whep = WhepResource(ua.streams, top.signalling, config, access)
    site.resource.putChild(b"whep", whep)  # WHEP players, counted with the websocket's
    viewers["websocket"] = lambda: top.signalling.viewer_count() - len(whep.sessions)
    viewers["whep"] = lambda: len(whep.sessions)
    viewers["hls"] = media.hls.players  # client addresses asking within hls_idle_timeout
    if config.cluster_redis_url:  # several nodes as one service on Redis (sipgw/cluster/)
        from .cluster import attach
        attach(top, config, reactor, ua, site.resource, health)
    from .rest.hls import HlsResource
    # RestSite as on the REST port: a body is refused unread, no access-log line per segment
    hls_site = RestSite(HlsResource(media.hls, access), max_body=config.rest_max_body)
    hls = internet.TCPServer(config.hls_port, hls_site, interface=config.hls_bind_address,
                             reactor=reactor)
    hls.setName("hls")
    hls.setServiceParent(top)  # a listener: closed in the first step of _stop
    HealthService(health).setServiceParent(top)  # added last: stopped first
    top.calls = ua
    top.ua = ua.sip
    top.hooks = hooks.hooks
    top.media = media
    top.metrics = metrics
    top.health = health
    return top
