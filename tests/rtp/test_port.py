"""sipgw/rtp/port.py: RtpPort on a real asyncio loop and real sockets (loopback)."""
from __future__ import annotations

import asyncio
import socket

import pytest
from twisted.internet import asyncioreactor, protocol
from twisted.logger import globalLogPublisher

from sipgw import sockbuf
from sipgw.rtp.port import PROBE_EVERY, RtpPort, listen_udp


class Recorder(protocol.DatagramProtocol):
    def __init__(self, loop, fail_on=None):
        self.got = []
        self.loop = loop
        self.fail_on = fail_on
        self.waiter = None
        self.want = 0

    def datagramReceived(self, data, addr):
        self.got.append((data, addr))
        if data == self.fail_on:
            raise ValueError("a handler bug")
        if self.waiter is not None and len(self.got) >= self.want and not self.waiter.done():
            self.waiter.set_result(None)

    def wait_for(self, count: int, timeout: float = 5.0) -> None:
        """Run the loop until ``count`` datagrams came in (an event, not a sleep)."""
        if len(self.got) >= count:
            return
        self.want = count
        self.waiter = self.loop.create_future()
        self.loop.run_until_complete(asyncio.wait_for(self.waiter, timeout))


@pytest.fixture
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture
def reactor(loop):
    """An asyncio reactor on a private loop (not installed: the tests' global reactor stays)."""
    return asyncioreactor.AsyncioSelectorReactor(loop)


@pytest.fixture
def logged():
    events = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def sender(family=socket.AF_INET, host="127.0.0.1"):
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.bind((host, 0))
    return s


def test_datagrams_reach_the_protocol_with_the_source_address(reactor, loop, logged):
    proto = Recorder(loop)
    port = listen_udp(reactor, 0, proto, "127.0.0.1")
    assert isinstance(port, RtpPort)
    tx = sender()
    try:
        target = ("127.0.0.1", port.getHost().port)
        for i in range(5):
            tx.sendto(b"packet %d" % i, target)
        proto.wait_for(5)
        assert proto.got == [(b"packet %d" % i, tx.getsockname()) for i in range(5)]
        port.write(b"back", tx.getsockname())  # udp.Port's write
        assert tx.recvfrom(100) == (b"back", target)
    finally:
        tx.close()
        port.stopListening()
    # opening and closing a call's ports logs nothing (udp.Port logs two lines a port)
    loop.run_until_complete(asyncio.sleep(0))
    assert not [e for e in logged if "UDP Port" in str(e.get("log_format", ""))
                or "starting on" in str(e.get("log_format", ""))]


def test_a_socket_with_one_datagram_a_wake_up_is_read_one_at_a_time(reactor, loop):
    proto = Recorder(loop)
    port = listen_udp(reactor, 0, proto, "127.0.0.1")
    tx = sender()
    target = ("127.0.0.1", port.getHost().port)
    try:
        tx.sendto(b"a", target)
        proto.wait_for(1)
        assert port._single  # the read found the queue empty after one datagram
        reads = []
        real = port.socket
        port.socket = _Counting(real, reads)
        # A burst now: single reads until the probe, which finds a queue and reads it all.
        for i in range(3 * PROBE_EVERY):
            tx.sendto(b"b%d" % i, target)
        proto.wait_for(1 + 3 * PROBE_EVERY)
        assert [d for d, _ in proto.got[1:]] == [b"b%d" % i for i in range(3 * PROBE_EVERY)]
        assert not port._single  # back to reading whatever is queued
        # every datagram read once, plus one empty read at the end of the probe's batch
        assert reads.count("data") == 3 * PROBE_EVERY and reads.count("empty") <= 2
        port.socket = real
    finally:
        tx.close()
        port.stopListening()


class _Counting:
    """A socket stand-in counting recvfrom calls that found data and that found none."""

    def __init__(self, sock, reads):
        self._sock = sock
        self._reads = reads

    def recvfrom(self, size):
        try:
            out = self._sock.recvfrom(size)
        except BlockingIOError:
            self._reads.append("empty")
            raise
        self._reads.append("data")
        return out

    def __getattr__(self, name):
        return getattr(self._sock, name)


def test_a_handler_error_is_logged_and_reading_goes_on(reactor, loop, logged):
    proto = Recorder(loop, fail_on=b"bad")
    port = listen_udp(reactor, 0, proto, "127.0.0.1")
    tx = sender()
    target = ("127.0.0.1", port.getHost().port)
    try:
        for data in (b"one", b"bad", b"two"):
            tx.sendto(data, target)
        proto.wait_for(3)
        assert [d for d, _ in proto.got] == [b"one", b"bad", b"two"]
        failures = [e for e in logged if e.get("log_failure") is not None]
        assert len(failures) == 1 and "handler failed" in failures[0]["log_format"]
        for e in failures:
            e["log_failure"].trap(ValueError)
    finally:
        tx.close()
        port.stopListening()


