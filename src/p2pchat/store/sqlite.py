"""SQLite store: one file, WAL journal, versioned schema with forward migrations.

WAL with ``synchronous=NORMAL`` survives a killed process (``kill -9``) without losing committed
transactions; only a power cut may lose the last ones. Calls are synchronous: each is a
sub-millisecond indexed statement, cheaper than a hop to a thread.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from p2pchat.store.base import Account, NameTaken, Room, RoomExists, StoreError

MIGRATIONS: list[str] = [
    # version 1
    """
    CREATE TABLE accounts (
        key           TEXT PRIMARY KEY,
        username      TEXT NOT NULL,
        password_hash TEXT NOT NULL,
        created       REAL NOT NULL
    );
    CREATE TABLE rooms (
        key       TEXT PRIMARY KEY,
        room      TEXT NOT NULL,
        private   INTEGER NOT NULL,
        owner_key TEXT NOT NULL REFERENCES accounts(key),
        created   REAL NOT NULL
    );
    CREATE TABLE members (
        seq      INTEGER PRIMARY KEY AUTOINCREMENT,
        room_key TEXT NOT NULL REFERENCES rooms(key) ON DELETE CASCADE,
        user_key TEXT NOT NULL REFERENCES accounts(key),
        added    REAL NOT NULL,
        UNIQUE (room_key, user_key)
    );
    CREATE INDEX members_by_user ON members(user_key);
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)


def _key(name: str) -> str:
    return name.casefold()


class SqliteStore:
    """The embedded default store. ``path`` may be ``":memory:"`` for tests."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA busy_timeout = 5000")
            if self.path != ":memory:":
                self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = NORMAL")
            self._db.execute("PRAGMA foreign_keys = ON")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot open database {self.path!r}: {exc}") from exc

    def _migrate(self) -> None:
        (version,) = self._db.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"database {self.path!r} has schema version {version}, newer than this "
                f"program's {SCHEMA_VERSION}; upgrade p2pchat"
            )
        for target in range(version + 1, SCHEMA_VERSION + 1):
            # executescript commits first; wrap the migration and its version in one transaction
            script = MIGRATIONS[target - 1]
            self._db.executescript(
                f"BEGIN IMMEDIATE; {script}\nPRAGMA user_version = {target}; COMMIT;"
            )

    # ------------------------------------------------------------------ accounts

    def create_account(self, username: str, password_hash: str) -> Account:
        try:
            self._db.execute(
                "INSERT INTO accounts (key, username, password_hash, created) VALUES (?, ?, ?, ?)",
                (_key(username), username, password_hash, time.time()),
            )
        except sqlite3.IntegrityError as exc:
            raise NameTaken(username) from exc
        return Account(username, password_hash)

    def get_account(self, username: str) -> Account | None:
        row = self._db.execute(
            "SELECT username, password_hash FROM accounts WHERE key = ?", (_key(username),)
        ).fetchone()
        return Account(row[0], row[1]) if row else None

    def set_password_hash(self, username: str, password_hash: str) -> None:
        self._db.execute(
            "UPDATE accounts SET password_hash = ? WHERE key = ?", (password_hash, _key(username))
        )

    # ------------------------------------------------------------------ rooms

    def create_room(self, room: str, private: bool, owner: str) -> Room:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute("SELECT username FROM accounts WHERE key = ?", (_key(owner),))
            owner_row = row.fetchone()
            if owner_row is None:
                raise StoreError(f"no account {owner!r}")
            db.execute(
                "INSERT INTO rooms (key, room, private, owner_key, created) VALUES (?, ?, ?, ?, ?)",
                (_key(room), room, int(private), _key(owner), time.time()),
            )
            db.execute(
                "INSERT INTO members (room_key, user_key, added) VALUES (?, ?, ?)",
                (_key(room), _key(owner), time.time()),
            )
        except sqlite3.IntegrityError as exc:
            db.execute("ROLLBACK")
            raise RoomExists(room) from exc
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return Room(room, private, owner_row[0])

    _ROOM_SELECT = (
        "SELECT r.room, r.private, a.username FROM rooms r JOIN accounts a ON a.key = r.owner_key"
    )

    def get_room(self, room: str) -> Room | None:
        row = self._db.execute(self._ROOM_SELECT + " WHERE r.key = ?", (_key(room),)).fetchone()
        return Room(row[0], bool(row[1]), row[2]) if row else None

    def list_rooms(self) -> list[Room]:
        rows = self._db.execute(self._ROOM_SELECT + " ORDER BY r.key").fetchall()
        return [Room(r[0], bool(r[1]), r[2]) for r in rows]

    def set_owner(self, room: str, username: str) -> None:
        self._db.execute(
            "UPDATE rooms SET owner_key = ? WHERE key = ?", (_key(username), _key(room))
        )

    def delete_room(self, room: str) -> None:
        self._db.execute("DELETE FROM rooms WHERE key = ?", (_key(room),))

    def add_member(self, room: str, username: str) -> bool:
        cur = self._db.execute(
            "INSERT OR IGNORE INTO members (room_key, user_key, added) VALUES (?, ?, ?)",
            (_key(room), _key(username), time.time()),
        )
        return cur.rowcount == 1

    def remove_member(self, room: str, username: str) -> bool:
        cur = self._db.execute(
            "DELETE FROM members WHERE room_key = ? AND user_key = ?", (_key(room), _key(username))
        )
        return cur.rowcount == 1

    def members(self, room: str) -> list[str]:
        rows = self._db.execute(
            "SELECT a.username FROM members m JOIN accounts a ON a.key = m.user_key "
            "WHERE m.room_key = ? ORDER BY m.seq",
            (_key(room),),
        ).fetchall()
        return [r[0] for r in rows]

    def rooms_of(self, username: str) -> list[str]:
        rows = self._db.execute(
            "SELECT r.room FROM members m JOIN rooms r ON r.key = m.room_key "
            "WHERE m.user_key = ? ORDER BY r.key",
            (_key(username),),
        ).fetchall()
        return [r[0] for r in rows]

    def member_counts(self) -> dict[str, int]:
        rows = self._db.execute(
            "SELECT r.room, COUNT(m.seq) FROM rooms r LEFT JOIN members m ON m.room_key = r.key "
            "GROUP BY r.key"
        ).fetchall()
        return {r[0]: r[1] for r in rows}

    def close(self) -> None:
        self._db.close()
