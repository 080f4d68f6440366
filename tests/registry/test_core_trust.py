"""Who is who, on the registry's core (issue 10): certificates at login, ``resume`` with a
certificate instead of the password, ``renew``, heartbeats that cannot be forged or replayed,
and the keys that member lists, events and search carry. A clock moved by hand; no sockets."""

from __future__ import annotations

import pytest

from p2pchat.protocol.messages import (
    AddMember,
    Bye,
    CertificateReply,
    CreateRoom,
    Error,
    JoinRoom,
    LeaveRoom,
    ListMembers,
    LoggedIn,
    Login,
    Logout,
    MemberList,
    Ping,
    Renew,
    Resume,
    Search,
    SearchResult,
    b64,
    heartbeat_mac,
    unb64,
)
from p2pchat.trust.certs import USER_LIFETIME, Authority, TrustError, read_user_cert
from p2pchat.trust.signing import Signer
from tests.registry.harness import PW, WALL, Harness, code

# ------------------------------------------------------------------ certificates at login


def test_a_login_with_a_key_gets_a_certificate_for_that_user_and_key() -> None:
    h = Harness()
    key = Signer()
    h.register(h.connect(), "Alice")
    h.now = 10.0
    conn = h.connect()
    reply = h.req(
        conn, Login(id=1, username="ALICE", password=PW, port=7000, key=b64(key.public_key))
    )
    assert isinstance(reply, LoggedIn) and reply.cert is not None
    cert = read_user_cert(unb64(reply.cert), h.ca_key, h.wall)
    assert (cert.username, cert.public_key) == ("Alice", key.public_key)  # the account's name
    assert cert.not_after == pytest.approx(WALL + 10.0 + USER_LIFETIME, abs=1.0)
    account = h.core.store.get_account("alice")
    assert account is not None and account.public_key == key.public_key  # the current key
    with pytest.raises(TrustError):  # another registry's CA does not vouch for it
        read_user_cert(unb64(reply.cert), Harness().ca_key, h.wall)


def test_a_login_from_another_machine_replaces_the_key() -> None:
    h = Harness()
    first, second = Signer(), Signer()
    conn = h.user("alice", key=first)
    old_cert = unb64(h.logged_in(conn).cert or "")
    h.req(conn, Logout(id=h.id()))
    conn = h.user("alice", key=second)
    account = h.core.store.get_account("alice")
    assert account is not None and account.public_key == second.public_key
    h.req(conn, Logout(id=h.id()))
    # the first machine's certificate, still within its day, no longer resumes
    stale = h.connect(cert=old_cert)
    assert code(h.req(stale, Resume(id=h.id(), port=7000))) == "cert_refused"


def test_a_login_without_a_key_keeps_the_accounts_key_and_gets_no_certificate() -> None:
    h = Harness()
    key = Signer()
    h.req(h.user("alice", key=key), Logout(id=h.id()))
    conn = h.user("alice")
    assert h.logged_in(conn).cert is None
    assert h.core.store.get_account("alice").public_key == key.public_key  # type: ignore[union-attr]


# ------------------------------------------------------------------ resume


def _restarted(h: Harness) -> Harness:
    """The same registry after a restart: same database and CA, nobody online."""
    again = Harness(store=h.core.store, authority=h.authority, hold_jobs=True)
    again.now = h.now
    return again


