"""Receive-side RTP state: sequence reordering and RFC 3550 reception statistics.

Pure: no I/O, no Twisted, no clocks of its own (arrival times are passed in).
"""
from __future__ import annotations

from .packet import ReceptionReport, RtpPacket

__all__ = ["ReorderBuffer", "ReceptionStats"]

# RFC 3550 Appendix A.1 thresholds, in packets.
MAX_DROPOUT = 3000
MAX_MISORDER = 100
_HISTORY = 64  # delivered sequence numbers remembered to tell a duplicate from a late packet


class ReorderBuffer:
    """Puts one SSRC's packets back in sequence order (16-bit wrap-around aware).

    ``push(packet)`` returns the packets now deliverable, in order. A duplicate is dropped
    (``duplicates``); a packet behind what was already delivered is dropped (``late``). When
    more than ``window`` packets wait behind a hole, the hole is given up and delivery resumes
    from the oldest held packet: the consumer sees the gap as a sequence jump. A jump of more
    than MAX_DROPOUT ahead or MAX_MISORDER behind is taken as a sender restart only once a
    second, consecutive packet confirms it (RFC 3550 Appendix A.1); until then it is held aside.
    """

    __slots__ = ("window", "duplicates", "late", "restarts", "_next", "_held", "_history",
                 "_bad_seq", "_bad_packet")

    def __init__(self, window: int = 16):
        self.window = window
        self.duplicates = 0
        self.late = 0
        self.restarts = 0
        self.reset()

    def reset(self) -> None:
        """Forget the sequence state (new SSRC); the counters keep counting."""
        self._next: int | None = None  # the next sequence number to deliver
        self._held: dict[int, RtpPacket] = {}
        self._history = 0  # bit i set: sequence _next - 1 - i was delivered
        self._bad_seq: int | None = None
        self._bad_packet: RtpPacket | None = None

    def take_next(self, seq: int) -> bool:
        """``push``'s common case without a packet object: ``seq`` is the one expected and
        nothing is held back. Then the buffer moves on and True says the caller delivers the
        packet at once; False: hand it to ``push``."""
        if seq != self._next or self._held:
            return False
        self._next = (seq + 1) & 0xFFFF
        self._history = ((self._history << 1) | 1) & 0xFFFFFFFFFFFFFFFF
        return True

    def push(self, packet: RtpPacket) -> list[RtpPacket]:
        seq = packet.sequence_number
        expected = self._next
        if expected is None:
            expected = seq
        ahead = (seq - expected) & 0xFFFF
        if ahead == 0:
            self._next = (seq + 1) & 0xFFFF
            self._history = ((self._history << 1) | 1) & 0xFFFFFFFFFFFFFFFF
            if not self._held:
                return [packet]
            out = [packet]
            self._drain(out)
            return out
        if ahead < 0x8000:
            if ahead > MAX_DROPOUT:
                return self._jump(packet)
            if seq in self._held:
                self.duplicates += 1
                return []
            self._held[seq] = packet
            if len(self._held) <= self.window:
                return []
            return self._skip_hole()
        behind = 0x10000 - ahead
        if behind > MAX_MISORDER:
            return self._jump(packet)
        if behind <= _HISTORY and self._history >> (behind - 1) & 1:
            self.duplicates += 1
        else:
            self.late += 1
        return []

    def _drain(self, out: list) -> None:
        held = self._held
        seq = self._next
        history = self._history
        while seq in held:
            out.append(held.pop(seq))
            seq = (seq + 1) & 0xFFFF
            history = (history << 1) | 1
        self._next = seq
        self._history = history & 0xFFFFFFFFFFFFFFFF

    def _skip_hole(self) -> list[RtpPacket]:
        """Give up on the missing packets before the oldest held one (the window is full)."""
        base = self._next
        first = min(self._held, key=lambda s: (s - base) & 0xFFFF)
        missing = (first - base) & 0xFFFF
        self._history = (self._history << missing) & 0xFFFFFFFFFFFFFFFF
        self._next = first
        out: list[RtpPacket] = []
        self._drain(out)
        return out

    def _jump(self, packet: RtpPacket) -> list[RtpPacket]:
        """RFC 3550 A.1: a big jump restarts the sequence only if the next packet follows it."""
        seq = packet.sequence_number
        if seq == self._bad_seq:
            previous = self._bad_packet
            self.restarts += 1
            self.reset()
            out = self.push(previous)
            out.extend(self.push(packet))
            return out
        self._bad_seq = (seq + 1) & 0xFFFF
        self._bad_packet = packet
        return []


