"""Attacks on the registry's decisions, each reproduced (bounded) on the core, with the
defended outcome asserted. The socket-level attacks are in test_server_abuse.py."""

from __future__ import annotations

import logging
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pchat.protocol.messages import (
    AddMember,
    Bye,
    CreateRoom,
    Error,
    JoinRoom,
    LeaveRoom,
    ListMembers,
    ListRooms,
    ListUsers,
    LoggedIn,
    Logout,
    MemberList,
    Ok,
    Register,
    RemoveMember,
    RoomList,
    Search,
    SearchResult,
    Unban,
    UserList,
)
from p2pchat.registry.core import FairQueue, HashPassword, VerifyPassword
from p2pchat.store import SqliteStore
from tests.registry.harness import PW, FaultyStore, Harness, code, login

# ------------------------------------------------------------------ names


@pytest.mark.parametrize("lookalike", ["aIice", "alice.", "a1ice", "Al1ce", "a_lice"])
def test_lookalike_names_are_refused_with_a_clear_error(lookalike: str) -> None:
    h = Harness()
    h.user("alice")
    reply = h.req(h.connect(), Register(id=1, username=lookalike, password=PW))
    assert code(reply) == "name_taken"
    assert isinstance(reply, Error) and "looks too much like 'alice'" in reply.reason
    assert h.core.store.get_account(lookalike) is None
    assert isinstance(h.req(h.connect(), Register(id=2, username="alicia", password=PW)), Ok)


# ------------------------------------------------------------------ rooms


def test_forced_membership_is_capped() -> None:
    """mallory creates rooms and adds alice to each: alice ends in a bounded number of rooms
    (so her mesh announcements stay small), mallory owns a bounded number of rooms."""
    h = Harness(max_rooms_per_user=8, max_owned_rooms=5, room_change_burst=1000)
    mallory, alice = h.user("mallory"), h.user("alice")
    codes = []
    for i in range(20):
        codes.append(h.req(mallory, CreateRoom(id=h.id(), room=f"trap{i}")))
        codes.append(h.req(mallory, AddMember(id=h.id(), room=f"trap{i}", username="alice")))
    created = [r for r in codes if isinstance(r, Ok)]
    assert len(created) == 10  # five rooms made, alice added to the five
    assert code(h.req(mallory, CreateRoom(id=h.id(), room="one-more"))) == "too_many_rooms"
    assert len(h.core.store.rooms_of("alice")) == 5
    for i in range(3):  # alice joins rooms of her own choosing, up to her cap of 8
        h.req(h.user(f"host{i}"), CreateRoom(id=h.id(), room=f"real{i}"))
        assert isinstance(h.req(alice, JoinRoom(id=h.id(), room=f"real{i}")), Ok)
    h.req(h.user("host9"), CreateRoom(id=h.id(), room="full"))
    assert code(h.req(alice, JoinRoom(id=h.id(), room="full"))) == "too_many_rooms"
    assert code(
        h.req(h.core.online["host9"].conn, AddMember(id=h.id(), room="full", username="alice"))
    ) == ("too_many_rooms")
    assert len(h.core.store.rooms_of("alice")) == 8
    assert isinstance(h.req(alice, LeaveRoom(id=h.id(), room="trap0")), Ok)  # and she can leave


def test_a_join_leave_loop_is_rate_limited_and_its_events_bounded() -> None:
    h = Harness(room_change_rate=1.0, room_change_burst=10)
    watcher, looper = h.user("watcher"), h.user("looper")
    h.req(watcher, CreateRoom(id=h.id(), room="lobby"))
    h.events(watcher)
    refused = 0
    for step in range(2000):  # 20 simulated seconds of a tight loop
        h.now = step * 0.01
        inside = "lobby" in h.core.sessions[looper].rooms
        msg = (LeaveRoom if inside else JoinRoom)(id=h.id(), room="lobby")
        reply = h.req(looper, msg)
        if isinstance(reply, Error):
            assert reply.code == "rate_limited" and reply.retry_after
            assert "too many room changes" in reply.reason
            refused += 1
    events = h.events(watcher)
    assert len(events) <= 10 + 20 + 1  # the burst, then one a second
    assert refused >= 2000 - 31
    # the watcher's own room changes are not affected
    assert isinstance(h.req(watcher, CreateRoom(id=h.id(), room="other")), Ok)


