"""The transport layer (RFC 3261 §18, RFC 3581): framing, received/rport, response routing."""
import pytest
from twisted.internet import task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from fakes import UDPMemoryReactor

from sipgw.sip.headers import URI
from sipgw.sip.message import Request, make_response
from sipgw.sip.parser import parse
from sipgw.sip.transaction import TransactionLayer, new_branch
from sipgw.sip.transport import TransportLayer

INVITE = (b"INVITE sip:bob@127.0.0.1 SIP/2.0\r\n"
          b"Via: SIP/2.0/UDP 10.0.0.7:5062;branch=z9hG4bK1;rport\r\n"
          b"From: <sip:alice@example.org>;tag=1\r\nTo: <sip:bob@example.org>\r\n"
          b"Call-ID: c@x\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n")


class RecordingController:
    """Receives what the transport delivers."""

    def __init__(self):
        self.received = []
        self.errors = []

    def receive(self, message, source):
        self.received.append((message, source))

    def transport_error(self, dest, why):
        self.errors.append((dest, why))


def _layer(bind_address="127.0.0.1"):
    reactor = UDPMemoryReactor()
    controller = RecordingController()
    layer = TransportLayer(reactor, controller, bind_address=bind_address, port=0)
    layer.start()
    return layer, reactor, controller


def test_udp_request_gets_received_and_rport_stamped():
    """A request's top Via records the source address and port (§18.2.1, RFC 3581 §4)."""
    layer, reactor, controller = _layer()
    reactor.udp_ports[layer.port].proto.datagramReceived(INVITE, ("192.0.2.1", 40000))
    (message, source), = controller.received
    via = message.top_via
    assert (via.params["received"], via.params["rport"]) == ("192.0.2.1", "40000")
    assert (source.transport, source.host, source.port) == ("UDP", "192.0.2.1", 40000)


def test_response_goes_to_received_and_rport():
    """A response to such a request is sent to the address it really came from."""
    layer, reactor, controller = _layer()
    reactor.udp_ports[layer.port].proto.datagramReceived(INVITE, ("192.0.2.1", 40000))
    (message, source), = controller.received
    layer.send_response(make_response(message, 200), source)
    (data, addr), = reactor.udp_ports[layer.port].written
    assert addr == ("192.0.2.1", 40000) and data.startswith(b"SIP/2.0 200 OK")


def test_malformed_request_gets_stateless_400_and_is_not_delivered():
    """A request with a broken CSeq is answered 400 by the transport, never handed up."""
    layer, reactor, controller = _layer()
    bad = INVITE.replace(b"CSeq: 1 INVITE", b"CSeq: 1 BYE")
    reactor.udp_ports[layer.port].proto.datagramReceived(bad, ("192.0.2.1", 40000))
    assert controller.received == []
    (data, addr), = reactor.udp_ports[layer.port].written
    assert data.startswith(b"SIP/2.0 400 ") and addr == ("192.0.2.1", 40000)


def test_garbage_is_dropped_silently():
    """Bytes that are not SIP at all get no answer and raise nothing."""
    layer, reactor, controller = _layer()
    reactor.udp_ports[layer.port].proto.datagramReceived(b"\x00\xffhello", ("192.0.2.1", 1))
    reactor.udp_ports[layer.port].proto.datagramReceived(b"\r\n\r\n", ("192.0.2.1", 1))  # keep-alive
    assert controller.received == [] and reactor.udp_ports[layer.port].written == []


def test_oversized_datagram_is_refused():
    """A message above sip_max_message_size is refused, not parsed."""
    reactor = UDPMemoryReactor()
    controller = RecordingController()
    layer = TransportLayer(reactor, controller, bind_address="127.0.0.1", port=0, max_size=200)
    layer.start()
    reactor.udp_ports[layer.port].proto.datagramReceived(INVITE, ("192.0.2.1", 40000))
    assert controller.received == []


def test_response_with_two_vias_is_dropped():
    """§18.1.2: a response whose Via list is not ours alone is discarded."""
    layer, reactor, controller = _layer()
    response = (b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKa\r\n"
                b"Via: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKb\r\nFrom: <sip:a@x>;tag=1\r\n"
                b"To: <sip:b@x>;tag=2\r\nCall-ID: c@x\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")
    reactor.udp_ports[layer.port].proto.datagramReceived(response, ("127.0.0.1", 5060))
    assert controller.received == []


