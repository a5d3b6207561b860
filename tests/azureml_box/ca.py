"""A throwaway certificate authority for one test session, and the server certificates it signs.

Clients trust it only through REQUESTS_CA_BUNDLE / SSL_CERT_FILE, the same way a user behind a
TLS-inspecting proxy or on a private cloud trusts their own CA; nothing is installed system-wide.

Certificates carry the extensions strict verifiers insist on (Python 3.13 turns on
VERIFY_X509_STRICT by default; Node checks key usage): a critical basicConstraints on the CA,
subject/authority key identifiers, key usage and serverAuth EKU on leaves.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Short enough that a leaked file is useless soon, long enough for any test session.
_VALIDITY = dt.timedelta(days=2)
# Clock skew between cert creation and first use (cert "not yet valid" failures are confusing).
_BACKDATE = dt.timedelta(minutes=5)


@dataclass(frozen=True)
class ServerCert:
    """PEM files of one server certificate (leaf only) and its private key."""

    cert_path: Path
    key_path: Path
    # Leaf followed by the CA, for servers that want to send the chain.
    chain_path: Path


class TestCA:
    """A CA key pair written to `root`; `bundle_path` is what clients put in REQUESTS_CA_BUNDLE."""

    # pytest would try to collect a class named Test* in a test module that imports it.
    __test__ = False

    def __init__(self, root: Path, name: str = "amlpromote test CA") -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        # P-256 keys: generated in microseconds (RSA-2048 takes ~100 ms) and accepted by
        # OpenSSL, Python's ssl module and Node alike.
        self._key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        public_key = self._key.public_key()
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        self.bundle_path = self.root / "ca.pem"
        self.bundle_path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue_server_cert(
        self,
        name: str,
        *,
        dns_names: Iterable[str] = ("localhost",),
        ip_addresses: Iterable[str] = ("127.0.0.1",),
    ) -> ServerCert:
        """Sign a serverAuth certificate for the given names; files are `<name>.pem` / `.key`."""
        key = ec.generate_private_key(ec.SECP256R1())
        dns = list(dns_names)
        ips = list(ip_addresses)
        now = dt.datetime.now(dt.UTC)
        sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        common_name = dns[0] if dns else ips[0]
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )
        cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        ca_pem = self.cert.public_bytes(serialization.Encoding.PEM)
        result = ServerCert(
            cert_path=self.root / f"{name}.pem",
            key_path=self.root / f"{name}.key",
            chain_path=self.root / f"{name}-chain.pem",
        )
        result.cert_path.write_bytes(cert_pem)
        result.chain_path.write_bytes(cert_pem + ca_pem)
        result.key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        result.key_path.chmod(0o600)
        return result
