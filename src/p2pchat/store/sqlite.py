"""SQLite store: one file, WAL journal, versioned schema with forward migrations.

WAL with ``synchronous=NORMAL`` survives a killed process (``kill -9``) without losing committed
transactions; only a power cut may lose the last ones. Calls are synchronous: each is a
sub-millisecond indexed statement, cheaper than a hop to a thread.

A file that is not this program's database is refused before anything is written to it: an
empty (zero-byte) file, a file SQLite cannot read, a database that fails SQLite's quick check
(a damaged page), another program's database, or one with a newer schema.
"""

from __future__ import annotations

import functools
import os
import sqlite3
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Concatenate, ParamSpec, TypeVar

from p2pchat.protocol.messages import skeleton
from p2pchat.sqlitefile import Migration, open_database, transaction
from p2pchat.store.base import Account, Member, NameTaken, Room, RoomExists, StoreError


def _script(sql: str) -> Migration:
    def run(db: sqlite3.Connection) -> None:
        for statement in sql.split(";"):
            if statement.strip():
                db.execute(statement)

    return run


def _v2(db: sqlite3.Connection) -> None:
    """Skeletons of names, member counts, add permissions, bans, indexes for paging."""
    _script(
        """
        ALTER TABLE accounts ADD COLUMN skeleton TEXT NOT NULL DEFAULT '';
        ALTER TABLE rooms ADD COLUMN members INTEGER NOT NULL DEFAULT 0;
        UPDATE rooms SET members = (SELECT COUNT(*) FROM members m WHERE m.room_key = rooms.key);
        ALTER TABLE members ADD COLUMN may_add INTEGER NOT NULL DEFAULT 0;
        DROP INDEX members_by_user;
        CREATE INDEX members_by_user ON members(user_key, room_key);
        CREATE INDEX rooms_public ON rooms(private, key);
        CREATE INDEX rooms_by_owner ON rooms(owner_key);
        CREATE TABLE bans (
            room_key TEXT NOT NULL REFERENCES rooms(key) ON DELETE CASCADE,
            user_key TEXT NOT NULL REFERENCES accounts(key),
            PRIMARY KEY (room_key, user_key)
        ) WITHOUT ROWID;
        CREATE TABLE meta (name TEXT PRIMARY KEY, value BLOB NOT NULL)
        """
    )(db)
    rows = db.execute("SELECT key, username FROM accounts").fetchall()
    db.executemany(
        "UPDATE accounts SET skeleton = ? WHERE key = ?", [(skeleton(u), k) for k, u in rows]
    )
    db.execute("CREATE INDEX accounts_by_skeleton ON accounts(skeleton)")


_v3 = _script(
    """
    ALTER TABLE accounts ADD COLUMN public_key BLOB
    """
)
"""The user's current Ed25519 key: certificates are issued for it, and room messages signed
with it are verified against it."""