def _tcp_connection(layer):
    proto = layer.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 41000))
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 41000))
    proto.makeConnection(transport)
    return proto, transport


def test_tcp_frames_by_content_length_across_segments():
    """Two requests split at odd byte boundaries come out as two messages."""
    layer, reactor, controller = _layer()
    proto, transport = _tcp_connection(layer)
    tcp_invite = INVITE.replace(b"SIP/2.0/UDP", b"SIP/2.0/TCP")
    data = tcp_invite + b"\r\n\r\n" + tcp_invite.replace(b"z9hG4bK1", b"z9hG4bK2")
    for i in range(0, len(data), 7):
        proto.dataReceived(data[i:i + 7])
    assert [m.top_via.branch for m, _ in controller.received] == ["z9hG4bK1", "z9hG4bK2"]


def test_tcp_response_reuses_the_connection_the_request_came_on():
    """§18.2.2: over TCP the response goes back on the request's connection."""
    layer, reactor, controller = _layer()
    proto, transport = _tcp_connection(layer)
    proto.dataReceived(INVITE.replace(b"SIP/2.0/UDP", b"SIP/2.0/TCP"))
    (message, source), = controller.received
    layer.send_response(make_response(message, 180), source)
    assert transport.value().startswith(b"SIP/2.0 180 Ringing")
    assert reactor.tcpClients == []


def test_tcp_request_to_a_known_peer_reuses_its_connection():
    """A request to a peer with an open connection is written on it, no new connect."""
    layer, reactor, controller = _layer()
    proto, transport = _tcp_connection(layer)
    request = parse(INVITE)
    layer.send(request, "TCP", "127.0.0.1", 41000)
    assert transport.value().startswith(b"INVITE ") and reactor.tcpClients == []


def test_tcp_request_to_a_new_peer_connects_and_queues():
    """A request to a new TCP peer opens a connection and is sent once it is up."""
    layer, reactor, controller = _layer()
    layer.send(parse(INVITE), "TCP", "127.0.0.1", 5999)
    host, port, factory, _, _ = reactor.tcpClients[0]
    assert (host, port) == ("127.0.0.1", 5999)
    proto = factory.buildProtocol(IPv4Address("TCP", host, port))
    transport = StringTransport(peerAddress=IPv4Address("TCP", host, port))
    proto.makeConnection(transport)
    assert transport.value().startswith(b"INVITE ")


def test_tcp_connect_failure_is_reported_to_the_controller():
    """A refused TCP connection reaches the transaction layer as a transport error."""
    layer, reactor, controller = _layer()
    layer.send(parse(INVITE), "TCP", "127.0.0.1", 5999)
    factory = reactor.tcpClients[0][2]

    class Connector:
        def getDestination(self):
            return IPv4Address("TCP", "127.0.0.1", 5999)

    from twisted.python.failure import Failure
    from twisted.internet.error import ConnectionRefusedError
    factory.clientConnectionFailed(Connector(), Failure(ConnectionRefusedError()))
    assert controller.errors and controller.errors[0][0] == ("127.0.0.1", 5999)
    assert ("TCP", "127.0.0.1", 5999) not in layer.connections


def test_tcp_malformed_message_is_answered_400_and_the_next_one_still_read():
    """A stream message without Content-Length, or with a bad CSeq, is answered 400 and the
    connection stays open: the good request after them is delivered (resynchronized)."""
    layer, reactor, controller = _layer()
    proto, transport = _tcp_connection(layer)
    tcp_invite = INVITE.replace(b"/UDP", b"/TCP")
    proto.dataReceived(tcp_invite.replace(b"Content-Length: 0\r\n", b"")
                       + tcp_invite.replace(b"CSeq: 1 INVITE", b"CSeq: 1 BYE"))
    proto.dataReceived(tcp_invite.replace(b"z9hG4bK1", b"z9hG4bK2"))
    assert transport.value().count(b"SIP/2.0 400 ") == 2 and not transport.disconnecting
    (message, source), = controller.received
    assert message.top_via.branch == "z9hG4bK2" and source.connection is proto


