"""The sans-IO registry core, fed requests and a clock by hand: no sockets, no sleeping."""

from __future__ import annotations

import pytest

from p2pchat.protocol.messages import (
    PROTOCOL_VERSION,
    AddMember,
    Bye,
    CreateRoom,
    Error,
    Hello,
    JoinRoom,
    LeaveRoom,
    ListMembers,
    ListRooms,
    ListUsers,
    LoggedIn,
    Login,
    Logout,
    MemberList,
    Ok,
    Ping,
    Register,
    RemoveMember,
    RoomList,
    Search,
    SearchResult,
    UserList,
    Welcome,
    heartbeat_mac,
    unb64,
)
from p2pchat.registry.core import HashPassword, VerifyPassword
from tests.registry.harness import PW, Harness, code
from tests.registry.harness import login as _login


@pytest.fixture
def h() -> Harness:
    return Harness()


# ------------------------------------------------------------------ hello


def test_requests_before_hello_are_refused(h: Harness) -> None:
    conn = h.connect(greet=False)
    assert code(h.req(conn, Search(id=1, username="x"))) == "hello_required"


def test_hello_with_another_version_is_refused(h: Harness) -> None:
    conn = h.connect(greet=False)
    assert code(h.req(conn, Hello(id=1, version=99))) == "unsupported_version"
    assert code(h.req(conn, Hello(id=3, version=1))) == "unsupported_version"  # before TLS
    reply = h.req(conn, Hello(id=2, version=PROTOCOL_VERSION))
    assert isinstance(reply, Welcome) and reply.udp_port == 15500 and reply.timeout == 60.0


# ------------------------------------------------------------------ accounts


def test_register_then_names_are_unique_regardless_of_case(h: Harness) -> None:
    conn = h.connect()
    assert isinstance(h.req(conn, Register(id=1, username="Alice", password=PW)), Ok)
    assert code(h.req(conn, Register(id=2, username="aLICE", password=PW))) == "name_taken"
    stored = h.core.store.get_account("alice")
    assert stored is not None and stored.username == "Alice"
    assert PW not in stored.password_hash and stored.password_hash.startswith("$argon2id$")


@pytest.mark.parametrize("name", ["", "a" * 33, "has space", "émile", "semi;colon", "x/y"])
def test_register_rejects_bad_usernames(h: Harness, name: str) -> None:
    conn = h.connect()
    assert code(h.req(conn, Register(id=1, username=name, password=PW))) == "invalid_username"


@pytest.mark.parametrize("password", ["", "short", "x" * 257])
def test_register_rejects_bad_passwords(h: Harness, password: str) -> None:
    conn = h.connect()
    assert code(h.req(conn, Register(id=1, username="bob", password=password))) == (
        "invalid_password"
    )
    assert h.core.store.get_account("bob") is None


def test_login_reply_carries_session_heartbeat_key_udp_port_and_address(h: Harness) -> None:
    conn = h.connect(host="10.1.2.3")
    h.req(conn, Register(id=1, username="alice", password=PW))
    reply = h.req(conn, Login(id=2, username="ALICE", password=PW, port=7001))
    assert isinstance(reply, LoggedIn)
    assert (reply.username, reply.host, reply.port, reply.udp_port) == (
        "alice",
        "10.1.2.3",
        7001,
        15500,
    )
    assert reply.session == "tok1" and len(unb64(reply.heartbeat_key)) == 32
    assert reply.cert is None  # no key in the login: nothing to certify


def test_login_may_advertise_another_address_only_where_allowed() -> None:
    h = Harness(allow_advertise=True)
    conn = h.connect(host="10.1.2.3")
    h.req(conn, Register(id=1, username="alice", password=PW))
    reply = h.req(conn, _login("alice", PW, 7001, host="192.0.2.9"))
    assert isinstance(reply, LoggedIn) and reply.host == "192.0.2.9"
    bad = h.req(h.connect(), _login("alice", PW, 1, host="a b"))
    assert code(bad) == "bad_request"


def test_by_default_a_peer_publishes_the_address_it_comes_from(h: Harness) -> None:
    conn = h.connect(host="10.1.2.3")
    h.req(conn, Register(id=1, username="alice", password=PW))
    refused = h.req(conn, _login("alice", PW, 7001, host="192.0.2.9"))
    assert code(refused) == "advertise_not_allowed"
    assert isinstance(refused, Error) and "10.1.2.3" in refused.reason
    assert "alice" not in h.core.online
    for same in ("10.1.2.3", "::ffff:10.1.2.3"):  # naming the address it comes from is fine
        conn = h.connect(host="10.1.2.3")
        reply = h.req(conn, _login("alice", PW, 7001, host=same))
        assert isinstance(reply, LoggedIn) and reply.host == same
        h.req(conn, Logout(id=h.id()))


