"""Argon2id password hashing. Passwords are never stored, echoed or logged in clear."""

from __future__ import annotations

import secrets
from typing import Literal

import argon2
from argon2 import PasswordHasher

Profile = Literal["default", "cheapest"]

_PROFILES: dict[Profile, argon2.Parameters] = {
    "default": argon2.profiles.RFC_9106_LOW_MEMORY,
    "cheapest": argon2.profiles.CHEAPEST,
}


class Passwords:
    """Hash and verify with one Argon2id parameter set.

    ``cheapest`` exists for tests and benchmarks of everything but login cost; a real registry
    keeps ``default`` (RFC 9106's low-memory recommendation: t=3, 64 MiB).
    """

    def __init__(self, profile: Profile = "default") -> None:
        self.profile = profile
        self._hasher = PasswordHasher.from_parameters(_PROFILES[profile])
        self._stand_in: str | None = None

    def hash(self, password: str) -> str:
        return str(self._hasher.hash(password))

    def verify(self, password_hash: str | None, password: str) -> bool:
        """``password_hash`` None (a name with no account) is checked against a stand-in hash
        of a random password: as slow as a real check, and always False."""
        if password_hash is None:
            if self._stand_in is None:
                self._stand_in = self.hash(secrets.token_urlsafe(24))
            password_hash = self._stand_in
            self._verify(password_hash, password)
            return False
        return self._verify(password_hash, password)

    def _verify(self, password_hash: str, password: str) -> bool:
        try:
            return bool(self._hasher.verify(password_hash, password))
        except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
            return False
