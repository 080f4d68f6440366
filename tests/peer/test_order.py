"""Per-sender order: streams shown in seq order, holes held back briefly then given up on
with a mark, late fills shown once, bounds on what is held."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from p2pchat.peer.history import Added, StoredMessage
from p2pchat.peer.order import Missing, OrderBuffer, Release, Shown
from tests.peer.histories import ROOM, message


def seqs(out: Release | list[Shown]) -> list[int]:
    shown = out.shown if isinstance(out, Release) else out
    return [s.msg.seq for s in shown]


def stream(origin: str, n: int) -> list[StoredMessage]:
    return [message(origin, i) for i in range(1, n + 1)]


def test_a_stream_in_order_is_shown_at_once() -> None:
    buf = OrderBuffer()
    ms = stream("alice", 3)
    assert [seqs(buf.push(m, 0.0)) for m in ms] == [[1], [2], [3]]
    assert buf.next_deadline() is None and buf.held == 0


def test_a_hole_is_held_then_asked_for_then_filled() -> None:
    buf = OrderBuffer(hold=3.0, ask_after=0.5)
    a1, a2, a3, a4 = stream("alice", 4)
    buf.push(a1, 0.0)
    assert seqs(buf.push(a3, 1.0, via="bob")) == []
    assert seqs(buf.push(a4, 1.1, via="carol")) == []
    assert buf.next_deadline() == 1.5
    assert buf.timer(1.4) == Release()
    asked = buf.timer(1.5)
    assert asked.missing == [Missing(ROOM, "alice", a1.key, ((2, 2),), "bob")]
    assert asked.shown == []
    assert buf.next_deadline() == 4.0
    out = buf.push(a2, 2.0, history=True)
    assert seqs(out) == [2, 3, 4]
    assert [s.history for s in out.shown] == [True, False, False]
    assert not any(s.gap or s.late for s in out.shown)
    assert buf.next_deadline() is None


def test_a_hole_given_up_on_is_marked_and_its_late_fill_shown_once() -> None:
    buf = OrderBuffer(hold=3.0, ask_after=0.5)
    a = stream("alice", 6)
    buf.push(a[0], 0.0)
    buf.push(a[2], 0.0)  # 2 missing
    buf.push(a[5], 0.0)  # 4 and 5 missing
    buf.timer(0.5)
    given_up = buf.timer(3.0)
    assert seqs(given_up) == [3, 6]
    assert [s.gap for s in given_up.shown] == [True, True]
    assert buf.gaps == 2
    late = buf.push(a[1], 4.0)
    assert seqs(late) == [2] and late.shown[0].late and not late.shown[0].gap
    assert seqs(buf.push(a[1], 4.0)) == []  # never twice
    assert seqs(buf.push(a[4], 4.0)) == [5]
    assert seqs(buf.push(a[2], 4.0)) == []  # shown already (after the hole)
    assert buf.duplicates == 2


def test_a_skip_stops_the_wait_without_a_mark() -> None:
    buf = OrderBuffer()
    a = stream("alice", 9)
    buf.push(a[0], 0.0)
    buf.push(a[6], 0.0)  # 2..6 missing
    buf.push(a[8], 0.0)  # 8 missing
    out = buf.skip(a[0].stream, 6, 0.1)
    assert seqs(out) == [7] and not out.shown[0].gap
    assert buf.held == 1  # 9 still waits for 8
    assert seqs(buf.skip(a[0].stream, 8, 0.2)) == [9]
    assert buf.skip(("nowhere", "x", b"k"), 5, 0.3) == Release()


def test_a_stream_met_for_the_first_time_starts_where_the_history_stood() -> None:
    buf = OrderBuffer()
    a = stream("alice", 12)
    # held 1..5 and 8 before this run (a restart); 6 and 7 never came
    out = buf.push(a[8], 0.0, before=Added(prev_high=5, prev_top=8))
    assert seqs(out) == [9]
    assert seqs(buf.push(a[6], 0.0, before=Added(5, 9))) == [7]  # an old hole, filled late
    assert seqs(buf.push(a[6], 0.0)) == []
    out = buf.push(a[11], 0.0)  # 10 and 11 missing: held
    assert seqs(out) == []
    # without what the history said, a stream starts at the first message seen
    assert seqs(OrderBuffer().push(message("bob", 40), 0.0)) == [40]


def test_streams_are_independent() -> None:
    buf = OrderBuffer()
    a, b = stream("alice", 3), stream("bob", 3)
    buf.push(a[0], 0.0)
    buf.push(b[0], 0.0)
    assert seqs(buf.push(a[2], 0.0)) == []
    assert seqs(buf.push(b[1], 0.0)) == [2]
    assert seqs(buf.push(a[1], 0.0)) == [2, 3]


def test_what_is_held_is_bounded_in_count_the_oldest_hole_given_up_first() -> None:
    buf = OrderBuffer(max_held=4)
    a, b = stream("alice", 10), stream("bob", 10)
    buf.push(a[0], 0.0)
    buf.push(b[0], 0.0)
    for m in a[2:5]:  # alice's hole opens first
        buf.push(m, 1.0)
    buf.push(b[2], 2.0)
    assert buf.held == 4
    out = buf.push(b[3], 2.0)  # one too many: alice's messages go out, marked
    assert seqs(out) == [3, 4, 5] and out.shown[0].gap
    assert buf.held == 2
    for m in b[4:9]:
        buf.push(m, 3.0)
        assert buf.held <= 4
    assert buf.held <= 4


def test_what_is_held_is_bounded_in_bytes_even_within_one_stream() -> None:
    buf = OrderBuffer(max_held_bytes=3 * (4 * 1000 + 256))
    ms = [message("alice", i, text="x" * 1000) for i in range(1, 8)]
    buf.push(ms[0], 0.0)
    shown: list[Shown] = []
    for m in ms[2:]:
        shown += buf.push(m, 0.0).shown
        assert buf.held_bytes <= buf.max_held_bytes
    # the fourth would not fit: the stream's own hole was given up, then 6 and 7 followed
    assert seqs(shown) == [3, 4, 5, 6, 7]
    assert [s.gap for s in shown] == [True, False, False, False, False]
    assert seqs(buf.push(ms[1], 0.0)) == [2]  # late, once


def test_streams_known_are_bounded_and_an_evicted_one_releases_what_it_held() -> None:
    buf = OrderBuffer(max_streams=2)
    a = stream("alice", 3)
    buf.push(a[0], 0.0)
    buf.push(a[2], 0.0)
    buf.push(message("bob", 1), 0.0)
    out = buf.push(message("carol", 1), 0.0)  # alice is the least recently used
    assert seqs(out) == [3, 1] and out.shown[0].gap
    assert buf.held == 0


def test_leaving_a_room_releases_what_was_held_of_it() -> None:
    buf = OrderBuffer()
    a = stream("alice", 3)
    buf.push(a[0], 0.0)
    buf.push(a[2], 0.0)
    buf.push(message("alice", 1, room="other"), 0.0)
    assert seqs(buf.forget_room("LOBBY")) == [3]
    assert buf.held == 0 and buf.next_deadline() is None


@settings(max_examples=150, deadline=None)
@given(
    st.integers(1, 4),
    st.integers(1, 25),
    st.randoms(use_true_random=False),
    st.floats(0.0, 2.0),
)
def test_random_delivery_orders_show_everything_once_in_order_but_for_marked_ones(
    senders: int, n: int, rnd: random.Random, spread: float
) -> None:
    """Messages of a few streams, duplicated and shuffled, each arriving at a random time
    within ``spread`` seconds: everything is shown once; per stream the unmarked ones are in
    seq order; with everything inside the hold time, nothing is marked at all."""
    buf = OrderBuffer(hold=3.0, ask_after=0.5)
    ms = [m for s in range(senders) for m in stream(f"s{s}", n)]
    arrivals = sorted(
        (rnd.uniform(0, spread), i, m) for i, m in enumerate(ms + rnd.sample(ms, len(ms) // 3))
    )
    shown: list[Shown] = []
    for t, _, m in arrivals:
        shown += buf.timer(t).shown
        shown += buf.push(m, t, before=Added(0, 0)).shown  # a fresh history: streams start at 1
    shown += buf.timer(1e9).shown
    assert buf.next_deadline() is None and buf.held == 0
    assert sorted(s.msg.id for s in shown) == sorted(m.id for m in ms)  # all, once
    for s in range(senders):
        mine = [x for x in shown if x.msg.origin == f"s{s}"]
        in_order = [x.msg.seq for x in mine if not x.late]
        assert in_order == sorted(in_order)
        for i, x in enumerate(mine):
            before = {y.msg.seq for y in mine[:i]}
            assert x.gap == (not x.late and x.msg.seq > 1 and x.msg.seq - 1 not in before)
            assert not x.late or any(seq > x.msg.seq for seq in before)
    if spread < buf.hold:  # every hole was filled within the hold time: no marks at all
        assert not any(x.gap or x.late for x in shown)
        for s in range(senders):
            assert [x.msg.seq for x in shown if x.msg.origin == f"s{s}"] == list(range(1, n + 1))