def test_login_errors(h: Harness) -> None:
    h.user("alice")
    conn = h.connect()
    unknown = h.req(conn, Login(id=1, username="nobody", password=PW, port=1))
    wrong = h.req(conn, Login(id=2, username="alice", password="wrong!", port=1))
    assert unknown == Error(id=1, code=wrong.code, reason=wrong.reason)  # type: ignore[union-attr]
    assert code(wrong) == "wrong_password"
    assert code(h.req(conn, Login(id=3, username="alice", password=PW, port=1))) == (
        "already_online"
    )
    assert code(h.req(conn, Login(id=4, username="alice", password=PW, port=0))) == "bad_request"


def test_a_session_logs_in_once(h: Harness) -> None:
    conn = h.user("alice")
    h.req(conn, Register(id=h.id(), username="bob", password=PW))
    again = h.req(conn, Login(id=h.id(), username="bob", password=PW, port=1))
    assert code(again) == "already_logged_in"


def test_repeated_wrong_passwords_are_slowed_down_per_account_and_address(h: Harness) -> None:
    h.user("alice")
    h.req(1, Logout(id=h.id()))
    for _ in range(3):  # the first three failures are free
        reply = h.req(h.connect(host="10.0.0.66"), _login("alice", "wrong-pw"))
        assert code(reply) == "wrong_password"
    h.req(h.connect(host="10.0.0.66"), _login("alice", "wrong-pw"))  # fourth: locked 1 s
    limited = h.req(h.connect(host="10.0.0.66"), _login("alice", PW))
    assert code(limited) == "rate_limited"
    assert isinstance(limited, Error) and limited.retry_after == pytest.approx(1.0)
    # the owner, elsewhere, is not locked out by the guesser
    assert isinstance(h.req(h.connect(host="10.0.0.1"), _login("alice", PW)), LoggedIn)
    h.req(h.core.online["alice"].conn, Logout(id=h.id()))
    h.now += 1.01
    assert isinstance(h.req(h.connect(host="10.0.0.66"), _login("alice", PW)), LoggedIn)


def test_repeated_failures_from_one_address_are_slowed_down(h: Harness) -> None:
    conn = h.connect(host="10.9.9.9")
    for i in range(11):
        h.req(conn, _login(f"nobody{i}", PW))
    assert code(h.req(conn, _login("nobody", PW))) == "rate_limited"
    h.user("alice", host="10.0.0.1")  # other addresses are not affected


# ------------------------------------------------------------------ presence and heartbeats


def test_missing_heartbeats_disconnect_after_the_timeout(h: Harness) -> None:
    alice, bob = h.user("alice"), h.user("bob", port=7002)
    h.req(alice, CreateRoom(id=h.id(), room="lobby"))
    h.req(alice, AddMember(id=h.id(), room="lobby", username="bob"))
    h.events(alice)
    h.now = 50.0
    assert h.core.heartbeat(h.ping(alice), h.now)  # alice pings; bob does not
    h.run(h.core.expire(59.9))
    assert not h.closed
    h.run(h.core.expire(60.0))
    assert h.closed == {bob}
    assert isinstance(h.out[bob][-1], Bye) and h.out[bob][-1].code == "timeout"
    assert [(e.username, e.change) for e in h.events(alice)] == [("bob", "offline")]
    h.run(h.core.expire(109.9))
    assert h.closed == {bob}
    h.run(h.core.expire(110.0))
    assert h.closed == {bob, alice}
    assert "alice" not in h.core.online and "bob" not in h.core.online


def test_any_request_counts_as_being_heard_from(h: Harness) -> None:
    conn = h.user("alice")
    h.now = 59.0
    h.req(conn, Search(id=h.id(), username="alice"))
    h.run(h.core.expire(61.0))
    assert not h.closed


def test_pings_for_unknown_or_ended_sessions_are_ignored(h: Harness) -> None:
    conn = h.user("alice")
    key = unb64(h.logged_in(conn).heartbeat_key)
    assert not h.core.heartbeat(
        Ping(session="forged", seq=1, mac=heartbeat_mac(key, "forged", 1)), 1.0
    )
    ping = h.ping(conn)
    h.req(conn, Logout(id=h.id()))
    assert not h.core.heartbeat(ping, 2.0)  # the session it named has ended


