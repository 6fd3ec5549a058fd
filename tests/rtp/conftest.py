"""Fixtures for the RTP session tests: the UDP-capable fake reactor of tests/fakes.py."""
import pytest

from fakes import UDPMemoryReactor
from sipgw.rtp.ports import PortPool


@pytest.fixture
def clock():
    """A MemoryReactorClock whose listenUDP gives fake ports recording ``written`` datagrams."""
    return UDPMemoryReactor()


@pytest.fixture
def pool():
    """A real port pool in a range no other test uses."""
    return PortPool(45000, 45999, "127.0.0.1")
