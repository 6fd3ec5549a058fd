"""A socket's receive buffer (SO_RCVBUF), for SIP's and RTP's UDP sockets.

What a socket can queue while the reactor is busy elsewhere (a garbage collection, a burst of
REST requests): past it the kernel drops datagrams (``RcvbufErrors`` in /proc/net/snmp), a
peer retransmits its SIP request 500 ms later, a picture's packets are lost. The kernel
doubles the request for its own bookkeeping and caps it at ``net.core.rmem_max`` (208 KiB on a
stock Debian): a cap is logged once per setting, with the sysctl that lifts it.
"""
from __future__ import annotations

import socket

from twisted.logger import Logger

__all__ = ["set_receive_buffer"]

log = Logger(namespace="sipgw.sockbuf")

_granted: dict[tuple[str, int], int] = {}  # what the kernel gave each (setting, size) once


def set_receive_buffer(sock, size: int, setting: str) -> int:
    """SO_RCVBUF ``size`` (bytes, > 0) on ``sock``; returns what the kernel gave (read back on
    the first socket of each setting and size: the cap is the machine's, not the socket's)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    got = _granted.get((setting, size))
    if got is not None:
        return got
    got = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2
    if len(_granted) < 64:
        _granted[(setting, size)] = got
    if got < size:
        log.warn("UDP sockets get {got} bytes of receive buffer, not the {size} of {setting}: "
                 "net.core.rmem_max caps it (raise it with sysctl so that bursts are not "
                 "dropped)", got=got, size=size, setting=setting)
    return got