def test_resume_after_a_restart_needs_no_password_hash_and_restores_presence_and_events() -> None:
    h = Harness()
    key = Signer()
    alice = h.user("alice", host="10.0.0.5", port=7005, key=key)
    bob = h.user("bob", host="10.0.0.6", port=7006)
    h.req(alice, CreateRoom(id=h.id(), room="lobby"))
    h.req(bob, JoinRoom(id=h.id(), room="lobby"))
    cert = unb64(h.logged_in(alice).cert or "")

    h = _restarted(h)  # (password jobs are held: a hash would show in h.jobs)
    h.now += 3600.0
    bob = h.connect(host="10.0.0.6")
    h.send(bob, Login(id=h.id(), username="bob", password=PW, port=7006))
    h.finish(h.jobs.pop())
    assert isinstance(h.logged_in(bob), LoggedIn)
    alice = h.connect(host="10.0.0.5", cert=cert)
    reply = h.req(alice, Resume(id=h.id(), port=7005))
    assert h.jobs == [] and len(h.core.jobs) == 0 and h.core.running == 0  # no hash at all
    assert isinstance(reply, LoggedIn)
    assert (reply.username, reply.host, reply.port, reply.ticket) == (
        "alice",
        "10.0.0.5",
        7005,
        None,
    )
    renewed = read_user_cert(unb64(reply.cert or ""), h.ca_key, h.wall)  # a fresh certificate
    assert renewed.public_key == key.public_key and renewed.not_after > h.wall + USER_LIFETIME - 5
    # presence: online, in her rooms, and her room's members are told, with her key
    assert "alice" in h.core.online and h.core.online_in("lobby") == 2
    [online] = h.events(bob)
    assert (online.username, online.change, online.host, online.port, online.key) == (
        "alice",
        "online",
        "10.0.0.5",
        7005,
        b64(key.public_key),
    )
    # events: she hears of her rooms again, and her heartbeats count
    h.req(bob, LeaveRoom(id=h.id(), room="lobby"))
    assert [(e.username, e.change) for e in h.events(alice)] == [("bob", "left")]
    assert h.core.heartbeat(h.ping(alice), h.now)


def _other_ca_cert(h: Harness, key: Signer) -> bytes:
    return Authority.create(h.wall).issue("alice", key.public_key, h.wall)


@pytest.mark.parametrize(
    ("case", "make", "why"),
    [
        ("no certificate", lambda h, key: None, "needs this registry's certificate"),
        ("another registry's", _other_ca_cert, "not issued by this registry"),
        (
            "expired",
            lambda h, key: h.authority.issue("alice", key.public_key, h.wall - 2 * 86400, 86400),
            "alice has expired",
        ),
        (
            "not yet valid",
            lambda h, key: h.authority.issue("alice", key.public_key, h.wall + 3600),
            "not yet valid",
        ),
        (
            "for another key",
            lambda h, key: h.authority.issue("alice", Signer().public_key, h.wall),
            "no longer alice's",
        ),
        (
            "for another user",
            lambda h, key: h.authority.issue("bob", key.public_key, h.wall),
            "no longer bob's",
        ),
        ("the registry's own", lambda h, key: h.authority.cert, "not a user certificate"),
        ("junk", lambda h, key: b"\x30\x03\x02\x01\x01", "not a certificate"),
    ],
)
def test_resume_is_refused_without_a_valid_certificate_for_the_current_key(
    case: str, make: object, why: str
) -> None:
    h = Harness(hold_jobs=True)
    key = Signer()
    h.core.store.create_account("alice", h.passwords.hash(PW))
    h.core.store.create_account("bob", h.passwords.hash(PW))
    h.core.store.set_key("alice", key.public_key)
    h.core.store.set_key("bob", Signer().public_key)
    cert = make(h, key)  # type: ignore[operator]
    conn = h.connect(cert=cert)
    refused = h.req(conn, Resume(id=h.id(), port=7000))
    assert code(refused) == "cert_refused", case
    assert isinstance(refused, Error) and "log in" in refused.reason and why in refused.reason
    assert h.core.online == {} and h.jobs == []
    # and the password still works on that connection
    h.send(conn, Login(id=h.id(), username="alice", password=PW, port=7000))
    h.finish(h.jobs.pop())
    assert isinstance(h.logged_in(conn), LoggedIn)


def test_a_valid_certificate_resumes_only_once_at_a_time_and_only_where_allowed() -> None:
    h = Harness()
    key = Signer()
    cert = unb64(h.logged_in(h.user("alice", key=key)).cert or "")
    again = h.connect(cert=cert)
    assert code(h.req(again, Resume(id=h.id(), port=7000))) == "already_online"
    h.run(h.core.disconnect(1, h.now))
    far = h.req(again, Resume(id=h.id(), port=7000, host="192.0.2.9"))
    assert code(far) == "advertise_not_allowed"
    assert isinstance(h.req(again, Resume(id=h.id(), port=7000)), LoggedIn)
    assert code(h.req(again, Resume(id=h.id(), port=7000))) == "already_logged_in"