def test_tcp_oversized_message_answers_and_closes():
    """A message beyond sip_max_message_size leaves the stream unusable: closed (§18.3)."""
    reactor = UDPMemoryReactor()
    layer = TransportLayer(reactor, RecordingController(), bind_address="127.0.0.1", port=0,
                           max_size=200)
    layer.start()
    proto, transport = _tcp_connection(layer)
    proto.dataReceived(INVITE.replace(b"/UDP", b"/TCP"))
    assert transport.disconnecting


def test_udp_send_error_becomes_a_transport_error():
    """An OSError from the socket (no route) fails the transaction instead of raising."""
    layer, reactor, controller = _layer()

    def refuse(data, addr):
        raise OSError(101, "Network is unreachable")
    reactor.udp_ports[layer.port].write = refuse
    layer.send(parse(INVITE), "UDP", "192.0.2.1", 5060)
    assert controller.errors == []  # reported on the next turn, not re-entrantly
    reactor.advance(0)
    assert controller.errors == [(("192.0.2.1", 5060), "[Errno 101] Network is unreachable")]


def test_response_never_goes_to_maddr_or_a_received_the_sender_wrote():
    """§18.2.2: the answer goes to the packet's source (its Via port without rport, the
    source port with rport), whatever maddr= or received= the sender wrote in its Via."""
    for rport, expected in ((b"", ("192.0.2.1", 5062)), (b";rport", ("192.0.2.1", 40000))):
        layer, reactor, controller = _layer()
        forged = INVITE.replace(b"Via: SIP/2.0/UDP 10.0.0.7:5062;branch=z9hG4bK1;rport",
                                b"Via: SIP/2.0/UDP 192.0.2.1:5062;branch=z9hG4bK1;"
                                b"maddr=203.0.113.9;received=198.51.100.1" + rport)
        reactor.udp_ports[layer.port].proto.datagramReceived(forged, ("192.0.2.1", 40000))
        (message, source), = controller.received
        assert message.top_via.params["received"] == "192.0.2.1"
        layer.send_response(make_response(message, 603), source)
        (data, addr), = reactor.udp_ports[layer.port].written
        assert addr == expected


def test_stateless_400_goes_to_the_source_not_to_maddr():
    """A malformed request's 400 goes back to the packet's source, never to its maddr."""
    layer, reactor, controller = _layer()
    bad = INVITE.replace(b";rport", b";rport;maddr=203.0.113.9").replace(
        b"CSeq: 1 INVITE", b"CSeq: 1 BYE")
    reactor.udp_ports[layer.port].proto.datagramReceived(bad, ("192.0.2.1", 40000))
    (data, addr), = reactor.udp_ports[layer.port].written
    assert data.startswith(b"SIP/2.0 400 ") and addr == ("192.0.2.1", 40000)


def test_malformed_datagrams_are_logged_at_most_once_per_source_per_interval():
    """A flood of malformed datagrams from one source is one log line per 10 s, with the
    count held back; another source still gets its own line."""
    from twisted.logger import globalLogPublisher
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        layer, reactor, controller = _layer()
        proto = reactor.udp_ports[layer.port].proto
        bad = INVITE.replace(b"CSeq: 1 INVITE", b"CSeq: 1 BYE")
        for _ in range(500):
            proto.datagramReceived(bad, ("192.0.2.1", 40000))
        proto.datagramReceived(bad, ("192.0.2.2", 40000))
        reactor.advance(10)
        proto.datagramReceived(bad, ("192.0.2.1", 40000))
    finally:
        globalLogPublisher.removeObserver(events.append)
    lines = [e for e in events if e.get("log_namespace") == "sipgw.sip.transport"
             and "malformed" in e.get("log_format", "")]
    assert [(e["host"], e["more"]) for e in lines] == [
        ("192.0.2.1", ""), ("192.0.2.2", ""), ("192.0.2.1", " (499 more held back)")]


def _tcp_layer(**limits):
    reactor = UDPMemoryReactor()
    controller = RecordingController()
    layer = TransportLayer(reactor, controller, bind_address="127.0.0.1", port=0, **limits)
    layer.start()
    return layer, reactor, controller


