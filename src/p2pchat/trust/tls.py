"""TLS 1.3 contexts for every connection, and the checks ``ssl`` cannot make for us.

Python's ``ssl`` verifies chains against a CA but has no callback to pin a self-signed
certificate or to check an identity other than a host name, so:

- **Registry**: the registry presents its CA certificate. A client does not let ``ssl`` verify it
  (there is nothing to verify it against on first use); once the handshake is done, and before
  sending anything, it compares the certificate's fingerprint with the one pinned for that
  address (``check_pin``). Client certificates are optional there: a peer that holds a valid user
  certificate presents it to come back after a restart without its password.
- **Peer links**: the accepting peer shows a throwaway certificate that names nobody and requires
  the dialer's user certificate, which ``ssl`` checks against the registry's CA. So nothing about
  the accepting user is revealed before the dialer has proved who it is; the acceptor then proves
  itself inside the encrypted link (a signed statement, see ``peer/linkstate.py``).
"""

from __future__ import annotations

import ssl
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from p2pchat.trust.certs import (
    Authority,
    TrustError,
    anonymous_cert,
    cert_pem,
    fingerprint,
    private_pem,
)


def _context(purpose: int) -> ssl.SSLContext:
    ctx = ssl.SSLContext(purpose)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    if purpose == ssl.PROTOCOL_TLS_SERVER:
        # No session resumption anywhere (every connection is a full handshake with
        # certificates), so the two session tickets a TLS 1.3 server sends after each handshake
        # by default would be made, encrypted, sent and parsed for nothing.
        ctx.num_tickets = 0
    return ctx


X509_V_FLAG_NO_CHECK_TIME = 0x200000
"""OpenSSL's verification flag (``ssl`` has no name for it): check a chain, not its dates."""


def registry_server(authority: Authority) -> ssl.SSLContext:
    """The registry's side: its CA certificate; user certificates accepted, not required.

    ``ssl`` checks that a user certificate was issued by this CA and that the client holds
    its key; its dates are left to the registry's core (``read_user_cert``), which answers
    ``resume`` with ``cert_refused``. Were ``ssl`` to check them, an expired certificate
    would fail the handshake, and a peer back after a day away could not even log in with
    its password on that connection."""
    ctx = _context(ssl.PROTOCOL_TLS_SERVER)
    _load_chain(ctx, authority.key, authority.cert)
    ctx.verify_mode = ssl.CERT_OPTIONAL
    ctx.verify_flags |= X509_V_FLAG_NO_CHECK_TIME
    ctx.load_verify_locations(cadata=authority.cert)
    return ctx


def _load_chain(ctx: ssl.SSLContext, key: Ed25519PrivateKey, cert: bytes) -> None:
    """``ssl`` loads a certificate and key from files only: a private folder, gone at once."""
    with tempfile.TemporaryDirectory() as folder:
        cert_path, key_path = Path(folder) / "cert.pem", Path(folder) / "key.pem"
        cert_path.write_bytes(cert_pem(cert))
        key_path.touch(mode=0o600)
        key_path.write_bytes(private_pem(key))
        ctx.load_cert_chain(cert_path, key_path)


def client(cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    """A client's side (of the registry connection, or of a link we dial): the server's
    certificate is checked by the caller, after the handshake; ours is shown if given."""
    ctx = _context(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if cert is not None and key is not None:
        ctx.load_cert_chain(cert, key)
    return ctx


def peer_server(now: float) -> ssl.SSLContext:
    """An accepting peer's side: an anonymous certificate; the dialer's is required, and checked
    against the registry's CA once it is known (``trust_registry``)."""
    ctx = _context(ssl.PROTOCOL_TLS_SERVER)
    _load_chain(ctx, *anonymous_cert(now))
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def trust_registry(ctx: ssl.SSLContext, ca_der: bytes) -> None:
    """From now on, ``ctx`` accepts the certificates this registry issues."""
    ctx.load_verify_locations(cadata=ca_der)


def peer_certificate(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> bytes | None:
    """The certificate (DER) the other end showed, if any."""
    if ssl_object is None:
        return None
    return ssl_object.getpeercert(binary_form=True)


def check_pin(address: str, presented: bytes, pinned: str) -> None:
    """Raises TrustError with what to do when the registry at ``address`` shows a certificate
    other than the pinned one."""
    seen = fingerprint(presented)
    if seen != pinned:
        raise TrustError(
            f"the registry at {address} presented fingerprint {seen}, but {pinned} is pinned; "
            "if the registry's operator confirms it made a new CA, remove the line for "
            f"{address} from known_registries (or pass --registry-fingerprint {seen}) and log "
            "in again; otherwise someone may be in the middle"
        )