def test_a_removed_member_can_be_banned_and_unbanned() -> None:
    h = Harness()
    owner, bob, carol = h.user("owner"), h.user("bob"), h.user("carol")
    h.req(owner, CreateRoom(id=h.id(), room="lobby"))
    h.req(bob, JoinRoom(id=h.id(), room="lobby"))
    h.req(carol, JoinRoom(id=h.id(), room="lobby"))
    ban = RemoveMember(id=h.id(), room="lobby", username="bob", ban=True)
    assert isinstance(h.req(owner, ban), Ok)
    rejoin = h.req(bob, JoinRoom(id=h.id(), room="lobby"))
    assert code(rejoin) == "banned" and "banned from lobby" in rejoin.reason  # type: ignore[union-attr]
    assert code(h.req(carol, AddMember(id=h.id(), room="lobby", username="bob"))) == "banned"
    assert code(h.req(carol, Unban(id=h.id(), room="lobby", username="bob"))) == "not_owner"
    assert isinstance(h.req(owner, Unban(id=h.id(), room="lobby", username="bob")), Ok)
    assert isinstance(h.req(bob, JoinRoom(id=h.id(), room="lobby")), Ok)
    # a plain removal does not ban; a ban needs no membership
    h.req(owner, RemoveMember(id=h.id(), room="lobby", username="bob"))
    assert isinstance(h.req(bob, JoinRoom(id=h.id(), room="lobby")), Ok)
    h.user("dave")
    assert isinstance(
        h.req(owner, RemoveMember(id=h.id(), room="lobby", username="dave", ban=True)), Ok
    )
    assert code(h.req(h.core.online["dave"].conn, JoinRoom(id=h.id(), room="lobby"))) == "banned"


def test_only_the_owner_and_those_allowed_add_to_a_private_room() -> None:
    h = Harness()
    owner, bob = h.user("owner"), h.user("bob")
    h.user("outsider")
    h.req(owner, CreateRoom(id=h.id(), room="den", private=True))
    h.req(owner, AddMember(id=h.id(), room="den", username="bob"))
    assert code(h.req(bob, AddMember(id=h.id(), room="den", username="outsider"))) == "not_owner"
    assert code(h.req(bob, AddMember(id=h.id(), room="den", username="bob", may_add=True))) == (
        "not_owner"
    )
    assert h.core.store.membership("den", "outsider") is None
    # the owner lets bob add; then bob may, but may not pass the right on
    assert isinstance(
        h.req(owner, AddMember(id=h.id(), room="den", username="bob", may_add=True)), Ok
    )
    assert isinstance(h.req(bob, AddMember(id=h.id(), room="den", username="outsider")), Ok)
    assert h.core.store.membership("den", "outsider") is False


@pytest.mark.parametrize(
    "make",
    [
        lambda i, room: JoinRoom(id=i, room=room),
        lambda i, room: LeaveRoom(id=i, room=room),
        lambda i, room: ListMembers(id=i, room=room),
        lambda i, room: AddMember(id=i, room=room, username="outsider"),
        lambda i, room: RemoveMember(id=i, room=room, username="outsider"),
        lambda i, room: Unban(id=i, room=room, username="outsider"),
    ],
)
def test_a_private_room_and_a_missing_one_look_the_same_to_outsiders(make: object) -> None:
    h = Harness()
    owner, outsider = h.user("owner"), h.user("outsider")
    h.req(owner, CreateRoom(id=h.id(), room="hidden", private=True))
    private = h.req(outsider, make(7, "hidden"))  # type: ignore[operator]
    missing = h.req(outsider, make(7, "nowhere"))  # type: ignore[operator]
    assert code(private) == code(missing) == "no_such_room"
    assert private.reason.replace("hidden", "X") == missing.reason.replace("nowhere", "X")  # type: ignore[union-attr]
    listing = h.req(outsider, ListRooms(id=h.id()))
    assert isinstance(listing, RoomList) and listing.rooms == []


def test_creating_an_id_in_use_says_taken_whether_public_or_private() -> None:
    h = Harness()
    owner, other = h.user("owner"), h.user("other")
    h.req(owner, CreateRoom(id=h.id(), room="hidden", private=True))
    h.req(owner, CreateRoom(id=h.id(), room="open"))
    private = h.req(other, CreateRoom(id=7, room="hidden"))
    public = h.req(other, CreateRoom(id=7, room="open"))
    assert code(private) == code(public) == "room_exists"
    assert private.reason.replace("hidden", "X") == public.reason.replace("open", "X")  # type: ignore[union-attr]


