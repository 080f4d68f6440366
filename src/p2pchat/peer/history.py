"""A peer's local history of its rooms, and its outbox of direct messages, in one SQLite file.

**What is kept.** Every room message the peer has seen, with what is needed to serve it to a
neighbour and to check it again later: room, origin, the origin's public key (the *stream*),
id, sequence number, timestamp, text and signature. A *stream* is one origin's messages in one
room under one key; its sequence numbers run 1, 2, 3... For each stream the store keeps
``high``: every seq up to it is *done*, that is held now, held once and pruned since, or out of
this peer's reach (older than what any neighbour would serve it). Seqs held above ``high``
(beyond a gap) are counted too. ``high`` never goes down, so pruning a message never makes it
wanted again, and a duplicate (by id, or by stream and seq) is refused with one index probe.

**Bounds**, enforced on every insert and never by a full scan: per room ``max_messages``
(oldest first, through the room's time index) and ``max_age`` (checked per room at most once
a ``age_check`` of wall time, and by ``prune``); all rooms together ``max_bytes`` (counted as
text plus ``ROW_OVERHEAD`` per message; beyond it the room holding the most bytes loses its
oldest); stream records without messages, ``max_streams`` per room. Age goes by ``at``, the
smaller of the message's own timestamp and the time it was stored, so a sender whose clock runs
ahead cannot keep its messages longer.

**The outbox** keeps direct messages to users who are offline, across restarts, each with one
id from first try to acknowledgement and a state (``queued``, ``sending``, ``delivered``,
``failed``), bounded per recipient, in all and in bytes. Next to it, the ids of direct
messages received recently, so that a resend is never shown twice, even after a restart.

**Care with the file**, as in the registry's store: WAL with ``synchronous=NORMAL``; a schema
version (``user_version``) with forward migrations, each one transaction; the file is marked as
ours (``application_id``). Refused with a clear error and left untouched: a file SQLite cannot
read, one that fails ``quick_check``, one with tables but not our mark (another program's, or
the registry's database), one of a newer schema. A zero-byte file is taken as new: SQLite
itself creates the file empty when it opens a path, so an empty file is what a first start
that stopped before its first write leaves, and it holds nothing that writing could destroy;
unless a non-empty ``-wal`` file lies beside it (then the database may live in the journal).
So is a database with no table and no mark (a first start that stopped between switching to
WAL and its first migration). A non-empty file with nothing SQLite recognises in it (zeros
left by a crash, say) is not a database, and refused.
Every write is one transaction (a message, its stream, its room's counters and the pruning it
causes), every SQLite failure is raised as ``HistoryError``, and the few figures cached in
memory are updated only after a commit.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import hashlib
import math
import os
import re
import sqlite3
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from p2pchat.protocol.messages import MAX_TEXT, valid_name
from p2pchat.sqlitefile import Migration, open_database, transaction

APPLICATION_ID = 0x70326368
"""``p2ch``: marks a SQLite file as a p2pchat peer history (``PRAGMA application_id``)."""
ROW_OVERHEAD = 180
"""Bytes a stored message counts for beyond its text: signature, id, numbers, three index
entries. The byte bound counts text plus this; ``bench/history.py`` measures the real file."""
KEY_SIZE = 32
SIG_SIZE = 64
MAX_SEQ = 2**53
"""Sequence numbers stay below this (exact in JSON and in SQLite)."""
MAX_RANGES = 32
"""Ranges held above ``high`` listed per stream in a summary; more are left out (they are
then not offered to neighbours, never wrongly claimed)."""
_ID_RE = re.compile(r"[0-9a-f]{32}")

Range = tuple[int, int]
"""Inclusive ``(lo, hi)`` of sequence numbers."""


class HistoryError(Exception):
    """The history file cannot be used (damaged, foreign, newer, full disk, I/O failure)."""


class OutboxFull(Exception):
    """A direct message cannot be queued: the outbox holds too many for that user, in all, or
    in bytes. The message says which."""


class DirectState(enum.StrEnum):
    QUEUED = "queued"
    """Waiting for the recipient to come online (or for a link)."""
    SENDING = "sending"
    """Sent on a link; waiting for ``dm_ack``."""
    DELIVERED = "delivered"
    """Acknowledged by the recipient's peer. Final: the entry leaves the outbox."""
    FAILED = "failed"
    """Refused, or waited too long; a late acknowledgement still turns it into delivered, and
    the user may queue it again."""


_MOVES: dict[DirectState, frozenset[DirectState]] = {
    DirectState.QUEUED: frozenset({DirectState.SENDING, DirectState.FAILED}),
    DirectState.SENDING: frozenset(
        {DirectState.SENDING, DirectState.DELIVERED, DirectState.QUEUED, DirectState.FAILED}
    ),
    DirectState.FAILED: frozenset({DirectState.DELIVERED, DirectState.QUEUED}),
    DirectState.DELIVERED: frozenset(),
}
"""The allowed changes of a direct message's state; anything else is a ``ValueError``. Any
message sent at least once may also become delivered: its acknowledgement can come late."""


