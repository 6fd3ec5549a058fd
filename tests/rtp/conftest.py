"""Fixtures for the RTP session tests: the UDP-capable fake reactor of tests/sip, reused.

tests/sip/conftest.py is loaded by path (both files are named conftest, so a plain import
would find this one).
"""
import importlib.util
from pathlib import Path

import pytest

from sipgw.rtp.ports import PortPool

_spec = importlib.util.spec_from_file_location(
    "sip_test_fakes", Path(__file__).resolve().parent.parent / "sip" / "conftest.py")
_sip_fakes = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_sip_fakes)
UDPMemoryReactor = _sip_fakes.UDPMemoryReactor


@pytest.fixture
def clock():
    """A MemoryReactorClock whose listenUDP gives fake ports recording ``written`` datagrams."""
    return UDPMemoryReactor()


@pytest.fixture
def pool():
    """A real port pool (it bind-probes 127.0.0.1) in a range no other test uses."""
    return PortPool(45000, 45999, "127.0.0.1")
