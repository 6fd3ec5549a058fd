"""RTP/RTCP port pairs from the configured range (RFC 3550 §11: RTP even, RTCP odd)."""
from __future__ import annotations

from .. import entropy


class PortsExhausted(RuntimeError):
    """No free even/odd pair is left in the media port range."""


class PortPool:
    """Hands out even/odd UDP port numbers from the range; pure bookkeeping. Each pair is
    picked at random among the free ones, so a stranger cannot guess a call's ports from
    another's. A pair that another process holds is found when binding it (MediaSession.open
    then takes another)."""

    def __init__(self, port_from: int, port_to: int, address: str = "0.0.0.0"):
        self.first = port_from + (port_from % 2)
        self.last = port_to
        self.address = address
        self.in_use: set[int] = set()
        self.pairs = max(0, (self.last - self.first + 1) // 2)

    def allocate(self) -> int:
        """Return a free even RTP port (its RTCP port is the next one), chosen at random."""
        if len(self.in_use) < self.pairs:
            for _ in range(8):  # a few random draws find a free pair unless the range is full
                port = self.first + 2 * entropy.randbelow(self.pairs)
                if port not in self.in_use:
                    break
            else:  # nearly full: walk on from the last random draw to the next free pair
                start = (port - self.first) // 2
                for i in range(1, self.pairs):
                    port = self.first + 2 * ((start + i) % self.pairs)
                    if port not in self.in_use:
                        break
            self.in_use.add(port)
            return port
        raise PortsExhausted(f"no free RTP port pair in {self.first}-{self.last}")

    def release(self, port: int) -> None:
        self.in_use.discard(port)
