"""The registry's CA and user certificates: what is trusted, and every way it is not."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from p2pchat.trust.certs import (
    USER_LIFETIME,
    Authority,
    TrustError,
    anonymous_cert,
    ca_key,
    fingerprint,
    private_pem,
    raw_public,
    read_user_cert,
)

NOW = 1_800_000_000.0


@pytest.fixture(scope="module")
def ca() -> Authority:
    return Authority.create(NOW)


def user_key() -> bytes:
    return raw_public(Ed25519PrivateKey.generate().public_key())


def test_a_user_certificate_binds_the_name_to_the_key_for_a_day(ca: Authority) -> None:
    key = user_key()
    cert = read_user_cert(ca.issue("alice", key, NOW), ca_key(ca.cert), NOW + 60)
    assert (cert.username, cert.public_key) == ("alice", key)
    assert cert.not_after - NOW == USER_LIFETIME
    with pytest.raises(TrustError, match="alice has expired"):
        read_user_cert(cert.der, ca_key(ca.cert), NOW + USER_LIFETIME + 1)
    assert read_user_cert(cert.der, ca_key(ca.cert), None).username == "alice"  # history


def test_a_certificate_from_another_registry_is_refused(ca: Authority) -> None:
    other = Authority.create(NOW)
    der = other.issue("alice", user_key(), NOW)
    with pytest.raises(TrustError, match="not issued by this registry"):
        read_user_cert(der, ca_key(ca.cert), NOW)


def test_the_registry_certificate_is_no_user_and_no_user_is_the_registry(ca: Authority) -> None:
    with pytest.raises(TrustError, match="not a user certificate"):
        read_user_cert(ca.cert, ca_key(ca.cert), NOW)
    with pytest.raises(TrustError, match="not a p2pchat registry"):
        ca_key(ca.issue("alice", user_key(), NOW))
    _, anonymous = anonymous_cert(NOW)
    with pytest.raises(TrustError, match="not a p2pchat registry"):
        ca_key(anonymous)


@pytest.mark.parametrize("junk", [b"", b"\x30\x03\x02\x01\x01", b"not a certificate" * 10])
def test_junk_is_not_a_certificate(ca: Authority, junk: bytes) -> None:
    with pytest.raises(TrustError):
        read_user_cert(junk, ca_key(ca.cert), NOW)


def test_a_tampered_certificate_is_refused(ca: Authority) -> None:
    der = bytearray(ca.issue("alice", user_key(), NOW))
    at = der.find(b"alice")
    der[at : at + 5] = b"alicf"  # the name, changed after signing
    with pytest.raises(TrustError):
        read_user_cert(bytes(der), ca_key(ca.cert), NOW)


def test_the_authority_survives_being_saved_and_loaded(ca: Authority) -> None:
    again = Authority.load(private_pem(ca.key), ca.cert)
    assert again.fingerprint == ca.fingerprint == fingerprint(ca.cert)
    assert ca.fingerprint.startswith("SHA256:") and len(ca.fingerprint) == 7 + 43
    other = Authority.create(NOW)
    with pytest.raises(TrustError, match="does not match"):
        Authority.load(private_pem(other.key), ca.cert)