def _accept(layer, port):
    peer = IPv4Address("TCP", "192.0.2.9", port)
    proto = layer.factory.buildProtocol(peer)
    transport = StringTransport(peerAddress=peer)
    proto.makeConnection(transport)
    return proto, transport


def test_tcp_connections_beyond_the_cap_are_closed_at_once():
    """Beyond sip_max_tcp_connections a new inbound connection is aborted before it is read;
    a closed one frees its place."""
    from twisted.python.failure import Failure
    from twisted.internet.error import ConnectionDone
    layer, reactor, controller = _tcp_layer(max_tcp_connections=2)
    first, _ = _accept(layer, 41001)
    _accept(layer, 41002)
    third, transport = _accept(layer, 41003)
    assert transport.disconnecting and ("TCP", "192.0.2.9", 41003) not in layer.connections
    third.connectionLost(Failure(ConnectionDone()))
    assert layer.tcp_open == 2
    first.connectionLost(Failure(ConnectionDone()))
    _, transport = _accept(layer, 41004)
    assert not transport.disconnecting and layer.tcp_open == 2


def test_idle_tcp_connection_is_closed_after_the_idle_timeout():
    """No byte either way for sip_tcp_idle_timeout closes the connection; traffic defers it."""
    layer, reactor, _ = _tcp_layer(tcp_idle_timeout=30)
    proto, transport = _accept(layer, 41001)
    reactor.advance(29)
    proto.dataReceived(b"\r\n\r\n")  # a keep-alive is traffic
    reactor.advance(29)
    proto.send(b"\r\n\r\n")
    reactor.advance(29)
    assert not transport.disconnecting
    reactor.advance(2)
    assert transport.disconnecting


def test_a_message_trickled_slower_than_the_message_timeout_is_cut():
    """A message begun must be complete within sip_tcp_message_timeout, however many bytes
    trickle in meanwhile; a complete message stops the clock."""
    layer, reactor, controller = _tcp_layer(tcp_message_timeout=5, tcp_idle_timeout=30)
    tcp_invite = INVITE.replace(b"SIP/2.0/UDP", b"SIP/2.0/TCP")
    proto, transport = _accept(layer, 41001)
    proto.dataReceived(tcp_invite[:10])
    reactor.advance(4)
    proto.dataReceived(tcp_invite[10:])
    reactor.advance(4.5)
    assert len(controller.received) == 1 and not transport.disconnecting
    for i in range(4):
        proto.dataReceived(tcp_invite[i:i + 1])
        reactor.advance(1.5)
    assert transport.disconnecting and len(controller.received) == 1


def test_a_9_kb_udp_response_is_read_whole():
    """A 9 KB 200 OK over UDP arrives whole: the socket reads up to sip_max_message_size,
    not Twisted's default 8,192 bytes."""
    layer, reactor, controller = _layer()
    sdp = b"v=0\r\n" + b"a=x-filler:" + b"x" * 9000 + b"\r\n"
    response = (b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKa\r\n"
                b"From: <sip:a@x>;tag=1\r\nTo: <sip:b@x>;tag=2\r\nCall-ID: c@x\r\n"
                b"CSeq: 1 INVITE\r\nContent-Type: application/sdp\r\n"
                b"Content-Length: " + str(len(sdp)).encode() + b"\r\n\r\n" + sdp)
    reactor.udp_ports[layer.port].receive(response, ("127.0.0.1", 5060))
    (message, source), = controller.received
    assert message.status == 200 and message.body == sdp


def test_a_dual_stack_socket_reaches_ipv4_peers_by_their_mapped_address():
    """Bound to ::, an IPv4 peer is written to as ::ffff:a.b.c.d (Twisted refuses a bare IPv4
    address on an IPv6 socket), and one that writes to us is seen as a.b.c.d."""
    layer, reactor, controller = _layer("::")
    port = reactor.udp_ports[layer.port]
    port.receive(INVITE, ("::ffff:192.0.2.1", 40000))
    (message, source), = controller.received
    assert (source.host, message.top_via.params["received"]) == ("192.0.2.1", "192.0.2.1")
    layer.send_response(make_response(message, 200), source)
    layer.send(message, "UDP", "::1", 5060)
    assert [addr for _, addr in port.written] == [("::ffff:192.0.2.1", 40000), ("::1", 5060)]