class ReceptionStats:
    """RFC 3550 Appendix A.1/A.3/A.8 receiver statistics for one SSRC.

    ``update(packet, arrival)`` takes the arrival time in seconds; ``clock_rate`` converts it to
    RTP timestamp units for the interarrival jitter. ``report_block()`` builds the report block
    for an RR/SR and starts a new interval for ``fraction_lost``. Every packet is accepted from
    the first one (no A.1 probation)."""

    __slots__ = ("clock_rate", "base_seq", "max_seq", "cycles", "received", "_bad_seq",
                 "_expected_prior", "_received_prior", "_transit", "_jitter")

    def __init__(self, clock_rate: int):
        self.clock_rate = clock_rate
        self.reset()

    def reset(self) -> None:
        """Start over (a new SSRC, or the sender restarted its sequence)."""
        self.base_seq: int | None = None
        self.max_seq = 0
        self.cycles = 0
        self.received = 0
        self._bad_seq: int | None = None
        self._expected_prior = 0
        self._received_prior = 0
        self._transit: float | None = None
        self._jitter = 0.0

    def _init_seq(self, seq: int) -> None:
        self.base_seq = seq
        self.max_seq = seq
        self.cycles = 0
        self.received = 0
        self._bad_seq = None
        self._expected_prior = 0
        self._received_prior = 0

    def update(self, packet: RtpPacket, arrival: float) -> None:
        self.record(packet.sequence_number, packet.timestamp, arrival)

    def record(self, seq: int, timestamp: int, arrival: float) -> None:
        """``update`` from a packet's sequence number and timestamp."""
        if self.base_seq is None:
            self._init_seq(seq)
        else:
            # RFC 3550 A.1 update_seq()
            udelta = (seq - self.max_seq) & 0xFFFF
            if udelta < MAX_DROPOUT:
                if seq < self.max_seq:  # wrapped
                    self.cycles += 0x10000
                self.max_seq = seq
            elif udelta <= 0x10000 - MAX_MISORDER:
                if seq != self._bad_seq:  # a very large jump: wait for a confirming packet
                    self._bad_seq = (seq + 1) & 0xFFFF
                    return
                self._init_seq(seq)  # two sequential packets: the sender restarted
            # else: duplicate or reordered packet, counted as received (A.1)
        self.received += 1
        # RFC 3550 A.8: J += (|D(i-1,i)| - J) / 16, D in timestamp units; the RTP timestamp
        # difference is taken modulo 2^32 so a wrap does not look like a huge transit change.
        transit = arrival * self.clock_rate - timestamp
        if self._transit is not None:
            d = transit - self._transit
            if d > 0x80000000:
                d -= 0x100000000
            elif d < -0x80000000:
                d += 0x100000000
            self._jitter += (abs(d) - self._jitter) / 16
        self._transit = transit

    @property
    def extended_highest(self) -> int:
        """Extended highest sequence number received (cycles + max_seq)."""
        return self.cycles + self.max_seq

    @property
    def expected(self) -> int:
        """RFC 3550 A.3: packets expected so far."""
        if self.base_seq is None:
            return 0
        return self.extended_highest - self.base_seq + 1

    @property
    def lost(self) -> int:
        """Cumulative packets lost (negative when duplicates outnumber losses)."""
        return self.expected - self.received

    @property
    def jitter(self) -> int:
        """Interarrival jitter in RTP timestamp units."""
        return int(self._jitter)

    def fraction_lost(self) -> int:
        """RFC 3550 A.3: losses since the last report, as a fixed-point fraction of 256."""
        expected_interval = self.expected - self._expected_prior
        lost_interval = expected_interval - (self.received - self._received_prior)
        if expected_interval == 0 or lost_interval <= 0:
            return 0
        return (lost_interval << 8) // expected_interval

    def report_block(self, ssrc: int, lsr: int = 0, dlsr: int = 0) -> ReceptionReport:
        """The report block about source ``ssrc``; starts a new fraction-lost interval."""
        report = ReceptionReport(ssrc, self.fraction_lost(), self.lost,
                                 self.extended_highest & 0xFFFFFFFF, self.jitter, lsr, dlsr)
        self._expected_prior = self.expected
        self._received_prior = self.received
        return report