# ------------------------------------------------------------------ who sees addresses


def test_addresses_go_only_to_those_who_need_them() -> None:
    h = Harness()
    alice = h.user("alice", host="10.0.0.5", port=7005)
    bob = h.user("bob", host="10.0.0.6", port=7006)
    h.req(alice, CreateRoom(id=h.id(), room="lobby"))
    users = h.req(bob, ListUsers(id=h.id()))
    assert isinstance(users, UserList)
    assert [(u.username, u.host, u.port) for u in users.users] == [
        ("alice", None, None),
        ("bob", None, None),
    ]
    outsider = h.req(bob, ListMembers(id=h.id(), room="lobby"))
    assert isinstance(outsider, MemberList) and outsider.members[0].host is None
    found = h.req(bob, Search(id=h.id(), username="alice"))  # what a direct message needs
    assert found == SearchResult(
        id=found.id, username="alice", online=True, host="10.0.0.5", port=7005
    )  # type: ignore[union-attr]
    h.req(bob, JoinRoom(id=h.id(), room="lobby"))
    member = h.req(bob, ListMembers(id=h.id(), room="lobby"))
    assert isinstance(member, MemberList) and (member.members[0].host, member.members[0].port) == (
        "10.0.0.5",
        7005,
    )


# ------------------------------------------------------------------ logins


def test_an_unknown_name_costs_and_answers_what_a_wrong_password_does() -> None:
    h = Harness(hold_jobs=True)
    h.send(h.connect(), Register(id=1, username="alice", password=PW))
    h.finish(h.jobs.pop())
    replies = []
    for name in ("alice", "nobody"):
        conn = h.connect()
        h.send(conn, login(name, "wrong-pw"))
        [job] = h.jobs
        assert isinstance(job, VerifyPassword)  # a hash is checked for both
        assert (job.password_hash is None) is (name == "nobody")
        h.jobs.clear()
        h.finish(job)
        replies.append(h.out[conn][-1])
    assert replies[0] == replies[1]
    assert code(replies[0]) == "wrong_password"


def test_a_guesser_cannot_lock_the_owner_out() -> None:
    """mallory makes one guess each time her lockout ends, for a simulated minute; alice, at
    another address, logs in each time she tries; alice at mallory's address (a shared NAT)
    does too, with the ticket of her last good login."""
    h = Harness()
    alice = h.user("alice", host="10.0.0.1")
    ticket = h.out[alice][-1]
    h.req(alice, Logout(id=h.id()))
    ticket_text = next(m.ticket for m in h.out[alice] if isinstance(m, LoggedIn))
    assert ticket_text and ticket is not None
    good = guesses = 0
    while h.now < 60.0:
        reply = h.req(h.connect(host="10.6.6.6"), login("alice", "guess!"))
        if isinstance(reply, Error) and reply.code == "rate_limited":
            h.now += reply.retry_after or 0.1
            continue
        guesses += 1
        for host, kw in (("10.0.0.1", {}), ("10.6.6.6", {"ticket": ticket_text})):
            conn = h.connect(host=host)
            mine = h.req(conn, login("alice", PW, **kw))
            assert isinstance(mine, LoggedIn), (host, mine)
            h.req(conn, Logout(id=h.id()))
            good += 1
            ticket_text = mine.ticket or ""
    assert guesses <= 12  # 3 free, then 1 + 2 + 4 + ... s locks, at most 60 s
    assert good == 2 * guesses
    # without the ticket, at the guesser's address, the lock holds
    h.req(h.connect(host="10.6.6.6"), login("alice", "guess!"))
    assert code(h.req(h.connect(host="10.6.6.6"), login("alice", PW))) == "rate_limited"


def test_a_ticket_serves_only_its_own_account_and_cannot_be_forged() -> None:
    h = Harness()
    alice = h.user("alice", host="10.0.0.1")
    h.user("bob", host="10.0.0.1")
    ticket = next(m.ticket for m in h.out[alice] if isinstance(m, LoggedIn)) or ""
    for _ in range(5):  # bob's account is locked for this address
        h.req(h.connect(host="10.6.6.6"), login("bob", "guess!"))
    h.req(h.core.online["bob"].conn, Logout(id=h.id()))
    nonce = ticket.partition(".")[0]
    for forged in (ticket, f"{nonce}.{'0' * 32}", "junk", ".", ""):
        reply = h.req(h.connect(host="10.6.6.6"), login("bob", PW, ticket=forged))
        assert code(reply) == "rate_limited", forged


