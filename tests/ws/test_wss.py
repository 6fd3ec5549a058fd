"""wss: the certificate file is a fullchain.pem and the whole chain is served."""
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from OpenSSL import SSL, crypto

from certs import TestCA
from sipgw.config import ConfigError
from sipgw.service import wss_options


@pytest.fixture
def chain(tmp_path):
    """A root CA -> intermediate -> leaf 'gw.test'; fullchain.pem holds leaf + intermediate."""
    root = TestCA(tmp_path, "Test Root")
    (tmp_path / "intermediate").mkdir()
    inter = TestCA(tmp_path / "intermediate", "Test Intermediate", parent=root)
    leaf, key = inter.issue(["gw.test"], tmp_path, "leaf")
    (tmp_path / "fullchain.pem").write_bytes(leaf.read_bytes() + inter.path.read_bytes())
    key.rename(tmp_path / "privkey.pem")
    return tmp_path, root.cert


def _handshake(server_context, root):
    """A TLS handshake in memory; the client trusts only ``root`` and checks the name."""
    client_context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    client_context.get_cert_store().add_cert(crypto.X509.from_cryptography(root))
    client_context.set_verify(SSL.VERIFY_PEER, lambda conn, cert, errno, depth, ok: bool(ok))
    client = SSL.Connection(client_context, None)
    client.set_tlsext_host_name(b"gw.test")
    client.set_connect_state()
    server = SSL.Connection(server_context, None)
    server.set_accept_state()
    for _ in range(10):
        for one, other in ((client, server), (server, client)):
            try:
                one.do_handshake()
            except SSL.WantReadError:
                pass
            try:
                other.bio_write(one.bio_read(65536))
            except SSL.WantReadError:
                pass
    client.do_handshake()
    return client


def test_wss_serves_the_intermediate_and_verifies_against_the_root_only(chain):
    """A client that trusts only the root sees leaf + intermediate and verifies the leaf
    (only the leaf was served, and verification failed)."""
    folder, root = chain
    options = wss_options(str(folder / "fullchain.pem"), str(folder / "privkey.pem"))
    client = _handshake(options.getContext(), root)
    names = [c.get_subject().CN for c in client.get_peer_cert_chain()]
    assert names == ["gw.test", "Test Intermediate"]
    assert client.get_verified_chain() is not None


def test_a_key_that_does_not_match_or_a_file_without_certificates_is_a_config_error(chain):
    """Unusable wss files stop the start with a message naming the settings."""
    folder, _ = chain
    other = ec.generate_private_key(ec.SECP256R1())
    (folder / "other.pem").write_bytes(other.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    with pytest.raises(ConfigError, match="wss_certificate"):
        wss_options(str(folder / "fullchain.pem"), str(folder / "other.pem"))
    with pytest.raises(ConfigError, match="no PEM certificate"):
        wss_options(str(folder / "privkey.pem"), str(folder / "privkey.pem"))
    with pytest.raises(ConfigError, match="missing.pem"):
        wss_options(str(folder / "missing.pem"), str(folder / "privkey.pem"))


def test_the_websocket_factory_chooses_alpn_http_1_1():
    """wss chooses ALPN http/1.1: without an ALPN choice the bundled OpenSSL fails Chromium's
    handshake (interop: tests/interop/test_browser_veth.py plays over wss)."""
    from twisted.internet.interfaces import IProtocolNegotiationFactory
    from twisted.internet.task import Clock

    from sipgw.config import Config
    from sipgw.streams.registry import StreamRegistry
    from sipgw.ws.signalling import SignallingFactory
    factory = SignallingFactory(Config(), StreamRegistry(), Clock())
    assert IProtocolNegotiationFactory.providedBy(factory)
    assert factory.acceptableProtocols() == [b"http/1.1"]
