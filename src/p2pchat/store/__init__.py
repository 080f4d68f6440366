"""Persistence of accounts, rooms and memberships (never presence)."""

from p2pchat.store.base import Account, Member, NameTaken, Room, RoomExists, Store, StoreError
from p2pchat.store.sqlite import SqliteStore

__all__ = [
    "Account",
    "Member",
    "NameTaken",
    "Room",
    "RoomExists",
    "SqliteStore",
    "Store",
    "StoreError",
]
