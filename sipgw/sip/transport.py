"""SIP over UDP, TCP and TLS (RFC 3261 §18 and §26.3.1, RFC 3581, RFC 5922).

``TransportLayer`` owns one UDP port and one TCP listener on the same number, plus
outbound TLS connections (no TLS listener: a peer's requests come back over the
connection sipgw opened, which its top Via names with RFC 5923 ``alias``),
frames and parses bytes, stamps ``received``/``rport`` on requests (§18.2.1),
answers unparseable requests with a stateless 400, and sends responses back
the way §18.2.2 says. Parsed messages go to a controller:
``controller.receive(message, source)``. The reactor is passed in.
"""
from __future__ import annotations

import collections
import functools
import ipaddress
import re
import secrets
import socket
from dataclasses import dataclass

from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet import protocol, ssl
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IHandshakeListener
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

from ..loglimit import LogLimiter, held_back
from ..sockbuf import set_receive_buffer
from .headers import Via
from .message import Request, Response, make_response
from .parser import MAX_MESSAGE_SIZE, ParseError, StreamParser, parse

log = Logger(namespace="sipgw.sip.transport")

# RFC 3261 §18.1.1: with the path MTU unknown, a request larger than 1300 bytes goes over a
# congestion-controlled transport (TCP), not UDP.
UDP_SIZE_THRESHOLD = 1300
# TLS certificate names kept by (address, port) (``server_names``); the least recently named
# go first, so peers' sips: Record-Routes and Contacts cannot grow it without bound.
MAX_SERVER_NAMES = 4096


def set_top_via(request: Request, transport: str, branch: str | None = None) -> None:
    """Change the transport of the top Via (§18.1.1: it must say what carries the request),
    and its branch when the request goes out again as a new transaction."""
    vias = request.get_all("Via")
    top = Via.parse(vias[0])
    top.transport = transport
    if branch:
        top.params["branch"] = branch
    request.remove("Via")
    for value in [str(top)] + vias[1:]:
        request.add("Via", value)


def transport_for(request: Request, transport: str) -> str:
    """The transport a request really goes over: TCP instead of UDP when it is larger than
    UDP_SIZE_THRESHOLD (RFC 3261 §18.1.1), with its top Via changed to say so."""
    if transport != "UDP" or request.method == "ACK":
        return transport
    size = len(bytes(request))
    if size <= UDP_SIZE_THRESHOLD:
        return transport
    set_top_via(request, "TCP")
    log.info("{method} of {size} bytes sent over TCP, not UDP: larger than {limit} bytes "
             "(RFC 3261 §18.1.1)", method=request.method, size=size, limit=UDP_SIZE_THRESHOLD)
    return "TCP"


# Methods counted by name; any other (a peer may send any token) is counted as "other", so
# the counters stay bounded whatever arrives.
COUNTED_METHODS = frozenset({"INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "INFO",
                             "PRACK", "UPDATE", "SUBSCRIBE", "NOTIFY", "REFER", "MESSAGE",
                             "PUBLISH"})


def message_key(message) -> tuple[str, str]:
    """(method, "") of a request, (its CSeq method, status code) of a response; a method
    not in COUNTED_METHODS is "other"."""
    if isinstance(message, Request):
        method, code = message.method, ""
    else:
        try:
            method = message.cseq.method
        except (KeyError, ValueError):  # a stateless answer to a request with a bad CSeq
            method = "other"
        code = str(message.status)
    return (method if method in COUNTED_METHODS else "other"), code


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


def unmapped(host: str) -> str:
    """An IPv4 peer of a dual-stack (``::``) socket shows as ::ffff:a.b.c.d: a.b.c.d."""
    return host[7:] if host.lower().startswith("::ffff:") and "." in host else host


@functools.lru_cache(maxsize=1024)  # pure: a host text is an address or not, for ever
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
        if data[0] < 2:
            return  # STUN (RFC 5389 §6: first two bits 0), the answer to our keep-alive
        self.layer.bytes_received += len(data)
        source = Source("UDP", unmapped(addr[0]), addr[1])
        try:
            message = parse(data, self.layer.max_size)
        except ParseError as exc:
            self.layer.reject(exc, source)
            return
        self.layer.deliver(message, source)


