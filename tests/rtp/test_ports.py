"""The media port pool (sipgw/rtp/ports.py): even RTP / odd RTCP pairs, picked at random within
the range so a stranger cannot guess the next call's ports, never handed out twice at once."""
import pytest

from sipgw.rtp.ports import PortPool, PortsExhausted


def test_consecutive_allocations_are_not_sequential():
    """Ports come out in no guessable order: of 50 consecutive allocations, fewer than 5 are
    the previous port + 2, and they spread over the range."""
    pool = PortPool(40000, 49999)
    ports = [pool.allocate() for _ in range(50)]
    steps = sum(1 for a, b in zip(ports, ports[1:]) if b == a + 2)
    assert steps < 5
    assert max(ports) - min(ports) > 5000


def test_every_pair_is_handed_out_once_in_random_order_and_free_after_release():
    """All even ports of a range (RTCP the odd one after, still in range) are handed out exactly
    once, in no sorted order, before the pool is exhausted; once released every one of them is
    available again, and a port still taken is never handed out."""
    pool = PortPool(45001, 45040)  # an odd start: the first pair is 45002/45003
    expected = set(range(45002, 45040, 2))
    ports = [pool.allocate() for _ in range(len(expected))]
    assert sorted(ports) == sorted(expected) and ports != sorted(ports)
    assert all(port % 2 == 0 and port + 1 <= 45040 for port in ports)
    with pytest.raises(PortsExhausted):
        pool.allocate()
    kept = ports.pop()
    for port in ports:
        pool.release(port)
    again = [pool.allocate() for _ in range(len(ports))]
    assert sorted(again) == sorted(ports) and kept not in again
    with pytest.raises(PortsExhausted):
        pool.allocate()
    for port in again + [kept]:
        pool.release(port)
    assert pool.in_use == set()
