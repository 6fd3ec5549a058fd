"""SIP over UDP and TCP (RFC 3261 §18, RFC 3581).

``TransportLayer`` owns one UDP port and one TCP listener on the same number,
frames and parses bytes, stamps ``received``/``rport`` on requests (§18.2.1),
answers unparseable requests with a stateless 400, and sends responses back
the way §18.2.2 says. Parsed messages go to a controller:
``controller.receive(message, source)``. The reactor is passed in.
"""
from __future__ import annotations

import functools
import ipaddress
import socket
from dataclasses import dataclass

from twisted.internet import protocol
from twisted.logger import Logger

from .message import Request, Response, make_response
from .parser import MAX_MESSAGE_SIZE, ParseError, StreamParser, parse

log = Logger(namespace="sipgw.sip.transport")


@dataclass(frozen=True)
class Source:
    """Where a message came from: transport name, address, and the TCP connection if any."""

    transport: str
    host: str
    port: int
    connection: object | None = None


@functools.lru_cache(maxsize=256)
def local_address_for(host: str) -> str:
    """The local IP the kernel would use to reach ``host`` (no packet is sent); cached, as
    every Via and Contact asks for it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((host, 9))
            return probe.getsockname()[0]
        except OSError:
            return "127.0.0.1"


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        return False


class _UDPProtocol(protocol.DatagramProtocol):
    noisy = False
    def __init__(self, layer: "TransportLayer"):
        self.layer = layer

    def datagramReceived(self, data: bytes, addr) -> None:
        if not data.strip(b"\r\n"):
            return  # RFC 5626 keep-alive
        self.layer.bytes_received += len(data)
        try:
            message = parse(data, self.layer.max_size)
        except ParseError as exc:
            self.layer.reject(exc, Source("UDP", addr[0], addr[1]))
            return
        self.layer.deliver(message, Source("UDP", addr[0], addr[1]))


class _TCPProtocol(protocol.Protocol):
    def __init__(self, layer: "TransportLayer"):
        self.layer = layer
        self.parser = StreamParser(layer.max_size)
        self.pending: list[bytes] = []
        self.peer: tuple[str, int] | None = None

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        self.peer = (peer.host, peer.port)
        self.layer.connections[self.peer] = self
        for data in self.pending:
            self.transport.write(data)
        self.pending = []

    def send(self, data: bytes) -> None:
        if self.transport is None or not self.transport.connected:
            self.pending.append(data)
        else:
            self.transport.write(data)

    def dataReceived(self, data: bytes) -> None:
        self.layer.bytes_received += len(data)
        source = Source("TCP", self.peer[0], self.peer[1], self)
        try:
            messages = self.parser.feed(data)
        except ParseError as exc:
            # A framing error leaves the stream unusable (RFC 3261 §18.3).
            self.layer.reject(exc, source)
            self.transport.loseConnection()
            return
        for message in messages:
            self.layer.deliver(message, source)

    def connectionLost(self, reason) -> None:
        if self.peer and self.layer.connections.get(self.peer) is self:
            del self.layer.connections[self.peer]


class _TCPFactory(protocol.ClientFactory):
    noisy = False
    def __init__(self, layer: "TransportLayer"):
        self.layer = layer

    def buildProtocol(self, addr):
        return _TCPProtocol(self.layer)

    def clientConnectionFailed(self, connector, reason):
        dest = connector.getDestination()
        log.warn("SIP TCP connection to {host}:{port} failed: {why}", host=dest.host,
                 port=dest.port, why=reason.getErrorMessage())
        self.layer.controller.transport_error((dest.host, dest.port), reason.getErrorMessage())


class TransportLayer:
    """UDP and TCP SIP transports sharing one port number."""

    def __init__(self, reactor, controller, *, bind_address: str = "0.0.0.0", port: int = 5070,
                 advertised_address: str = "", max_size: int = MAX_MESSAGE_SIZE):
        self.reactor = reactor
        self.controller = controller
        self.bind_address = bind_address
        self.port = port
        self.advertised_address = advertised_address
        self.max_size = max_size
        self.connections: dict[tuple[str, int], _TCPProtocol] = {}
        self.factory = _TCPFactory(self)
        self.bytes_received = 0
        self._udp = None
        self._tcp = None

    def start(self) -> None:
        self._udp = self.reactor.listenUDP(self.port, _UDPProtocol(self), interface=self.bind_address)
        self.port = self._udp.getHost().port
        self._tcp = self.reactor.listenTCP(self.port, self.factory, interface=self.bind_address)
        log.info("SIP listening on {addr}:{port} (UDP and TCP)", addr=self.bind_address, port=self.port)

    def stop(self):
        for conn in list(self.connections.values()):
            if conn.transport is not None:  # None: still connecting
                conn.transport.loseConnection()
        udp, tcp, self._udp, self._tcp = self._udp, self._tcp, None, None
        if udp is not None:
            udp.stopListening()
        if tcp is not None:
            return tcp.stopListening()

    def sent_by(self, dest_host: str) -> str:
        """The address to put in Via and Contact for messages to ``dest_host``."""
        if self.advertised_address:
            return self.advertised_address
        if self.bind_address not in ("0.0.0.0", "::", ""):
            return self.bind_address
        return local_address_for(dest_host)

    # -- inbound -----------------------------------------------------------
    @staticmethod
    def _stamp_via(request: Request, source: Source) -> None:
        """RFC 3261 §18.2.1 and RFC 3581 §4: note where the request came from."""
        vias = request.get_all("Via")
        via = request.top_via
        if via.host == source.host and "rport" not in via.params:
            return
        via.params["received"] = source.host
        if "rport" in via.params:
            via.params["rport"] = str(source.port)
        request.remove("Via")
        request.add("Via", str(via))
        for value in vias[1:]:
            request.add("Via", value)

    def deliver(self, message, source: Source) -> None:
        if isinstance(message, Request):
            self._stamp_via(message, source)
        elif len(message.vias) != 1:
            # §18.1.2: a response with more than one Via is not ours; drop it.
            log.info("dropped response with {n} Via headers", n=len(message.vias))
            return
        self.controller.receive(message, source)

    def reject(self, error: ParseError, source: Source) -> None:
        """Answer a malformed request statelessly; drop anything else (§21.4.1)."""
        log.info("malformed SIP from {host}:{port}: {error}", host=source.host, port=source.port,
                 error=str(error))
        if error.request is not None and error.request.method != "ACK":  # never answer an ACK
            self._stamp_via(error.request, source)
            response = make_response(error.request, error.status, extra=[("Warning", (
                '399 sipgw "' + str(error).replace('"', "'")[:200] + '"'))])
            self.send_response(response, source)

    # -- outbound ----------------------------------------------------------
    def send(self, message, transport: str, host: str, port: int) -> None:
        """Send a request (or ACK) to host:port over the named transport."""
        if self._udp is None:  # stopped (or not started): nothing goes out any more
            log.debug("SIP transport closed: not sending to {host}:{port}", host=host, port=port)
            return
        data = bytes(message)
        if transport == "TCP":
            conn = self.connections.get((host, port))
            if conn is None:
                conn = self._connect(host, port)
            conn.send(data)
        else:
            try:
                self._udp.write(data, (host, port))
            except OSError as exc:  # e.g. no route to host: fail the transaction, not us
                log.warn("SIP UDP send to {host}:{port} failed: {why}", host=host, port=port,
                         why=str(exc))
                self.reactor.callLater(0, self.controller.transport_error, (host, port), str(exc))

    def _connect(self, host: str, port: int) -> _TCPProtocol:
        proto = _TCPProtocol(self)
        proto.peer = (host, port)
        self.connections[(host, port)] = proto

        factory = _OneShotFactory(self, proto)
        self.reactor.connectTCP(host, port, factory, timeout=10)
        return proto

    def send_response(self, response: Response, source: Source | None = None) -> None:
        """Route a response by its top Via (RFC 3261 §18.2.2, RFC 3581 §4)."""
        via = response.top_via
        transport = via.transport
        if transport == "TCP" and source is not None and source.connection is not None:
            conn = source.connection
            if conn.transport is not None and conn.transport.connected:
                conn.send(bytes(response))
                return
        host = via.params.get("maddr") or via.params.get("received") or via.host
        rport = via.params.get("rport")
        port = int(rport) if rport else (via.port or 5060)
        self.send(response, transport, host, port)


class _OneShotFactory(_TCPFactory):
    """Connects a pre-made protocol so messages can queue before the connection is up."""

    def __init__(self, layer, proto):
        super().__init__(layer)
        self.proto = proto

    def buildProtocol(self, addr):
        return self.proto

    def clientConnectionFailed(self, connector, reason):
        if self.layer.connections.get(self.proto.peer) is self.proto:
            del self.layer.connections[self.proto.peer]
        super().clientConnectionFailed(connector, reason)