@dataclass(frozen=True, slots=True)
class Limits:
    """Every bound of the history file; the defaults are the issue's."""

    max_messages: int = 10_000
    """Per room."""
    max_age: float = 30 * 86400.0
    """Seconds of wall time a message is kept, per its ``at``."""
    max_bytes: int = 256 * 1024 * 1024
    """All rooms together, counted as text plus ``ROW_OVERHEAD`` a message."""
    max_streams: int = 2_000
    """Stream records per room that hold no message (they remember what is done)."""
    age_check: float = 60.0
    """A room's age bound is applied on insert at most this often (and by ``prune``)."""
    outbox_per_recipient: int = 100
    outbox_total: int = 1_000
    outbox_bytes: int = 4 * 1024 * 1024
    outbox_max_age: float = 7 * 86400.0
    """A direct message still queued after this fails (``expire``)."""
    seen_directs: int = 10_000
    """Ids of received direct messages remembered (the most recent)."""

    def __post_init__(self) -> None:
        for name in (
            "max_messages",
            "max_bytes",
            "max_streams",
            "outbox_per_recipient",
            "outbox_total",
            "outbox_bytes",
            "seen_directs",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        for name in ("max_age", "age_check", "outbox_max_age"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A signed room message as kept and served: every field the signature covers, the
    signature, and the key it verifies with."""

    room: str
    origin: str
    key: bytes
    """The origin's raw Ed25519 public key (32 bytes): with ``origin``, names the stream."""
    id: str
    """32 lowercase hex digits."""
    seq: int
    ts: float
    text: str
    sig: bytes
    """64 bytes."""

    @property
    def stream(self) -> StreamKey:
        return (self.room.casefold(), self.origin, self.key)


StreamKey = tuple[str, str, bytes]
"""``(casefolded room, origin, key)``."""


@dataclass(frozen=True, slots=True)
class Added:
    """A message was new. ``prev_high`` and ``prev_top``: its stream's ``high`` and highest
    seq held or done before it came (0 for a new stream), for the order buffer. ``stored``
    is false when it was too old to keep (it is done all the same)."""

    prev_high: int
    prev_top: int
    stored: bool = True


@dataclass(frozen=True, slots=True)
class StreamHead:
    """What a peer holds of one stream: everything up to ``high`` (held or out of reach),
    and the ranges ``extra`` held above it (at most ``MAX_RANGES``)."""

    origin: str
    key: bytes
    high: int
    extra: tuple[Range, ...] = ()

    @property
    def ranges(self) -> list[Range]:
        """Every seq this head covers, as ranges."""
        out: list[Range] = [(1, self.high)] if self.high > 0 else []
        return union(out, self.extra)


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A direct message in the outbox."""

    id: str
    recipient: str
    text: str
    ts: float
    """When it was written (wall clock): what the recipient is shown."""
    state: DirectState
    attempts: int
    reason: str
    updated: float


# ---------------------------------------------------------------- ranges


def to_ranges(seqs: Iterable[int]) -> list[Range]:
    """Ascending seqs as inclusive ranges."""
    out: list[Range] = []
    for s in seqs:
        if out and s == out[-1][1] + 1:
            out[-1] = (out[-1][0], s)
        elif not out or s > out[-1][1]:
            out.append((s, s))
    return out


def union(a: Sequence[Range], b: Sequence[Range]) -> list[Range]:
    out: list[Range] = []
    for lo, hi in sorted([*a, *b]):
        if out and lo <= out[-1][1] + 1:
            if hi > out[-1][1]:
                out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return out


def subtract(a: Sequence[Range], b: Sequence[Range]) -> list[Range]:
    """``a`` less ``b``; both ascending and disjoint."""
    out: list[Range] = []
    j = 0
    for lo, hi in a:
        while j < len(b) and b[j][1] < lo:
            j += 1
        k = j
        while lo <= hi:
            if k >= len(b) or b[k][0] > hi:
                out.append((lo, hi))
                break
            if b[k][0] > lo:
                out.append((lo, b[k][0] - 1))
            lo = max(lo, b[k][1] + 1)
            k += 1
    return out


def contains(ranges: Sequence[Range], seq: int) -> bool:
    return any(lo <= seq <= hi for lo, hi in ranges)


# ---------------------------------------------------------------- schema


_V1 = """
CREATE TABLE rooms (
    id       INTEGER PRIMARY KEY,
    key      TEXT NOT NULL UNIQUE,
    name     TEXT NOT NULL,
    messages INTEGER NOT NULL DEFAULT 0,
    bytes    INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE streams (
    id      INTEGER PRIMARY KEY,
    room    INTEGER NOT NULL REFERENCES rooms(id),
    origin  TEXT NOT NULL,
    key     BLOB NOT NULL,
    high    INTEGER NOT NULL,
    top     INTEGER NOT NULL,
    above   INTEGER NOT NULL,
    held    INTEGER NOT NULL,
    last_at REAL NOT NULL,
    UNIQUE (room, origin, key)
);
CREATE INDEX streams_idle ON streams(room, held, last_at);
CREATE TABLE messages (
    id     INTEGER PRIMARY KEY,
    mid    BLOB NOT NULL UNIQUE,
    room   INTEGER NOT NULL,
    stream INTEGER NOT NULL REFERENCES streams(id),
    seq    INTEGER NOT NULL,
    ts     REAL NOT NULL,
    at     REAL NOT NULL,
    text   TEXT NOT NULL,
    sig    BLOB NOT NULL,
    size   INTEGER NOT NULL,
    UNIQUE (stream, seq)
);
CREATE INDEX messages_by_room ON messages(room, at);
CREATE TABLE outbox (
    id        TEXT PRIMARY KEY,
    n         INTEGER NOT NULL UNIQUE,
    recipient TEXT NOT NULL,
    rkey      TEXT NOT NULL,
    text      TEXT NOT NULL,
    ts        REAL NOT NULL,
    state     TEXT NOT NULL,
    attempts  INTEGER NOT NULL DEFAULT 0,
    reason    TEXT NOT NULL DEFAULT '',
    updated   REAL NOT NULL,
    size      INTEGER NOT NULL
);
CREATE INDEX outbox_by_recipient ON outbox(rkey, n);
CREATE TABLE directs_seen (
    sender TEXT NOT NULL,
    id     TEXT NOT NULL,
    at     REAL NOT NULL,
    PRIMARY KEY (sender, id)
) WITHOUT ROWID;
CREATE INDEX directs_seen_by_at ON directs_seen(at)
"""


def _v1(db: sqlite3.Connection) -> None:
    for statement in _V1.split(";"):
        db.execute(statement)


MIGRATIONS: list[Migration] = [_v1]


def _stamp(db: sqlite3.Connection) -> None:
    """Mark the file as a p2pchat history, so that no other database is taken for one."""
    db.execute(f"PRAGMA application_id = {APPLICATION_ID}")


SCHEMA_VERSION = len(MIGRATIONS)

P = ParamSpec("P")
R = TypeVar("R")


BATCH_MAX = 256
"""Messages added in one batch before it is committed whatever the time."""


def _guarded(method: Callable[Concatenate[History, P], R]) -> Callable[Concatenate[History, P], R]:
    """Any SQLite failure becomes ``HistoryError`` naming the operation; cached figures that
    the failed transaction may have made stale are dropped."""

    def run(self: History, /, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.Error as exc:
            self._forget_cache()
            raise HistoryError(f"history {method.__name__}: {exc}") from exc

    functools.update_wrapper(run, method)
    return run


def _check_message(msg: StoredMessage) -> None:
    """Bad input is a ``ValueError`` and changes nothing."""
    if not valid_name(msg.room) or not valid_name(msg.origin):
        raise ValueError("room and origin must be names")
    if len(msg.key) != KEY_SIZE or len(msg.sig) != SIG_SIZE:
        raise ValueError(f"keys are {KEY_SIZE} bytes and signatures {SIG_SIZE}")
    if not _ID_RE.fullmatch(msg.id):
        raise ValueError("message ids are 32 lowercase hex digits")
    if not 1 <= msg.seq < MAX_SEQ:
        raise ValueError(f"seq must be 1 to {MAX_SEQ - 1}")
    if not math.isfinite(msg.ts):
        raise ValueError("ts must be a finite number")
    if not msg.text or len(msg.text.encode()) > MAX_TEXT:
        raise ValueError(f"texts are 1 to {MAX_TEXT} bytes")


def _row_message(room: str, origin: str, key: bytes, row: Sequence[Any]) -> StoredMessage:
    mid, seq, ts, text, sig = row
    return StoredMessage(room, origin, key, mid.hex(), seq, ts, text, sig)


class History:
    """The history and outbox of one peer. ``path`` may be ``":memory:"`` for tests.

    Synchronous, like the registry's store: each call is a few indexed statements, well under
    a millisecond; ``add_many`` takes a whole catch-up batch in one transaction.
    """

    def __init__(self, path: str | Path, limits: Limits | None = None) -> None:
        self.path = str(path)
        self.limits = limits or Limits()
        self._rooms: dict[str, int] = {}
        """Casefolded room -> row id, for rooms committed."""
        self._total: int | None = None
        """Bytes counted over all rooms; None: read it again."""
        self._digests: dict[int, tuple[bytes, int]] = {}
        self._next_age_check: dict[int, float] = {}
        self.refused = 0
        """Messages refused as duplicates (by id, by stream and seq, or done already)."""
        self.conflicts = 0
        """Refused because another message holds the same stream and seq (a forking origin)."""
        self._batch: int | None = None
        """Messages added in the open batch (a transaction ``flush`` commits), if one is."""
        self._precheck()
        self._db = open_database(
            self.path, HistoryError, "history", self._check, MIGRATIONS, stamp=_stamp
        )

    # ------------------------------------------------------------------ the file

    def _precheck(self) -> None:
        if self.path == ":memory:" or not os.path.isfile(self.path):
            return
        if os.path.getsize(self.path) == 0:
            wal = self.path + "-wal"
            if os.path.isfile(wal) and os.path.getsize(wal) > 0:
                raise HistoryError(
                    f"history {self.path!r} is empty but its journal {wal!r} is not; "
                    "move both away to start a new history"
                )

    def _check(self, db: sqlite3.Connection) -> None:
        """Refuse a damaged or foreign file before writing anything to it."""
        (result,) = db.execute("PRAGMA quick_check(1)").fetchone()
        if result != "ok":
            raise HistoryError(f"history {self.path!r} is damaged ({result}); move it away")
        (app,) = db.execute("PRAGMA application_id").fetchone()
        tables = sorted(r[0] for r in db.execute("SELECT name FROM sqlite_master"))
        if app != APPLICATION_ID and (app != 0 or tables):
            what = f"tables: {', '.join(tables)}"[:200] if tables else f"application id {app}"
            raise HistoryError(f"history {self.path!r} is not a p2pchat history ({what})")

    @contextmanager
    def _tx(self, batched: bool = False) -> Iterator[sqlite3.Connection]:
        """One transaction; or, ``batched``, one savepoint inside the open batch (committed
        by ``flush``). Anything not batched commits the open batch first, so what is written
        outside batches (our own messages, the outbox) is on disk when the call returns."""
        db = self._db
        if not batched:
            self._commit_batch()
            with transaction(db):
                yield db
            return
        if self._batch is None:
            db.execute("BEGIN IMMEDIATE")
            self._batch = 0
        db.execute("SAVEPOINT one")
        try:
            yield db
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK TO one")
                db.execute("RELEASE one")
            raise
        db.execute("RELEASE one")
        self._batch += 1
        if self._batch >= BATCH_MAX:
            self._commit_batch()

    def _commit_batch(self) -> None:
        if self._batch is None:
            return
        self._batch = None
        try:
            self._db.execute("COMMIT")
        except sqlite3.Error:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            raise

    @property
    def pending(self) -> bool:
        """Messages added in a batch are not committed yet (``flush`` commits them)."""
        return self._batch is not None

    @_guarded
    def flush(self) -> None:
        """Commit what was added in batches."""
        self._commit_batch()

    def _forget_cache(self) -> None:
        self._total = None
        self._digests.clear()
        self._rooms.clear()

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._commit_batch()
        self._db.close()

    # ------------------------------------------------------------------ rooms and streams

    def _rid(self, room: str) -> int | None:
        """A room's row id, outside transactions (cached)."""
        key = room.casefold()
        rid = self._rooms.get(key)
        if rid is None:
            row = self._db.execute("SELECT id FROM rooms WHERE key = ?", (key,)).fetchone()
            if row is None:
                return None
            rid = self._rooms[key] = int(row[0])
        return rid

    @staticmethod
    def _room_in(db: sqlite3.Connection, room: str) -> int:
        """A room's row id inside a transaction, made if need be (cached only after commit)."""
        key = room.casefold()
        row = db.execute("SELECT id FROM rooms WHERE key = ?", (key,)).fetchone()
        if row is not None:
            return int(row[0])
        cur = db.execute("INSERT INTO rooms (key, name) VALUES (?, ?)", (key, room))
        assert cur.lastrowid is not None
        return cur.lastrowid

    @staticmethod
    def _stream(
        db: sqlite3.Connection, rid: int, origin: str, key: bytes
    ) -> tuple[int, int, int, int] | None:
        """``(id, high, top, above)`` of a stream, if it has a record."""
        row = db.execute(
            "SELECT id, high, top, above FROM streams WHERE room = ? AND origin = ? AND key = ?",
            (rid, origin, key),
        ).fetchone()
        return None if row is None else (row[0], row[1], row[2], row[3])

    def _new_stream(
        self, db: sqlite3.Connection, rid: int, origin: str, key: bytes, last_at: float
    ) -> int:
        cur = db.execute(
            "INSERT INTO streams (room, origin, key, high, top, above, held, last_at) "
            "VALUES (?, ?, ?, 0, 0, 0, 0, ?)",
            (rid, origin, key, last_at),
        )
        assert cur.lastrowid is not None
        sid = cur.lastrowid
        # bound the records that hold no message: the idlest go first
        (empty,) = db.execute(
            "SELECT COUNT(*) FROM streams WHERE room = ? AND held = 0", (rid,)
        ).fetchone()
        if empty > self.limits.max_streams:
            db.execute(
                "DELETE FROM streams WHERE id IN (SELECT id FROM streams WHERE room = ? AND "
                "held = 0 AND id != ? ORDER BY last_at LIMIT ?)",
                (rid, sid, empty - self.limits.max_streams),
            )
        return sid

    @staticmethod
    def _settle(db: sqlite3.Connection, sid: int, high: int) -> tuple[int, int]:
        """Advance ``high`` over the seqs held just above it; count those held beyond."""
        above = 0
        for (seq,) in db.execute(
            "SELECT seq FROM messages WHERE stream = ? AND seq > ? ORDER BY seq", (sid, high)
        ):
            if above == 0 and seq == high + 1:
                high = seq
            else:
                above += 1
        return high, above

    # ------------------------------------------------------------------ adding

    @_guarded
    def add(self, msg: StoredMessage, now: float, batched: bool = False) -> Added | None:
        """Keep ``msg`` (wall-clock ``now``). None if it is a duplicate or done already.
        ``batched``: in the open batch, committed by ``flush`` (or the next write that is not
        batched, or when the batch is full): a live message costs a savepoint, not a commit."""
        return self.add_many([msg], now, batched)[0]

    @_guarded
    def add_many(
        self, msgs: Iterable[StoredMessage], now: float, batched: bool = False
    ) -> list[Added | None]:
        """Keep several messages in one transaction (a catch-up batch); one result each."""
        batch = list(msgs)
        for msg in batch:
            _check_message(msg)
        results: list[Added | None] = [None] * len(batch)
        # a live message's id is new (the router checked it); a catch-up batch's often is not,
        # and a known id is refused here without opening a transaction
        todo = [(i, m) for i, m in enumerate(batch) if batched or not self._known_id(m.id)]
        if todo:
            rooms: dict[str, int] = {}
            added = 0
            with self._tx(batched) as db:
                for i, msg in todo:
                    key = msg.room.casefold()
                    rid = rooms.get(key) or self._rooms.get(key)
                    if rid is None:
                        rid = self._room_in(db, msg.room)
                    rooms[key] = rid
                    results[i], size = self._insert(db, rid, msg, now)
                    added += size
                freed, checked = self._enforce(db, rooms.values(), now, added)
            # committed: now the figures kept in memory may follow
            self._rooms.update(rooms)
            if self._total is not None:
                self._total += added - freed
            for rid in rooms.values():
                self._digests.pop(rid, None)
            for rid in checked:
                self._next_age_check[rid] = now + self.limits.age_check
        self.refused += sum(1 for r in results if r is None)
        return results

    def _known_id(self, mid: str) -> bool:
        row = self._db.execute(
            "SELECT 1 FROM messages WHERE mid = ?", (bytes.fromhex(mid),)
        ).fetchone()
        return row is not None

    def _insert(
        self, db: sqlite3.Connection, rid: int, msg: StoredMessage, now: float
    ) -> tuple[Added | None, int]:
        """One message into its stream; what ``add`` reports, and the bytes it counts for."""
        mid = bytes.fromhex(msg.id)
        head = self._stream(db, rid, msg.origin, msg.key)
        at = min(msg.ts, now)
        if head is None:
            sid, high, top, above = self._new_stream(db, rid, msg.origin, msg.key, at), 0, 0, 0
        else:
            sid, high, top, above = head
        if msg.seq <= high:
            return None, 0
        if at < now - self.limits.max_age:
            if db.execute("SELECT 1 FROM messages WHERE mid = ?", (mid,)).fetchone():
                return None, 0
            # too old to keep, done all the same; the record that says so lives from now on,
            # so that the message is refused if it comes again
            new_high, new_above = self._settle(db, sid, msg.seq)
            db.execute(
                "UPDATE streams SET high = ?, above = ?, top = max(top, ?), last_at = ? "
                "WHERE id = ?",
                (new_high, new_above, msg.seq, now, sid),
            )
            return Added(high, top, stored=False), 0
        size = len(msg.text.encode()) + ROW_OVERHEAD
        cur = db.execute(
            "INSERT OR IGNORE INTO messages (mid, room, stream, seq, ts, at, text, sig, size) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (mid, rid, sid, msg.seq, msg.ts, at, msg.text, msg.sig, size),
        )
        if cur.rowcount != 1:  # its id is known, or another message holds its stream and seq
            if not db.execute("SELECT 1 FROM messages WHERE mid = ?", (mid,)).fetchone():
                self.conflicts += 1
            return None, 0
        if msg.seq == high + 1:
            new_high, new_above = self._settle(db, sid, msg.seq) if above else (msg.seq, 0)
        else:
            new_high, new_above = high, above + 1
        db.execute(
            "UPDATE streams SET high = ?, above = ?, top = max(top, ?), held = held + 1, "
            "last_at = max(last_at, ?) WHERE id = ?",
            (new_high, new_above, msg.seq, at, sid),
        )
        db.execute(
            "UPDATE rooms SET messages = messages + 1, bytes = bytes + ? WHERE id = ?", (size, rid)
        )
        return Added(high, top), size

    # ------------------------------------------------------------------ bounds

    def _enforce(
        self, db: sqlite3.Connection, rooms: Iterable[int], now: float, added: int = 0
    ) -> tuple[int, list[int]]:
        """Apply every bound that writing to ``rooms`` (``added`` bytes) may have passed: the
        bytes freed, and the rooms whose age bound was applied."""
        lim = self.limits
        freed = 0
        checked: list[int] = []
        for rid in rooms:
            (messages,) = db.execute("SELECT messages FROM rooms WHERE id = ?", (rid,)).fetchone()
            if messages > lim.max_messages:
                freed += self._drop(db, rid, None, messages - lim.max_messages)
            if now >= self._next_age_check.get(rid, -math.inf):
                freed += self._drop_old(db, rid, now)
                checked.append(rid)
        known = self._total
        total = known + added - freed if known is not None else self._total_bytes(db)
        while total > lim.max_bytes:
            row = db.execute(
                "SELECT id, messages, bytes FROM rooms WHERE messages > 0 "
                "ORDER BY bytes DESC LIMIT 1"
            ).fetchone()
            if row is None:
                break
            rid, messages, nbytes = row
            # about as many of its oldest messages as hold the excess, at least one
            count = max(1, min(messages, math.ceil(messages * (total - lim.max_bytes) / nbytes)))
            dropped = self._drop(db, rid, None, count)
            freed += dropped
            total -= dropped
        return freed, checked

    @staticmethod
    def _total_bytes(db: sqlite3.Connection) -> int:
        (total,) = db.execute("SELECT COALESCE(SUM(bytes), 0) FROM rooms").fetchone()
        return int(total)

    def _drop_old(self, db: sqlite3.Connection, rid: int, now: float) -> int:
        cutoff = now - self.limits.max_age
        freed = self._drop(db, rid, cutoff, None)
        db.execute("DELETE FROM streams WHERE room = ? AND held = 0 AND last_at < ?", (rid, cutoff))
        return freed

    def _drop(
        self, db: sqlite3.Connection, rid: int, before: float | None, count: int | None
    ) -> int:
        """Delete a room's oldest messages (``count`` of them, or all older than ``before``),
        through its time index; their seqs stay done. The bytes freed."""
        args: tuple[object, ...]
        if before is not None:
            select, args = "SELECT id FROM messages WHERE room = ? AND at < ?", (rid, before)
        else:
            select = "SELECT id FROM messages WHERE room = ? ORDER BY at, id LIMIT ?"
            args = (rid, count)
        rows = db.execute(
            f"DELETE FROM messages WHERE id IN ({select}) RETURNING stream, seq, size", args
        ).fetchall()
        if not rows:
            return 0
        per_stream: dict[int, tuple[int, int]] = {}
        for sid, seq, _ in rows:
            top, n = per_stream.get(sid, (0, 0))
            per_stream[sid] = (max(top, seq), n + 1)
        for sid, (top, n) in per_stream.items():
            (high,) = db.execute("SELECT high FROM streams WHERE id = ?", (sid,)).fetchone()
            new_high, above = self._settle(db, sid, max(high, top))
            db.execute(
                "UPDATE streams SET high = ?, above = ?, held = held - ? WHERE id = ?",
                (new_high, above, n, sid),
            )
        nbytes: int = sum(size for _, _, size in rows)
        db.execute(
            "UPDATE rooms SET messages = messages - ?, bytes = bytes - ? WHERE id = ?",
            (len(rows), nbytes, rid),
        )
        return nbytes

    @_guarded
    def prune(self, now: float) -> int:
        """Apply the age bound to every room now (a timer may call this hourly), and forget
        rooms left with nothing; the number of messages removed."""
        with self._tx() as db:
            (before,) = db.execute("SELECT COALESCE(SUM(messages), 0) FROM rooms").fetchone()
            rids = [r[0] for r in db.execute("SELECT id FROM rooms")]
            for rid in rids:
                self._drop_old(db, rid, now)
            db.execute(
                "DELETE FROM rooms WHERE messages = 0 AND NOT EXISTS "
                "(SELECT 1 FROM streams s WHERE s.room = rooms.id)"
            )
            (after,) = db.execute("SELECT COALESCE(SUM(messages), 0) FROM rooms").fetchone()
        self._forget_cache()
        self._next_age_check = {rid: now + self.limits.age_check for rid in rids}
        return int(before - after)

    # ------------------------------------------------------------------ done without messages

    @_guarded
    def skip(self, room: str, origin: str, key: bytes, upto: int, now: float) -> bool:
        """Seqs up to ``upto`` of this stream will not be fetched (a neighbour said they are
        out of reach); True if that changed anything. ``now``: wall clock. Callers keep
        ``upto`` at most ``top``: then ``top`` only ever rises with signed messages, and a
        neighbour's word cannot make the store refuse an origin's real messages."""
        if not valid_name(room) or not valid_name(origin) or len(key) != KEY_SIZE:
            raise ValueError("room and origin must be names, the key 32 bytes")
        if not 0 <= upto < MAX_SEQ:
            raise ValueError(f"upto must be 0 to {MAX_SEQ - 1}")
        if upto == 0:
            return False
        with self._tx() as db:
            rid = self._room_in(db, room)
            head = self._stream(db, rid, origin, key)
            if head is not None and head[1] >= upto:
                return False
            sid = head[0] if head else self._new_stream(db, rid, origin, key, now)
            high, above = self._settle(db, sid, upto)
            db.execute(
                "UPDATE streams SET high = ?, above = ?, top = max(top, ?) WHERE id = ?",
                (high, above, upto, sid),
            )
        self._rooms[room.casefold()] = rid
        self._digests.pop(rid, None)
        return True

    # ------------------------------------------------------------------ reading

    @_guarded
    def last(self, room: str, n: int) -> list[StoredMessage]:
        """The ``n`` most recent messages of ``room``, oldest first (``/history ROOM N``)."""
        rid = self._rid(room)
        if rid is None or n < 1:
            return []
        rows = self._db.execute(
            "SELECT r.name, s.origin, s.key, m.mid, m.seq, m.ts, m.text, m.sig "
            "FROM messages m JOIN streams s ON s.id = m.stream JOIN rooms r ON r.id = m.room "
            "WHERE m.room = ? ORDER BY m.at DESC, m.id DESC LIMIT ?",
            (rid, n),
        ).fetchall()
        return [_row_message(r[0], r[1], r[2], r[3:]) for r in reversed(rows)]

    @_guarded
    def stream_range(
        self,
        room: str,
        origin: str,
        key: bytes,
        lo: int,
        hi: int,
        limit: int,
        at_least: float = -math.inf,
    ) -> list[StoredMessage]:
        """Messages of one stream with ``lo <= seq <= hi``, ascending, at most ``limit``,
        only those whose ``at`` is at least ``at_least`` (to serve a catch-up)."""
        rid = self._rid(room)
        if rid is None or limit < 1:
            return []
        head = self._stream(self._db, rid, origin, key)
        if head is None:
            return []
        name = self._room_name(rid)
        rows = self._db.execute(
            "SELECT mid, seq, ts, text, sig FROM messages WHERE stream = ? AND seq BETWEEN ? "
            "AND ? AND at >= ? ORDER BY seq LIMIT ?",
            (head[0], lo, min(hi, MAX_SEQ), at_least, limit),
        ).fetchall()
        return [_row_message(name, origin, key, r) for r in rows]

    def _room_name(self, rid: int) -> str:
        return str(self._db.execute("SELECT name FROM rooms WHERE id = ?", (rid,)).fetchone()[0])

    @_guarded
    def recent_floor(self, room: str, n: int) -> float | None:
        """The ``at`` of the room's ``n``-th most recent message; None if it holds fewer."""
        rid = self._rid(room)
        if rid is None or n < 1:
            return None
        row = self._db.execute(
            "SELECT at FROM messages WHERE room = ? ORDER BY at DESC, id DESC LIMIT 1 OFFSET ?",
            (rid, n - 1),
        ).fetchone()
        return None if row is None else float(row[0])

    @_guarded
    def head(self, room: str, origin: str, key: bytes) -> StreamHead | None:
        """What is held of one stream."""
        rid = self._rid(room)
        if rid is None:
            return None
        row = self._stream(self._db, rid, origin, key)
        if row is None:
            return None
        sid, high, _, above = row
        return StreamHead(origin, key, high, self._extra(sid, high) if above else ())

    @_guarded
    def top(self, room: str, origin: str, key: bytes) -> int:
        """The highest seq held or done of a stream (0 if none): one's own next seq is this
        plus one."""
        rid = self._rid(room)
        row = None if rid is None else self._stream(self._db, rid, origin, key)
        return 0 if row is None else row[2]

    def _extra(self, sid: int, high: int) -> tuple[Range, ...]:
        rows = self._db.execute(
            "SELECT seq FROM messages WHERE stream = ? AND seq > ? ORDER BY seq", (sid, high)
        )
        return tuple(to_ranges(r[0] for r in rows)[:MAX_RANGES])

    @_guarded
    def summary(self, room: str) -> list[StreamHead]:
        """Every stream of ``room`` this peer has a record of, by origin and key."""
        rid = self._rid(room)
        if rid is None:
            return []
        rows = self._db.execute(
            "SELECT id, origin, key, high, above FROM streams WHERE room = ? ORDER BY origin, key",
            (rid,),
        ).fetchall()
        return [
            StreamHead(origin, key, high, self._extra(sid, high) if above else ())
            for sid, origin, key, high, above in rows
        ]

    @_guarded
    def digest(self, room: str) -> tuple[bytes, int]:
        """A 128-bit digest of ``summary(room)`` and its number of streams (cached until the
        room changes): equal digests mean equal holdings."""
        rid = self._rid(room)
        if rid is None:
            return summary_digest([]), 0
        cached = self._digests.get(rid)
        if cached is None:
            heads = self.summary(room)
            cached = self._digests[rid] = (summary_digest(heads), len(heads))
        return cached

    @_guarded
    def counts(self, room: str) -> tuple[int, int]:
        """Messages and bytes held for ``room``."""
        row = self._db.execute(
            "SELECT messages, bytes FROM rooms WHERE key = ?", (room.casefold(),)
        ).fetchone()
        return (0, 0) if row is None else (int(row[0]), int(row[1]))

    @_guarded
    def total_bytes(self) -> int:
        """Bytes counted over all rooms (text plus ``ROW_OVERHEAD`` a message)."""
        if self._total is None:
            self._total = self._total_bytes(self._db)
        return self._total

    # ------------------------------------------------------------------ the outbox

    @_guarded
    def queue_direct(self, msg_id: str, recipient: str, text: str, ts: float) -> Outgoing:
        """Keep a direct message for ``recipient`` (state ``queued``); ``OutboxFull`` if a
        bound would be passed (checked before anything is written). ``ts`` (wall clock) is when
        it was written; it also dates its expiry."""
        if not _ID_RE.fullmatch(msg_id):
            raise ValueError("message ids are 32 lowercase hex digits")
        if not valid_name(recipient):
            raise ValueError("the recipient must be a name")
        if not text or len(text.encode()) > MAX_TEXT:
            raise ValueError(f"texts are 1 to {MAX_TEXT} bytes")
        if not math.isfinite(ts):
            raise ValueError("ts must be a finite number")
        lim = self.limits
        size = len(text.encode())
        with self._tx() as db:
            if db.execute("SELECT 1 FROM outbox WHERE id = ?", (msg_id,)).fetchone():
                raise ValueError(f"a direct message {msg_id} is in the outbox already")
            mine, total, nbytes = db.execute(
                "SELECT COUNT(*) FILTER (WHERE rkey = ?), COUNT(*), COALESCE(SUM(size), 0) "
                "FROM outbox",
                (recipient.casefold(),),
            ).fetchone()
            if mine >= lim.outbox_per_recipient:
                raise OutboxFull(
                    f"{lim.outbox_per_recipient} messages wait for {recipient} already"
                )
            if total >= lim.outbox_total:
                raise OutboxFull(f"{lim.outbox_total} direct messages wait already")
            if nbytes + size > lim.outbox_bytes:
                raise OutboxFull(f"waiting direct messages would pass {lim.outbox_bytes} bytes")
            (n,) = db.execute("SELECT COALESCE(MAX(n), 0) + 1 FROM outbox").fetchone()
            db.execute(
                "INSERT INTO outbox (id, n, recipient, rkey, text, ts, state, updated, size) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (msg_id, n, recipient, recipient.casefold(), text, ts, "queued", ts, size),
            )
        return Outgoing(msg_id, recipient, text, ts, DirectState.QUEUED, 0, "", ts)

    _OUT_SELECT = "SELECT id, recipient, text, ts, state, attempts, reason, updated FROM outbox"

    @staticmethod
    def _outgoing(row: Sequence[Any]) -> Outgoing:
        mid, recipient, text, ts, state, attempts, reason, updated = row
        return Outgoing(mid, recipient, text, ts, DirectState(state), attempts, reason, updated)

    @_guarded
    def direct(self, msg_id: str) -> Outgoing | None:
        row = self._db.execute(self._OUT_SELECT + " WHERE id = ?", (msg_id,)).fetchone()
        return None if row is None else self._outgoing(row)

    @_guarded
    def outbox(self, recipient: str | None = None) -> list[Outgoing]:
        """What waits (queued, sending, failed), in the order written; for one recipient or
        for all."""
        if recipient is None:
            rows = self._db.execute(self._OUT_SELECT + " ORDER BY n").fetchall()
        else:
            rows = self._db.execute(
                self._OUT_SELECT + " WHERE rkey = ? ORDER BY n", (recipient.casefold(),)
            ).fetchall()
        return [self._outgoing(r) for r in rows]

    @_guarded
    def mark(
        self, msg_id: str, state: DirectState, now: float, reason: str = ""
    ) -> Outgoing | None:
        """Move a direct message to ``state`` (``sending`` counts an attempt); None if it is
        not in the outbox (delivered and gone, or never queued). A move the state machine does
        not allow is a ``ValueError``. ``delivered`` removes the entry."""
        with self._tx() as db:
            row = db.execute(self._OUT_SELECT + " WHERE id = ?", (msg_id,)).fetchone()
            if row is None:
                return None
            entry = self._outgoing(row)
            late_ack = state is DirectState.DELIVERED and entry.attempts > 0
            if state not in _MOVES[entry.state] and not late_ack:
                raise ValueError(f"a {entry.state} direct message cannot become {state}")
            attempts = entry.attempts + (state is DirectState.SENDING)
            if state is DirectState.DELIVERED:
                db.execute("DELETE FROM outbox WHERE id = ?", (msg_id,))
            else:
                db.execute(
                    "UPDATE outbox SET state = ?, attempts = ?, reason = ?, updated = ? "
                    "WHERE id = ?",
                    (state.value, attempts, reason[:1024], now, msg_id),
                )
        return Outgoing(
            entry.id, entry.recipient, entry.text, entry.ts, state, attempts, reason[:1024], now
        )

    @_guarded
    def recover(self, now: float) -> list[Outgoing]:
        """At start: what was ``sending`` when the program stopped is ``queued`` again (its
        id is kept, so a receiver that got it already does not show it twice)."""
        with self._tx() as db:
            db.execute(
                "UPDATE outbox SET state = 'queued', updated = ? WHERE state = 'sending'", (now,)
            )
        return self.outbox()

    @_guarded
    def expire(self, now: float) -> list[Outgoing]:
        """Direct messages queued longer than ``outbox_max_age`` fail; those returned."""
        cutoff = now - self.limits.outbox_max_age
        with self._tx() as db:
            rows = db.execute(
                "UPDATE outbox SET state = 'failed', reason = 'waited too long', updated = ? "
                "WHERE state = 'queued' AND ts < ? RETURNING id, recipient, text, ts, state, "
                "attempts, reason, updated",
                (now, cutoff),
            ).fetchall()
        return [self._outgoing(r) for r in rows]

    @_guarded
    def forget_direct(self, msg_id: str) -> bool:
        """Remove a direct message from the outbox (the user gave up on a failed one)."""
        with self._tx() as db:
            return db.execute("DELETE FROM outbox WHERE id = ?", (msg_id,)).rowcount == 1

    @_guarded
    def seen_direct(self, sender: str, msg_id: str, now: float) -> bool:
        """Note a received direct message; True the first time (show it), False for a resend
        (acknowledge it again, show nothing). The most recent ``seen_directs`` are kept."""
        if not valid_name(sender) or not 0 < len(msg_id) <= 64:
            raise ValueError("a sender name and a message id of 1 to 64 characters")
        with self._tx() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO directs_seen (sender, id, at) VALUES (?, ?, ?)",
                (sender, msg_id, now),
            )
            if cur.rowcount != 1:
                return False
            (count,) = db.execute("SELECT COUNT(*) FROM directs_seen").fetchone()
            if count > self.limits.seen_directs:
                db.execute(
                    "DELETE FROM directs_seen WHERE (sender, id) IN (SELECT sender, id FROM "
                    "directs_seen ORDER BY at LIMIT ?)",
                    (count - self.limits.seen_directs,),
                )
        return True


def summary_digest(heads: Iterable[StreamHead]) -> bytes:
    """BLAKE2b-128 of a canonical encoding of the heads (in the order given: ``summary``'s,
    by origin then key): each origin with its length, the key, ``high``, the ranges held above
    it. Two peers with equal digests hold the same of the room (as far as ``MAX_RANGES``
    shows)."""
    h = hashlib.blake2b(digest_size=16, person=b"p2pchat-sync-v1")
    for head in heads:
        origin = head.origin.encode()
        h.update(struct.pack(">B", len(origin)) + origin + head.key)
        h.update(struct.pack(">QH", head.high, len(head.extra)))
        for lo, hi in head.extra:
            h.update(struct.pack(">QQ", lo, hi))
    return h.digest()