class BatchRecorder(Recorder):
    """A protocol taking a wake-up's datagrams at once (as sipgw's RTP sockets do)."""

    def __init__(self, loop):
        super().__init__(loop)
        self.batches = []

    def datagramsReceived(self, batch):
        self.batches.append(len(batch))
        for data, addr in batch:
            self.datagramReceived(data, addr)


def test_a_wake_up_reads_everything_queued_as_one_batch(reactor, loop):
    proto = BatchRecorder(loop)
    port = listen_udp(reactor, 0, proto, "127.0.0.1")
    tx = sender()
    try:
        for i in range(50):  # queued before the loop runs: one wake-up finds them all
            tx.sendto(b"%d" % i, ("127.0.0.1", port.getHost().port))
        proto.wait_for(50)
        assert [d for d, _ in proto.got] == [b"%d" % i for i in range(50)]
        assert proto.batches == [50] and not port._single
    finally:
        tx.close()
        port.stopListening()


def test_stop_listening_closes_the_socket_and_stops_reading(reactor, loop):
    proto = Recorder(loop)
    port = listen_udp(reactor, 0, proto, "127.0.0.1")
    fd = port.fileno()
    d = port.stopListening()
    assert fd not in {key.fd for key in loop._selector.get_map().values()}
    done = []
    d.addCallback(done.append)
    loop.run_until_complete(asyncio.sleep(0))  # closes on the next turn, as udp.Port does
    assert done == [None] and not port.connected
    with pytest.raises(AttributeError):
        port.socket


def test_a_port_in_use_raises_cannot_listen(reactor, loop):
    from twisted.internet import error
    first = listen_udp(reactor, 0, Recorder(loop), "127.0.0.1")
    try:
        with pytest.raises(error.CannotListenError):
            listen_udp(reactor, first.getHost().port, Recorder(loop), "127.0.0.1")
    finally:
        first.stopListening()


def test_ipv6_sources_are_host_and_port(reactor, loop):
    try:
        tx = sender(socket.AF_INET6, "::1")
    except OSError:
        pytest.skip("no IPv6 loopback here")
    proto = Recorder(loop)
    port = listen_udp(reactor, 0, proto, "::1")
    try:
        tx.sendto(b"six", ("::1", port.getHost().port))
        proto.wait_for(1)
        assert proto.got == [(b"six", tx.getsockname()[:2])]
    finally:
        tx.close()
        port.stopListening()


def test_other_reactors_listen_through_twisted(clock):
    """tests/fakes.py's UDP reactor (the unit tests'), or any reactor but asyncio's."""
    proto = Recorder(None)
    port = listen_udp(clock, 40000, proto, "127.0.0.1")
    assert not isinstance(port, RtpPort) and clock.udp_ports[40000].proto is proto


def rmem_max() -> int:
    with open("/proc/sys/net/core/rmem_max") as f:
        return int(f.read())


def test_the_receive_buffer_is_set_and_a_cap_is_logged_once(reactor, loop, logged, monkeypatch):
    monkeypatch.setattr(sockbuf, "_granted", {})
    cap = rmem_max()
    asked = min(cap, 300_000)
    port = listen_udp(reactor, 0, Recorder(loop), "127.0.0.1", receive_buffer=asked)
    try:
        assert port.socket.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == 2 * asked
    finally:
        port.stopListening()
    assert not [e for e in logged if "rmem_max" in e.get("log_format", "")]
    if cap > 1 << 30:
        return  # no cap worth the name to run into
    ports = [listen_udp(reactor, 0, Recorder(loop), "127.0.0.1", receive_buffer=cap + 4096)
             for _ in range(2)]
    try:
        for port in ports:  # the kernel's cap, not the request
            assert port.socket.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == 2 * cap
    finally:
        for port in ports:
            port.stopListening()
    capped = [e for e in logged if "rmem_max" in e.get("log_format", "")]
    assert len(capped) == 1 and capped[0]["got"] == cap and capped[0]["size"] == cap + 4096
    assert capped[0]["setting"] == "rtp_receive_buffer_bytes"


def test_no_receive_buffer_keeps_the_system_default(reactor, loop):
    plain = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    port = listen_udp(reactor, 0, Recorder(loop), "127.0.0.1", receive_buffer=0)
    try:
        assert (port.socket.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
                == plain.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))
    finally:
        plain.close()
        port.stopListening()