def test_an_address_of_the_other_family_is_a_transport_error():
    """An IPv6 destination on an IPv4 socket fails the transaction (transport error), it
    does not raise into the caller."""
    layer, reactor, controller = _layer()
    layer.send(parse(INVITE), "UDP", "2001:db8::1", 5060)
    reactor.advance(0)
    (dest, why), = controller.errors
    assert dest == ("2001:db8::1", 5060)


def test_nothing_is_sent_once_stopped():
    """After stop() a send (a late retransmission) writes nothing and raises nothing."""
    layer, reactor, controller = _layer()
    port = reactor.udp_ports[layer.port]
    layer.stop()
    layer.send(parse(INVITE), "UDP", "127.0.0.1", 5060)
    assert port.written == [] and controller.errors == []


def test_stop_with_a_tcp_connection_still_being_made():
    """stop() while a TCP connection is still connecting closes the rest without an
    AttributeError on its missing transport."""
    layer, reactor, controller = _layer()
    layer.send(parse(INVITE), "TCP", "127.0.0.1", 5099)
    assert reactor.tcpClients and list(layer.connections) == [("TCP", "127.0.0.1", 5099)]
    layer.stop()
    assert layer.port not in reactor.udp_ports


def _tls_pair(layer, reactor, tmp_path, names, client_ca=None):
    """The TLS client layer.send just started, connected in memory to a TLS server whose
    certificate (from a test CA the layer trusts) names ``names``; returns the pump and the
    server's protocol (a StringTransport-like recorder of what it read)."""
    from twisted.internet import protocol, ssl
    from twisted.internet.address import IPv4Address
    from twisted.protocols.tls import TLSMemoryBIOFactory
    from twisted.test import iosim

    from certs import TestCA

    cert, key = TestCA.instance.issue(names, tmp_path)
    server_cert = ssl.PrivateCertificate.loadPEM(cert.read_bytes() + key.read_bytes())
    if client_ca is None:
        server_options = server_cert.options()
    else:  # the server asks for a client certificate from ``client_ca`` and refuses others
        server_options = server_cert.options(ssl.Certificate.loadPEM(client_ca.path.read_bytes()))

    class Reader(protocol.Protocol):
        data = b""

        def dataReceived(self, data):
            self.data += data

    reader = Reader()
    server_factory = TLSMemoryBIOFactory(server_options, False,
                                         protocol.Factory.forProtocol(lambda: reader))
    host, port, client_factory = reactor.tcpClients[-1][:3]
    address = IPv4Address("TCP", host, port)
    client = client_factory.buildProtocol(address)
    server = server_factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    pump = iosim.connect(server, iosim.FakeTransport(server, True),
                         client, iosim.FakeTransport(client, False, peerAddress=address),
                         greet=False)
    pump.flush()
    reactor.advance(0)  # small TLS writes are sent together on the next turn
    pump.flush()
    return pump, reader


def _tls_layer(tmp_path, certificate="", private_key=""):
    from certs import TestCA
    from sipgw.sip.transport import TLSClientSettings

    TestCA.instance = TestCA(tmp_path)
    reactor = UDPMemoryReactor()
    controller = RecordingController()
    layer = TransportLayer(reactor, controller, bind_address="127.0.0.1", port=0,
                           tls=TLSClientSettings(str(TestCA.instance.path), certificate,
                                                 private_key))
    layer.start()
    return layer, reactor, controller