def test_ping_over_tcp_needs_the_sessions_mac(h: Harness) -> None:
    conn, other = h.user("alice"), h.user("bob")
    assert isinstance(h.req(conn, h.ping(conn, request_id=5)), Ok)
    assert code(h.req(conn, h.ping(other, request_id=6))) == "not_logged_in"  # bob's session
    forged = Ping(id=7, session="tok1", seq=99, mac="0" * 64)
    assert code(h.req(conn, forged)) == "not_logged_in"
    assert isinstance(h.req(conn, h.ping(conn, request_id=8)), Ok)


def test_next_deadline_follows_connections_and_logins(h: Harness) -> None:
    assert h.core.next_deadline() is None
    h.now = 5.0
    h.user("alice")
    assert h.core.next_deadline() == 25.0  # the deadline to log in, now met
    h.run(h.core.expire(25.0))
    assert not h.closed
    assert h.core.next_deadline() == 65.0


def test_disconnect_logs_out_and_tells_room_members(h: Harness) -> None:
    alice, bob = h.user("alice"), h.user("bob", port=7002)
    h.req(alice, CreateRoom(id=h.id(), room="lobby"))
    h.req(bob, JoinRoom(id=h.id(), room="lobby"))
    h.events(alice)
    h.run(h.core.disconnect(bob, 1.0))
    assert [(e.room, e.username, e.change) for e in h.events(alice)] == [
        ("lobby", "bob", "offline")
    ]
    assert h.core.store.get_account("bob") is not None
    assert isinstance(h.req(h.connect(), _login("bob", PW)), LoggedIn)


def test_login_tells_room_members_with_the_address(h: Harness) -> None:
    alice = h.user("alice")
    bob = h.user("bob", host="10.0.0.2", port=7002)
    h.req(alice, CreateRoom(id=h.id(), room="lobby"))
    h.req(bob, JoinRoom(id=h.id(), room="lobby"))
    h.req(bob, Logout(id=h.id()))
    h.events(alice)
    h.req(bob, _login("bob", PW, port=7003))
    [event] = h.events(alice)
    assert (event.change, event.host, event.port) == ("online", "10.0.0.2", 7003)
    assert h.events(bob) == []


# ------------------------------------------------------------------ search and users


def test_search(h: Harness) -> None:
    alice = h.user("alice", host="10.0.0.5", port=7005)
    conn = h.user("dave")
    h.req(conn, Register(id=h.id(), username="carol", password=PW))
    online = h.req(conn, Search(id=1, username="ALICE"))
    assert online == SearchResult(id=1, username="alice", online=True, host="10.0.0.5", port=7005)
    offline = h.req(conn, Search(id=2, username="carol"))
    assert offline == SearchResult(id=2, username="carol", online=False)
    assert code(h.req(conn, Search(id=3, username="zed"))) == "no_such_user"
    assert code(h.req(conn, Search(id=4, username="bad name"))) == "no_such_user"
    assert alice


def test_users_lists_online_users_in_pages(h: Harness) -> None:
    for i in range(5):
        h.user(f"u{i}", port=7000 + i)
    conn = 1  # u0's session
    page = h.req(conn, ListUsers(id=1, limit=2))
    assert isinstance(page, UserList) and page.more
    assert [u.username for u in page.users] == ["u0", "u1"]
    rest = h.req(conn, ListUsers(id=2, after="u1", limit=10))
    assert isinstance(rest, UserList) and not rest.more
    assert [u.username for u in rest.users] == ["u2", "u3", "u4"]
    assert all(u.host is None and u.port is None for u in page.users + rest.users)


# ------------------------------------------------------------------ rooms


def test_everything_but_hello_register_login_needs_a_login(h: Harness) -> None:
    conn = h.connect()
    for msg in (
        CreateRoom(id=1, room="r"),
        JoinRoom(id=2, room="r"),
        LeaveRoom(id=3, room="r"),
        AddMember(id=4, room="r", username="x"),
        RemoveMember(id=5, room="r", username="x"),
        Logout(id=6),
        Search(id=7, username="x"),
        ListUsers(id=8),
        ListRooms(id=9),
        ListMembers(id=10, room="r"),
    ):
        assert code(h.req(conn, msg)) == "not_logged_in"


