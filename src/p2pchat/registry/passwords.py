"""Argon2id password hashing. Passwords are never stored, echoed or logged in clear."""

from __future__ import annotations

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

    def hash(self, password: str) -> str:
        return str(self._hasher.hash(password))

    def verify(self, password_hash: str, password: str) -> bool:
        try:
            return bool(self._hasher.verify(password_hash, password))
        except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
            return False
