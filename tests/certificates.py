"""A throw-away certificate authority for the TLS tests (``cryptography``, an MLflow dependency).

What cert-manager's CA Issuer makes on the cluster (k8s/components/cert-manager), in the layout of the
Secrets the servers and clients mount there: per server a folder with ``tls.crt``, ``tls.key`` and the
CA's ``ca.crt``. ECDSA P-256 keys: made in milliseconds.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = datetime.timedelta(days=2)


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@dataclass(frozen=True)
class TestCA:
    """A self-signed CA; ``ca_path`` is its certificate (what clients trust)."""

    __test__ = False  # not a pytest test class
    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate
    ca_path: Path

    @classmethod
    def create(cls, folder: Path, name: str = "afm-ray test CA") -> "TestCA":
        folder.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.timezone.utc)
        certificate = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                       .public_key(key.public_key()).serial_number(x509.random_serial_number())
                       .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + VALIDITY)
                       .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                       .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                                    content_commitment=False, key_encipherment=False,
                                                    data_encipherment=False, key_agreement=False,
                                                    encipher_only=False, decipher_only=False), critical=True)
                       .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                       .sign(key, hashes.SHA256()))
        ca_path = folder / "ca.crt"
        ca_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        return cls(key, certificate, ca_path)

    def issue(self, folder: Path, dns_names: list[str], ip_addresses: list[str] = ()) -> Path:
        """A server certificate for ``dns_names`` and ``ip_addresses``: writes ``folder/{tls.crt,tls.key,ca.crt}``
        (the keys of a cert-manager Secret) and returns ``folder``."""
        folder.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        names = [x509.DNSName(n) for n in dns_names] + [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
        certificate = (x509.CertificateBuilder()
                       .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, (dns_names or ip_addresses)[0])]))
                       .issuer_name(self.certificate.subject).public_key(key.public_key())
                       .serial_number(x509.random_serial_number())
                       .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + VALIDITY)
                       .add_extension(x509.SubjectAlternativeName(names), critical=False)
                       .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                       .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                       .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                                      critical=False)
                       .sign(self.key, hashes.SHA256()))
        (folder / "tls.crt").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        key_path = folder / "tls.key"
        key_path.write_bytes(_pem_key(key))
        key_path.chmod(0o600)
        (folder / "ca.crt").write_bytes(self.ca_path.read_bytes())
        return folder
