"""Fakes shared by the SIP layer tests: a sender that records what would go on the wire."""
import pytest
from twisted.internet.task import Clock

from sipgw.config import Config
from sipgw.sip.parser import parse
from sipgw.sip.transport import Source


class RecordingSender:
    """Stands in for TransportLayer: keeps every message sent, re-parsed from bytes."""

    port = 5070

    def __init__(self):
        self.sent = []  # (message, transport, host, port)

    def send(self, message, transport, host, port):
        self.sent.append((parse(bytes(message)), transport, host, port))

    def send_response(self, response, source=None):
        self.sent.append((parse(bytes(response)), source and source.transport, None, None))

    def sent_by(self, host):
        return "127.0.0.1"

    def stop(self):
        return None

    def start(self):
        return None

    def requests(self, method=None):
        from sipgw.sip.message import Request
        return [m for m, *_ in self.sent if isinstance(m, Request) and method in (None, m.method)]

    def responses(self, status=None):
        from sipgw.sip.message import Response
        return [m for m, *_ in self.sent if isinstance(m, Response) and status in (None, m.status)]


PEER = Source("UDP", "127.0.0.1", 5060)


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def sender():
    return RecordingSender()


@pytest.fixture
def make_ua(clock, sender):
    """A UserAgent on a Clock whose bytes go to the RecordingSender."""
    from sipgw.sip.ua import UserAgent

    def make(**settings):
        ua = UserAgent(clock, Config(**settings))
        ua.transport = sender
        ua.transactions.sender = sender
        return ua
    return make