def test_tls_request_goes_over_a_verified_tls_connection_reused_per_destination(tmp_path):
    """A request to a TLS destination goes out over TLS to a server whose certificate the
    CA of sip_tls_ca_file signed for the name asked; a second one reuses the connection; TCP
    to the same address and port is a connection of its own."""
    layer, reactor, controller = _tls_layer(tmp_path)
    layer.server_names[("127.0.0.1", 5061)] = "sip.test"
    layer.send(parse(INVITE), "TLS", "127.0.0.1", 5061)
    pump, reader = _tls_pair(layer, reactor, tmp_path, ["sip.test"])
    assert reader.data.startswith(b"INVITE sip:bob@127.0.0.1")
    layer.send(parse(INVITE), "TLS", "127.0.0.1", 5061)
    reactor.advance(0)
    pump.flush()
    assert reader.data.count(b"INVITE sip:") == 2 and len(reactor.tcpClients) == 1
    assert list(layer.connections) == [("TLS", "127.0.0.1", 5061)]
    layer.send(parse(INVITE), "TCP", "127.0.0.1", 5061)
    assert len(reactor.tcpClients) == 2 and ("TCP", "127.0.0.1", 5061) in layer.connections
    assert controller.errors == []


def test_tls_server_whose_certificate_names_another_host_fails_with_the_reason(tmp_path):
    """A server certificate that does not name the host asked for: nothing is sent in
    clear, and the transaction layer is told why (the call fails with that reason)."""
    layer, reactor, controller = _tls_layer(tmp_path)
    layer.server_names[("127.0.0.1", 5061)] = "sip.test"
    layer.send(parse(INVITE), "TLS", "127.0.0.1", 5061)
    pump, reader = _tls_pair(layer, reactor, tmp_path, ["other.test"])
    assert reader.data == b""
    (dest, why), = controller.errors
    assert dest == ("127.0.0.1", 5061)
    assert why == "TLS with sip.test failed: the server's certificate does not name sip.test"
    assert layer.connections == {}


def test_tls_server_with_a_certificate_of_an_unknown_ca_fails_with_the_reason(tmp_path):
    """A certificate that no CA of sip_tls_ca_file signed fails the connection with
    OpenSSL's reason."""
    from certs import TestCA

    layer, reactor, controller = _tls_layer(tmp_path)
    TestCA.instance = TestCA(tmp_path, "Another CA")
    layer.send(parse(INVITE), "TLS", "127.0.0.1", 5061)
    pump, reader = _tls_pair(layer, reactor, tmp_path, ["127.0.0.1"])
    assert reader.data == b""
    (dest, why), = controller.errors
    assert why == "TLS with 127.0.0.1 failed: certificate verify failed"


def test_tls_client_certificate_is_shown_to_a_server_that_asks_for_it(tmp_path):
    """sip_tls_certificate/sip_tls_private_key: a server that requires a client certificate
    from its CA accepts ours and reads the request; without one its refusal (a TLS 1.3 alert
    after the handshake) fails the transactions with the reason."""
    from certs import TestCA

    (tmp_path / "client").mkdir()
    client_ca = TestCA(tmp_path / "client", "Client CA")
    cert, key = client_ca.issue(["sipgw.test"], tmp_path / "client", "client")
    layer, reactor, controller = _tls_layer(tmp_path, str(cert), str(key))
    layer.send(parse(INVITE), "TLS", "127.0.0.1", 5061)
    pump, reader = _tls_pair(layer, reactor, tmp_path, ["127.0.0.1"], client_ca=client_ca)
    assert reader.data.startswith(b"INVITE ") and controller.errors == []
    without, reactor, controller = _tls_layer(tmp_path / "client")
    without.send(parse(INVITE), "TLS", "127.0.0.1", 5061)
    pump, reader = _tls_pair(without, reactor, tmp_path, ["127.0.0.1"], client_ca=client_ca)
    assert reader.data == b""
    assert controller.errors == [(("127.0.0.1", 5061),
                                  "TLS with 127.0.0.1 failed: tlsv13 alert certificate required")]


def _garbled(status_line: bytes, branch: str) -> bytes:
    return (status_line + b"\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=" + branch.encode()
            + b"\r\nFrom: <sip:alice@127.0.0.1>;tag=a1\r\nTo: <sip:bob@127.0.0.1>;tag=b\r\n"
            b"Call-ID: c1@test\r\nCSeq: 1 INVITE\r\nContact: <<sip:broken\r\n"
            b"Content-Length: 0\r\n\r\n")


@pytest.mark.parametrize("status_line, status", [(b"SIP/2.0 486 Busy Here", 486),
                                                 (b"SIP/2.0 200 OK", 500)])