def test_a_certificate_shown_then_outlived_by_a_new_key_is_refused_at_resume() -> None:
    """The check is against the key the account has when ``resume`` comes, not when the
    connection was made."""
    h = Harness()
    key = Signer()
    cert = unb64(h.logged_in(h.user("alice", key=key)).cert or "")
    h.run(h.core.disconnect(1, h.now))
    waiting = h.connect(cert=cert)
    h.req(h.user("alice", key=Signer()), Logout(id=h.id()))  # meanwhile, another machine
    assert code(h.req(waiting, Resume(id=h.id(), port=7000))) == "cert_refused"


# ------------------------------------------------------------------ renew


def test_renew_gives_a_fresh_certificate_for_the_same_key() -> None:
    h = Harness()
    key = Signer()
    conn = h.user("alice", key=key)
    first = read_user_cert(unb64(h.logged_in(conn).cert or ""), h.ca_key, h.wall)
    h.now += 20 * 3600.0
    reply = h.req(conn, Renew(id=h.id()))
    assert isinstance(reply, CertificateReply)
    fresh = read_user_cert(unb64(reply.cert), h.ca_key, h.wall)
    assert (fresh.username, fresh.public_key) == ("alice", key.public_key)
    assert fresh.not_after == pytest.approx(first.not_after + 20 * 3600.0, abs=1.0)
    assert fresh.der != first.der
    keyless = h.user("bob")
    assert code(h.req(keyless, Renew(id=h.id()))) == "cert_refused"
    assert code(h.req(h.connect(), Renew(id=h.id()))) == "not_logged_in"


# ------------------------------------------------------------------ heartbeats


def test_a_replayed_or_forged_heartbeat_does_not_keep_a_silent_user_online() -> None:
    """alice pings three times, then falls silent at t=30; an eavesdropper replays her pings
    every 1.5 s and forges others. She goes offline at t=90, the timeout after her last real
    ping, as if nobody had sent anything; bob, who pings, stays."""
    h = Harness(timeout=60.0)
    alice, bob = h.user("alice"), h.user("bob")
    captured: list[Ping] = []
    for t in (10.0, 20.0, 30.0):
        h.now = t
        captured.append(h.ping(alice))
        assert h.core.heartbeat(captured[-1], h.now)
    session = captured[-1].session
    bob_key = unb64(h.logged_in(bob).heartbeat_key)
    forged = [
        Ping(session=session, seq=2**53, mac="0" * 64),  # a seq far ahead, a made-up MAC
        Ping(session=session, seq=4, mac=captured[-1].mac),  # the next seq, a used MAC
        Ping(session=session, seq=4, mac=heartbeat_mac(bob_key, session, 4)),  # another's key
        Ping(session="tok9", seq=4, mac=captured[-1].mac),
    ]
    accepted = 0
    t = 30.0
    while t < 120.0:
        t += 1.5
        h.now = t
        for ping in [*captured, *forged]:
            accepted += h.core.heartbeat(ping, t)
        assert h.core.heartbeat(h.ping(bob), t)
        h.run(h.core.expire(t))
        if alice in h.closed:
            break
    assert accepted == 0
    assert h.closed == {alice} and t == pytest.approx(90.0, abs=1.5)
    assert isinstance(h.out[alice][-1], Bye) and h.out[alice][-1].code == "timeout"
    assert "alice" not in h.core.online and "bob" in h.core.online


def test_a_forged_sequence_number_does_not_block_the_real_pings_that_follow() -> None:
    h = Harness()
    alice = h.user("alice")
    first = h.ping(alice)
    assert h.core.heartbeat(first, 1.0)
    assert not h.core.heartbeat(Ping(session=first.session, seq=2**53, mac=first.mac), 2.0)
    assert h.core.heartbeat(h.ping(alice), 3.0)  # seq 2: the forgery moved nothing
    assert not h.core.heartbeat(h.ping(alice, seq=2), 4.0)  # but seq 2 again is a replay
    assert h.core.heartbeat(h.ping(alice, seq=10), 5.0)  # gaps are fine (lost datagrams)
    assert not h.core.heartbeat(h.ping(alice, seq=9), 6.0)  # late ones are not


