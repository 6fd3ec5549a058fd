"""sip_udp_receive_buffer_bytes: the SIP UDP socket's SO_RCVBUF, on a real reactor and socket."""
import asyncio
import socket

import pytest
from twisted.internet import asyncioreactor

from sipgw import sockbuf
from sipgw.sip.transport import TransportLayer


@pytest.fixture
def reactor():
    loop = asyncio.new_event_loop()
    yield asyncioreactor.AsyncioSelectorReactor(loop)
    loop.close()


def rcvbuf(layer) -> int:
    return layer._udp.socket.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)


def test_the_sip_udp_socket_gets_its_receive_buffer(reactor, monkeypatch):
    monkeypatch.setattr(sockbuf, "_granted", {})
    with open("/proc/sys/net/core/rmem_max") as f:
        asked = min(int(f.read()), 300_000)
    layer = TransportLayer(reactor, None, bind_address="127.0.0.1", port=0,
                           receive_buffer=asked)
    default = TransportLayer(reactor, None, bind_address="127.0.0.1", port=0)
    layer.start()
    default.start()
    try:
        plain = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        assert rcvbuf(layer) == 2 * asked  # the kernel doubles what it is asked for
        assert rcvbuf(default) == plain.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        plain.close()
    finally:
        for transport in (layer, default):
            transport._udp.stopListening()
            transport._tcp.stopListening()