def test_create_room(h: Harness) -> None:
    alice = h.user("alice")
    assert isinstance(h.req(alice, CreateRoom(id=1, room="Lobby")), Ok)
    assert code(h.req(alice, CreateRoom(id=2, room="lobby"))) == "room_exists"
    assert code(h.req(alice, CreateRoom(id=3, room="no room"))) == "invalid_room"
    members = h.req(alice, ListMembers(id=4, room="LOBBY"))
    assert isinstance(members, MemberList) and members.room == "Lobby"
    assert [(m.username, m.owner, m.online) for m in members.members] == [("alice", True, True)]


def test_join_and_leave_public_room_with_events(h: Harness) -> None:
    alice, bob = h.user("alice"), h.user("bob", port=7002)
    h.req(alice, CreateRoom(id=h.id(), room="lobby"))
    assert isinstance(h.req(bob, JoinRoom(id=h.id(), room="lobby")), Ok)
    assert code(h.req(bob, JoinRoom(id=h.id(), room="lobby"))) == "already_member"
    assert code(h.req(bob, JoinRoom(id=h.id(), room="nowhere"))) == "no_such_room"
    [joined] = h.events(alice)
    assert (joined.username, joined.change, joined.port) == ("bob", "joined", 7002)
    assert isinstance(h.req(bob, LeaveRoom(id=h.id(), room="lobby")), Ok)
    assert code(h.req(bob, LeaveRoom(id=h.id(), room="lobby"))) == "not_a_member"
    assert [(e.username, e.change) for e in h.events(alice)] == [("bob", "left")]
    assert h.events(bob) == []


def test_private_rooms_are_entered_by_being_added(h: Harness) -> None:
    alice, bob, carol = h.user("alice"), h.user("bob"), h.user("carol")
    h.req(alice, CreateRoom(id=h.id(), room="secret", private=True))
    assert code(h.req(bob, JoinRoom(id=h.id(), room="secret"))) == "no_such_room"
    assert code(h.req(alice, JoinRoom(id=h.id(), room="secret"))) == "already_member"
    assert code(h.req(bob, ListMembers(id=h.id(), room="secret"))) == "no_such_room"
    assert code(h.req(bob, AddMember(id=h.id(), room="secret", username="carol"))) == (
        "no_such_room"
    )
    assert isinstance(h.req(alice, AddMember(id=h.id(), room="secret", username="bob")), Ok)
    [added] = h.events(bob)  # bob hears that he was added
    assert (added.room, added.username, added.change, added.by) == (
        "secret",
        "bob",
        "added",
        "alice",
    )
    # a member the owner did not allow may not add; one the owner allowed may
    assert code(h.req(bob, AddMember(id=h.id(), room="secret", username="carol"))) == ("not_owner")
    allow = AddMember(id=h.id(), room="secret", username="bob", may_add=True)
    assert isinstance(h.req(alice, allow), Ok)
    assert isinstance(h.req(bob, AddMember(id=h.id(), room="secret", username="carol")), Ok)
    assert code(h.req(bob, AddMember(id=h.id(), room="secret", username="carol"))) == (
        "already_member"
    )
    assert code(h.req(bob, AddMember(id=h.id(), room="secret", username="zed"))) == "no_such_user"
    assert [e.change for e in h.events(carol)] == ["added"]
    assert [(e.username, e.change) for e in h.events(alice)] == [
        ("bob", "added"),
        ("carol", "added"),
    ]


def test_only_the_owner_removes_members(h: Harness) -> None:
    alice, bob, carol = h.user("alice"), h.user("bob"), h.user("carol")
    h.req(alice, CreateRoom(id=h.id(), room="lobby"))
    h.req(bob, JoinRoom(id=h.id(), room="lobby"))
    h.req(carol, JoinRoom(id=h.id(), room="lobby"))
    h.events(alice), h.events(bob), h.events(carol)
    assert code(h.req(bob, RemoveMember(id=h.id(), room="lobby", username="carol"))) == "not_owner"
    assert code(h.req(alice, RemoveMember(id=h.id(), room="lobby", username="alice"))) == (
        "bad_request"
    )
    assert isinstance(h.req(alice, RemoveMember(id=h.id(), room="lobby", username="carol")), Ok)
    assert [(e.username, e.change, e.by) for e in h.events(carol)] == [
        ("carol", "removed", "alice")
    ]
    assert [(e.username, e.change) for e in h.events(bob)] == [("carol", "removed")]
    assert code(h.req(alice, RemoveMember(id=h.id(), room="lobby", username="carol"))) == (
        "not_a_member"
    )
    assert [m.username for m in h.core.store.members_page("lobby", "", 10)] == ["alice", "bob"]


