"""Fixtures of the SIP layer tests (clock, sender and make_gateway: tests/conftest.py)."""
import pytest

from sipgw.config import Config


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
