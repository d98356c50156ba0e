"""The federation's keys and certificates: a self-signed CA, broker and client certificates.

Every TLS key is ECDSA P-256 and every certificate is signed with ECDSA-SHA256: fast to make
(a thousand client certificates take well under a second of signing) and accepted by OpenSSL
(mosquitto, paho) and Java (Kafka). Party signing keys are Ed25519 (``hierfl.wire.signing``).
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "CA_DAYS",
    "LEAF_DAYS",
    "Issued",
    "cert_pem",
    "ed25519_public_b64",
    "issue_client",
    "issue_server",
    "load_ca",
    "new_ca",
    "new_signing_key",
    "private_pem",
]

CA_DAYS = 3650
LEAF_DAYS = 825  # the longest leaf validity that Apple and browsers still accept
# Certificates start this long before "now": a device whose clock runs a little behind must
# not refuse a fresh certificate as "not yet valid".
_BACKDATE = dt.timedelta(minutes=5)

PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


@dataclass(frozen=True, slots=True)
class Issued:
    """A private key and the certificate for its public key.

    Attributes:
        key: the private key.
        cert: the certificate.
    """

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate


def private_pem(key: PrivateKey) -> bytes:
    """PEM of a private key: PKCS#8, unencrypted (file mode 0600 protects it).

    WARNING: the result is secret; write it with ``write_private``, never log it.
    """
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    """PEM of a certificate."""
    return cert.public_bytes(serialization.Encoding.PEM)


def new_signing_key() -> ed25519.Ed25519PrivateKey:
    """A fresh Ed25519 signing key for a party."""
    return ed25519.Ed25519PrivateKey.generate()


def ed25519_public_b64(key: ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey) -> str:
    """Base64 of the 32-byte raw public key, as ``trust.json`` holds it."""
    pub = key.public_key() if isinstance(key, ed25519.Ed25519PrivateKey) else key
    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode("ascii")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey, days: int
) -> x509.CertificateBuilder:
    now = _now()
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def new_ca(federation: str, *, days: int = CA_DAYS) -> Issued:
    """A self-signed CA for one federation (CN ``hierfl <federation> CA``).

    Args:
        federation: the federation id.
        days: validity.

    Returns:
        The CA's key and certificate.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, f"hierfl {federation} CA"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "hierfl"),
    ])
    usage = x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
        encipher_only=False, decipher_only=False,
    )
    cert = (
        _builder(name, name, key.public_key(), days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage, critical=True)
        .sign(key, hashes.SHA256())
    )
    return Issued(key, cert)


def load_ca(key_pem: bytes, cert_pem_data: bytes) -> Issued:
    """Load a CA written by :func:`new_ca` (``ca/ca.key`` and ``ca/ca.crt``)."""
    key = serialization.load_pem_private_key(key_pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise TypeError("the CA key is not an ECDSA key")
    return Issued(key, x509.load_pem_x509_certificate(cert_pem_data))


_LEAF_USAGE = x509.KeyUsage(
    digital_signature=True, content_commitment=False, key_encipherment=False,
    data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
    encipher_only=False, decipher_only=False,
)


def _issue(
    ca: Issued, cn: str, eku: x509.ObjectIdentifier, sans: list[x509.GeneralName], days: int
) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    # CN only: Kafka's default principal is then "CN=<party id>", and a mapping rule
    # RULE:^CN=(.*)$/$1/ turns it into the party id (brokers/kafka/server.properties).
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    builder = (
        _builder(subject, ca.cert.subject, key.public_key(), days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_LEAF_USAGE, critical=True)
        .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return Issued(key, builder.sign(ca.key, hashes.SHA256()))


def issue_server(ca: Issued, cn: str, hosts: tuple[str, ...], *, days: int = LEAF_DAYS) -> Issued:
    """A broker (TLS server) certificate with every host as a DNS or IP subject alt name.

    Args:
        ca: the issuing CA.
        cn: the certificate's common name.
        hosts: DNS names and IP addresses clients connect to.
        days: validity.

    Returns:
        The new key and certificate.
    """
    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    return _issue(ca, cn, ExtendedKeyUsageOID.SERVER_AUTH, sans, days)


def issue_client(ca: Issued, party_id: str, *, days: int = LEAF_DAYS) -> Issued:
    """A TLS client certificate whose CN is the party id (the broker's username for it).

    Args:
        ca: the issuing CA.
        party_id: ``cloud``, ``fog/<F>`` or ``edge/<F>/<E>``.
        days: validity.

    Returns:
        The new key and certificate.
    """
    return _issue(ca, party_id, ExtendedKeyUsageOID.CLIENT_AUTH, [], days)
