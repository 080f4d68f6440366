"""Who is who: the registry's certificate authority and the short-lived user certificates it
issues, as pure functions over DER bytes (``cryptography``'s X.509).

The registry is the authority: its CA key (Ed25519) signs, for each login, a certificate that
binds a username to the Ed25519 key the user's peer made. Peers check each other's certificates
against the registry's CA certificate, which they pinned on first use. An identity is carried
in the subject alternative name as a URI, ``p2pchat:user:NAME`` or ``p2pchat:registry``, so a
user's certificate can never pass for the registry's or another user's.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import NameOID

REGISTRY_URI = "p2pchat:registry"
USER_URI = "p2pchat:user:"
USER_LIFETIME = 24 * 3600.0
"""A user certificate is valid this long; peers renew theirs while online."""
CA_LIFETIME = 20 * 365 * 86400.0
CLOCK_SKEW = 300.0
"""Certificates start this long before they are issued, for clocks that disagree a little."""


class TrustError(Exception):
    """A certificate or signature that must not be trusted; the message says why."""


def fingerprint(der: bytes) -> str:
    """``SHA256:`` and the base64 of the certificate's SHA-256 (as SSH shows host keys)."""
    digest = hashlib.sha256(der).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def _time(seconds: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC)


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def private_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def cert_pem(der: bytes) -> bytes:
    return x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True, slots=True)
class Authority:
    """The registry's CA: its key signs user certificates, and its self-signed certificate
    is also what the registry presents in TLS (so the fingerprint users pin is that of the
    certificate they see)."""

    key: Ed25519PrivateKey
    cert: bytes
    """DER."""

    @classmethod
    def create(cls, now: float, name: str = "p2pchat registry") -> Authority:
        key = Ed25519PrivateKey.generate()
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_time(now - CLOCK_SKEW))
            .not_valid_after(_time(now + CA_LIFETIME))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(REGISTRY_URI)]),
                critical=False,
            )
            .sign(key, None)
        )
        return cls(key, cert.public_bytes(serialization.Encoding.DER))

    @classmethod
    def load(cls, key_pem: bytes, cert_der: bytes) -> Authority:
        key = serialization.load_pem_private_key(key_pem, password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise TrustError("the CA key is not an Ed25519 key")
        authority = cls(key, cert_der)
        if raw_public(key.public_key()) != ca_key(cert_der):
            raise TrustError("the CA key does not match the CA certificate")
        return authority

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.cert)

    def issue(
        self, username: str, public_key: bytes, now: float, lifetime: float = USER_LIFETIME
    ) -> bytes:
        """A certificate (DER) binding ``username`` to the raw Ed25519 ``public_key``."""
        subject_key = Ed25519PublicKey.from_public_bytes(public_key)
        issuer = x509.load_der_x509_certificate(self.cert).subject
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(username))
            .issuer_name(issuer)
            .public_key(subject_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(_time(now - CLOCK_SKEW))
            .not_valid_after(_time(now + lifetime))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(USER_URI + username)]),
                critical=False,
            )
            .sign(self.key, None)
        )
        return cert.public_bytes(serialization.Encoding.DER)


def ca_key(ca_cert: bytes) -> bytes:
    """The raw public key of a CA certificate (DER), checking that it is the registry's."""
    cert = _load(ca_cert)
    if _identity(cert) != REGISTRY_URI:
        raise TrustError("not a p2pchat registry certificate")
    key = cert.public_key()
    if not isinstance(key, Ed25519PublicKey):
        raise TrustError("the registry's key is not Ed25519")
    return raw_public(key)


@dataclass(frozen=True, slots=True)
class UserCert:
    username: str
    public_key: bytes
    """Raw Ed25519, 32 bytes."""
    not_before: float
    not_after: float
    der: bytes


def read_user_cert(der: bytes, ca_public_key: bytes, now: float | None) -> UserCert:
    """Check that ``der`` is a user certificate signed by the CA whose raw key is given, and
    (unless ``now`` is None) valid at ``now``; raises TrustError saying why not."""
    cert = _load(der)
    try:
        Ed25519PublicKey.from_public_bytes(ca_public_key).verify(
            cert.signature, cert.tbs_certificate_bytes
        )
    except (InvalidSignature, ValueError):
        raise TrustError("the certificate was not issued by this registry") from None
    identity = _identity(cert)
    if identity is None or not identity.startswith(USER_URI):
        raise TrustError("not a user certificate")
    key = cert.public_key()
    if not isinstance(key, Ed25519PublicKey):
        raise TrustError("the certificate's key is not Ed25519")
    start = cert.not_valid_before_utc.timestamp()
    end = cert.not_valid_after_utc.timestamp()
    if now is not None and not start <= now <= end:
        raise TrustError(
            f"the certificate of {identity[len(USER_URI) :]} has expired or is not yet valid"
        )
    return UserCert(identity[len(USER_URI) :], raw_public(key), start, end, der)


def anonymous_cert(now: float) -> tuple[Ed25519PrivateKey, bytes]:
    """A throwaway self-signed certificate naming nobody: what a peer shows in TLS before the
    other side has proved who it is."""
    key = Ed25519PrivateKey.generate()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("p2pchat peer"))
        .issuer_name(_name("p2pchat peer"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_time(now - CLOCK_SKEW))
        .not_valid_after(_time(now + CA_LIFETIME))
        .sign(key, None)
    )
    return key, cert.public_bytes(serialization.Encoding.DER)


def _load(der: bytes) -> x509.Certificate:
    try:
        return x509.load_der_x509_certificate(der)
    except ValueError:
        raise TrustError("not a certificate") from None


def _identity(cert: x509.Certificate) -> str | None:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if len(uris) == 1 else None
