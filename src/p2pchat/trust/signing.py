"""Signatures on what peers say: room messages and link statements (Ed25519, libsodium).

What is signed is a canonical, domain-separated encoding of the fields that matter, never a
re-serialisation of JSON: a domain string naming what the bytes are, then each field with its
length. The same field values always give the same bytes, a room message's bytes can never
pass for a link statement's, and a relay that changes any field (text, room, origin, id,
sequence, time) breaks the signature. Only the hop count, which relays must lower, is outside.
"""

from __future__ import annotations

import struct
from collections import OrderedDict

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

ROOM_MESSAGE = b"p2pchat room message v1\0"
LINK_STATEMENT = b"p2pchat link v2\0"
SIGNATURE_SIZE = 64
KEY_SIZE = 32


def _fields(*values: str | bytes) -> bytes:
    out = bytearray()
    for value in values:
        data = value.encode() if isinstance(value, str) else value
        out += struct.pack(">I", len(data))
        out += data
    return bytes(out)


def room_message_bytes(
    room: str, origin: str, msg_id: str, seq: int, ts: float, text: str
) -> bytes:
    """What the origin of a room message signs."""
    return ROOM_MESSAGE + struct.pack(">Qd", seq, ts) + _fields(room, origin, msg_id, text)


def link_statement(role: str, nonce: str, prover: str, verifier: str) -> bytes:
    """What a peer signs to prove, inside an encrypted link, who it is to whom: for this
    link's nonce (chosen by the verifier), in this role, between these two names."""
    return LINK_STATEMENT + _fields(role, nonce, prover, verifier)


class Signer:
    """One user's signing key (the private half of the key in their certificate)."""

    __slots__ = ("_key", "public_key")

    def __init__(self, seed: bytes | None = None) -> None:
        self._key = SigningKey(seed) if seed is not None else SigningKey.generate()
        self.public_key = bytes(self._key.verify_key)
        """Raw, 32 bytes."""

    @property
    def seed(self) -> bytes:
        """The 32 secret bytes the key is made from (what the key file holds)."""
        return bytes(self._key)

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data).signature


class Verifier:
    """Checks signatures, keeping the parsed keys of the most recent signers (bounded)."""

    __slots__ = ("_keys", "_max", "checked", "failed")

    def __init__(self, max_keys: int = 10_000) -> None:
        self._keys: OrderedDict[bytes, VerifyKey] = OrderedDict()
        self._max = max_keys
        self.checked = 0
        self.failed = 0

    def verify(self, public_key: bytes, data: bytes, signature: bytes) -> bool:
        self.checked += 1
        key = self._keys.get(public_key)
        if key is None:
            if len(public_key) != KEY_SIZE:
                self.failed += 1
                return False
            key = self._keys[public_key] = VerifyKey(public_key)
            if len(self._keys) > self._max:
                self._keys.popitem(last=False)
        try:
            key.verify(data, signature)
        except (BadSignatureError, ValueError, TypeError):
            self.failed += 1
            return False
        return True