def test_owner_leaving_hands_the_room_over_and_the_last_one_out_deletes_it(h: Harness) -> None:
    alice, bob = h.user("alice"), h.user("bob")
    h.req(alice, CreateRoom(id=h.id(), room="lobby"))
    h.req(bob, JoinRoom(id=h.id(), room="lobby"))
    h.req(alice, LeaveRoom(id=h.id(), room="lobby"))
    room = h.core.store.get_room("lobby")
    assert room is not None and room.owner == "bob"
    h.req(bob, LeaveRoom(id=h.id(), room="lobby"))
    assert h.core.store.get_room("lobby") is None


def test_rooms_lists_public_rooms_and_own_private_ones_with_counts(h: Harness) -> None:
    alice, bob = h.user("alice"), h.user("bob")
    h.req(alice, CreateRoom(id=h.id(), room="lobby"))
    h.req(alice, CreateRoom(id=h.id(), room="secret", private=True))
    h.req(bob, JoinRoom(id=h.id(), room="lobby"))
    h.req(bob, Logout(id=h.id()))
    mine = h.req(alice, ListRooms(id=h.id()))
    assert isinstance(mine, RoomList)
    assert [(r.room, r.private, r.members, r.online, r.member) for r in mine.rooms] == [
        ("lobby", False, 2, 1, True),
        ("secret", True, 1, 1, True),
    ]
    other = h.req(h.user("carol"), ListRooms(id=h.id()))
    assert isinstance(other, RoomList)
    assert [(r.room, r.member) for r in other.rooms] == [("lobby", False)]


def test_members_show_online_state_and_addresses(h: Harness) -> None:
    alice = h.user("alice", host="10.0.0.1", port=7001)
    bob = h.user("bob", host="10.0.0.2", port=7002)
    h.req(alice, CreateRoom(id=h.id(), room="lobby"))
    h.req(bob, JoinRoom(id=h.id(), room="lobby"))
    h.req(bob, Logout(id=h.id()))
    reply = h.req(alice, ListMembers(id=h.id(), room="lobby"))
    assert isinstance(reply, MemberList)
    assert [(m.username, m.online, m.host, m.port) for m in reply.members] == [
        ("alice", True, "10.0.0.1", 7001),
        ("bob", False, None, None),
    ]
    # to a non-member, names and online state only: addresses go to those who link
    outsider = h.req(h.user("carol"), ListMembers(id=h.id(), room="lobby"))
    assert isinstance(outsider, MemberList)
    assert [(m.username, m.online, m.host, m.port) for m in outsider.members] == [
        ("alice", True, None, None),
        ("bob", False, None, None),
    ]


def test_members_are_paged(h: Harness) -> None:
    alice = h.user("alice")
    h.req(alice, CreateRoom(id=h.id(), room="big"))
    for i in range(5):
        h.req(h.user(f"m{i}"), JoinRoom(id=h.id(), room="big"))
    page = h.req(alice, ListMembers(id=h.id(), room="big", limit=4))
    assert isinstance(page, MemberList) and page.more
    rest = h.req(alice, ListMembers(id=h.id(), room="big", after=page.members[-1].username))
    assert isinstance(rest, MemberList) and not rest.more
    names = [m.username for m in page.members + rest.members]
    assert names == ["alice", "m0", "m1", "m2", "m3", "m4"]


def test_a_10000_member_room_lists_in_pages_of_at_most_200(h: Harness) -> None:
    """A page is at most ``LIST_LIMIT`` (200) members whatever the limit asked, so a reply
    always fits in a frame; ``after`` walks the whole room, each member once."""
    names = [f"m{i:05d}" for i in range(10_000)]
    store, digest = h.core.store, h.passwords.hash(PW)
    for name in names:
        store.create_account(name, digest)
    alice = h.user("alice")
    store.create_room("big", False, "alice")
    for name in names:
        store.add_member("big", name)
    online = {"m00007", "m09999"}
    for name in online:
        h.user(name)
    h.req(alice, Logout(id=h.id()))
    h.req(alice, _login("alice", PW))  # so that the session knows its new room
    pages: list[MemberList] = []
    after: str | None = None
    while not pages or pages[-1].more:
        page = h.req(alice, ListMembers(id=h.id(), room="BIG", after=after, limit=10_000))
        assert isinstance(page, MemberList)
        pages.append(page)
        after = page.members[-1].username.upper()  # any casing
    assert [len(p.members) for p in pages] == [200] * 50 + [1]
    members = [m for p in pages for m in p.members]
    assert [m.username for m in members] == ["alice", *names]
    assert {m.username for m in members if m.online} == {"alice", *online}
    assert all(m.port is not None for m in members if m.online)