def test_a_new_login_starts_a_new_session_with_a_new_key() -> None:
    h = Harness()
    conn = h.user("alice")
    old = h.logged_in(conn)
    h.req(conn, Logout(id=h.id()))
    h.req(conn, Login(id=h.id(), username="alice", password=PW, port=7000))
    new = h.logged_in(conn)
    assert (new.session, new.heartbeat_key) != (old.session, old.heartbeat_key)
    replay = Ping(
        session=new.session, seq=1, mac=heartbeat_mac(unb64(old.heartbeat_key), new.session, 1)
    )
    assert not h.core.heartbeat(replay, h.now)  # the last session's key is worth nothing
    assert h.core.heartbeat(h.ping(conn, seq=1), h.now)


# ------------------------------------------------------------------ keys in lists and events


def test_members_events_and_search_carry_the_current_key_and_since() -> None:
    h = Harness()
    alice_key, bob_key, carol_key = Signer(), Signer(), Signer()
    alice = h.user("alice", key=alice_key)
    bob = h.user("bob", key=bob_key)
    h.req(h.user("carol", key=carol_key), Logout(id=h.id()))  # carol is offline
    h.now = 100.0
    h.req(alice, CreateRoom(id=h.id(), room="lobby"))
    h.now = 200.0
    h.req(bob, JoinRoom(id=h.id(), room="lobby"))
    [joined] = h.events(alice)
    assert (joined.change, joined.key, joined.since) == ("joined", b64(bob_key.public_key), h.wall)
    h.now = 300.0
    h.req(alice, AddMember(id=h.id(), room="lobby", username="carol"))
    [added] = h.events(bob)  # carol is offline: her key is the account's
    assert (added.username, added.change, added.key, added.since) == (
        "carol",
        "added",
        b64(carol_key.public_key),
        h.wall,
    )
    members = h.req(bob, ListMembers(id=h.id(), room="lobby"))
    assert isinstance(members, MemberList)
    assert [(m.username, m.key) for m in members.members] == [
        ("alice", b64(alice_key.public_key)),
        ("bob", b64(bob_key.public_key)),
        ("carol", b64(carol_key.public_key)),
    ]
    since = [m.since for m in members.members]
    assert all(s is not None for s in since) and since == sorted(since)  # added in that order
    found = h.req(bob, Search(id=h.id(), username="alice"))
    assert isinstance(found, SearchResult) and found.key == b64(alice_key.public_key)
    offline = h.req(bob, Search(id=h.id(), username="carol"))
    assert offline == SearchResult(id=offline.id, username="carol", online=False)  # type: ignore[union-attr]
    # carol logs in on a new machine: her new key is what everyone is told and shown
    assert [e.change for e in h.events(alice)] == ["added"]
    new_key = Signer()
    h.user("carol", key=new_key)
    [online] = h.events(alice)
    assert (online.username, online.change, online.key) == (
        "carol",
        "online",
        b64(new_key.public_key),
    )
    members = h.req(alice, ListMembers(id=h.id(), room="lobby"))
    assert isinstance(members, MemberList) and members.members[2].key == b64(new_key.public_key)


def test_keys_and_dates_go_to_members_only() -> None:
    h = Harness()
    h.req(h.user("alice", key=Signer()), CreateRoom(id=h.id(), room="lobby"))
    outsider = h.req(h.user("eve", key=Signer()), ListMembers(id=h.id(), room="lobby"))
    assert isinstance(outsider, MemberList)
    assert [(m.username, m.key, m.since) for m in outsider.members] == [("alice", None, None)]


def test_a_restarted_registry_still_knows_every_key() -> None:
    h = Harness()
    key = Signer()
    h.req(h.user("alice", key=key), CreateRoom(id=h.id(), room="lobby"))
    h = Harness(store=h.core.store, authority=h.authority)
    bob = h.user("bob")
    h.req(bob, JoinRoom(id=h.id(), room="lobby"))
    reply = h.req(bob, ListMembers(id=h.id(), room="lobby"))
    assert isinstance(reply, MemberList) and reply.members[0].key == b64(key.public_key)
