"""RTP/RTCP port pairs from the configured range (RFC 3550 §11: RTP even, RTCP odd)."""
from __future__ import annotations


class PortsExhausted(RuntimeError):
    """No free even/odd pair is left in the media port range."""


class PortPool:
    """Hands out even/odd UDP port numbers from the range; pure bookkeeping. A pair that
    another process holds is found when binding it (MediaSession.open then takes the next)."""

    def __init__(self, port_from: int, port_to: int, address: str = "0.0.0.0"):
        self.first = port_from + (port_from % 2)
        self.last = port_to
        self.address = address
        self.in_use: set[int] = set()
        self._next = self.first

    def allocate(self) -> int:
        """Return a free even RTP port (its RTCP port is the next one)."""
        count = (self.last - self.first + 1) // 2
        for _ in range(count):
            port = self._next
            self._next = port + 2 if port + 3 <= self.last else self.first
            if port not in self.in_use:
                self.in_use.add(port)
                return port
        raise PortsExhausted(f"no free RTP port pair in {self.first}-{self.last}")

    def release(self, port: int) -> None:
        self.in_use.discard(port)
