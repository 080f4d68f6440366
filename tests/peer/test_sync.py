"""Catch-up between neighbours: the cost when nothing is missing, random differences made
whole in two round trips with nothing sent twice, the access policy, paging, the bucket,
timeouts, several neighbours, and what is refused."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pchat.peer.history import History, Limits, StoredMessage
from p2pchat.peer.sync import (
    Access,
    Policy,
    Send,
    SyncConfig,
    b64,
    entry,
    unb64,
    visible_from,
)
from p2pchat.protocol.messages import (
    SyncBatch,
    SyncDigest,
    SyncRequest,
    SyncStream,
    SyncStreamBatch,
    SyncSummary,
    SyncWant,
    decode,
    encode,
    peer_decoder,
)
from tests.peer.histories import ROOM, Net, ids, message, verify

WALL = 2_000_000.0
HOUR = 3600.0
DAY = 24 * HOUR


def shared(n_streams: int, per: int, *, text: str | None = None) -> list[StoredMessage]:
    return [
        message(f"u{s:03d}", i, text=text, ts=WALL - DAY + i)
        for s in range(n_streams)
        for i in range(1, per + 1)
    ]


def pair(**kw: object) -> tuple[Net, History, History]:
    net = Net()
    a = net.add("a", **kw).history  # type: ignore[arg-type]
    b = net.add("b", **kw).history  # type: ignore[arg-type]
    return net, a, b


# ---------------------------------------------------------------- the common case


def test_nothing_missing_costs_two_digests_well_under_512_bytes() -> None:
    net, a, b = pair()
    ms = shared(100, 5)
    a.add_many(ms, WALL)
    b.add_many(reversed(ms), WALL)
    assert net.start("a", "b") == 1
    assert net.bytes <= 512
    assert [type(f) for _, _, f in net.frames] == [SyncDigest, SyncDigest]


def test_a_member_who_missed_1000_messages_from_100_senders_has_them_in_two_round_trips() -> None:
    net, a, b = pair()
    before = shared(100, 20)
    a.add_many(before, WALL)
    b.add_many(before, WALL)
    missed = [message(f"u{s:03d}", i, ts=WALL - HOUR) for s in range(100) for i in range(21, 31)]
    a.add_many(missed, WALL)
    assert net.start("a", "b") == 4  # digests, summaries, request, batch: 2 round trips
    assert ids(b) == ids(a)
    assert sorted(m.id for m in net.nodes["b"].caught) == sorted(m.id for m in missed)
    assert Counter(net.batch_ids()) == Counter(m.id for m in missed)  # each sent once
    assert a.digest(ROOM) == b.digest(ROOM)
    assert net.start("a", "b") == 1  # and then there is nothing to say


def test_one_side_starting_is_enough_for_both_to_catch_up() -> None:
    net, a, b = pair()
    a.add_many(shared(3, 10), WALL)
    b.add_many([message("v", i) for i in range(1, 6)], WALL)
    net.start("a", "b", both=False)
    assert ids(a) == ids(b) and len(ids(a)) == 35
    assert len(net.batch_ids()) == 35


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 6),
    st.integers(1, 30),
    st.randoms(use_true_random=False),
    st.floats(0.0, 1.0),
)
def test_random_differences_end_in_the_union_in_two_round_trips_nothing_sent_twice(
    senders: int, per: int, rnd: random.Random, share: float
) -> None:
    net, a, b = pair()
    ms = [message(f"s{s}", i) for s in range(senders) for i in range(1, per + 1)]
    for m in ms:
        r = rnd.random()
        if r < share:
            a.add(m, WALL)
            b.add(m, WALL)
        elif r < (1 + share) / 2:
            a.add(m, WALL)
        elif rnd.random() < 0.9:
            b.add(m, WALL)  # and a few are held by nobody
    union = ids(a) | ids(b)
    had_a, had_b = ids(a), ids(b)
    flights = net.start("a", "b")
    assert flights <= 4
    assert ids(a) == union and ids(b) == union
    sent = net.batch_ids()
    assert len(sent) == len(set(sent))  # nothing twice
    assert set(sent) == (union - had_a) | (union - had_b)  # nothing not lacking
    assert a.digest(ROOM) == b.digest(ROOM) and net.start("a", "b") == 1


def test_frames_stay_within_the_framing_bound_with_the_longest_texts() -> None:
    net, a, b = pair()
    a.add_many(shared(3, 40, text="\u0001" * 4096), WALL)  # 24 KiB each once escaped
    net.start("a", "b")  # Net.run checks each frame's size
    assert len(ids(b)) == 120
    assert max(len(encode(f)) for _, _, f in net.frames) <= 64 * 1024


# ---------------------------------------------------------------- who may see history


def test_visible_from_the_policy_as_a_table() -> None:
    now, p = WALL, Policy(public_backlog=100, public_backlog_age=7 * DAY, clock_skew=5.0)
    assert visible_from(Access(False, 0.0, True), now, None, p) is None
    assert visible_from(Access(True, now - HOUR), now, None, p) == now - HOUR - 5
    assert visible_from(Access(True, None), now, None, p) == now - 5  # unknown: from now
    # public: the last 100 messages, none older than 7 days, or since, whichever is older
    assert visible_from(Access(True, now - HOUR, True), now, now - DAY, p) == now - DAY
    assert visible_from(Access(True, now - HOUR, True), now, now - 30 * DAY, p) == now - 7 * DAY
    assert visible_from(Access(True, now - HOUR, True), now, None, p) == now - 7 * DAY
    assert visible_from(Access(True, now - 9 * DAY, True), now, now - DAY, p) == now - 9 * DAY - 5
    assert visible_from(Access(True, now - HOUR, True), now, now - 60, p) == now - HOUR - 5


def _member_since(since: dict[str, float | None], public: bool = False) -> object:
    def access(room: str, peer: str) -> Access:
        if peer not in since:
            return Access(False)
        return Access(True, since[peer], public)

    return access


def test_a_newer_member_of_a_private_room_gets_what_was_said_since_it_was_added() -> None:
    net = Net()
    old = net.add("old", access=_member_since({"new": WALL - HOUR})).history  # type: ignore[arg-type]
    new = net.add("new", access=_member_since({"old": 0.0})).history  # type: ignore[arg-type]
    before = [message("alice", i, ts=WALL - 2 * HOUR + i) for i in range(1, 51)]
    after = [message("alice", i, ts=WALL - HOUR + i) for i in range(51, 61)]
    other = [message("bob", i, ts=WALL - 3 * HOUR + i) for i in range(1, 6)]
    old.add_many(before + after + other, WALL)
    assert net.start("old", "new") == 4
    assert ids(new) == {m.id for m in after}
    assert not (set(net.batch_ids()) & {m.id for m in before + other})
    # alice's stream is done up to 60 for both (the done mark); of bob's, all said before
    # new was added, new has seen no signed message, so it keeps no record of it
    assert {h.origin: h.high for h in new.summary(ROOM)} == {"alice": 60}
    net.frames.clear()
    net.start("old", "new")  # the summaries differ by bob's stream: nothing is sent
    assert net.batch_ids() == []


def test_a_newcomer_to_a_public_room_gets_its_last_100_messages() -> None:
    net = Net()
    old = net.add("old", access=_member_since({"new": WALL}, public=True)).history  # type: ignore[arg-type]
    new = net.add("new", access=_member_since({"old": 0.0}, public=True)).history  # type: ignore[arg-type]
    ms = [message(f"u{i % 7}", i // 7 + 1, ts=WALL - 3 * HOUR + i) for i in range(300)]
    old.add_many(ms, WALL)
    net.start("old", "new")
    assert ids(new) == {m.id for m in ms[-100:]}
    assert new.digest(ROOM) == old.digest(ROOM)


def test_nothing_is_served_to_a_non_member_nor_after_removal() -> None:
    members = {"b": 0.0}
    net = Net()
    a = net.add("a", access=_member_since(members)).history  # type: ignore[arg-type]
    b = net.add("b", access=_member_since({"a": 0.0})).history  # type: ignore[arg-type]
    a.add_many(shared(2, 5), WALL)
    net.start("a", "b")
    assert len(ids(b)) == 10
    del members["b"]  # b is removed from the room
    a.add_many([message("u000", i) for i in range(6, 9)], WALL)
    assert net.nodes["a"].sync.start(ROOM, "b", 0.0) == []  # we start nothing with it
    net.frames.clear()
    net.start("b", "a", both=False)  # and whatever it sends is refused
    assert len(ids(b)) == 10
    assert net.batch_ids() == []
    request = SyncRequest(
        room=ROOM,
        id=7,
        wants=[SyncWant(origin="u000", key=b64(message("u000", 1).key), ranges=[(1, 99)])],
    )
    out = net.nodes["a"].sync.receive("b", request, 0.0, WALL)
    (reply,) = [decode(peer_decoder, s.frame) for s in out.sends]
    assert isinstance(reply, SyncBatch) and reply.refused == "not_member" and not reply.streams
    assert net.nodes["a"].sync.stats.refused >= 2


# ---------------------------------------------------------------- bounds


def test_an_answer_is_paged_and_continued_until_everything_is_there() -> None:
    cfg = SyncConfig(page_messages=100, page_bytes=64 * 1024)
    net, a, b = pair(config=cfg)
    a.add_many(shared(10, 50), WALL)
    net.start("a", "b")
    assert len(ids(b)) == 500
    assert Counter(net.batch_ids()).most_common(1)[0][1] == 1
    answers: dict[int, int] = Counter()
    for src, _, f in net.frames:
        if isinstance(f, SyncBatch) and src == "a":
            answers[f.id] += sum(len(p.msgs) for p in f.streams)
    assert max(answers.values()) <= 100
    sizes = [len(encode(f)) for _, _, f in net.frames if isinstance(f, SyncBatch)]
    assert max(sizes) <= cfg.frame_bytes


def test_a_neighbour_asking_too_much_is_told_to_wait_before_any_work() -> None:
    """Each request is charged a whole page before it is served (what it did not use is given
    back): with a bucket of two pages, the third full answer in a row is refused unserved."""
    cfg = SyncConfig(page_bytes=64 * 1024, bucket_bytes=128 * 1024, refill_bytes=64 * 1024)
    net, a, _b = pair(config=cfg)
    a.add_many(shared(1, 40, text="t" * 3000), WALL)
    served = 0
    real = a.stream_range

    def counting(*args: object, **kw: object) -> list[StoredMessage]:
        nonlocal served
        served += 1
        return real(*args, **kw)  # type: ignore[arg-type]

    a.stream_range = counting  # type: ignore[method-assign]
    want = SyncWant(origin="u000", key=b64(message("u000", 1).key), ranges=[(1, 40)])
    sync = net.nodes["a"].sync
    replies = []
    for n in range(4):
        out = sync.receive("b", SyncRequest(room=ROOM, id=n, wants=[want]), 0.0, WALL)
        replies.append([decode(peer_decoder, s.frame) for s in out.sends])
    full = [r for r in replies if isinstance(r[0], SyncBatch) and r[0].refused is None]
    refused = [r[0] for r in replies if isinstance(r[0], SyncBatch) and r[0].refused == "busy"]
    assert len(full) == 2 and len(refused) == 2
    assert all(r.retry_after == 1.0 and not r.streams for r in refused)
    assert served == 2  # a refused request cost no database work
    assert sync.stats.throttled == 2
    again = sync.receive("b", SyncRequest(room=ROOM, id=9, wants=[want]), 1.0, WALL)
    first = decode(peer_decoder, again.sends[0].frame)
    assert isinstance(first, SyncBatch) and first.refused is None and first.streams
    assert served == 3
    small = SyncWant(origin="u000", key=want.key, ranges=[(1, 1)])
    for n in range(10):  # charged a page each, but given back what they did not use
        out = sync.receive("b", SyncRequest(room=ROOM, id=20 + n, wants=[small]), 9.0, WALL)
        reply = decode(peer_decoder, out.sends[0].frame)
        assert isinstance(reply, SyncBatch) and reply.refused is None


def test_a_busy_neighbour_is_asked_again_after_the_wait() -> None:
    cfg = SyncConfig(page_bytes=64 * 1024, bucket_bytes=64 * 1024, refill_bytes=16 * 1024)
    net, a, b = pair(config=cfg)
    a.add_many(shared(1, 20), WALL)
    sync_a = net.nodes["a"].sync
    assert sync_a._charge("b", 64 * 1024, 0.0)  # b has just spent a's bucket
    net.start("a", "b")
    assert len(ids(b)) == 0
    deadline = net.nodes["b"].sync.next_deadline()
    assert deadline is not None and 3.0 <= deadline <= 5.0
    net.now = deadline
    net.timer("b")
    assert len(ids(b)) == 20


def _b_stalls(ms: list[StoredMessage]) -> Net:
    """a starts with b and c, which both hold ``ms``; b never answers a request."""
    net = Net()
    for name in "abc":
        net.add(name)
    net.nodes["b"].history.add_many(ms, WALL)
    net.nodes["c"].history.add_many(ms, WALL)
    net.drop = lambda src, dst, f: src == "b" and isinstance(f, SyncBatch)
    net.run([("a", s) for peer in "bc" for s in net.nodes["a"].sync.start(ROOM, peer, 0.0)])
    return net


def test_a_request_unanswered_in_time_is_asked_of_another_neighbour() -> None:
    net = _b_stalls(shared(5, 20))
    a = net.nodes["a"]
    asked_of = Counter(
        dst for src, dst, f in net.frames if src == "a" and isinstance(f, SyncRequest)
    )
    assert asked_of["b"] == 1 and asked_of["c"] == 0  # everything asked of the first once
    assert len(ids(a.history)) == 0
    net.now = a.sync.next_deadline() or 0.0
    assert net.now == pytest.approx(a.sync.config.request_timeout)
    net.timer("a")
    assert len(ids(a.history)) == 100
    assert a.sync.stats.timeouts == 1


def test_with_several_neighbours_each_message_comes_once() -> None:
    net = Net()
    for name in "abcd":
        net.add(name)
    ms = shared(10, 30)
    for name in "bcd":
        net.nodes[name].history.add_many(ms, WALL)
    sends = [("a", s) for peer in "bcd" for s in net.nodes["a"].sync.start(ROOM, peer, 0.0)]
    sends += [(peer, s) for peer in "bcd" for s in net.nodes[peer].sync.start(ROOM, "a", 0.0)]
    assert net.run(sends) <= 4
    assert len(ids(net.nodes["a"].history)) == 300
    assert Counter(net.batch_ids()).most_common(1)[0][1] == 1


def test_a_lost_link_releases_its_requests_to_the_other_neighbours() -> None:
    net = _b_stalls(shared(2, 10))
    a = net.nodes["a"].sync
    assert len(ids(net.nodes["a"].history)) == 0
    net.run([("a", s) for s in a.link_down("b", 1.0)])
    assert len(ids(net.nodes["a"].history)) == 20


def test_a_summary_is_held_within_its_bound() -> None:
    cfg = SyncConfig(max_summary_streams=10)
    net, _a, _b = pair(config=cfg)
    key = b64(message("x", 1).key)
    pages = [
        SyncSummary(
            room=ROOM,
            streams=[SyncStream(origin=f"o{p}x{i}", key=key, high=3) for i in range(8)],
            more=p < 2,
        )
        for p in range(3)
    ]
    out = None
    for page in pages:
        out = net.nodes["b"].sync.receive("a", page, 0.0, WALL)
    assert out is not None
    (req,) = [decode(peer_decoder, s.frame) for s in out.sends if b"sync_request" in s.frame]
    assert isinstance(req, SyncRequest) and len(req.wants) == 10
    assert net.nodes["b"].sync._held_streams == 10


# ---------------------------------------------------------------- what is refused


def test_messages_that_fail_the_check_or_were_not_asked_for_are_not_kept() -> None:
    net = Net()
    net.add("a", accept=verify)
    net.add("b", accept=verify)
    good = [message("alice", i, sign=True) for i in range(1, 4)]
    net.nodes["b"].history.add_many(good, WALL)
    sends = net.nodes["a"].sync.start(ROOM, "b", 0.0)
    net.drop = lambda src, dst, f: isinstance(f, SyncBatch)  # we forge the answer below
    net.run(
        [("a", s) for s in sends] + [("b", s) for s in net.nodes["b"].sync.start(ROOM, "a", 0.0)]
    )
    (req,) = [f for src, _, f in net.frames if src == "a" and isinstance(f, SyncRequest)]
    forged = entry(good[1])
    forged.text = "something alice never said"
    stranger = message("mallory", 1, sign=True)
    answer = SyncBatch(
        room=ROOM,
        id=req.id,
        streams=[
            SyncStreamBatch(
                origin="alice",
                key=b64(good[0].key),
                msgs=[entry(good[0]), forged, entry(message("alice", 9, sign=True))],
            ),
            SyncStreamBatch(origin="mallory", key=b64(stranger.key), msgs=[entry(stranger)]),
        ],
    )
    out = net.nodes["a"].sync.receive("b", answer, 0.0, WALL)
    assert [m.id for m, _, _ in out.caught] == [good[0].id]
    assert ids(net.nodes["a"].history) == {good[0].id}
    assert net.nodes["a"].sync.stats.rejected == 3  # forged, not asked (seq 9), not asked (mallory)
    late = net.nodes["a"].sync.receive("b", answer, 0.0, WALL)  # the request is over
    assert late.caught == [] and net.nodes["a"].sync.stats.rejected == 7


def test_a_request_with_ranges_out_of_order_is_served_for_the_good_ones_only() -> None:
    net, a, _b = pair()
    a.add_many(shared(2, 5), WALL)
    k0, k1 = (b64(message(f"u00{i}", 1).key) for i in range(2))
    req = SyncRequest(
        room=ROOM,
        id=1,
        wants=[
            SyncWant(origin="u000", key=k0, ranges=[(4, 5), (1, 2)]),
            SyncWant(origin="u001", key=k1, ranges=[(3, 1)]),
            SyncWant(origin="u001", key=k1, ranges=[(1, 2), (4, 4)]),
        ],
    )
    out = net.nodes["a"].sync.receive("b", req, 0.0, WALL)
    (batch,) = [decode(peer_decoder, s.frame) for s in out.sends]
    assert isinstance(batch, SyncBatch)
    assert [(p.origin, [e.seq for e in p.msgs]) for p in batch.streams] == [("u001", [1, 2, 4])]


def test_a_done_mark_never_covers_a_hole_asked_of_another_neighbour() -> None:
    net = Net()
    for name in "abc":
        net.add(name)
    ms = [message("alice", i) for i in range(1, 31)]
    key = ms[0].key
    net.nodes["b"].history.skip(ROOM, "alice", key, 30, WALL)  # b: all out of reach
    net.nodes["c"].history.add_many(ms[10:19], WALL)  # c: 11..19
    a = net.nodes["a"]
    a.history.add(message("alice", 31), WALL)  # seen live: alice's stream reaches 31
    to_b = a.sync.ask(ROOM, "b", "alice", key, [(1, 10), (20, 30)], 0.0)
    to_c = a.sync.ask(ROOM, "c", "alice", key, [(11, 19)], 0.0)
    net.run([("a", s) for s in to_b])  # b answers first: done up to 30
    assert a.history.head(ROOM, "alice", key).high == 10  # type: ignore[union-attr]
    net.run([("a", s) for s in to_c])
    assert {m.seq for m in a.history.last(ROOM, 100)} == set(range(11, 20)) | {31}
    assert a.sync.ask(ROOM, "c", "alice", key, [(11, 19)], 0.0) == []  # held: nothing to ask


def test_the_order_buffer_hears_of_what_catch_up_brought_and_skipped() -> None:
    net = Net()
    old = net.add("old", access=_member_since({"new": WALL - HOUR})).history  # type: ignore[arg-type]
    net.add("new", access=_member_since({"old": 0.0}))  # type: ignore[arg-type]
    old.add_many([message("alice", i, ts=WALL - 2 * HOUR + i * 60) for i in range(1, 101)], WALL)
    net.start("old", "new")
    outcomes = net.nodes["new"].outcomes
    skipped = [s for o in outcomes for s in o.skipped]
    caught = [(m.seq, added.prev_top, via) for o in outcomes for m, added, via in o.caught]
    assert caught[0] == (60, 0, "old") and len(caught) == 41  # since an hour: 60..100
    assert skipped == [((ROOM, "alice", message("alice", 1).key), 100)]


def test_encodings_round_trip() -> None:
    for n in (32, 64, 16):
        data = bytes(range(n))
        assert unb64(b64(data)) == data
    assert isinstance(Send("x", b"y"), Send)
    with pytest.raises(ValueError):
        SyncConfig(frame_bytes=100)
    with pytest.raises(ValueError):
        SyncConfig(bucket_bytes=1024)


def test_history_limits_apply_to_what_catch_up_brings() -> None:
    net = Net()
    net.add("a")
    b = net.add("b", limits=Limits(max_messages=30)).history
    net.nodes["a"].history.add_many(shared(2, 40), WALL)
    net.start("a", "b")
    assert b.counts(ROOM)[0] == 30


def test_the_ranges_examined_for_one_request_are_bounded() -> None:
    net, a, _ = pair(config=SyncConfig(max_ranges_served=10))
    a.add_many(shared(1, 80), WALL)
    want = SyncWant(
        origin="u000",
        key=b64(message("u000", 1).key),
        ranges=[(i, i) for i in range(1, 64, 2)],  # 32 ranges
    )
    out = net.nodes["a"].sync.receive("b", SyncRequest(room=ROOM, id=1, wants=[want]), 0.0, WALL)
    (batch,) = [decode(peer_decoder, s.frame) for s in out.sends]
    assert isinstance(batch, SyncBatch) and batch.truncated
    (part,) = batch.streams
    assert [e.seq for e in part.msgs] == list(range(1, 20, 2)) and part.done == 19


def test_a_neighbours_done_mark_cannot_silence_an_origin() -> None:
    """A member claiming alice's stream is done far beyond anything alice signed does not
    make us refuse alice's real messages."""
    net, a, _ = pair()
    key = message("alice", 1).key
    a.add(message("alice", 1), WALL)
    sync = net.nodes["a"].sync
    (ask,) = sync.ask(ROOM, "b", "alice", key, [(2, 10**9)], 0.0)
    req = decode(peer_decoder, ask.frame)
    assert isinstance(req, SyncRequest)
    lie = SyncBatch(
        room=ROOM,
        id=req.id,
        streams=[SyncStreamBatch(origin="alice", key=b64(key), done=10**9)],
    )
    out = sync.receive("b", lie, 0.0, WALL)
    assert out.skipped == []
    assert a.head(ROOM, "alice", key).high == 1  # type: ignore[union-attr]
    assert a.add(message("alice", 2), WALL) is not None
