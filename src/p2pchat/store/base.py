"""The store interface the registry core needs.

Kept small and synchronous so that a second backend (MongoDB, as the course used) is a matter
of one class. Names are unique regardless of case: every method accepts any casing and returns
the spelling the name was created with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class StoreError(Exception):
    """The store cannot be used (corrupt file, newer schema, I/O failure)."""


class NameTaken(Exception):
    """An account with this name (in any casing) exists."""


class RoomExists(Exception):
    """A room with this id (in any casing) exists."""


@dataclass(frozen=True, slots=True)
class Account:
    username: str
    password_hash: str


@dataclass(frozen=True, slots=True)
class Room:
    room: str
    private: bool
    owner: str


class Store(Protocol):
    def create_account(self, username: str, password_hash: str) -> Account:
        """Raises NameTaken."""
        ...

    def get_account(self, username: str) -> Account | None: ...

    def set_password_hash(self, username: str, password_hash: str) -> None:
        """Replace a hash, e.g. after the Argon2 parameters were raised."""
        ...

    def create_room(self, room: str, private: bool, owner: str) -> Room:
        """Create a room with ``owner`` as its first member. Raises RoomExists."""
        ...

    def get_room(self, room: str) -> Room | None: ...

    def list_rooms(self) -> list[Room]: ...

    def set_owner(self, room: str, username: str) -> None: ...

    def delete_room(self, room: str) -> None: ...

    def add_member(self, room: str, username: str) -> bool:
        """False if already a member."""
        ...

    def remove_member(self, room: str, username: str) -> bool:
        """False if not a member."""
        ...

    def members(self, room: str) -> list[str]:
        """Members in the order they joined."""
        ...

    def rooms_of(self, username: str) -> list[str]: ...

    def member_counts(self) -> dict[str, int]:
        """Members per room, keyed by the room's spelling."""
        ...

    def close(self) -> None: ...
