"""Opening a SQLite file as both of our databases want it (the registry's store, a peer's
history): refused if damaged or foreign before anything is written to it, WAL, versioned
forward migrations each in one transaction, every failure one error type naming the file."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

Migration = Callable[[sqlite3.Connection], None]


def open_database(
    path: str,
    error: type[Exception],
    noun: str,
    check: Callable[[sqlite3.Connection], None],
    migrations: Sequence[Migration],
    *,
    stamp: Migration | None = None,
    foreign_keys: bool = False,
) -> sqlite3.Connection:
    """Connect, ``check`` (which raises ``error`` for a file that is not ours), set the
    pragmas, and run the migrations past the file's ``user_version`` (``stamp`` too, in each
    migration's transaction). A newer file is refused: this program cannot read it."""
    try:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise error(f"cannot open {noun} {path!r}: {exc}") from exc
    try:
        check(db)
        db.execute("PRAGMA busy_timeout = 5000")
        if path != ":memory:":
            db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")
        if foreign_keys:
            db.execute("PRAGMA foreign_keys = ON")
        (version,) = db.execute("PRAGMA user_version").fetchone()
        if version > len(migrations):
            raise error(
                f"{noun} {path!r} has schema version {version}, newer than this program's "
                f"{len(migrations)}; upgrade p2pchat"
            )
        for target in range(version + 1, len(migrations) + 1):
            with transaction(db):  # a migration and its version number, all or nothing
                migrations[target - 1](db)
                if stamp is not None:
                    stamp(db)
                db.execute(f"PRAGMA user_version = {target}")
    except sqlite3.DatabaseError as exc:
        db.close()
        raise error(f"cannot open {noun} {path!r}: {exc}") from exc
    except error:
        db.close()
        raise
    return db


@contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction, taken at once (no upgrade deadlock), rolled back on any error."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        with contextlib.suppress(sqlite3.Error):  # gone already; the error says why
            db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