MIGRATIONS: list[Migration] = [
    # version 1
    _script(
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
        CREATE INDEX members_by_user ON members(user_key)
        """
    ),
    # version 2
    _v2,
    # version 3
    _v3,
]
SCHEMA_VERSION = len(MIGRATIONS)

P = ParamSpec("P")
R = TypeVar("R")


def _guarded(
    method: Callable[Concatenate[SqliteStore, P], R],
) -> Callable[Concatenate[SqliteStore, P], R]:
    """Report any SQLite failure as ``StoreError``, naming the operation."""

    def run(self: SqliteStore, /, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.Error as exc:
            raise StoreError(f"{method.__name__}: {exc}") from exc

    functools.update_wrapper(run, method)
    return run


def _key(name: str) -> str:
    return name.casefold()


class SqliteStore:
    """The embedded default store. ``path`` may be ``":memory:"`` for tests."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        if self.path != ":memory:" and os.path.isfile(self.path) and not os.path.getsize(path):
            raise StoreError(
                f"database {self.path!r} is an empty file (0 bytes), not a p2pchat "
                "database; remove it to start with a new one"
            )
        self._db = open_database(
            self.path, StoreError, "database", self._check, MIGRATIONS, foreign_keys=True
        )

    def _check(self, db: sqlite3.Connection) -> None:
        """Refuse a damaged or foreign file before writing anything to it."""
        (result,) = db.execute("PRAGMA quick_check(1)").fetchone()
        if result != "ok":
            raise StoreError(f"database {self.path!r} is damaged ({result}); restore a backup")
        (version,) = db.execute("PRAGMA user_version").fetchone()
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
        if version == 0 and tables:
            raise StoreError(
                f"database {self.path!r} belongs to another program (tables: "
                f"{', '.join(sorted(tables))[:200]})"
            )

    def _tx(self) -> AbstractContextManager[sqlite3.Connection]:
        return transaction(self._db)

    # ------------------------------------------------------------------ accounts

    @_guarded
    def create_account(self, username: str, password_hash: str) -> Account:
        shape = skeleton(username)
        with self._tx() as db:
            row = db.execute(
                "SELECT username FROM accounts WHERE key = ? OR skeleton = ? LIMIT 1",
                (_key(username), shape),
            ).fetchone()
            if row is not None:
                raise NameTaken(row[0])
            db.execute(
                "INSERT INTO accounts (key, username, password_hash, created, skeleton) "
                "VALUES (?, ?, ?, ?, ?)",
                (_key(username), username, password_hash, time.time(), shape),
            )
        return Account(username, password_hash)

    @_guarded
    def get_account(self, username: str) -> Account | None:
        row = self._db.execute(
            "SELECT username, password_hash, public_key FROM accounts WHERE key = ?",
            (_key(username),),
        ).fetchone()
        return (
            Account(row[0], row[1], bytes(row[2]) if row[2] is not None else None) if row else None
        )

    @_guarded
    def set_key(self, username: str, public_key: bytes) -> None:
        self._db.execute(
            "UPDATE accounts SET public_key = ? WHERE key = ?", (public_key, _key(username))
        )

    @_guarded
    def lookalike(self, username: str) -> str | None:
        row = self._db.execute(
            "SELECT username FROM accounts WHERE key = ? OR skeleton = ? LIMIT 1",
            (_key(username), skeleton(username)),
        ).fetchone()
        return str(row[0]) if row else None

    # ------------------------------------------------------------------ rooms

    @_guarded
    def create_room(self, room: str, private: bool, owner: str) -> Room:
        with self._tx() as db:
            owner_row = db.execute(
                "SELECT username FROM accounts WHERE key = ?", (_key(owner),)
            ).fetchone()
            if owner_row is None:
                raise StoreError(f"no account {owner!r}")
            try:
                db.execute(
                    "INSERT INTO rooms (key, room, private, owner_key, created, members) "
                    "VALUES (?, ?, ?, ?, ?, 1)",
                    (_key(room), room, int(private), _key(owner), time.time()),
                )
            except sqlite3.IntegrityError as exc:
                raise RoomExists(room) from exc
            db.execute(
                "INSERT INTO members (room_key, user_key, added) VALUES (?, ?, ?)",
                (_key(room), _key(owner), time.time()),
            )
        return Room(room, private, owner_row[0], 1)

    _ROOM_SELECT = (
        "SELECT r.room, r.private, a.username, r.members FROM rooms r "
        "JOIN accounts a ON a.key = r.owner_key"
    )

    @_guarded
    def get_room(self, room: str) -> Room | None:
        row = self._db.execute(self._ROOM_SELECT + " WHERE r.key = ?", (_key(room),)).fetchone()
        return Room(row[0], bool(row[1]), row[2], row[3]) if row else None

    @_guarded
    def rooms_page(self, username: str, after: str, limit: int, mine: bool) -> list[Room]:
        # Two index walks merged: the user's own rooms (members_by_user) and, unless
        # ``mine``, the public ones (rooms_public); neither reads rooms it does not return.
        user = _key(username)
        own = self._db.execute(
            self._ROOM_SELECT + " JOIN members m ON m.room_key = r.key "
            "WHERE m.user_key = ? AND m.room_key > ? ORDER BY m.room_key LIMIT ?",
            (user, after, limit),
        ).fetchall()
        rows = own
        if not mine:
            public = self._db.execute(
                self._ROOM_SELECT + " WHERE r.private = 0 AND r.key > ? ORDER BY r.key LIMIT ?",
                (after, limit),
            ).fetchall()
            merged = {_key(r[0]): r for r in (*public, *own)}
            rows = [merged[k] for k in sorted(merged)[:limit]]
        return [Room(r[0], bool(r[1]), r[2], r[3]) for r in rows]

    @_guarded
    def rooms_of(self, username: str) -> list[str]:
        rows = self._db.execute(
            "SELECT r.room FROM members m JOIN rooms r ON r.key = m.room_key "
            "WHERE m.user_key = ? ORDER BY m.room_key",
            (_key(username),),
        ).fetchall()
        return [r[0] for r in rows]

    @_guarded
    def owned_count(self, username: str) -> int:
        (n,) = self._db.execute(
            "SELECT COUNT(*) FROM rooms WHERE owner_key = ?", (_key(username),)
        ).fetchone()
        return int(n)

    @_guarded
    def membership(self, room: str, username: str) -> bool | None:
        row = self._db.execute(
            "SELECT may_add FROM members WHERE room_key = ? AND user_key = ?",
            (_key(room), _key(username)),
        ).fetchone()
        return None if row is None else bool(row[0])

    @_guarded
    def add_member(self, room: str, username: str, may_add: bool = False) -> bool:
        with self._tx() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO members (room_key, user_key, added, may_add) "
                "VALUES (?, ?, ?, ?)",
                (_key(room), _key(username), time.time(), int(may_add)),
            )
            if cur.rowcount != 1:
                return False
            db.execute("UPDATE rooms SET members = members + 1 WHERE key = ?", (_key(room),))
            db.execute(
                "DELETE FROM bans WHERE room_key = ? AND user_key = ?",
                (_key(room), _key(username)),
            )
        return True

    @_guarded
    def set_may_add(self, room: str, username: str, may_add: bool) -> None:
        self._db.execute(
            "UPDATE members SET may_add = ? WHERE room_key = ? AND user_key = ?",
            (int(may_add), _key(room), _key(username)),
        )

    def _remove(self, db: sqlite3.Connection, room: str, username: str) -> bool:
        cur = db.execute(
            "DELETE FROM members WHERE room_key = ? AND user_key = ?", (_key(room), _key(username))
        )
        if cur.rowcount != 1:
            return False
        db.execute("UPDATE rooms SET members = members - 1 WHERE key = ?", (_key(room),))
        return True

    @_guarded
    def remove_member(self, room: str, username: str, ban: bool = False) -> bool:
        with self._tx() as db:
            removed = self._remove(db, room, username)
            if ban:
                db.execute(
                    "INSERT OR IGNORE INTO bans (room_key, user_key) VALUES (?, ?)",
                    (_key(room), _key(username)),
                )
        return removed

    @_guarded
    def leave_room(self, room: str, username: str) -> bool:
        with self._tx() as db:
            if not self._remove(db, room, username):
                return False
            owner = db.execute("SELECT owner_key FROM rooms WHERE key = ?", (_key(room),))
            if owner.fetchone()[0] != _key(username):
                return True
            heir = db.execute(
                "SELECT user_key FROM members WHERE room_key = ? ORDER BY seq LIMIT 1",
                (_key(room),),
            ).fetchone()
            if heir is None:
                db.execute("DELETE FROM rooms WHERE key = ?", (_key(room),))
            else:
                db.execute("UPDATE rooms SET owner_key = ? WHERE key = ?", (heir[0], _key(room)))
        return True

    @_guarded
    def members_page(self, room: str, after: str, limit: int) -> list[Member]:
        rows = self._db.execute(
            "SELECT a.username, a.public_key, m.added FROM members m "
            "JOIN accounts a ON a.key = m.user_key "
            "WHERE m.room_key = ? AND m.user_key > ? ORDER BY m.user_key LIMIT ?",
            (_key(room), after, limit),
        ).fetchall()
        return [Member(r[0], bytes(r[1]) if r[1] is not None else None, r[2]) for r in rows]

    @_guarded
    def is_banned(self, room: str, username: str) -> bool:
        row = self._db.execute(
            "SELECT 1 FROM bans WHERE room_key = ? AND user_key = ?", (_key(room), _key(username))
        ).fetchone()
        return row is not None

    @_guarded
    def unban(self, room: str, username: str) -> bool:
        cur = self._db.execute(
            "DELETE FROM bans WHERE room_key = ? AND user_key = ?", (_key(room), _key(username))
        )
        return cur.rowcount == 1

    @_guarded
    def secret(self) -> bytes:
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO meta (name, value) VALUES ('ticket_key', ?)",
                (os.urandom(32),),
            )
            (value,) = db.execute("SELECT value FROM meta WHERE name = 'ticket_key'").fetchone()
        return bytes(value)

    def close(self) -> None:
        self._db.close()