def test_parallel_logins_from_one_address_are_bounded_before_any_hash() -> None:
    """200 logins at once from one address to 200 accounts: a few are queued, the rest are
    refused at once (rate_limited), and at most ``hash_workers`` hashes run."""
    h = Harness(hold_jobs=True, hash_workers=2, hash_queue_per_address=8)
    for i in range(200):
        h.core.store.create_account(f"acct{i:03d}", "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaA")
    refused = 0
    for i in range(200):
        conn = h.connect(host="10.6.6.6")
        reply_count = len(h.out[conn])
        h.send(conn, login(f"acct{i:03d}", "guess!"))
        if len(h.out[conn]) > reply_count:
            assert code(h.out[conn][-1]) == "rate_limited"
            refused += 1
    assert len(h.jobs) == 2 and h.core.running == 2  # running now
    assert len(h.core.jobs) == 8  # and waiting: the address's share
    assert refused == 200 - 10


def test_password_work_is_served_fairly_between_addresses() -> None:
    """Registrations flood from 10 addresses, and logins for unknown names from 10 more; an
    honest login from another address waits for at most one login per address (and the
    registrations' share), not for the whole flood."""
    h = Harness(hold_jobs=True, hash_workers=1, hash_queue=1000, hash_queue_per_address=50)
    h.core.store.create_account("alice", h.passwords.hash(PW))
    for i in range(300):
        bot = Register(id=h.id(), username=f"bot{i:03d}", password=PW)
        h.send(h.connect(host=f"10.6.6.{i % 10}"), bot)
        h.send(h.connect(host=f"10.7.7.{i % 10}"), login(f"nobody{i}", PW))
    honest = h.connect(host="10.0.0.1")
    h.send(honest, login("alice", PW))
    served_before = 0
    while not any(isinstance(m, LoggedIn) for m in h.out[honest]):
        h.finish(h.jobs.pop(0))
        served_before += 1
    assert served_before <= 1 + 10 + 4  # the one running, a login per address, a share
    assert len(h.core.jobs) > 400  # the flood is still waiting behind it


def test_logins_go_before_registrations_which_still_get_a_share() -> None:
    h = Harness(hold_jobs=True, hash_workers=1, hash_queue=1000, hash_queue_per_address=50)
    h.core.store.create_account("alice", h.passwords.hash(PW))
    for i in range(40):
        h.send(h.connect(host="10.6.6.6"), Register(id=h.id(), username=f"bot{i:03d}", password=PW))
    for i in range(8):
        h.send(h.connect(host=f"10.0.0.{i}"), login("alice" if i == 0 else f"nobody{i}", PW))
    kinds = []
    while h.jobs:
        job = h.jobs.pop(0)
        kinds.append("R" if isinstance(job, HashPassword) else "L")
        h.finish(job)
    # the first registration was running; then logins, one registration in four
    assert "".join(kinds[:12]) == "RLLLRLLLRLLR"
    assert kinds.count("L") == 8


def test_fair_queue_is_bounded_and_round_robin() -> None:
    queue: FairQueue[str, int] = FairQueue(max_total=5, max_per_key=3)
    assert all(queue.push("a", i) for i in range(3))
    assert not queue.push("a", 3)  # the key's share
    assert queue.push("b", 10) and queue.push("c", 20)
    assert not queue.push("d", 30)  # the total
    assert [queue.pop() for _ in range(6)] == [0, 10, 20, 1, 2, None]


def test_queued_work_for_a_closed_session_is_skipped() -> None:
    h = Harness(hold_jobs=True, hash_workers=1)
    first, second = h.connect(host="10.0.0.1"), h.connect(host="10.0.0.2")
    h.send(first, Register(id=1, username="one", password=PW))
    h.send(second, Register(id=2, username="two", password=PW))
    assert len(h.jobs) == 1 and len(h.core.jobs) == 1
    h.run(h.core.disconnect(second, h.now))
    h.finish(h.jobs.pop())
    assert h.jobs == [] and h.core.running == 0 and len(h.core.jobs) == 0


# ------------------------------------------------------------------ idle connections


