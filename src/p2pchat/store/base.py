"""The store interface the registry core needs.

Kept small and synchronous so that a second backend (MongoDB, as the course used) is a matter
of one class. Names are unique regardless of case: every method accepts any casing and returns
the spelling the name was created with.

Every method either does all of its work or none of it: one that writes several rows does so in
one transaction. Any failure of the storage itself (I/O error, full disk, corruption found on
the way) is raised as ``StoreError``, never as the backend's own exception type, so that the
registry can answer ``storage_error`` for that one request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class StoreError(Exception):
    """The store cannot be used (corrupt file, newer schema, I/O failure, full disk)."""


class NameTaken(Exception):
    """An account with this name, or one too alike (the same ``skeleton``), exists.

    ``existing`` is that account's name, as created.
    """

    def __init__(self, existing: str) -> None:
        super().__init__(existing)
        self.existing = existing


class RoomExists(Exception):
    """A room with this id (in any casing) exists."""


@dataclass(frozen=True, slots=True)
class Account:
    username: str
    password_hash: str
    public_key: bytes | None = None
    """The user's current Ed25519 key (raw), once a peer has logged in with one."""


@dataclass(frozen=True, slots=True)
class Member:
    username: str
    public_key: bytes | None
    since: float
    """When the member was added (wall clock)."""


@dataclass(frozen=True, slots=True)
class Room:
    room: str
    private: bool
    owner: str
    members: int = 0


class Store(Protocol):
    def create_account(self, username: str, password_hash: str) -> Account:
        """Raises NameTaken, also for a name with the skeleton of an existing one."""
        ...

    def get_account(self, username: str) -> Account | None: ...

    def set_key(self, username: str, public_key: bytes) -> None:
        """The user's key from now on (a login from a new machine replaces the old one)."""
        ...

    def lookalike(self, username: str) -> str | None:
        """An existing account with the same name or the same skeleton, if any."""
        ...

    def create_room(self, room: str, private: bool, owner: str) -> Room:
        """Create a room with ``owner`` as its first member. Raises RoomExists."""
        ...

    def get_room(self, room: str) -> Room | None: ...

    def rooms_page(self, username: str, after: str, limit: int, mine: bool) -> list[Room]:
        """Up to ``limit`` rooms whose key (casefolded id) sorts after ``after``, in key
        order: public rooms and ``username``'s private ones, or with ``mine`` only
        ``username``'s rooms."""
        ...

    def rooms_of(self, username: str) -> list[str]: ...

    def owned_count(self, username: str) -> int:
        """How many rooms ``username`` owns."""
        ...

    def membership(self, room: str, username: str) -> bool | None:
        """None if not a member; else whether the member may add others to the room."""
        ...

    def add_member(self, room: str, username: str, may_add: bool = False) -> bool:
        """False if already a member (then nothing changes)."""
        ...

    def set_may_add(self, room: str, username: str, may_add: bool) -> None: ...

    def remove_member(self, room: str, username: str, ban: bool = False) -> bool:
        """False if not a member. With ``ban``, the user is banned from the room either way
        (until ``unban``, or until the owner adds them)."""
        ...

    def leave_room(self, room: str, username: str) -> bool:
        """Remove a member; an owner hands the room to the longest-standing member left, and
        the last one out deletes it. False if not a member."""
        ...

    def members_page(self, room: str, after: str, limit: int) -> list[Member]:
        """Up to ``limit`` members whose casefolded name sorts after ``after``, in that order."""
        ...

    def is_banned(self, room: str, username: str) -> bool: ...

    def unban(self, room: str, username: str) -> bool:
        """False if the user was not banned."""
        ...

    def secret(self) -> bytes:
        """A random key made once and kept for good (it signs login tickets)."""
        ...

    def close(self) -> None: ...