class _TCPProtocol(protocol.Protocol):
    """One SIP TCP connection, in or out: framing, plus the idle timeout (no byte either way
    for ``sip_tcp_idle_timeout``) and the message timeout (a message begun but not complete
    within ``sip_tcp_message_timeout``), both of which close it."""

    kind = "TCP"

    def __init__(self, layer: "TransportLayer", inbound: bool = True):
        self.layer = layer
        self.inbound = inbound
        self.parser = StreamParser(layer.max_size)
        self.pending: list[bytes] = []
        self.peer: tuple[str, int] | None = None
        self.counted = False
        self._idle = None
        self._partial = None

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        self.peer = (unmapped(peer.host), peer.port)
        layer = self.layer
        if self.inbound and layer.max_tcp_connections and layer.tcp_open >= layer.max_tcp_connections:
            layer.note(peer.host, "SIP TCP connection from {host} refused: "
                       f"sip_max_tcp_connections={layer.max_tcp_connections} are open")
            self.transport.abortConnection()
            return
        self.counted = True
        layer.tcp_open += 1
        layer.connections[self.key] = self
        if layer.tcp_idle_timeout:
            self._idle = layer.reactor.callLater(layer.tcp_idle_timeout, self._timed_out,
                                                 "idle for sip_tcp_idle_timeout")
        for data in self.pending:
            self.transport.write(data)
        self.pending = []

    @property
    def key(self) -> tuple[str, str, int]:
        """(kind, host, port): connections are reused per transport and destination."""
        return (self.kind, *self.peer)

    def wrap(self, factory, server_name: str):
        """The client factory to connect: plain TCP as it is."""
        return factory

    def _active(self) -> None:
        if self._idle is not None and self._idle.active():
            self._idle.reset(self.layer.tcp_idle_timeout)

    def _timed_out(self, why: str) -> None:
        self.layer.note(self.peer[0], f"SIP TCP connection with {{host}} closed: {why}")
        self.transport.abortConnection()

    def send(self, data: bytes) -> None:
        if self.transport is None or not self.transport.connected:
            self.pending.append(data)
        else:
            self._active()
            self.transport.write(data)

    def dataReceived(self, data: bytes) -> None:
        self.layer.bytes_received += len(data)
        self._active()
        source = Source(self.kind, self.peer[0], self.peer[1], self)
        if data == b"\r\n\r\n" and not self.parser.pending:
            self.send(b"\r\n")  # RFC 5626 §4.4.1: a double-CRLF ping gets a CRLF pong
            return
        try:
            messages = self.parser.feed(data)
        except ParseError as exc:
            # A message beyond the size limit leaves the stream unusable (RFC 3261 §18.3).
            self.layer.reject(exc, source)
            self.transport.loseConnection()
            return
        self._time_partial(bool(messages))
        for message in messages:
            # A malformed message is answered or dropped; the next one is still read.
            if isinstance(message, ParseError):
                self.layer.reject(message, source)
            else:
                self.layer.deliver(message, source)

    def _time_partial(self, completed: bool) -> None:
        """The message timeout runs from a message's first byte to its last."""
        if self._partial is not None and (completed or not self.parser.pending):
            if self._partial.active():
                self._partial.cancel()
            self._partial = None
        timeout = self.layer.tcp_message_timeout
        if timeout and self._partial is None and self.parser.pending:
            self._partial = self.layer.reactor.callLater(
                timeout, self._timed_out, "a message not complete within sip_tcp_message_timeout")

    def connectionLost(self, reason) -> None:
        for timer in (self._idle, self._partial):
            if timer is not None and timer.active():
                timer.cancel()
        if self.counted:
            self.counted = False
            self.layer.tcp_open -= 1
        if self.peer and self.layer.connections.get(self.key) is self:
            del self.layer.connections[self.key]


