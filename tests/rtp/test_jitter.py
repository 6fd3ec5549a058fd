"""Sequence reordering and RFC 3550 Appendix A reception statistics, without I/O."""
from hypothesis import given
from hypothesis import strategies as st

from sipgw.rtp.jitter import ReceptionStats, ReorderBuffer
from sipgw.rtp.packet import ReceptionReport, RtpPacket


def pkt(seq: int, ts: int = 0) -> RtpPacket:
    return RtpPacket(payload_type=96, sequence_number=seq & 0xFFFF, timestamp=ts & 0xFFFFFFFF,
                     ssrc=1, payload=bytes([seq & 0xFF]))


def seqs(packets) -> list[int]:
    return [p.sequence_number for p in packets]


def push_all(buffer: ReorderBuffer, numbers) -> list[int]:
    out = []
    for n in numbers:
        out += seqs(buffer.push(pkt(n)))
    return out


# --- ReorderBuffer -------------------------------------------------------------------------------

def test_in_order_packets_pass_straight_through():
    """Each in-order packet is delivered by its own push."""
    buffer = ReorderBuffer()
    for n in range(100, 120):
        assert seqs(buffer.push(pkt(n))) == [n]
    assert (buffer.duplicates, buffer.late) == (0, 0)


def test_reordered_within_window_is_put_back_in_order():
    """A packet that overtook another is held until the missing one arrives."""
    buffer = ReorderBuffer()
    assert seqs(buffer.push(pkt(1))) == [1]
    assert seqs(buffer.push(pkt(3))) == []
    assert seqs(buffer.push(pkt(4))) == []
    assert seqs(buffer.push(pkt(2))) == [2, 3, 4]
    assert seqs(buffer.push(pkt(5))) == [5]


def test_duplicates_are_dropped_and_counted():
    """A copy of a held packet, or of one already delivered, is dropped as a duplicate."""
    buffer = ReorderBuffer()
    assert push_all(buffer, [1, 2, 2, 4, 4, 3, 1, 3]) == [1, 2, 3, 4]
    assert (buffer.duplicates, buffer.late) == (4, 0)


def test_hole_larger_than_window_is_given_up():
    """With more than ``window`` packets waiting, delivery jumps over the hole; the missing
    packet arriving afterwards is late."""
    buffer = ReorderBuffer(window=4)
    assert push_all(buffer, [10]) == [10]
    assert push_all(buffer, [12, 13, 14, 15]) == []
    assert seqs(buffer.push(pkt(16))) == [12, 13, 14, 15, 16]
    assert seqs(buffer.push(pkt(11))) == []
    assert buffer.late == 1 and buffer.duplicates == 0
    assert seqs(buffer.push(pkt(17))) == [17]


def test_two_holes_only_the_first_is_given_up():
    """Giving up one hole delivers up to the next hole, which is waited for again."""
    buffer = ReorderBuffer(window=3)
    assert push_all(buffer, [0, 2, 4, 5]) == [0]
    assert seqs(buffer.push(pkt(6))) == [2]
    assert seqs(buffer.push(pkt(3))) == [3, 4, 5, 6]


def test_sixteen_bit_wrap_around():
    """65535 is followed by 0, also when reordered across the wrap."""
    buffer = ReorderBuffer()
    assert push_all(buffer, [65533, 65535, 0, 65534, 2, 1]) == [65533, 65534, 65535, 0, 1, 2]
    assert push_all(buffer, [65535]) == []
    assert buffer.duplicates == 1


def test_sender_restart_needs_two_consecutive_packets():
    """RFC 3550 A.1: a far jump is ignored once, and taken as a restart when the next follows."""
    buffer = ReorderBuffer()
    assert push_all(buffer, [1000, 1001]) == [1000, 1001]
    assert push_all(buffer, [40000]) == []
    assert push_all(buffer, [1002]) == [1002]
    assert push_all(buffer, [7, 8]) == [7, 8]
    assert push_all(buffer, [9, 10]) == [9, 10]
    assert buffer.restarts == 1


def test_reset_forgets_the_sequence():
    """After reset() (a new SSRC) the next packet is delivered whatever its number."""
    buffer = ReorderBuffer()
    push_all(buffer, [500, 502])
    buffer.reset()
    assert push_all(buffer, [9, 10]) == [9, 10]


@given(st.integers(0, 0xFFFF), st.lists(st.integers(0, 15), min_size=1, max_size=200),
       st.lists(st.integers(0, 199), max_size=20))
def test_local_shuffle_with_duplicates_comes_out_in_order(start, jitter, duplicated):
    """Packets displaced by less than the window, some duplicated, come out complete and in order."""
    jitter[0] = 0  # the first packet to arrive sets where the sequence starts
    order = sorted(range(len(jitter)), key=lambda i: i + jitter[i])
    order += [i for i in duplicated if i < len(jitter)]
    buffer = ReorderBuffer(window=16)
    out = push_all(buffer, [start + i for i in order])
    assert out == [(start + i) & 0xFFFF for i in range(len(jitter))]
    assert buffer.late == 0