def test_sessions_that_never_log_in_are_closed_when_idle(h: Harness) -> None:
    idle = h.connect()
    busy = h.connect()
    h.now = 10.0
    h.req(busy, Register(id=h.id(), username="bob", password=PW))
    h.run(h.core.expire(20.0))
    assert h.closed == {idle}
    assert isinstance(h.out[idle][-1], Bye)
    h.req(busy, _login("bob", PW))
    h.run(h.core.expire(71.0))  # logged in now: the heartbeat rule applies instead
    assert h.closed == {idle, busy}
    h.now = 200.0
    assert isinstance(h.req(h.connect(), _login("bob", PW)), LoggedIn)


def test_registrations_from_one_address_are_rate_limited() -> None:
    h = Harness()
    h.core.registrations.burst = 3
    conn = h.connect(host="10.5.5.5")
    for i in range(3):
        assert isinstance(h.req(conn, Register(id=h.id(), username=f"n{i}", password=PW)), Ok)
    limited = h.req(conn, Register(id=h.id(), username="n3", password=PW))
    assert code(limited) == "rate_limited"
    assert isinstance(limited, Error) and limited.retry_after == pytest.approx(1.0)
    other = h.connect(host="10.5.5.6")
    assert isinstance(h.req(other, Register(id=h.id(), username="n4", password=PW)), Ok)
    h.now += 1.0
    assert isinstance(h.req(conn, Register(id=h.id(), username="n3", password=PW)), Ok)


def test_parallel_guesses_are_throttled_before_their_hashes_finish(h: Harness) -> None:
    h.user("alice")
    h.req(1, Logout(id=h.id()))
    pending = []
    for _ in range(5):  # five guesses in flight at once, on five sessions
        conn = h.connect(host="10.0.1.1")
        actions = h.core.handle(conn, _login("alice", "wrong-pw"), h.now)
        pending.extend(a for a in actions if isinstance(a, VerifyPassword))
        h.run([a for a in actions if not isinstance(a, VerifyPassword)])
    assert len(pending) < 5  # the later ones were refused before any hash ran
    refused = [c for c in h.out if any(getattr(m, "code", "") == "rate_limited" for m in h.out[c])]
    assert refused
    h.run(pending)


def test_an_error_while_hashing_frees_the_session(h: Harness) -> None:
    conn = h.connect()
    actions = h.core.handle(conn, Register(id=9, username="bob", password=PW), h.now)
    assert isinstance(actions[0], HashPassword)
    h.run(h.core.auth_failed(conn, 9))
    assert code(h.out[conn][-1]) == "internal"
    assert isinstance(h.req(conn, Register(id=10, username="bob", password=PW)), Ok)


def test_long_names_are_cut_short_in_error_reasons(h: Harness) -> None:
    conn = h.user("alice")
    reply = h.req(conn, Search(id=1, username="x" * 5000))
    assert isinstance(reply, Error) and len(reply.reason) < 100


def test_a_session_that_logs_out_falls_under_the_idle_rule_again(h: Harness) -> None:
    conn = h.user("alice")
    h.now = 100.0  # past the first idle deadline, while logged in
    assert h.core.heartbeat(h.ping(conn), h.now)
    h.run(h.core.expire(h.now))
    h.req(conn, Logout(id=h.id()))  # at 100: 20 s to log in again, or to say something
    h.run(h.core.expire(119.0))
    assert not h.closed
    h.run(h.core.expire(120.0))
    assert h.closed == {conn}


def test_successful_logins_never_lock_their_address(h: Harness) -> None:
    conn = h.connect(host="10.3.3.3")
    for i in range(15):
        h.req(conn, Register(id=h.id(), username=f"s{i}", password=PW))
    for i in range(15):
        session = h.connect(host="10.3.3.3")
        assert isinstance(h.req(session, _login(f"s{i}", PW)), LoggedIn), i