def test_connections_that_do_not_log_in_are_pooled_and_the_oldest_idle_one_goes() -> None:
    h = Harness(max_anonymous=3, hold_jobs=True)
    busy = h.connect(host="10.0.0.9")
    h.send(busy, Register(id=1, username="slowpoke", password=PW))  # a hash pending: kept
    idle = [h.connect(host="10.6.6.6") for _ in range(2)]
    newcomer = h.connect(host="10.0.0.1")
    assert h.closed == {idle[0]}
    bye = h.out[idle[0]][-1]
    assert isinstance(bye, Bye) and bye.code == "too_many_connections"
    assert newcomer in h.core.sessions and busy in h.core.sessions
    h.finish(h.jobs.pop())
    h.send(newcomer, login("slowpoke", PW))
    h.finish(h.jobs.pop())
    assert isinstance(h.out[newcomer][-1], LoggedIn)  # logged in: out of the pool
    h.connect(host="10.6.6.6")
    h.connect(host="10.6.6.6")
    assert h.closed == {idle[0], busy}  # busy no more: the oldest idle one
    assert newcomer not in h.closed


def test_an_idle_connection_that_does_not_log_in_is_closed_after_the_login_timeout() -> None:
    h = Harness(login_timeout=5.0, hold_jobs=True)
    slow = h.connect()
    waiting = h.connect()
    h.send(waiting, Register(id=1, username="bob", password=PW))  # its hash waits: kept
    h.run(h.core.expire(4.9))
    assert not h.closed
    h.run(h.core.expire(5.0))
    assert h.closed == {slow}
    assert isinstance(h.out[slow][-1], Bye)


# ------------------------------------------------------------------ database faults