def test_garbled_final_response_reaches_its_client_transaction(status_line, status):
    """A final response that does not parse but names its transaction (Via branch, CSeq,
    Call-ID) ends the INVITE at once (its own failure status, or 500 for a broken 2xx),
    over UDP and TCP, instead of waiting for Timer B."""
    for kind in ("UDP", "TCP"):
        clock = task.Clock()
        reactor = UDPMemoryReactor()
        layer = TransportLayer(reactor, None, bind_address="127.0.0.1", port=0)
        transactions = TransactionLayer(clock, RecordingController(), layer)
        layer.controller = transactions
        layer.start()
        got = []
        request = Request("INVITE", URI.parse("sip:bob@127.0.0.1"), [
            ("Via", f"SIP/2.0/{kind} 127.0.0.1:5070;branch={new_branch()}"),
            ("From", "<sip:alice@127.0.0.1>;tag=a1"), ("To", "<sip:bob@127.0.0.1>"),
            ("Call-ID", "c1@test"), ("CSeq", "1 INVITE"), ("Max-Forwards", "70")])
        transactions.send_request(request, "UDP", "127.0.0.1", 5060, got.append)
        data = _garbled(status_line, request.top_via.branch)
        if kind == "UDP":
            reactor.udp_ports[layer.port].proto.datagramReceived(data, ("127.0.0.1", 5060))
        else:
            _tcp_connection(layer)[0].dataReceived(data.replace(b"/UDP", b"/TCP"))
        clock.advance(1)
        assert [r.status for r in got] == [status], kind


def test_keepalive_is_a_double_crlf_on_tcp_and_stun_on_udp():
    """RFC 5626 §4.4.1: a double CRLF on the TCP connection to the peer; §4.4.2: on UDP a
    STUN Binding request (type 1, length 0, magic cookie), whose answer on the SIP port is
    ignored, not logged as malformed SIP."""
    layer, reactor, controller = _layer()
    proto, transport = _tcp_connection(layer)
    layer.send_keepalive("TCP", "127.0.0.1", 41000)
    assert transport.value() == b"\r\n\r\n"
    layer.send_keepalive("UDP", "192.0.2.1", 5060)
    (data, addr), = reactor.udp_ports[layer.port].written
    assert addr == ("192.0.2.1", 5060) and len(data) == 20
    assert data[:8] == b"\x00\x01\x00\x00\x21\x12\xa4\x42"
    answer = b"\x01\x01\x00\x0c\x21\x12\xa4\x42" + data[8:20] + b"\x00\x20\x00\x08" + bytes(8)
    reactor.udp_ports[layer.port].proto.datagramReceived(answer, ("192.0.2.1", 5060))
    assert controller.received == [] and len(reactor.udp_ports[layer.port].written) == 1


def test_a_double_crlf_ping_on_tcp_gets_a_crlf_pong():
    """RFC 5626 §4.4.1: a peer's double-CRLF keep-alive between messages is answered with
    one CRLF, and the next message is read as usual."""
    layer, reactor, controller = _layer()
    proto, transport = _tcp_connection(layer)
    proto.dataReceived(b"\r\n\r\n")
    assert transport.value() == b"\r\n" and not transport.disconnecting
    proto.dataReceived(INVITE.replace(b"/UDP", b"/TCP"))
    assert len(controller.received) == 1


def test_port_zero_takes_another_port_when_tcp_is_taken_on_the_udp_one():
    """sip_local_port=0: the kernel's free UDP port can be in use for TCP (an outgoing
    connection's source port); the layer tries another instead of failing to start."""
    from twisted.internet.error import CannotListenError
    reactor = UDPMemoryReactor()
    real = reactor.listenTCP
    taken = {40000}

    def listen_tcp(port, factory, backlog=50, interface=""):
        if port in taken:
            raise CannotListenError(interface, port, OSError(98, "Address already in use"))
        return real(port, factory, backlog, interface)
    reactor.listenTCP = listen_tcp
    layer = TransportLayer(reactor, RecordingController(), bind_address="127.0.0.1", port=0)
    layer.start()
    assert layer.port == 40001 and list(reactor.udp_ports) == [40001]
    assert [p[0] for p in reactor.tcpServers] == [40001]
