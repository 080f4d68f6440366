"""The SQLite store: schema versions, case-insensitive names, refusal of foreign files."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from p2pchat.store import NameTaken, RoomExists, SqliteStore, StoreError
from p2pchat.store.sqlite import SCHEMA_VERSION


def test_names_are_unique_regardless_of_case() -> None:
    store = SqliteStore(":memory:")
    store.create_account("Alice", "h1")
    with pytest.raises(NameTaken):
        store.create_account("ALICE", "h2")
    account = store.get_account("alice")
    assert account is not None and (account.username, account.password_hash) == ("Alice", "h1")
    store.create_room("Lobby", False, "alice")
    with pytest.raises(RoomExists):
        store.create_room("lobby", True, "alice")
    assert store.members("LOBBY") == ["Alice"]
    assert store.rooms_of("aLiCe") == ["Lobby"]


def test_membership_operations() -> None:
    store = SqliteStore(":memory:")
    for name in ("a", "b", "c"):
        store.create_account(name, "h")
    store.create_room("r", True, "a")
    assert store.add_member("r", "c") and store.add_member("r", "b")
    assert not store.add_member("r", "B")
    assert store.members("r") == ["a", "c", "b"]  # in joining order
    assert store.member_counts() == {"r": 3}
    assert store.remove_member("r", "c") and not store.remove_member("r", "c")
    store.set_owner("r", "b")
    room = store.get_room("r")
    assert room is not None and (room.owner, room.private) == ("b", True)
    store.delete_room("r")
    assert store.get_room("r") is None and store.rooms_of("a") == []
    assert store.list_rooms() == []


def test_a_new_file_gets_the_current_schema_and_reopens(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    store = SqliteStore(path)
    store.create_account("alice", "h")
    store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert SqliteStore(path).get_account("ALICE") is not None


def test_a_newer_schema_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    SqliteStore(path).close()
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match="newer"):
        SqliteStore(path)


def test_a_file_that_is_not_a_database_is_refused_and_not_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(b"my precious notes, not a database\n" * 200)
    with pytest.raises(StoreError, match="cannot open"):
        SqliteStore(path)
    assert path.read_bytes() == b"my precious notes, not a database\n" * 200