@implementer(IHandshakeListener)
class _TLSProtocol(_TCPProtocol):
    """One outbound SIP-over-TLS connection: TCP framing under Twisted's TLS, the server's
    certificate checked against the URI's host (RFC 5922 §7.2, service-identity). A
    connection that closes before its handshake completed, or on a TLS error, fails its
    transactions with the TLS error as the reason."""

    kind = "TLS"
    handshake_done = False
    server_name = ""

    def wrap(self, factory, server_name: str):
        self.server_name = server_name
        return TLSMemoryBIOFactory(self.layer.tls.options_for(server_name), True, factory,
                                   clock=self.layer.reactor)

    def handshakeCompleted(self) -> None:
        self.handshake_done = True

    def connectionLost(self, reason) -> None:
        super().connectionLost(reason)
        # A TLS alert after the handshake (TLS 1.3: the server refusing our client
        # certificate) fails the transactions as well.
        failed = not self.handshake_done or reason.check(SSL.Error)
        if failed and not self.inbound and not self.layer._stopped:
            why = f"TLS with {self.server_name} failed: {tls_failure(reason, self.server_name)}"
            log.warn("SIP {why}", why=why)
            self.layer.controller.transport_error(self.peer, why)


STREAM_KINDS = {"TCP": _TCPProtocol, "TLS": _TLSProtocol}


def tls_failure(reason, server_name: str) -> str:
    """A short reason for a failed TLS handshake: OpenSSL's error strings, or the
    service-identity mismatch."""
    if reason.check(VerificationError):
        return f"the server's certificate does not name {server_name}"
    error = reason.value
    if isinstance(error, SSL.Error) and error.args and isinstance(error.args[0], list):
        return ", ".join(entry[-1] for entry in error.args[0] if entry[-1]) or "handshake failed"
    return reason.getErrorMessage()


PEM_CERTIFICATE = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


