"""Fixtures of the gateway tests: calls placed through the SIP layer on one Clock."""
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
    """A CallManager on a Clock whose SIP bytes go to the RecordingSender."""
    return lambda **settings: gateway_on(clock, sender, **settings)
