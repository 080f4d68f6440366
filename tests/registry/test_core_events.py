"""Room events held per room and handed out in rounds (``batch_events``, as the shell runs
the core): each member gets each event once, a room's events in order, and every event that
happened before a reply to it before that reply, whoever comes, goes or disconnects between
two slices of a round; and the bounds on what is held."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pchat.protocol.messages import (
    Bye,
    CreateRoom,
    JoinRoom,
    LeaveRoom,
    Logout,
    Message,
    Ok,
    RemoveMember,
    RoomEvent,
    Search,
    SearchResult,
)
from p2pchat.registry import core as registry_core
from p2pchat.trust.certs import Authority
from tests.registry.harness import PW, WALL, Harness, login


def batched(**config: Any) -> Harness:
    config.setdefault("room_change_burst", 1_000_000)
    return Harness(batch_events=True, **config)


def room(h: Harness, size: int, name: str = "big") -> list[int]:
    """``size`` logged-in members of a public room (``u0`` owns it), their events delivered."""
    conns = [h.user(f"u{i}", port=7000 + i) for i in range(size)]
    h.req(conns[0], CreateRoom(id=h.id(), room=name))
    for conn in conns[1:]:
        assert isinstance(h.req(conn, JoinRoom(id=h.id(), room=name)), Ok)
    h.flush()
    for conn in conns:
        h.out[conn].clear()
    return conns


def seen(h: Harness, conn: int) -> list[tuple[str, str]]:
    return [(e.username, e.change) for e in h.events(conn)]


def churn(h: Harness, conn: int, name: str) -> None:
    """``name`` goes offline and comes back on the same connection: two events a room."""
    assert isinstance(h.req(conn, Logout(id=h.id())), Ok)
    h.req(conn, login(name, PW))


# ------------------------------------------------------------------ rounds


def test_events_are_held_until_a_round_and_each_member_gets_them_once_in_order() -> None:
    h = batched()
    conns = room(h, 6)
    churn(h, conns[1], "u1")
    h.req(conns[2], LeaveRoom(id=h.id(), room="big"))
    assert all(h.out[c] == [] for c in conns[3:])  # held, not sent
    h.flush(budget=2)
    expected = [("u1", "offline"), ("u1", "online"), ("u2", "left")]
    served = [c for c in [conns[0], *conns[3:]] if h.out[c]]
    assert len(served) == 2  # one write each, whatever the number of events
    assert h.core.flushing
    h.flush()
    for conn in [conns[0], *conns[3:]]:
        assert seen(h, conn) == expected
    assert seen(h, conns[1]) == [("u2", "left")]  # not its own events
    assert seen(h, conns[2]) == expected[:2]  # those from before it left, before its reply
    assert not h.core.events_waiting and h.core._held == 0
    h.flush()
    assert all(h.events(c) == [] for c in conns)


def test_a_reply_comes_after_every_event_held_for_that_session() -> None:
    h = batched()
    conns = room(h, 4)
    churn(h, conns[1], "u1")
    reply = h.req(conns[3], Search(id=h.id(), username="u0"))
    out = h.out[conns[3]]
    assert [type(m) for m in out] == [RoomEvent, RoomEvent, SearchResult] and out[2] is reply
    h.events(conns[3])
    h.flush()
    assert seen(h, conns[3]) == []  # not again in the round
    assert seen(h, conns[0]) == [("u1", "offline"), ("u1", "online")]


def test_a_member_joining_mid_round_gets_nothing_from_before_it_came() -> None:
    h = batched()
    conns = room(h, 5)
    churn(h, conns[1], "u1")
    h.flush(budget=1)
    assert h.core.flushing
    late = h.user("late")
    h.req(late, JoinRoom(id=h.id(), room="big"))
    h.flush()
    assert seen(h, late) == []
    for conn in [conns[0], *conns[2:]]:
        assert seen(h, conn) == [("u1", "offline"), ("u1", "online"), ("late", "joined")]


def test_a_member_leaving_mid_round_gets_what_it_was_owed_before_its_reply() -> None:
    h = batched()
    conns = room(h, 5)
    churn(h, conns[1], "u1")
    h.flush(budget=1)
    leaver = next(c for c in conns[2:] if not h.out[c])  # not served yet
    h.out[leaver].clear()
    h.req(leaver, LeaveRoom(id=h.id(), room="big"))
    assert [(type(m), getattr(m, "change", None)) for m in h.out[leaver]] == [
        (RoomEvent, "offline"),
        (RoomEvent, "online"),
        (Ok, None),
    ]
    h.out[leaver].clear()
    h.flush()
    assert h.out[leaver] == []
    for conn in [c for c in conns if c not in (leaver, conns[1])]:
        assert seen(h, conn)[-1] == (f"u{conns.index(leaver)}", "left")


def test_a_member_logging_out_or_timing_out_mid_round_gets_its_events_first() -> None:
    h = batched()
    conns = room(h, 6)
    churn(h, conns[1], "u1")
    h.flush(budget=1)
    waiting = [c for c in conns[2:] if not h.out[c]]
    out_conn, silent = waiting[0], waiting[1]
    h.req(out_conn, Logout(id=h.id()))
    assert [type(m) for m in h.out[out_conn]] == [RoomEvent, RoomEvent, Ok]
    for conn in conns:  # everyone but ``silent`` is heard from in time
        if conn != silent and h.core.sessions[conn].user is not None:
            h.core.sessions[conn].last_seen = 1000.0
    h.run(h.core.expire(1000.0))
    *events, bye = h.out[silent]
    assert isinstance(bye, Bye)
    assert [(e.username, e.change) for e in events if isinstance(e, RoomEvent)] == [
        ("u1", "offline"),
        ("u1", "online"),
        (f"u{conns.index(out_conn)}", "offline"),
    ]
    assert silent in h.closed


def test_a_member_disconnecting_mid_round_is_left_out_and_the_round_goes_on() -> None:
    h = batched()
    conns = room(h, 6)
    churn(h, conns[1], "u1")
    h.flush(budget=1)
    gone = next(c for c in conns[2:] if not h.out[c])
    h.run(h.core.disconnect(gone, 1.0))
    h.flush()
    assert h.out[gone] == []
    name = f"u{conns.index(gone)}"
    for conn in [c for c in conns if c not in (gone, conns[1])]:
        assert seen(h, conn) == [("u1", "offline"), ("u1", "online"), (name, "offline")]
    assert seen(h, conns[1]) == [(name, "offline")]
    assert not h.core.events_waiting


def test_a_removed_member_hears_of_its_removal_and_nothing_after() -> None:
    h = batched()
    conns = room(h, 4)
    churn(h, conns[1], "u1")
    h.req(conns[0], RemoveMember(id=h.id(), room="big", username="u3"))
    assert seen(h, conns[3]) == [("u1", "offline"), ("u1", "online"), ("u3", "removed")]
    h.req(conns[2], LeaveRoom(id=h.id(), room="big"))
    h.flush()
    assert seen(h, conns[3]) == []
    assert seen(h, conns[0]) == [
        ("u1", "offline"),
        ("u1", "online"),
        ("u3", "removed"),
        ("u2", "left"),
    ]


# ------------------------------------------------------------------ bounds


def test_a_room_holds_at_most_room_log_limit_events(monkeypatch: pytest.MonkeyPatch) -> None:
    """A room whose held events reach the limit is delivered at once, to every member."""
    monkeypatch.setattr(registry_core, "ROOM_LOG_LIMIT", 4)
    h = batched()
    conns = room(h, 3)
    for _ in range(10):  # 20 events, never flushed
        churn(h, conns[1], "u1")
        assert h.core._held < 4
    assert h.core._held == 0  # the twentieth filled the log: all out
    assert seen(h, conns[0]) == [("u1", "offline"), ("u1", "online")] * 10
    assert seen(h, conns[2]) == [("u1", "offline"), ("u1", "online")] * 10
    h.flush()
    assert seen(h, conns[0]) == []


def test_all_rooms_together_hold_at_most_held_events_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """At the limit, the room of each new event is delivered at once."""
    monkeypatch.setattr(registry_core, "HELD_EVENTS_LIMIT", 5)
    h = batched()
    alice, bob = h.user("alice"), h.user("bob")
    rooms = [f"r{i}" for i in range(3)]
    for name in rooms:
        h.req(alice, CreateRoom(id=h.id(), room=name))
        h.req(bob, JoinRoom(id=h.id(), room=name))
    h.flush()
    h.events(alice)
    for _ in range(6):  # 36 events in three rooms, never flushed
        churn(h, bob, "bob")
        assert h.core._held <= 5
        assert sum(len(log.events) for log in h.core._logs.values()) == h.core._held
    h.flush()
    got: dict[str, list[str]] = defaultdict(list)
    for event in h.events(alice):
        got[event.room].append(event.change)
    assert got == {name: ["offline", "online"] * 6 for name in rooms}


def test_expiry_waits_while_events_are_held(monkeypatch: pytest.MonkeyPatch) -> None:
    """A mass timeout logs sessions out at the pace their events go out."""
    monkeypatch.setattr(registry_core, "EXPIRY_BACKLOG", 3)
    h = batched()
    conns = room(h, 12)
    h.run(h.core.expire(1000.0))
    assert 3 <= h.core._held <= 4  # stopped once the backlog was reached
    assert h.core.next_deadline() is None  # nothing to do until they are out
    expired = len(h.closed)
    assert 0 < expired < 12
    while len(h.closed) < 12:
        h.flush()
        assert h.core.next_deadline() is not None
        h.run(h.core.expire(1000.0))
        assert h.core._held <= 4
    for conn in conns:  # every event before the bye, each once
        out = h.out[conn]
        assert isinstance(out[-1], Bye)
        offline = [m.username for m in out if isinstance(m, RoomEvent)]
        assert len(offline) == len(set(offline))


# ------------------------------------------------------------------ against sending at once

USERS = 5
ROOMS = ("red", "blue")
OPS = ("login", "logout", "disconnect", "join", "leave", "remove", "search", "flush")


class World:
    """One of two registries fed the same requests: one sends events at once, one holds
    them (``batch_events``) and is flushed when the script says so."""

    def __init__(self, authority: Authority, batch: bool) -> None:
        self.h = Harness(authority=authority, batch_events=batch, room_change_burst=1_000_000)
        self.batch = batch
        self.conns: list[int | None] = [self.h.user(f"u{i}") for i in range(USERS)]
        self.gone: set[int] = set()
        owner = self.conns[0]
        assert owner is not None
        for name in ROOMS:
            self.h.req(owner, CreateRoom(id=self.h.id(), room=name))
            for conn in self.conns[1:]:
                assert conn is not None
                self.h.req(conn, JoinRoom(id=self.h.id(), room=name))

    def step(self, op: str, user: int, room: str, budget: int) -> None:
        h, conn = self.h, self.conns[user]
        if op == "flush":
            if self.batch:
                h.flush(budget)
            return
        if conn is None:
            if op == "login":
                conn = self.conns[user] = h.connect()
                h.send(conn, login(f"u{user}", PW))
            return
        logged_in = h.core.sessions[conn].user is not None
        if op == "login" and not logged_in:
            h.send(conn, login(f"u{user}", PW))
        elif op == "logout" and logged_in:
            h.send(conn, Logout(id=h.id()))
        elif op == "disconnect":
            h.run(h.core.disconnect(conn, h.now))
            self.gone.add(conn)
            self.conns[user] = None
        elif op == "join" and logged_in:
            h.send(conn, JoinRoom(id=h.id(), room=room))
        elif op == "leave" and logged_in and user != 0:
            h.send(conn, LeaveRoom(id=h.id(), room=room))
        elif op == "remove" and (owner := self.conns[0]) is not None:
            h.send(owner, RemoveMember(id=h.id(), room=room, username=f"u{user}"))
        elif op == "search" and logged_in:
            h.send(conn, Search(id=h.id(), username="u0"))


Segment = tuple[dict[str, list[RoomEvent]], Any]


def segments(msgs: list[Message]) -> list[Segment]:
    """A session's output cut at each frame that is not an event: the events of each room
    that came before it, and what it was (its type, id and code)."""
    out: list[Segment] = []
    held: dict[str, list[RoomEvent]] = defaultdict(list)
    for m in msgs:
        if isinstance(m, RoomEvent):
            held[m.room].append(m)
        else:
            what = (type(m).__name__, getattr(m, "id", 0), getattr(m, "code", ""))
            out.append((dict(held), what))
            held = defaultdict(list)
    out.append((dict(held), None))
    return out


@pytest.mark.parametrize("limits", [None, (3, 5)], ids=["default", "small-limits"])
@settings(derandomize=True, database=None, deadline=None, max_examples=120)
@given(
    script=st.lists(
        st.tuples(
            st.sampled_from(OPS),
            st.integers(0, USERS - 1),
            st.sampled_from(ROOMS),
            st.integers(1, 3),
        ),
        max_size=40,
    )
)
def test_holding_events_changes_only_when_they_arrive_never_what_or_before_which_reply(
    limits: tuple[int, int] | None, script: list[tuple[str, int, str, int]]
) -> None:
    """Each session sees the same replies, and between two of them the same events of each
    room in the same order, as when every event is sent at once; a session that
    disconnected may miss only events that would have come after its last reply."""
    with pytest.MonkeyPatch.context() as mp:
        if limits is not None:
            mp.setattr(registry_core, "ROOM_LOG_LIMIT", limits[0])
            mp.setattr(registry_core, "HELD_EVENTS_LIMIT", limits[1])
        authority = Authority.create(WALL)
        plain, held = World(authority, batch=False), World(authority, batch=True)
        held.h.flush()
        for op in script:
            plain.step(*op)
            held.step(*op)
            core = held.h.core
            assert core._held == sum(len(log.events) for log in core._logs.values())
            assert core._held <= registry_core.HELD_EVENTS_LIMIT
        held.h.flush()
        assert held.h.core._held == 0 and not held.h.core._logs
        assert plain.h.out.keys() >= held.h.out.keys()
        for conn, msgs in plain.h.out.items():
            want, got = segments(msgs), segments(held.h.out[conn])
            if conn not in plain.gone:
                assert got == want
                continue
            assert got[:-1] == want[:-1]
            for name, events in got[-1][0].items():
                assert events == want[-1][0][name][: len(events)]