def _read(setting: str, path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise ValueError(f"{setting}={path}: {exc.strerror}") from None


class TLSClientSettings:
    """``sip_tls_ca_file`` (PEM bundle; empty: the system's trust store) and the optional
    client certificate ``sip_tls_certificate``/``sip_tls_private_key``, read once."""

    def __init__(self, ca_file: str = "", certificate: str = "", private_key: str = ""):
        self.trust = ssl.platformTrust()
        if ca_file:
            certs = PEM_CERTIFICATE.findall(_read("sip_tls_ca_file", ca_file))
            if not certs:
                raise ValueError(f"sip_tls_ca_file={ca_file}: no PEM certificate in it")
            self.trust = ssl.trustRootFromCertificates([ssl.Certificate.loadPEM(c) for c in certs])
        self.client = None
        if certificate:
            pem = _read("sip_tls_certificate", certificate)
            if private_key:
                pem += b"\n" + _read("sip_tls_private_key", private_key)
            try:
                self.client = ssl.PrivateCertificate.loadPEM(pem)
            except Exception as exc:
                raise ValueError(f"sip_tls_certificate/sip_tls_private_key cannot be used: "
                                 f"{exc}") from None

    def options_for(self, server_name: str):
        return ssl.optionsForClientTLS(server_name.strip("[]"), trustRoot=self.trust,
                                       clientCertificate=self.client)


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
    """UDP and TCP SIP transports sharing one port number, and outbound TLS."""

    def __init__(self, reactor, controller, *, bind_address: str = "0.0.0.0", port: int = 5070,
                 advertised_address: str = "", max_size: int = MAX_MESSAGE_SIZE,
                 max_tcp_connections: int = 0, tcp_idle_timeout: float = 0,
                 tcp_message_timeout: float = 0, tls: TLSClientSettings | None = None,
                 receive_buffer: int = 0):
        self.reactor = reactor
        self.receive_buffer = receive_buffer  # the UDP socket's SO_RCVBUF; 0: the system's
        self.controller = controller
        self.bind_address = bind_address
        self.port = port
        self.advertised_address = advertised_address
        self.max_size = max_size
        self.max_tcp_connections = max_tcp_connections
        self.tcp_idle_timeout = tcp_idle_timeout
        self.tcp_message_timeout = tcp_message_timeout
        self.tcp_open = 0  # connections up, in and out
        self.connections: dict[tuple[str, str, int], _TCPProtocol] = {}  # by (kind, host, port)
        self._tls = tls
        # The name a TLS server's certificate must carry, by (address, port): the URI host
        # the address was resolved from (RFC 5922 §7.2); else the address itself.
        self.server_names: dict[tuple[str, int], str] = {}
        # Our address as a registrar behind a NAT sees it, by (transport, its host, port):
        # learned from received/rport (RFC 3581 §4), used in Contact (contact_address).
        self.public: dict[tuple[str, str, int], tuple[str, int]] = {}
        self.factory = _TCPFactory(self)
        self.bytes_received = 0
        # Messages by (method, status code or ""): read by the metrics at scrape time.
        self.received: collections.Counter = collections.Counter()
        self.sent: collections.Counter = collections.Counter()
        self.log_limiter = LogLimiter(reactor)
        self._udp = None
        self._tcp = None
        self._stopped = False

    def start(self) -> None:
        # Port 0: the kernel's free UDP port may be taken for TCP (an outgoing connection's
        # source port): try again with another, a few times.
        tries = 20 if self.port == 0 else 1
        for attempt in range(tries):
            # Read whole datagrams up to sip_max_message_size (Twisted cuts at 8,192 by
            # default); one byte more lets the parser refuse a larger one as too large.
            self._udp = self.reactor.listenUDP(self.port if tries == 1 else 0, _UDPProtocol(self),
                                               interface=self.bind_address,
                                               maxPacketSize=self.max_size + 1)
            port = self._udp.getHost().port
            if self.receive_buffer and getattr(self._udp, "socket", None) is not None:
                set_receive_buffer(self._udp.socket, self.receive_buffer,
                                   "sip_udp_receive_buffer_bytes")
            try:
                self._tcp = self.reactor.listenTCP(port, self.factory, interface=self.bind_address)
            except CannotListenError:
                self._udp.stopListening()
                if attempt == tries - 1:
                    raise
                continue
            self.port = port
            break
        log.info("SIP listening on {addr}:{port} (UDP and TCP)", addr=self.bind_address, port=self.port)

    @property
    def tls(self) -> TLSClientSettings:
        if self._tls is None:
            self._tls = TLSClientSettings()
        return self._tls

    def stop(self):
        self._stopped = True
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

    def contact_address(self, transport: str, host: str, port: int) -> tuple[str, int]:
        """(host, port) for a Contact sent to host:port: the public address learned from
        that peer when there is one (``public``), else ``sent_by`` and our port."""
        return self.public.get((transport, host, port)) or (self.sent_by(host), self.port)

    def send_keepalive(self, transport: str, host: str, port: int) -> None:
        """RFC 5626 keep-alive: a double CRLF on a TCP/TLS connection (§4.4.1); on UDP,
        where RFC 5626 defines no CRLF keep-alive, a STUN Binding request (§4.4.2,
        RFC 5389 §6: type 0x0001, length 0, magic cookie, 96-bit transaction id)."""
        if transport in STREAM_KINDS:
            conn = self.connections.get((transport, host, port))
            if conn is not None:
                conn.send(b"\r\n\r\n")
        elif self._udp is not None:
            stun = b"\x00\x01\x00\x00\x21\x12\xa4\x42" + secrets.token_bytes(12)
            try:
                self._udp.write(stun, (host.strip("[]"), port))
            except (OSError, ValueError) as exc:
                log.debug("STUN keep-alive to {host}:{port} failed: {why}", host=host,
                          port=port, why=str(exc))

    # -- inbound -----------------------------------------------------------
    @staticmethod
    def _stamp_via(request: Request, source: Source) -> None:
        """RFC 3261 §18.2.1 and RFC 3581 §4: note where the request came from. A ``received``
        the sender wrote itself is overwritten with the real source."""
        vias = request.get_all("Via")
        via = request.top_via
        if via.host == source.host and not {"rport", "received"} & via.params.keys():
            return
        via.params["received"] = source.host
        if "rport" in via.params:
            via.params["rport"] = str(source.port)
        request.remove("Via")
        request.add("Via", str(via))
        for value in vias[1:]:
            request.add("Via", value)

    @property
    def listening(self) -> bool:
        """Both listeners are open (started, not stopped): /health."""
        return self._udp is not None and self._tcp is not None and not self._stopped

    def deliver(self, message, source: Source) -> None:
        self.received[message_key(message)] += 1
        if isinstance(message, Request):
            self._stamp_via(message, source)
        elif len(message.vias) != 1:
            # §18.1.2: a response with more than one Via is not ours; drop it.
            held = self.log_limiter.allow(source.host)
            if held is not None:
                log.info("dropped response with {n} Via headers from {host}{more}",
                         n=len(message.vias), host=source.host, more=held_back(held))
            return
        self.controller.receive(message, source)

    def note(self, host: str, text: str) -> None:
        """Log a per-connection event about ``host`` through the rate limiter."""
        held = self.log_limiter.allow(host)
        if held is not None:
            log.info(text + "{more}", host=host, more=held_back(held))

    def reject(self, error: ParseError, source: Source) -> None:
        """Answer a malformed request statelessly (§21.4.1); hand a malformed response that
        still names its transaction up as a final failure (``parser.salvage``); drop
        anything else."""
        held = self.log_limiter.allow(source.host)
        if held is not None:
            log.info("malformed SIP from {host}:{port}: {error}{more}", host=source.host,
                     port=source.port, error=str(error), more=held_back(held))
        if error.response is not None:
            self.deliver(error.response, source)
            return
        if error.request is not None and error.request.method != "ACK":  # never answer an ACK
            self._stamp_via(error.request, source)
            response = make_response(error.request, error.status, extra=[("Warning", (
                '399 sipgw "' + str(error).replace('"', "'")[:200] + '"'))])
            self.send_response(response, source)

    # -- outbound ----------------------------------------------------------
    transport_for = staticmethod(transport_for)

    def send(self, message, transport: str, host: str, port: int) -> None:
        """Send a request (or ACK) to host:port over the named transport."""
        if self._udp is None:  # stopped (or not started): nothing goes out any more
            log.debug("SIP transport closed: not sending to {host}:{port}", host=host, port=port)
            return
        data = bytes(message)
        self.sent[message_key(message)] += 1
        if transport in STREAM_KINDS:
            conn = self.connections.get((transport, host, port))
            if conn is None:
                conn = self._connect(transport, host, port)
            conn.send(data)
        else:
            address = host.strip("[]")
            if getattr(self._udp, "addressFamily", None) == socket.AF_INET6 and "." in address:
                address = "::ffff:" + address  # an IPv4 peer through a dual-stack socket
            try:
                self._udp.write(data, (address, port))
            except (OSError, ValueError) as exc:
                # No route to host, or an address of the other family (an IPv6 Record-Route
                # on an IPv4 socket): fail the transaction, not us.
                log.warn("SIP UDP send to {host}:{port} failed: {why}", host=host, port=port,
                         why=str(exc))
                self.reactor.callLater(0, self.controller.transport_error, (host, port), str(exc))

    def _connect(self, transport: str, host: str, port: int) -> _TCPProtocol:
        proto = STREAM_KINDS[transport](self, inbound=False)
        proto.peer = (host, port)
        self.connections[proto.key] = proto
        name = self.server_names.get((host, port), host)
        factory = proto.wrap(_OneShotFactory(self, proto), name)
        self.reactor.connectTCP(host, port, factory, timeout=10)
        return proto

    def send_response(self, response: Response, source: Source | None = None) -> None:
        """Route a response to where its request came from (RFC 3261 §18.2.2 ``received``,
        RFC 3581 §4 ``rport`` when the request asked for it). Never to a ``maddr``: a sender
        must not aim our answers at a third party."""
        via = response.top_via
        transport = via.transport
        if transport in STREAM_KINDS and source is not None and source.connection is not None:
            conn = source.connection
            if conn.transport is not None and conn.transport.connected:
                self.sent[message_key(response)] += 1
                conn.send(bytes(response))
                return
        if source is not None:
            host = source.host
            port = source.port if "rport" in via.params else (via.port or 5060)
        else:  # the Via was stamped by _stamp_via on the way in
            host = via.params.get("received") or via.host
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
        if self.layer.connections.get(self.proto.key) is self.proto:
            del self.layer.connections[self.proto.key]
        super().clientConnectionFailed(connector, reason)
