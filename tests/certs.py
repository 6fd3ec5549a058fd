"""A test CA and certificates it signs, written as PEM files (SIP over TLS tests)."""
import datetime
import ipaddress

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _name(text):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class TestCA:
    """A self-signed root, or with ``parent`` an intermediate CA it signs (written to
    directory/ca.pem); ``issue(names, directory, stem)`` writes stem.pem and stem.key for
    a leaf naming ``names`` (DNS names and IP addresses) and returns their paths."""

    __test__ = False

    def __init__(self, directory, name="sipgw Test CA", parent: "TestCA | None" = None):
        self.key = ec.generate_private_key(ec.SECP256R1())
        if parent is None:
            self.cert = self._sign(_name(name), self.key.public_key(), ca=True, root=True)
        else:
            self.cert = parent._sign(_name(name), self.key.public_key(), ca=True)
        self.path = directory / "ca.pem"
        self.path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def _sign(self, subject, public_key, ca, names=(), root=False):
        now = datetime.datetime.now(datetime.timezone.utc)
        builder = (x509.CertificateBuilder().subject_name(subject)
                   .issuer_name(subject if root else self.cert.subject)
                   .public_key(public_key).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(days=1))
                   .not_valid_after(now + datetime.timedelta(days=30))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if names:
            alt = []
            for name in names:
                try:
                    alt.append(x509.IPAddress(ipaddress.ip_address(name)))
                except ValueError:
                    alt.append(x509.DNSName(name))
            builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
        return builder.sign(self.key, hashes.SHA256())

    def issue(self, names, directory, stem="server"):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = self._sign(_name(names[0]), key.public_key(), ca=False, names=names)
        cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(_pem_key(key))
        return cert_path, key_path
