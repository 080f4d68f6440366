"""The history store: streams and gaps, idempotence, every bound, restarts, refused files,
failures that change nothing, and the outbox of direct messages."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pchat.peer.history import (
    BATCH_MAX,
    MAX_RANGES,
    ROW_OVERHEAD,
    SCHEMA_VERSION,
    Added,
    DirectState,
    History,
    HistoryError,
    Limits,
    OutboxFull,
    StreamHead,
    subtract,
    to_ranges,
    union,
)
from p2pchat.store import SqliteStore
from tests.peer.histories import ROOM, message

NOW = 2_000_000.0
DAY = 86400.0


def heads(h: History, room: str = ROOM) -> dict[str, tuple[int, tuple[tuple[int, int], ...]]]:
    return {s.origin: (s.high, s.extra) for s in h.summary(room)}


# ---------------------------------------------------------------- streams


def test_a_stream_tracks_its_contiguous_high_and_what_is_held_beyond_gaps() -> None:
    h = History(":memory:")
    assert h.add(message("alice", 1), NOW) == Added(0, 0)
    assert h.add(message("alice", 3), NOW) == Added(1, 1)
    assert h.add(message("alice", 5), NOW) == Added(1, 3)
    assert heads(h) == {"alice": (1, ((3, 3), (5, 5)))}
    assert h.add(message("alice", 2), NOW) == Added(1, 5)
    assert heads(h) == {"alice": (3, ((5, 5),))}
    assert h.add(message("alice", 4), NOW) is not None
    assert heads(h) == {"alice": (5, ())}
    assert h.top(ROOM, "alice", message("alice", 1).key) == 5
    assert [m.seq for m in h.last(ROOM, 10)] == [1, 2, 3, 4, 5]


def test_adding_is_idempotent_by_id_and_by_stream_and_seq() -> None:
    h = History(":memory:")
    first = message("alice", 1)
    assert h.add(first, NOW) is not None
    assert h.add(first, NOW) is None
    assert h.add(message("alice", 1), NOW) is None  # another id for a seq done already
    h.add(message("alice", 3), NOW)
    assert h.add(message("alice", 3), NOW) is None  # a forking origin: the first one stays
    assert h.conflicts == 1 and h.refused == 3
    assert h.counts(ROOM)[0] == 2
    assert h.add_many([first, message("bob", 1), message("bob", 1)], NOW)[0] is None


def test_a_batch_holding_the_same_id_twice_keeps_it_once() -> None:
    h = History(":memory:")
    m = message("alice", 1)
    assert [r is not None for r in h.add_many([m, m], NOW)] == [True, False]
    assert h.counts(ROOM)[0] == 1


def test_skip_marks_a_stream_done_up_to_a_seq_and_settles_over_what_is_held() -> None:
    h = History(":memory:")
    key = message("alice", 1).key
    h.add(message("alice", 4), NOW)
    h.add(message("alice", 5), NOW)
    assert h.skip(ROOM, "alice", key, 3, NOW)
    assert heads(h) == {"alice": (5, ())}
    assert not h.skip(ROOM, "alice", key, 2, NOW)  # nothing new
    assert h.add(message("alice", 2), NOW) is None  # done: never wanted again
    assert h.skip(ROOM, "bob", message("bob", 1).key, 9, NOW)  # a stream we hold nothing of
    assert heads(h)["bob"] == (9, ())
    assert h.counts(ROOM)[0] == 2


def test_the_summary_lists_at_most_max_ranges_beyond_a_gap() -> None:
    h = History(":memory:")
    h.add_many([message("alice", 2 * i) for i in range(1, MAX_RANGES + 10)], NOW)
    (head,) = h.summary(ROOM)
    assert head.high == 0 and len(head.extra) == MAX_RANGES
    assert head.extra[0] == (2, 2)


def test_the_digest_follows_the_summary() -> None:
    a, b = History(":memory:"), History(":memory:")
    ms = [message("alice", i) for i in range(1, 4)]
    a.add_many(ms, NOW)
    b.add_many(reversed(ms), NOW)
    assert a.digest(ROOM) == b.digest(ROOM)
    assert a.digest(ROOM)[1] == 1
    b.add(message("bob", 1), NOW)
    assert a.digest(ROOM) != b.digest(ROOM)
    a.skip(ROOM, "bob", message("bob", 1).key, 1, NOW)  # out of reach counts as held
    assert a.digest(ROOM) == b.digest(ROOM)
    assert a.digest("elsewhere") == History(":memory:").digest("other")


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["add", "skip"]), st.sampled_from("ab"), st.integers(1, 25)),
        max_size=60,
    )
)
def test_stream_heads_match_a_model(ops: list[tuple[str, str, int]]) -> None:
    """High is the contiguous end of what is held or done; extra is what is held beyond it."""
    h = History(":memory:")
    held: dict[str, set[int]] = {"a": set(), "b": set()}
    done: dict[str, int] = {"a": 0, "b": 0}
    for op, origin, seq in ops:
        m = message(origin, seq)
        if op == "add":
            new = seq not in held[origin] and seq > done[origin]
            assert (h.add(m, NOW) is not None) == new
            if new:
                held[origin].add(seq)
        else:
            h.skip(ROOM, origin, m.key, seq, NOW)
            done[origin] = max(done[origin], seq)
    for origin, got in heads(h).items():
        high = done[origin]
        while high + 1 in held[origin]:
            high += 1
        extra = to_ranges(sorted(s for s in held[origin] if s > high))[:MAX_RANGES]
        assert got == (high, tuple(extra))


@given(
    st.lists(st.tuples(st.integers(1, 40), st.integers(0, 5)), max_size=8),
    st.lists(st.tuples(st.integers(1, 40), st.integers(0, 5)), max_size=8),
)
def test_range_arithmetic(a_raw: list[tuple[int, int]], b_raw: list[tuple[int, int]]) -> None:
    def norm(raw: list[tuple[int, int]]) -> list[tuple[int, int]]:
        return union([], [(lo, lo + n) for lo, n in raw])

    a, b = norm(a_raw), norm(b_raw)

    def seqs(rs: list[tuple[int, int]]) -> set[int]:
        return {s for lo, hi in rs for s in range(lo, hi + 1)}

    assert seqs(subtract(a, b)) == seqs(a) - seqs(b)
    assert seqs(union(a, b)) == seqs(a) | seqs(b)
    assert to_ranges(sorted(seqs(a))) == a
    assert StreamHead("x", b"k", 3, ((5, 6),)).ranges == [(1, 3), (5, 6)]


# ---------------------------------------------------------------- reading


def test_reading_the_last_messages_a_stream_range_and_the_recent_floor() -> None:
    h = History(":memory:")
    for i in range(1, 11):
        h.add(message("alice", i, ts=NOW - 100 + i), NOW)
        h.add(message("bob", i, ts=NOW - 100 + i + 0.5), NOW)
    last = h.last(ROOM, 3)
    assert [(m.origin, m.seq) for m in last] == [("bob", 9), ("alice", 10), ("bob", 10)]
    key = message("alice", 1).key
    got = h.stream_range(ROOM, "alice", key, 3, 6, 10)
    assert [m.seq for m in got] == [3, 4, 5, 6]
    assert [m.seq for m in h.stream_range(ROOM, "alice", key, 3, 6, 2)] == [3, 4]
    assert [m.seq for m in h.stream_range(ROOM, "alice", key, 1, 10, 10, NOW - 92)] == [8, 9, 10]
    assert h.recent_floor(ROOM, 2) == NOW - 90
    assert h.recent_floor(ROOM, 21) is None
    assert h.last("nowhere", 5) == [] and h.stream_range("nowhere", "x", key, 1, 9, 9) == []
    assert h.head("nowhere", "x", key) is None and h.recent_floor("nowhere", 1) is None
    m = last[-1]
    assert (m.room, len(m.key), len(m.sig), len(m.id)) == (ROOM, 32, 64, 32)


def test_rooms_are_the_same_regardless_of_case_and_keep_their_spelling() -> None:
    h = History(":memory:")
    h.add(message("alice", 1, room="Lobby"), NOW)
    h.add(message("alice", 2, room="lobby"), NOW)
    assert [m.room for m in h.last("LOBBY", 5)] == ["Lobby", "Lobby"]
    assert h.counts("lobby")[0] == 2


@pytest.mark.parametrize(
    "change",
    [
        {"room": "no room"},
        {"origin": ""},
        {"key": b"short"},
        {"sig": b"x" * 10},
        {"id": "ABCDEF" * 6},
        {"seq": 0},
        {"seq": 2**53},
        {"ts": float("nan")},
        {"text": ""},
        {"text": "é" * 3000},
    ],
)
def test_bad_input_is_a_value_error_and_changes_nothing(change: dict[str, object]) -> None:
    from dataclasses import replace

    h = History(":memory:")
    good = message("alice", 1)
    with pytest.raises(ValueError):
        h.add_many([good, replace(good, **change)], NOW)  # type: ignore[arg-type]
    assert h.counts(ROOM) == (0, 0) and h.summary(ROOM) == []


# ---------------------------------------------------------------- bounds


def test_a_room_keeps_at_most_max_messages_and_what_it_drops_stays_done() -> None:
    h = History(":memory:", Limits(max_messages=50))
    ms = [message("alice", i) for i in range(1, 81)]
    for m in ms:
        h.add(m, NOW)
    assert h.counts(ROOM)[0] == 50
    assert [m.seq for m in h.last(ROOM, 100)] == list(range(31, 81))
    assert h.add(ms[0], NOW) is None  # dropped, but never wanted again
    assert heads(h) == {"alice": (80, ())}
    h.add(message("bob", 1), NOW)  # another room is not charged for this one
    h.add(message("bob", 1, room="other"), NOW)
    assert h.counts(ROOM)[0] == 50 and h.counts("other")[0] == 1


def test_dropping_the_oldest_closes_the_gaps_below_them() -> None:
    h = History(":memory:", Limits(max_messages=3))
    for seq in (1, 3, 4, 5):  # 2 missing; 1 is dropped, then 3
        h.add(message("alice", seq), NOW)
    assert heads(h) == {"alice": (1, ((3, 5),))}
    h.add(message("alice", 6), NOW)
    assert heads(h) == {"alice": (6, ())}  # 3 dropped: the hole below it is past wanting


def test_messages_older_than_max_age_are_not_kept_and_age_out() -> None:
    h = History(":memory:", Limits(max_age=10 * DAY, age_check=60.0))
    old = message("alice", 1, ts=NOW - 11 * DAY)
    assert h.add(old, NOW) == Added(0, 0, stored=False)
    assert h.counts(ROOM)[0] == 0 and heads(h) == {"alice": (1, ())}
    assert h.add(old, NOW) is None  # shown once: it is done
    h.add(message("alice", 2, ts=NOW - 9 * DAY), NOW)
    h.add(message("alice", 3, ts=NOW), NOW)
    assert h.counts(ROOM)[0] == 2
    later = NOW + 2 * DAY
    h.add(message("bob", 1, ts=later), later)  # the room's age check runs on insert
    assert [m.seq for m in h.last(ROOM, 10)] == [3, 1]
    assert heads(h)["alice"] == (3, ())


def test_a_clock_running_ahead_does_not_keep_messages_longer() -> None:
    h = History(":memory:", Limits(max_age=10 * DAY))
    h.add(message("alice", 1, ts=NOW + 365 * DAY), NOW)  # ahead by a year
    assert h.prune(NOW + 11 * DAY) == 1
    assert h.counts(ROOM) == (0, 0)


def test_prune_applies_the_age_bound_to_every_room_and_forgets_empty_rooms() -> None:
    h = History(":memory:", Limits(max_age=DAY))
    for room in ("a", "b", "c"):
        h.add(message("alice", 1, room=room, ts=NOW), NOW)
    assert h.prune(NOW + 0.5 * DAY) == 0
    assert h.prune(NOW + 3 * DAY) == 3
    assert all(h.counts(r) == (0, 0) for r in "abc")
    assert h.summary("a") == []  # the idle stream records went too


def test_all_rooms_together_stay_within_max_bytes_the_fullest_room_paying() -> None:
    per = 100 + ROW_OVERHEAD
    h = History(":memory:", Limits(max_bytes=30 * per))
    for i in range(1, 11):
        h.add(message("alice", i, room="quiet", text="q" * 100), NOW)
    for i in range(1, 41):
        h.add(message("alice", i, room="busy", text="b" * 100, ts=NOW + i), NOW)
    assert h.total_bytes() <= 30 * per
    assert h.counts("quiet") == (10, 10 * per)  # the quiet room kept everything
    busy = h.last("busy", 100)
    assert len(busy) == 20 and busy[0].seq == 21
    fresh = History(":memory:")
    assert fresh.total_bytes() == 0


def test_stream_records_without_messages_are_bounded_per_room() -> None:
    h = History(":memory:", Limits(max_streams=5))
    h.add(message("keeper", 1), NOW)
    for i in range(20):
        h.skip(ROOM, f"s{i:02d}", bytes([i]) * 32, 3, NOW + i)
    origins = {s.origin for s in h.summary(ROOM)}
    assert "keeper" in origins  # it holds a message
    assert origins - {"keeper"} == {f"s{i:02d}" for i in range(15, 20)}  # the latest five


def test_limits_must_make_sense() -> None:
    with pytest.raises(ValueError):
        Limits(max_messages=0)
    with pytest.raises(ValueError):
        Limits(max_age=0)


# ---------------------------------------------------------------- the file


def test_history_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    h = History(path)
    ms = [message("alice", i) for i in (1, 2, 4)]
    h.add_many(ms, NOW)
    h.queue_direct("a" * 32, "bob", "hi bob", NOW)
    h.seen_direct("carol", "x1", NOW)
    summary, digest = h.summary(ROOM), h.digest(ROOM)
    h.close()
    again = History(path)
    assert [m.id for m in again.last(ROOM, 10)] == [m.id for m in ms]
    assert again.summary(ROOM) == summary and again.digest(ROOM) == digest
    assert again.add(ms[0], NOW) is None
    assert [o.text for o in again.outbox("bob")] == ["hi bob"]
    assert not again.seen_direct("carol", "x1", NOW)
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_zero_byte_file_is_taken_as_new(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    path.write_bytes(b"")
    h = History(path)
    h.add(message("alice", 1), NOW)
    h.close()
    assert History(path).counts(ROOM)[0] == 1


def test_a_zero_byte_file_beside_a_journal_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    path.write_bytes(b"")
    wal = tmp_path / "history.db-wal"
    wal.write_bytes(b"\x37\x7f\x06\x82" + b"\0" * 100)
    with pytest.raises(HistoryError, match="journal"):
        History(path)
    assert path.read_bytes() == b"" and wal.stat().st_size == 104


def test_a_file_that_is_not_a_database_is_refused_and_not_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    path.write_bytes(b"my notes, not a database\n" * 300)
    with pytest.raises(HistoryError, match="cannot open"):
        History(path)
    assert path.read_bytes() == b"my notes, not a database\n" * 300


@pytest.mark.parametrize("size", [100, 4096, 3 * 4096])
def test_a_non_empty_file_of_nothing_is_refused_and_left_alone(tmp_path: Path, size: int) -> None:
    path = tmp_path / "history.db"
    path.write_bytes(b"\0" * size)  # what a crash on some file systems leaves
    with pytest.raises(HistoryError, match="not a database"):
        History(path)
    assert path.read_bytes() == b"\0" * size


def test_a_database_with_nothing_in_it_yet_is_taken_as_new(tmp_path: Path) -> None:
    """What a first start that stopped after switching to WAL, before its first migration,
    leaves: a SQLite header and no tables; there is nothing in it to lose."""
    path = tmp_path / "history.db"
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA journal_mode = WAL")
    assert path.stat().st_size > 0
    History(path).add(message("alice", 1), NOW)


def test_another_programs_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE invoices (n INTEGER)")
    with pytest.raises(HistoryError, match=r"not a p2pchat history.*invoices"):
        History(path)
    with sqlite3.connect(path) as db:
        assert [r[0] for r in db.execute("SELECT name FROM sqlite_master")] == ["invoices"]


def test_the_registrys_database_is_not_taken_for_a_history(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    store = SqliteStore(path)
    store.create_account("alice", "h")
    store.close()
    before = path.read_bytes()
    with pytest.raises(HistoryError, match="not a p2pchat history"):
        History(path)
    assert path.read_bytes() == before


def test_an_empty_database_with_a_foreign_mark_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA application_id = 42")
    with pytest.raises(HistoryError, match="application id 42"):
        History(path)


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    History(path).close()
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(HistoryError, match="newer"):
        History(path)


def test_a_damaged_history_is_refused_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    h = History(path)
    h.add_many([message("alice", i, text="x" * 200) for i in range(1, 400)], NOW)
    h.close()
    data = bytearray(path.read_bytes())
    page = 4096
    assert len(data) > 8 * page
    data[3 * page : 3 * page + 64] = b"\xa5" * 64
    path.write_bytes(bytes(data))
    with pytest.raises(HistoryError, match=r"damaged|malformed"):
        History(path)
    assert path.read_bytes() == bytes(data)


def test_a_full_disk_is_a_history_error_and_a_batch_is_all_or_nothing(tmp_path: Path) -> None:
    h = History(tmp_path / "history.db")
    h.add(message("alice", 1), NOW)
    before = (h.counts(ROOM), h.summary(ROOM), h.digest(ROOM), h.total_bytes())
    (pages,) = h._db.execute("PRAGMA page_count").fetchone()
    h._db.execute(f"PRAGMA max_page_count = {pages + 1}")
    batch = [message("alice", i, text="y" * 3000) for i in range(2, 60)]
    with pytest.raises(HistoryError, match="full"):
        h.add_many(batch, NOW)
    assert (h.counts(ROOM), h.summary(ROOM), h.digest(ROOM), h.total_bytes()) == before
    with pytest.raises(HistoryError, match="full"):
        h.queue_direct("b" * 32, "bob", "z" * 4000, NOW)
        for i in range(100):
            h.queue_direct(f"{i:032x}", "bob", "z" * 4000, NOW)
    h._db.execute(f"PRAGMA max_page_count = {pages + 1000}")
    assert h.add_many(batch[:2], NOW)[1] is not None  # usable again once there is room


def test_a_closed_history_is_a_history_error() -> None:
    h = History(":memory:")
    h.close()
    with pytest.raises(HistoryError, match="last"):
        h.last(ROOM, 1)


# ---------------------------------------------------------------- the outbox


def _id(n: int) -> str:
    return f"{n:032x}"


def test_a_direct_message_moves_through_its_states_and_delivered_leaves_the_outbox() -> None:
    h = History(":memory:")
    e = h.queue_direct(_id(1), "Bob", "hi", NOW)
    assert (e.state, e.attempts, e.recipient) == (DirectState.QUEUED, 0, "Bob")
    s = h.mark(_id(1), DirectState.SENDING, NOW + 1)
    assert s is not None and (s.state, s.attempts) == (DirectState.SENDING, 1)
    h.mark(_id(1), DirectState.QUEUED, NOW + 2, "link lost")
    h.mark(_id(1), DirectState.SENDING, NOW + 3)
    f = h.mark(_id(1), DirectState.FAILED, NOW + 8, "did not acknowledge")
    assert f is not None and f.reason == "did not acknowledge"
    assert h.direct(_id(1)) == f
    late = h.mark(_id(1), DirectState.DELIVERED, NOW + 9)  # a late acknowledgement
    assert late is not None and late.state is DirectState.DELIVERED and late.attempts == 2
    assert h.direct(_id(1)) is None and h.outbox() == []
    assert h.mark(_id(1), DirectState.DELIVERED, NOW + 10) is None  # acknowledged twice


def test_a_message_queued_again_after_a_send_takes_a_late_acknowledgement() -> None:
    h = History(":memory:")
    h.queue_direct(_id(1), "bob", "hi", NOW)
    h.mark(_id(1), DirectState.SENDING, NOW + 1)
    h.mark(_id(1), DirectState.QUEUED, NOW + 6, "no answer yet")
    late = h.mark(_id(1), DirectState.DELIVERED, NOW + 7)
    assert late is not None and late.state is DirectState.DELIVERED and h.outbox() == []


@pytest.mark.parametrize(
    ("path", "bad"),
    [
        ([], DirectState.DELIVERED),
        ([DirectState.SENDING, DirectState.FAILED], DirectState.SENDING),
        ([], DirectState.QUEUED),
    ],
)
def test_moves_the_state_machine_does_not_allow_are_refused(
    path: list[DirectState], bad: DirectState
) -> None:
    h = History(":memory:")
    h.queue_direct(_id(1), "bob", "hi", NOW)
    for state in path:
        h.mark(_id(1), state, NOW)
    before = h.direct(_id(1))
    with pytest.raises(ValueError, match="cannot become"):
        h.mark(_id(1), bad, NOW + 1)
    assert h.direct(_id(1)) == before


def test_the_outbox_is_bounded_per_recipient_in_all_and_in_bytes() -> None:
    h = History(":memory:", Limits(outbox_per_recipient=3, outbox_total=5, outbox_bytes=100))
    for i in range(3):
        h.queue_direct(_id(i), "bob", "x", NOW)
    with pytest.raises(OutboxFull, match="for BOB"):
        h.queue_direct(_id(10), "BOB", "x", NOW)
    h.queue_direct(_id(3), "carol", "x", NOW)
    h.queue_direct(_id(4), "dave", "x", NOW)
    with pytest.raises(OutboxFull, match="5 direct messages"):
        h.queue_direct(_id(11), "erin", "x", NOW)
    h.mark(_id(4), DirectState.SENDING, NOW)
    h.mark(_id(4), DirectState.DELIVERED, NOW)  # a delivered one frees its place
    with pytest.raises(OutboxFull, match="100 bytes"):
        h.queue_direct(_id(12), "erin", "y" * 97, NOW)
    h.queue_direct(_id(13), "erin", "y" * 96, NOW)
    assert len(h.outbox()) == 5
    with pytest.raises(ValueError, match="already"):
        h.queue_direct(_id(13), "erin", "again", NOW)
    for bad in (("nothex", "bob", "x"), (_id(20), "not a name", "x"), (_id(21), "bob", "")):
        with pytest.raises(ValueError):
            h.queue_direct(*bad, NOW)
    assert len(h.outbox()) == 5


def test_after_a_restart_sending_is_queued_again_with_the_same_id(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    h = History(path)
    h.queue_direct(_id(1), "bob", "first", NOW)
    h.queue_direct(_id(2), "bob", "second", NOW + 1)
    h.queue_direct(_id(3), "carol", "third", NOW + 2)
    h.mark(_id(1), DirectState.SENDING, NOW + 3)
    h.close()
    again = History(path)
    waiting = again.recover(NOW + 100)
    assert [(o.id, o.state) for o in waiting] == [
        (_id(1), DirectState.QUEUED),
        (_id(2), DirectState.QUEUED),
        (_id(3), DirectState.QUEUED),
    ]
    assert [o.text for o in again.outbox("BOB")] == ["first", "second"]


def test_messages_queued_too_long_fail_and_can_be_forgotten() -> None:
    h = History(":memory:", Limits(outbox_max_age=DAY))
    h.queue_direct(_id(1), "bob", "old", NOW)
    h.queue_direct(_id(2), "bob", "new", NOW + DAY)
    expired = h.expire(NOW + 1.5 * DAY)
    assert [(o.id, o.state, o.reason) for o in expired] == [
        (_id(1), DirectState.FAILED, "waited too long")
    ]
    assert h.forget_direct(_id(1)) and not h.forget_direct(_id(1))
    assert [o.id for o in h.outbox()] == [_id(2)]


def test_received_direct_ids_are_remembered_within_a_bound() -> None:
    h = History(":memory:", Limits(seen_directs=3))
    assert h.seen_direct("alice", "m1", NOW)
    assert not h.seen_direct("alice", "m1", NOW + 1)
    assert h.seen_direct("bob", "m1", NOW + 1)  # ids are the sender's own
    for i in range(2, 5):
        assert h.seen_direct("alice", f"m{i}", NOW + i)
    (count,) = h._db.execute("SELECT COUNT(*) FROM directs_seen").fetchone()
    assert count == 3
    assert h.seen_direct("alice", "m1", NOW + 9)  # the oldest was forgotten
    with pytest.raises(ValueError):
        h.seen_direct("alice", "", NOW)


def test_sqlite_files_are_marked_as_ours(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    History(path).close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA application_id").fetchone()[0] == 0x70326368
    assert os.path.getsize(path) > 0


# ---------------------------------------------------------------- live messages in batches


def _on_disk(path: Path) -> int:
    """Messages another connection sees in the file: what a crash would leave."""
    with sqlite3.connect(path) as other:
        (count,) = other.execute("SELECT COUNT(*) FROM messages").fetchone()
    return int(count)


def test_live_messages_are_committed_in_batches_and_read_back_at_once(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    h = History(path)
    for seq in (1, 2, 3):
        assert h.add(message("bob", seq), NOW, batched=True) is not None
    assert h.pending and _on_disk(path) == 0  # one savepoint each, no commit yet
    assert [m.seq for m in h.last(ROOM, 10)] == [1, 2, 3]  # but this peer reads them
    assert h.add(message("bob", 2), NOW, batched=True) is None  # and refuses a duplicate
    h.flush()
    assert not h.pending and _on_disk(path) == 3
    h.close()


def test_anything_not_batched_commits_the_batch_first(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    h = History(path)
    h.add(message("bob", 1), NOW, batched=True)
    h.add(message("alice", 1), NOW)  # our own message: on disk when the call returns
    assert not h.pending and _on_disk(path) == 2
    h.add(message("bob", 2), NOW, batched=True)
    h.queue_direct(_id(9), "bob", "hi", NOW)  # the outbox too
    assert _on_disk(path) == 3
    h.add(message("bob", 3), NOW, batched=True)
    h.close()  # closing commits
    assert _on_disk(path) == 4


def test_a_full_batch_is_committed_whatever_the_time(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    h = History(path)
    for seq in range(1, BATCH_MAX + 2):
        h.add(message("bob", seq), NOW, batched=True)
    assert _on_disk(path) == BATCH_MAX and h.pending
    h.close()


def test_a_bad_message_in_a_batch_takes_only_itself_back(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    h = History(path)
    h.add(message("bob", 1), NOW, batched=True)
    with pytest.raises(ValueError):
        h.add(message("bob", 0), NOW, batched=True)  # refused before any write
    h._db.execute(
        "CREATE TRIGGER no_carol BEFORE INSERT ON messages WHEN NEW.text LIKE 'carol%' "
        "BEGIN SELECT RAISE(ABORT, 'refused'); END"
    )
    with pytest.raises(HistoryError):
        h.add(message("carol", 1), NOW, batched=True)  # fails inside its savepoint
    h.add(message("bob", 2), NOW, batched=True)
    h.flush()
    assert [(m.origin, m.seq) for m in h.last(ROOM, 10)] == [("bob", 1), ("bob", 2)]
    assert _on_disk(path) == 2
    h.close()