@given(st.integers(0, 0xFFFF), st.lists(st.integers(0, 40), max_size=300),
       st.lists(st.booleans(), max_size=300))
def test_any_arrival_order_delivers_increasing_without_repeats(start, jitter, dropped):
    """Whatever the loss and displacement, delivery is strictly increasing (mod 2^16)."""
    order = sorted(range(len(jitter)), key=lambda i: i + jitter[i])
    order = [i for i in order if not (i < len(dropped) and dropped[i])]
    buffer = ReorderBuffer(window=8)
    out = push_all(buffer, [start + i for i in order])
    steps = [(b - a) & 0xFFFF for a, b in zip(out, out[1:])]
    assert all(0 < s < 0x8000 for s in steps)
    assert len(out) + buffer.late + buffer.duplicates <= len(order)


# --- ReceptionStats ------------------------------------------------------------------------------

def test_loss_counts_and_fraction_per_interval():
    """Every tenth packet lost: 10 of 100 lost, fraction 25/256; the next clean interval is 0."""
    stats = ReceptionStats(8000)
    for n in range(100):
        if n % 10 != 5:
            stats.update(pkt(n, n * 160), n * 0.02)
    assert (stats.expected, stats.received, stats.lost) == (100, 90, 10)
    block = stats.report_block(0xABCD, lsr=5, dlsr=6)
    assert block == ReceptionReport(0xABCD, fraction_lost=25, packets_lost=10,
                                    highest_sequence=99, jitter=0, lsr=5, dlsr=6)
    for n in range(100, 200):
        stats.update(pkt(n, n * 160), n * 0.02)
    block = stats.report_block(0xABCD)
    assert (block.fraction_lost, block.packets_lost, block.highest_sequence) == (0, 10, 199)


def test_extended_highest_sequence_counts_cycles():
    """Crossing 65535 -> 0 adds a cycle (RFC 3550 A.1); reordering across it does not."""
    stats = ReceptionStats(90000)
    for n in [65530, 65531, 65532, 65533, 65534, 65535, 1, 0, 2, 3]:
        stats.update(pkt(n), 0.0)
    assert stats.cycles == 0x10000
    assert stats.extended_highest == 0x10000 + 3
    assert (stats.expected, stats.received, stats.lost) == (10, 10, 0)


def test_duplicates_make_loss_negative():
    """A.3: duplicates count as received, so the cumulative loss can go below zero."""
    stats = ReceptionStats(8000)
    for n in [1, 2, 2, 3, 3]:
        stats.update(pkt(n), 0.0)
    assert stats.lost == -2
    assert stats.report_block(1).fraction_lost == 0


def test_jitter_is_zero_for_constant_transit():
    """Packets arriving exactly in step with their timestamps have no jitter (A.8)."""
    stats = ReceptionStats(90000)
    for n in range(50):
        stats.update(pkt(n, 1_000_000 + n * 3000), 100.0 + n / 30)
    assert stats.jitter == 0


def test_jitter_converges_to_alternating_delay():
    """Arrivals alternately 10 ms late: |D| is 80 units at 8 kHz, and J converges to it."""
    stats = ReceptionStats(8000)
    for n in range(400):
        stats.update(pkt(n, n * 160), n * 0.02 + (0.01 if n % 2 else 0.0))
    assert stats.jitter in (79, 80)


def test_jitter_decays_once_transit_is_constant_again():
    """After a jittery stretch, constant transit makes J decay by 15/16 per packet."""
    stats = ReceptionStats(8000)
    for n in range(200):
        stats.update(pkt(n, n * 160), n * 0.02 + (0.01 if n % 2 else 0.0))
    before = stats.jitter
    for n in range(200, 260):
        stats.update(pkt(n, n * 160), n * 0.02)
    assert before >= 79 and stats.jitter <= before * (15 / 16) ** 50 + 1


def test_jitter_survives_timestamp_wrap():
    """A 32-bit RTP timestamp wrap does not look like a transit jump."""
    stats = ReceptionStats(90000)
    for n in range(20):
        stats.update(pkt(n, 0xFFFFFFFF - 30000 + n * 3000), n / 30)
    assert stats.jitter == 0


def test_sequence_restart_and_reset():
    """A far jump confirmed by the next packet restarts the counts (A.1); reset() forgets all."""
    stats = ReceptionStats(8000)
    for n in range(10):
        stats.update(pkt(n), 0.0)
    stats.update(pkt(30000), 0.0)
    assert stats.received == 10
    stats.update(pkt(30001), 0.0)
    assert (stats.base_seq, stats.received, stats.expected) == (30001, 1, 1)
    stats.reset()
    assert (stats.expected, stats.received, stats.lost, stats.jitter) == (0, 0, 0, 0)
    stats.update(pkt(5), 0.0)
    assert stats.expected == 1
