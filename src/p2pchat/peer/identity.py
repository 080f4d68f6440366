"""A peer's identity and what it proves with it, as pure functions over its keys.

- **Links.** The dialer has already shown its certificate in TLS (the accepting shell required
  it), so the acceptor knows whom it talks to before saying anything about itself. It then
  answers with its own certificate and a signature of a statement naming the link's nonce (the
  dialer's choice), its role and both names: the dialer checks that the certificate is the
  registry's, for the user it dialed, and that the signature is that user's.
- **Room messages.** The origin signs a canonical encoding of every field but the hop count;
  every receiver checks it with the origin's key, as the registry lists it, before showing or
  passing the message on.
"""

from __future__ import annotations

from dataclasses import dataclass

from p2pchat.protocol.messages import (
    PROTOCOL_VERSION,
    PeerWelcome,
    RoomMessage,
    b64,
    unb64,
)
from p2pchat.trust.certs import TrustError, UserCert, read_user_cert
from p2pchat.trust.signing import Signer, Verifier, link_statement, room_message_bytes

RENEW_AFTER = 2 / 3
"""A certificate is renewed once this share of its life has passed."""


@dataclass(slots=True)
class Identity:
    """Our key, and the registry's certificate for it (once logged in)."""

    signer: Signer
    cert: UserCert | None = None

    def sign_message(self, msg: RoomMessage) -> str:
        data = room_message_bytes(msg.room, msg.origin, msg.id, msg.seq, msg.ts, msg.text)
        return b64(self.signer.sign(data))

    def welcome(self, nonce: str, me: str, dialer: str) -> PeerWelcome:
        """The acceptor's answer to ``dialer``'s hello with ``nonce``."""
        assert self.cert is not None
        statement = link_statement("accept", nonce, me, dialer)
        return PeerWelcome(
            version=PROTOCOL_VERSION,
            username=me,
            cert=b64(self.cert.der),
            sig=b64(self.signer.sign(statement)),
        )

    def renew_at(self) -> float | None:
        """When (wall clock) to ask for a fresh certificate."""
        cert = self.cert
        if cert is None:
            return None
        return cert.not_before + (cert.not_after - cert.not_before) * RENEW_AFTER


def check_welcome(
    msg: PeerWelcome, expect: str, nonce: str, me: str, ca_key: bytes, wall: float
) -> UserCert:
    """The acceptor's certificate, once its welcome proves it is ``expect``; raises
    TrustError saying why not."""
    if msg.username != expect:
        raise TrustError(f"{expect}'s address answered as {msg.username}")
    if msg.cert is None:
        raise TrustError("no certificate")
    try:
        der = unb64(msg.cert)
    except ValueError:
        raise TrustError("the certificate is not base64") from None
    cert = read_user_cert(der, ca_key, wall)
    if cert.username != expect:
        raise TrustError(f"the certificate names {cert.username}, not {expect}")
    statement = link_statement("accept", nonce, expect, me)
    if not Verifier().verify(cert.public_key, statement, unb64(msg.sig)):
        raise TrustError(f"the signature is not {expect}'s")
    return cert


def check_message(verifier: Verifier, msg: RoomMessage, key: bytes | None) -> bool:
    """Whether ``msg`` is signed by ``key`` (False when the key is not known)."""
    if key is None or not msg.sig:
        return False
    data = room_message_bytes(msg.room, msg.origin, msg.id, msg.seq, msg.ts, msg.text)
    return verifier.verify(key, data, unb64(msg.sig))
