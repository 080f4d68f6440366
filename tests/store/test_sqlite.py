"""The SQLite store: schema versions, case-insensitive names, refusal of foreign files."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from p2pchat.store import Member, NameTaken, RoomExists, SqliteStore, StoreError
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
    assert [m.username for m in store.members_page("LOBBY", "", 10)] == ["Alice"]
    assert store.rooms_of("aLiCe") == ["Lobby"]


@pytest.mark.parametrize("lookalike", ["aIice", "alice.", "a1ice", "ALICE", "a_l_i_c_e", "al1ce"])
def test_lookalike_names_are_refused(lookalike: str) -> None:
    store = SqliteStore(":memory:")
    store.create_account("alice", "h")
    assert store.lookalike(lookalike) == "alice"
    with pytest.raises(NameTaken) as taken:
        store.create_account(lookalike, "h2")
    assert taken.value.existing == "alice"
    assert store.get_account(lookalike) is None or lookalike.casefold() == "alice"
    assert store.lookalike("bob") is None
    store.create_account("bob", "h")


def test_membership_operations() -> None:
    store = SqliteStore(":memory:")
    for name in ("a", "b", "c"):
        store.create_account(name, "h")
    store.create_room("r", True, "a")
    assert store.add_member("r", "c") and store.add_member("r", "b", may_add=True)
    assert not store.add_member("r", "B")
    assert store.membership("r", "b") is True and store.membership("r", "c") is False
    assert store.membership("r", "nobody") is None
    store.set_may_add("r", "c", True)
    assert store.membership("r", "c") is True
    assert [m.username for m in store.members_page("r", "", 10)] == ["a", "b", "c"]  # by name
    assert [m.username for m in store.members_page("r", "a", 1)] == ["b"]
    room = store.get_room("R")
    assert room is not None and (room.room, room.private, room.owner, room.members) == (
        "r",
        True,
        "a",
        3,
    )
    assert store.remove_member("r", "c") and not store.remove_member("r", "c")
    assert store.get_room("r").members == 2  # type: ignore[union-attr]
    assert store.owned_count("a") == 1 and store.owned_count("b") == 0


def test_an_accounts_key_is_kept_replaced_by_the_next_and_listed_with_its_memberships(
    tmp_path: Path,
) -> None:
    store = SqliteStore(tmp_path / "r.db")
    store.create_account("Alice", "h")
    store.create_account("bob", "h")
    assert store.get_account("alice").public_key is None  # type: ignore[union-attr]
    store.set_key("ALICE", b"k" * 32)
    account = store.get_account("alice")
    assert account is not None and (account.password_hash, account.public_key) == ("h", b"k" * 32)
    before = time.time()
    store.create_room("lobby", False, "bob")
    store.add_member("lobby", "alice")
    after = time.time()
    store.set_key("alice", b"n" * 32)  # a login from another machine: the new key replaces it
    store.close()
    store = SqliteStore(tmp_path / "r.db")  # and it is kept
    alice, bob = store.members_page("lobby", "", 10)
    assert (alice.username, alice.public_key, bob.username, bob.public_key) == (
        "Alice",
        b"n" * 32,
        "bob",
        None,
    )
    assert before <= alice.since <= after and before <= bob.since <= after  # wall clock
    assert isinstance(alice, Member)


def test_leaving_hands_the_room_to_the_longest_standing_member_and_the_last_deletes_it() -> None:
    store = SqliteStore(":memory:")
    for name in ("a", "b", "c"):
        store.create_account(name, "h")
    store.create_room("r", False, "a")
    store.add_member("r", "c")
    store.add_member("r", "b")
    assert store.leave_room("r", "a") and not store.leave_room("r", "a")
    room = store.get_room("r")
    assert room is not None and (room.owner, room.members) == ("c", 2)  # c came first
    assert store.leave_room("r", "b")  # not the owner: nothing handed over
    assert store.get_room("r").owner == "c"  # type: ignore[union-attr]
    assert store.leave_room("r", "c")
    assert store.get_room("r") is None and store.rooms_of("c") == []
    store.create_room("r", False, "b")  # the id is free again


def test_bans_keep_until_unbanned_or_added() -> None:
    store = SqliteStore(":memory:")
    for name in ("a", "b", "c"):
        store.create_account(name, "h")
    store.create_room("r", False, "a")
    store.add_member("r", "b")
    assert store.remove_member("r", "b", ban=True)
    assert store.is_banned("r", "B") and store.membership("r", "b") is None
    assert not store.remove_member("r", "c", ban=True)  # not a member, banned all the same
    assert store.is_banned("r", "c")
    assert store.unban("r", "b") and not store.unban("r", "b")
    assert store.add_member("r", "c") and not store.is_banned("r", "c")  # the owner's add


def test_room_pages_are_read_from_indexes_public_and_own_private_merged() -> None:
    store = SqliteStore(":memory:")
    for name in ("a", "b"):
        store.create_account(name, "h")
    for i in range(10):
        store.create_room(f"pub{i}", False, "a")
        store.create_room(f"priv{i}", True, "a")
    store.create_room("mine", True, "b")
    store.add_member("pub3", "b")
    seen = [r.room for r in store.rooms_page("b", "", 100, mine=False)]
    assert seen == ["mine", *(f"pub{i}" for i in range(10))]
    assert [r.room for r in store.rooms_page("b", "", 100, mine=True)] == ["mine", "pub3"]
    assert [r.room for r in store.rooms_page("b", "mine", 3, mine=False)] == [
        "pub0",
        "pub1",
        "pub2",
    ]
    assert len(store.rooms_page("a", "", 100, mine=False)) == 20
    plan = " ".join(
        str(row)
        for row in store._db.execute(
            "EXPLAIN QUERY PLAN SELECT r.room FROM rooms r WHERE r.private = 0 AND r.key > ? "
            "ORDER BY r.key LIMIT ?",
            ("", 5),
        )
    )
    assert "rooms_public" in plan and "TEMP B-TREE" not in plan  # an index walk, no sort


def test_the_secret_is_made_once_and_kept(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "r.db")
    secret = store.secret()
    assert len(secret) == 32 and store.secret() == secret
    store.close()
    assert SqliteStore(tmp_path / "r.db").secret() == secret


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


def test_a_version_1_database_is_migrated_with_skeletons_counts_indexes_and_keys(
    tmp_path: Path,
) -> None:
    path = tmp_path / "v1.db"
    with sqlite3.connect(path) as db:  # the schema and rows an older release left
        for statement in (
            "CREATE TABLE accounts (key TEXT PRIMARY KEY, username TEXT NOT NULL, "
            "password_hash TEXT NOT NULL, created REAL NOT NULL)",
            "CREATE TABLE rooms (key TEXT PRIMARY KEY, room TEXT NOT NULL, private INTEGER NOT "
            "NULL, owner_key TEXT NOT NULL REFERENCES accounts(key), created REAL NOT NULL)",
            "CREATE TABLE members (seq INTEGER PRIMARY KEY AUTOINCREMENT, room_key TEXT NOT NULL "
            "REFERENCES rooms(key) ON DELETE CASCADE, user_key TEXT NOT NULL REFERENCES "
            "accounts(key), added REAL NOT NULL, UNIQUE (room_key, user_key))",
            "CREATE INDEX members_by_user ON members(user_key)",
            "INSERT INTO accounts VALUES ('alice', 'Alice', 'h', 0), ('bob', 'bob', 'h', 0)",
            "INSERT INTO rooms VALUES ('lobby', 'Lobby', 0, 'alice', 0)",
            "INSERT INTO members (room_key, user_key, added) VALUES ('lobby', 'alice', 0), "
            "('lobby', 'bob', 0)",
            "PRAGMA user_version = 1",
        ):
            db.execute(statement)
    store = SqliteStore(path)
    room = store.get_room("lobby")
    assert room is not None and (room.room, room.owner, room.members) == ("Lobby", "Alice", 2)
    assert store.members_page("lobby", "", 5) == [Member("Alice", None, 0), Member("bob", None, 0)]
    store.set_key("alice", b"k" * 32)  # version 3: a key per account
    assert store.get_account("alice").public_key == b"k" * 32  # type: ignore[union-attr]
    assert store.lookalike("a1ice") == "Alice"
    assert store.membership("lobby", "bob") is False
    store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        indexes = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        assert {"accounts_by_skeleton", "rooms_public", "members_by_user"} <= indexes


def test_an_empty_file_is_refused_and_left_empty(tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    path.write_bytes(b"")
    with pytest.raises(StoreError, match="empty file"):
        SqliteStore(path)
    assert path.read_bytes() == b""
    assert {p.name for p in tmp_path.iterdir()} == {"empty.db"}  # no journal left behind


def _damaged(tmp_path: Path) -> tuple[Path, bytes]:
    """A real database with a page of its accounts table overwritten."""
    path = tmp_path / "damaged.db"
    store = SqliteStore(path)
    for i in range(300):
        store.create_account(f"user{i:04d}x", "h" * 100)
    store.close()
    data = bytearray(path.read_bytes())
    page = 4096
    assert len(data) > 8 * page
    data[3 * page : 3 * page + 64] = b"\xa5" * 64  # a b-tree page's header: clearly damaged
    path.write_bytes(bytes(data))
    return path, bytes(data)


def test_a_damaged_database_is_refused_and_left_untouched(tmp_path: Path) -> None:
    path, before = _damaged(tmp_path)
    with pytest.raises(StoreError, match=r"damaged|malformed"):
        SqliteStore(path)
    assert path.read_bytes() == before


def test_another_programs_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE invoices (n INTEGER)")
    with pytest.raises(StoreError, match="another program"):
        SqliteStore(path)
    with sqlite3.connect(path) as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master")]
        assert tables == ["invoices"]


def test_a_full_disk_is_a_store_error_and_a_write_is_all_or_nothing(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "r.db")
    store.create_account("owner", "h")
    (pages,) = store._db.execute("PRAGMA page_count").fetchone()
    store._db.execute(f"PRAGMA max_page_count = {pages + 2}")  # the disk is all but full
    rooms: list[str] = []
    with pytest.raises(StoreError, match="full"):
        for i in range(10_000):  # each room is two rows in two tables, in one transaction
            name = f"r{i:04d}"
            rooms.append(name)
            store.create_room(name, False, "owner")
    failed = rooms.pop()
    assert store.get_room(failed) is None  # neither row of the failed one was kept
    assert store.rooms_of("owner") == rooms
    for name in rooms[:: max(1, len(rooms) // 10)]:
        room = store.get_room(name)
        assert room is not None and room.members == 1
        assert [m.username for m in store.members_page(name, "", 5)] == ["owner"]
    assert store.owned_count("owner") == len(rooms)


def test_a_closed_connection_is_a_store_error_too() -> None:
    store = SqliteStore(":memory:")
    store.close()
    with pytest.raises(StoreError, match="get_account"):
        store.get_account("alice")
