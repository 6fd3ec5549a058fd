"""The one place that wires the layers into a MultiService."""
from __future__ import annotations

import os

from twisted.application import internet, service
from twisted.internet import defer
from twisted.logger import FilteringLogObserver, Logger, PredicateResult, globalLogPublisher
from twisted.web import resource, server, static

from .rtp.ports import PortPool
from .sip.ua import UserAgent


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


class _UserAgentService(service.Service):
    name = "sip"

    def __init__(self, ua: UserAgent):
        self.ua = ua

    def startService(self):
        super().startService()
        _filter_log_observers(_drop_udp_port_chatter)
        self.ua.start()

    def stopService(self):
        super().stopService()
        return self.ua.stop()  # fires with its counts once the sockets are closed


class _MediaService(service.Service):
    """RTMP pushes and recordings; stopping it finalizes every open recording and closes
    every push, both within ``timeout`` seconds."""

    name = "media"

    def __init__(self, pushes, recorders, timeout: float = 10.0):
        self.pushes = pushes
        self.recorders = recorders
        self.timeout = timeout

    def stopService(self):
        super().stopService()
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
        close pushes, all within ``shutdown_timeout``; (3) close the SIP sockets; then log
        one summary line."""
        service.Service.stopService(self)
        return defer.ensureDeferred(self._stop())

    async def _stop(self) -> None:
        started = self.reactor.seconds()
        sip, media = self.getServiceNamed("sip"), self.getServiceNamed("media")
        sip.ua.accepting = False
        await defer.DeferredList([defer.maybeDeferred(s.stopService) for s in self
                                  if s not in (sip, media)])
        results = await defer.DeferredList([defer.maybeDeferred(sip.stopService),
                                            defer.maybeDeferred(media.stopService)],
                                           consumeErrors=True)
        counts = {}
        for ok, result in results:
            if ok:
                counts.update(result)
            else:
                log.failure("shutdown step failed", result)
        log.info("stopped in {seconds:.2f} s: {calls} call(s) ended ({answered} answered, "
                 "the rest at the deadline), {unregistered} registration(s) removed "
                 "({not_unregistered} not), {finalized} recording(s) finalized "
                 "({not_finalized} not), {pushes} push(es) closed ({pushes_aborted} aborted)",
                 seconds=self.reactor.seconds() - started,
                 **{k: counts.get(k, "?") for k in (
                     "calls", "answered", "unregistered", "not_unregistered", "finalized",
                     "not_finalized", "pushes", "pushes_aborted")})


def make_media(config, reactor, registry) -> _MediaService:
    """/push/* and recording (sip_record_stream): PyAV work on worker threads."""
    from .config import ConfigError
    from .media.push import PushManager
    from .media.recorder import BadFileName, RecorderManager
    pushes = PushManager(reactor, registry, reconnect_min=config.rtmp_reconnect_delay,
                         reconnect_max=config.rtmp_reconnect_max_delay,
                         timeout=config.rtmp_timeout)
    try:
        recorders = RecorderManager(reactor, registry, config.record_dir,
                                    config.record_file_template, auto=config.sip_record_stream)
    except BadFileName as exc:
        raise ConfigError(f"record_file_template: {exc}") from None
    return _MediaService(pushes, recorders, timeout=config.shutdown_timeout)


def make_root(config, ua: UserAgent, media: _MediaService | None = None) -> resource.Resource:
    from .rest import CallApi, RestResource
    from .rest.streams import StreamApi
    apis = [CallApi(ua), StreamApi(ua.streams)]
    if media is not None:
        from .rest.push import PushApi
        from .rest.recorder import RecorderApi
        apis += [PushApi(media.pushes), RecorderApi(media.recorders, ua.streams)]
    root = static.File(WEB_DIR)  # the daemon's own pages (SIP as stream, Player)
    root.putChild(b"rest-api", RestResource(*apis, allow_origin=config.rest_cors_origin))
    return root


def make_signalling(config, ua: UserAgent, reactor, parent: service.MultiService) -> None:
    """Websocket signalling for players: ws on ws_port, wss when a certificate is set."""
    from .webrtc.viewer import pin_ice_host
    from .ws.signalling import SignallingFactory
    pin_ice_host(config.webrtc_ice_address)
    factory = SignallingFactory(config, ua.streams, reactor)
    ws = internet.TCPServer(config.ws_port, factory, interface=config.ws_bind_address,
                            reactor=reactor)
    ws.setName("ws")
    ws.setServiceParent(parent)
    if config.wss_certificate:
        from twisted.internet import ssl
        with open(config.wss_certificate, "rb") as cert, open(config.wss_private_key, "rb") as key:
            options = ssl.PrivateCertificate.loadPEM(cert.read() + b"\n" + key.read()).options()
        wss = internet.SSLServer(config.wss_port, factory, options,
                                 interface=config.ws_bind_address, reactor=reactor)
        wss.setName("wss")
        wss.setServiceParent(parent)
    parent.signalling = factory


class _QuietSite(server.Site):
    """The REST layer logs one line per request itself; no second access log."""

    def log(self, request):
        pass


def make_service(config, reactor) -> service.MultiService:
    top = _Daemon(reactor)
    ports = PortPool(config.media_port_from, config.media_port_to,
                     config.sip_bind_address)
    ua = UserAgent(reactor, config, ports=ports)
    _UserAgentService(ua).setServiceParent(top)
    media = make_media(config, reactor, ua.streams)
    media.setServiceParent(top)
    site = _QuietSite(make_root(config, ua, media))
    rest = internet.TCPServer(config.rest_port, site, interface=config.rest_bind_address,
                              reactor=reactor)
    rest.setName("rest")
    rest.setServiceParent(top)
    make_signalling(config, ua, reactor, top)
    top.ua = ua
    top.media = media
    return top
