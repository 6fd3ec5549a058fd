"""Fixtures shared by the SIP and gateway tests (the fakes themselves live in tests/fakes.py)."""
import pytest

from fakes import RecordingSender, UDPMemoryReactor, gateway_on


@pytest.fixture
def clock():
    return UDPMemoryReactor()


@pytest.fixture
def sender():
    return RecordingSender()


@pytest.fixture
def make_gateway(clock, sender):
    """A CallManager on a Clock (calls through the SIP layer) whose bytes go to the sender."""
    return lambda **settings: gateway_on(clock, sender, **settings)
