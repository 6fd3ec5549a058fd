"""The one place that wires the layers into a MultiService."""
from __future__ import annotations

from twisted.application import internet, service
from twisted.web import resource, server

from .rtp.ports import PortPool
from .sip.ua import UserAgent


class _UserAgentService(service.Service):
    name = "sip"

    def __init__(self, ua: UserAgent):
        self.ua = ua

    def startService(self):
        super().startService()
        self.ua.start()

    def stopService(self):
        super().stopService()
        return self.ua.stop()


def make_root(config, ua: UserAgent) -> resource.Resource:
    from .rest import CallApi, RestResource
    from .rest.streams import StreamApi
    root = resource.Resource()
    root.putChild(b"rest-api", RestResource(CallApi(ua), StreamApi(ua.streams),
                                            allow_origin=config.rest_cors_origin))
    return root


class _QuietSite(server.Site):
    """The REST layer logs one line per request itself; no second access log."""

    def log(self, request):
        pass


def make_service(config, reactor) -> service.MultiService:
    top = service.MultiService()
    ports = PortPool(config.media_port_from, config.media_port_to,
                     config.sip_bind_address)
    ua = UserAgent(reactor, config, ports=ports)
    _UserAgentService(ua).setServiceParent(top)
    site = _QuietSite(make_root(config, ua))
    rest = internet.TCPServer(config.rest_port, site, interface=config.rest_bind_address,
                              reactor=reactor)
    rest.setName("rest")
    rest.setServiceParent(top)
    top.ua = ua
    return top
