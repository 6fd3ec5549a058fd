"""The UDP port a call's RTP or RTCP socket reads through.

Twisted's ``udp.Port`` with two per-call and per-packet costs taken out (measured in
bench/README.md, issue 16):

- On the asyncio reactor (the one the daemon runs), the socket is registered with the
  asyncio loop itself: a wake-up calls ``doRead`` directly instead of through Twisted's
  ``callWithLogger`` log context and ``_readOrWrite``, about 3 us a wake-up; with a
  socket per call a wake-up usually finds one packet. Any other reactor (tests) reads
  through Twisted as usual.
- A socket that had one datagram a wake-up (a call's audio or video among many calls)
  is read one datagram a wake-up: the loop calls again while more are queued, so the
  read that only finds the queue empty (a system call and an exception, about 1.2 us)
  is skipped; every ``PROBE_EVERY``-th wake-up reads on until the queue is empty, and
  finding more than one there goes back to reading all that is queued (a busy socket).
- Opening and closing logs nothing: ``udp.Port`` logs "starting on" and "Closed" for
  every port through the legacy log, two sockets a call, four lines nobody reads.

Everything else is ``udp.Port``'s: ``write``, ``stopListening`` (closes on the next
reactor turn), ``getHost``, ``CannotListenError`` on a port in use.
"""
from __future__ import annotations

import errno
import socket

from twisted.internet import base, error, udp
from twisted.logger import Logger

from ..sockbuf import set_receive_buffer

__all__ = ["RtpPort", "listen_udp"]

log = Logger(namespace="sipgw.rtp")

_IGNORED = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR, errno.ECONNREFUSED})
PROBE_EVERY = 8  # wake-ups: how often a socket read one at a time checks for a queue


_FAMILIES: dict[str, int] = {}  # the address family of each bind address seen


class RtpPort(udp.Port):
    """A UDP port for RTP/RTCP on the asyncio reactor (see the module's doc)."""

    logstr = "RtpPort (UDP)"

    def __init__(self, port: int, proto, interface: str, reactor):
        super().__init__(port, proto, interface, maxPacketSize=8192, reactor=reactor)
        self._loop = reactor._asyncioEventloop
        self._reading = False
        self._single = 0  # > 0: one datagram a wake-up; counts the wake-ups to the next probe

    # Opened and closed twice a call: udp.Port's steps without what a call's port does not
    # need (its log prefix from the protocol, the address family parsed from the bind address
    # for every port, getsockname for a port that is not 0, the close's timer on Twisted's
    # heap): about 10 us a port.
    def setLogStr(self) -> None:
        pass  # the class's logstr

    def _setAddressFamily(self) -> None:
        family = _FAMILIES.get(self.interface)
        if family is None:
            super()._setAddressFamily()
            if len(_FAMILIES) < 64:  # bind addresses come from the settings: a handful
                _FAMILIES[self.interface] = self.addressFamily
        else:
            self.addressFamily = family

    def _bindSocket(self) -> None:  # udp.Port's, without its log line
        try:
            skt = self.createInternetSocket()
            skt.bind((self.interface, self.port))
        except OSError as e:
            raise error.CannotListenError(self.interface, self.port, e)
        self._realPortNumber = self.port or skt.getsockname()[1]
        self.connected = 1
        self.socket = skt
        self.fileno = skt.fileno

    def _loseConnection(self) -> None:
        self.stopReading()
        if self.connected:  # closed on the loop's next turn, as udp.Port does
            self._loop.call_soon(self._close)

    def _close(self) -> None:
        try:
            self.connectionLost()
        except Exception:
            log.failure("UDP port {port}: closing failed", port=self.port)

    def startReading(self) -> None:
        if not self._reading:
            self._loop.add_reader(self.socket.fileno(), self._readable)
            self._reading = True

    def stopReading(self) -> None:
        if self._reading:
            self._reading = False
            self._loop.remove_reader(self.socket.fileno())

    def _readable(self) -> None:
        try:
            self.doRead()
        except Exception:
            log.failure("UDP port {port}: reading failed", port=self._realPortNumber)

    def doRead(self) -> None:
        """Up to ``maxThroughput`` bytes of datagrams, to the protocol's
        ``datagramsReceived`` as one list if it has one, else each to
        ``datagramReceived``; or one datagram, on a socket that has one a wake-up (see the
        module's doc)."""
        if self._single:
            self._single += 1
            if self._single <= PROBE_EVERY:
                self._read_one()
                return
        recvfrom = self.socket.recvfrom
        size = self.maxPacketSize
        v6 = self.addressFamily == socket.AF_INET6
        batch = []
        read = 0
        try:
            while read < self.maxThroughput:
                try:
                    data, addr = recvfrom(size)
                except OSError as e:
                    if e.errno in _IGNORED:
                        self._single = len(batch) == 1
                        return
                    raise
                read += len(data)
                # without flow info and scope id, as udp.Port gives it
                batch.append((data, addr[:2] if v6 else addr))
        finally:
            if batch:
                self._deliver(batch)

    def _deliver(self, batch) -> None:
        many = getattr(self.protocol, "datagramsReceived", None)
        if many is not None:
            try:
                many(batch)
            except Exception:
                log.failure("UDP port {port}: the datagrams' handler failed",
                            port=self._realPortNumber)
            return
        for data, addr in batch:
            try:
                self.protocol.datagramReceived(data, addr)
            except Exception:
                log.failure("UDP port {port}: a datagram's handler failed",
                            port=self._realPortNumber)

    def _read_one(self) -> None:
        try:
            data, addr = self.socket.recvfrom(self.maxPacketSize)
        except OSError as e:
            if e.errno in _IGNORED:
                return
            raise
        if self.addressFamily == socket.AF_INET6:
            addr = addr[:2]
        try:
            self.protocol.datagramReceived(data, addr)
        except Exception:
            log.failure("UDP port {port}: a datagram's handler failed", port=self._realPortNumber)

    def connectionLost(self, reason=None) -> None:  # udp.Port's, without its log line
        self._realPortNumber = None
        self.maxThroughput = -1
        base.BasePort.connectionLost(self, reason)
        self.protocol.doStop()
        self.socket.close()
        del self.socket
        del self.fileno
        if hasattr(self, "d"):
            self.d.callback(None)
            del self.d


def listen_udp(reactor, port: int, proto, interface: str, receive_buffer: int = 0):
    """``reactor.listenUDP``, through ``RtpPort`` on the asyncio reactor; with
    ``receive_buffer`` (bytes) the socket's SO_RCVBUF (``rtp_receive_buffer_bytes``)."""
    if getattr(reactor, "_asyncioEventloop", None) is None:
        return reactor.listenUDP(port, proto, interface=interface)
    p = RtpPort(port, proto, interface, reactor)
    p.startListening()
    if receive_buffer:
        set_receive_buffer(p.socket, receive_buffer, "rtp_receive_buffer_bytes")
    return p
