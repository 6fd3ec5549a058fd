"""Fixtures of the SIP layer tests (the fakes themselves live in tests/fakes.py)."""
import pytest

from fakes import RecordingSender, UDPMemoryReactor, gateway_on
from sipgw.config import Config


@pytest.fixture
def clock():
    return UDPMemoryReactor()


@pytest.fixture
def sender():
    return RecordingSender()


@pytest.fixture
def make_ua(clock, sender):
    """A SIP UserAgent on a Clock whose bytes go to the RecordingSender."""
    from sipgw.sip.ua import UserAgent

    def make(**settings):
        ua = UserAgent(clock, Config(**settings))
        ua.transport = sender
        ua.transactions.sender = sender
        return ua
    return make


@pytest.fixture
def make_gateway(clock, sender):
    """A CallManager on a Clock (calls through the SIP layer) whose bytes go to the sender."""
    return lambda **settings: gateway_on(clock, sender, **settings)
