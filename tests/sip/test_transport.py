"""The transport layer (RFC 3261 §18, RFC 3581): framing, received/rport, response routing."""
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from fakes import UDPMemoryReactor

from sipgw.sip.message import make_response
from sipgw.sip.parser import parse
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


def _layer():
    reactor = UDPMemoryReactor()
    controller = RecordingController()
    layer = TransportLayer(reactor, controller, bind_address="127.0.0.1", port=0)
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
    assert ("127.0.0.1", 5999) not in layer.connections


def test_tcp_framing_error_answers_400_and_closes():
    """A stream message without Content-Length is answered 400 and the connection closed."""
    layer, reactor, controller = _layer()
    proto, transport = _tcp_connection(layer)
    proto.dataReceived(INVITE.replace(b"Content-Length: 0\r\n", b"").replace(b"/UDP", b"/TCP"))
    assert transport.value().startswith(b"SIP/2.0 400 ") and transport.disconnecting


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
    assert reactor.tcpClients and list(layer.connections) == [("127.0.0.1", 5099)]
    layer.stop()
    assert layer.port not in reactor.udp_ports