def test_a_login_whose_reads_fail_leaves_nobody_half_online(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = FaultyStore()
    h = Harness(store=store)  # type: ignore[arg-type]
    h.user("alice")
    h.req(1, Logout(id=h.id()))
    store.failing = {"rooms_of"}
    with caplog.at_level(logging.ERROR, logger="p2pchat.registry"):
        reply = h.req(h.connect(), login("alice", PW))
    assert code(reply) == "storage_error" and "nothing was changed" in reply.reason  # type: ignore[union-attr]
    assert "alice" not in h.core.online and h.core._online_keys == []
    [record] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert record.exc_info is None and "rooms_of" in record.getMessage()  # one line, no traceback
    store.failing = set()
    assert isinstance(h.req(h.connect(), login("alice", PW)), LoggedIn)  # not already_online


@pytest.mark.parametrize(
    ("failing", "make"),
    [
        ("add_member", lambda i: JoinRoom(id=i, room="lobby")),
        ("get_room", lambda i: JoinRoom(id=i, room="lobby")),
        ("leave_room", lambda i: LeaveRoom(id=i, room="mine")),
        ("create_room", lambda i: CreateRoom(id=i, room="new")),
        ("get_account", lambda i: Search(id=i, username="alice")),
        ("rooms_page", lambda i: ListRooms(id=i)),
        ("members_page", lambda i: ListMembers(id=i, room="lobby")),
        ("remove_member", lambda i: RemoveMember(id=i, room="mine", username="alice")),
    ],
)
def test_a_failing_store_answers_storage_error_with_nothing_applied(
    failing: str, make: object
) -> None:
    store = FaultyStore()
    h = Harness(store=store)  # type: ignore[arg-type]
    alice, bob = h.user("alice"), h.user("bob")
    h.req(alice, CreateRoom(id=h.id(), room="lobby"))
    h.req(bob, CreateRoom(id=h.id(), room="mine"))
    h.req(bob, AddMember(id=h.id(), room="mine", username="alice"))
    h.events(alice), h.events(bob)
    before = (dict(h.core.sessions[bob].rooms), {k: dict(v) for k, v in h.core._present.items()})
    store.failing = {failing}
    reply = h.req(bob, make(h.id()))  # type: ignore[operator]
    assert code(reply) == "storage_error"
    assert (dict(h.core.sessions[bob].rooms), h.core._present) == before
    assert h.events(alice) == [] and h.events(bob) == []
    store.failing = set()
    assert isinstance(h.req(bob, Search(id=h.id(), username="alice")), SearchResult)


def test_a_failing_registration_write_answers_storage_error() -> None:
    store = FaultyStore()
    h = Harness(store=store)  # type: ignore[arg-type]
    conn = h.connect()
    store.failing = {"create_account"}
    assert code(h.req(conn, Register(id=1, username="bob", password=PW))) == "storage_error"
    store.failing = set()
    assert isinstance(h.req(conn, Register(id=2, username="bob", password=PW)), Ok)


def test_logout_and_expiry_need_no_database() -> None:
    store = FaultyStore()
    h = Harness(store=store)  # type: ignore[arg-type]
    alice, bob = h.user("alice"), h.user("bob")
    h.req(alice, CreateRoom(id=h.id(), room="lobby"))
    h.req(bob, JoinRoom(id=h.id(), room="lobby"))
    h.events(alice)
    store.failing = {"*"}
    store.calls.clear()
    h.run(h.core.disconnect(bob, h.now))
    assert [(e.username, e.change) for e in h.events(alice)] == [("bob", "offline")]
    h.now = 100.0
    h.run(h.core.expire(h.now))
    assert alice in h.closed and "alice" not in h.core.online
    assert store.calls == []


# ------------------------------------------------------------------ what is kept in memory


@settings(derandomize=True, database=None, deadline=None, max_examples=60)
@given(st.lists(st.tuples(st.integers(0, 7), st.integers(0, 4), st.integers(0, 3)), max_size=60))
def test_online_counts_in_memory_match_the_store(ops: list[tuple[int, int, int]]) -> None:
    h = Harness(room_change_burst=10_000)
    names = ["ann", "ben", "cat", "dan"]
    conns: dict[str, int | None] = {n: None for n in names}
    rooms = ["r0", "r1", "r2"]
    owner = h.user("owner")
    for room in rooms:
        h.req(owner, CreateRoom(id=h.id(), room=room, private=room == "r2"))
    rng = random.Random(0)
    for op, who, where in ops:
        name, room = names[who % 4], rooms[where % 3]
        conn = conns[name]
        if op == 0 and conn is None:
            conns[name] = h.user(name, port=7000 + who)
        elif op == 1 and conn is not None:
            h.req(conn, Logout(id=h.id()))
            conns[name] = None
        elif op == 2 and conn is not None:
            h.req(conn, JoinRoom(id=h.id(), room=room))
        elif op == 3 and conn is not None:
            h.req(conn, LeaveRoom(id=h.id(), room=room))
        elif op == 4:
            h.req(owner, AddMember(id=h.id(), room=room, username=rng.choice(names)))
        elif op == 5:
            h.req(owner, RemoveMember(id=h.id(), room=room, username=name, ban=who % 2 == 1))
        elif op == 6 and conn is not None:
            h.run(h.core.disconnect(conn, h.now))
            conns[name] = None
    for room in rooms:
        members = h.core.store.members_page(room, "", 100) if h.core.store.get_room(room) else []
        online = sum(1 for m in members if m.username.casefold() in h.core.online)
        assert h.core.online_in(room) == online, room
        for m in members:
            session = h.core.online.get(m.username.casefold())
            if session is not None:
                assert room in session.rooms
    listing = h.req(owner, ListRooms(id=h.id(), mine=True))
    assert isinstance(listing, RoomList)
    for info in listing.rooms:
        assert info.online == h.core.online_in(info.room)


def test_listing_only_ones_own_rooms() -> None:
    h = Harness(max_owned_rooms=100, room_change_burst=1000)
    alice, bob = h.user("alice"), h.user("bob")
    for i in range(50):
        h.req(bob, CreateRoom(id=h.id(), room=f"other{i:02d}"))
    h.req(alice, CreateRoom(id=h.id(), room="mine"))
    h.req(alice, JoinRoom(id=h.id(), room="other07"))
    reply = h.req(alice, ListRooms(id=h.id(), mine=True))
    assert isinstance(reply, RoomList) and not reply.more
    assert [(r.room, r.member) for r in reply.rooms] == [("mine", True), ("other07", True)]
    everything = h.req(alice, ListRooms(id=h.id(), limit=10))
    assert isinstance(everything, RoomList) and everything.more and len(everything.rooms) == 10


def test_store_is_read_once_per_room_page_not_per_room() -> None:
    store = FaultyStore(SqliteStore(":memory:"))
    h = Harness(store=store, max_owned_rooms=300, room_change_burst=1000)  # type: ignore[arg-type]
    alice = h.user("alice")
    for i in range(120):
        h.req(alice, CreateRoom(id=h.id(), room=f"r{i:03d}"))
    store.calls.clear()
    h.req(alice, ListRooms(id=h.id()))
    assert store.calls == ["rooms_page"]
