"""The peer's decisions on the pure core, driven by hand: no sockets, no sleeping.

A ``Driver`` wires one ``PeerCore`` to a real ``RegistryCore`` in the same call stack (replies
arrive at once, unless held to test orderings) and plays every other peer itself, frame by
frame, with the clock in its hand.
"""

from __future__ import annotations

import itertools
import random
from typing import Any

import msgspec
import pytest
from msgspec.structs import replace

from p2pchat.peer import core as peer_core
from p2pchat.peer.actions import (
    Action,
    CloseLink,
    CloseRegistry,
    ConnectRegistry,
    Dial,
    Done,
    SaveBlocked,
    SendDatagram,
    SendLink,
    SendRegistry,
    Show,
)
from p2pchat.peer.core import (
    BACKOFF_FIRST,
    GRACE_SECONDS,
    HANDSHAKE_SECONDS,
    MAX_BAD_FRAMES,
    MAX_DECLARED,
    MAX_UNAUTHENTICATED,
    PIN_SECONDS,
    PeerConfig,
    PeerCore,
    keep_new_link,
)
from p2pchat.peer.directs import DirectSent
from p2pchat.peer.events import CommandError, DirectText, Notice, PeerEvent, RoomText
from p2pchat.peer.identity import Identity
from p2pchat.peer.plumtree import TreeRouter
from p2pchat.protocol.messages import (
    MAX_MESH_ROOMS,
    PROTOCOL_VERSION,
    DirectAck,
    DirectMessage,
    ErrorCode,
    Hello,
    ListMembers,
    LoggedIn,
    Login,
    MeshRooms,
    Message,
    PeerError,
    PeerHello,
    PeerWelcome,
    Ping,
    RegistryReply,
    RoomEvent,
    RoomMessage,
    b64,
    encode,
    heartbeat_mac,
    peer_decoder,
    request_decoder,
    unb64,
)
from p2pchat.registry import core as registry_core
from p2pchat.registry.core import RegistryConfig, RegistryCore
from p2pchat.store import SqliteStore
from p2pchat.trust.certs import Authority
from p2pchat.trust.signing import Signer, Verifier, link_statement
from tests.simnet import WALL, fake_hash

PW = "secret-pw"
REGISTRY = "10.0.0.1"


class Registry:
    """A real registry core answering in the caller's stack; ``hold`` keeps replies back.

    ``user(name)`` logs another user in directly, with a key of its own, and keeps its
    certificate and signer: tests play that user's peer with them."""

    def __init__(self, config: RegistryConfig | None = None) -> None:
        self.authority = Authority.create(WALL)
        self.core = RegistryCore(
            SqliteStore(":memory:"),
            config or RegistryConfig(register_burst=10_000),
            authority=self.authority,
            wall_offset=WALL,
        )
        self.sessions: dict[int, Driver] = {}
        self.ids = itertools.count(1)
        self.up = True
        self.signers: dict[str, Signer] = {}
        self.certs: dict[str, bytes] = {}

    def user(self, name: str, host: str = "10.0.0.9", port: int = 7100) -> int:
        """An account ``name``, logged in on a session of its own; returns the session."""
        conn = next(self.ids)
        self.core.connect(conn, host, 0.0)
        self.core.handle(conn, Hello(id=1, version=PROTOCOL_VERSION), 0.0)
        self.core.store.create_account(name, fake_hash(PW))
        signer = self.signers[name] = Signer(name.encode().ljust(32, b"."))
        login = Login(id=2, username=name, password=PW, port=port, key=b64(signer.public_key))
        for action in self.core.handle(conn, login, 0.0):
            if isinstance(action, registry_core.VerifyPassword):
                for sent in self.core.login_verified(conn, login, True, 0.0):
                    if isinstance(sent, registry_core.Send) and isinstance(sent.msg, LoggedIn):
                        assert sent.msg.cert is not None
                        self.certs[name] = unb64(sent.msg.cert)
        return conn

    def signed(self, msg: RoomMessage) -> RoomMessage:
        """``msg`` with its origin's signature."""
        return replace(msg, sig=Identity(self.signers[msg.origin]).sign_message(msg))

    def welcome(self, name: str, nonce: str, dialer: str) -> PeerWelcome:
        """What ``name``'s peer answers a hello from ``dialer`` with ``nonce``."""
        statement = link_statement("accept", nonce, name, dialer)
        return PeerWelcome(
            version=PROTOCOL_VERSION,
            username=name,
            cert=b64(self.certs[name]),
            sig=b64(self.signers[name].sign(statement)),
        )


class Driver:
    """One peer core; the test plays the other peers and may hold the registry's replies."""

    def __init__(self, registry: Registry, name: str = "alice", **config: Any) -> None:
        self.registry = registry
        self.name = name
        self.core = PeerCore(
            PeerConfig(registry_host=REGISTRY, **config),
            rand=random.Random(name).randbytes,
            wall_offset=WALL,
        )
        self.signer = Signer(name.encode().ljust(32, b"!"))
        self.core.port = 7000
        self.now = 0.0
        self.conn = next(registry.ids)
        self.shown: list[PeerEvent] = []
        self.done: dict[int, Done] = {}
        self.sent: dict[int, list[Message]] = {}
        self.closed: dict[int, bool] = {}
        self.dials: list[Dial] = []
        self.saved: list[SaveBlocked] = []
        self.datagrams: list[SendDatagram] = []
        self.requests: list[Message] = []
        self.hold = False
        self.held: list[bytes] = []
        self.commands = itertools.count(1)
        self.connected = False
        registry.sessions[self.conn] = self

    # -- plumbing

    def apply(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Show):
                self.shown.append(action.event)
            elif isinstance(action, Done):
                self.done[action.command] = action
            elif isinstance(action, SendLink):
                frames = [peer_decoder.decode(f) for f in action.data.splitlines() if f]
                self.sent.setdefault(action.link, []).extend(frames)
            elif isinstance(action, CloseLink):
                self.closed[action.link] = action.abort
            elif isinstance(action, Dial):
                self.dials.append(action)
            elif isinstance(action, SaveBlocked):
                self.saved.append(action)
            elif isinstance(action, SendDatagram):
                self.datagrams.append(action)
            elif isinstance(action, ConnectRegistry):
                if self.registry.up:
                    self.registry.core.connect(self.conn, "10.0.0.2", self.now)
                    self.connected = True
                    ca = self.registry.authority.cert
                    self.apply(self.core.registry_connected(self.now, ca))
                else:
                    self.apply(self.core.registry_failed("refused", self.now))
            elif isinstance(action, SendRegistry):
                for frame in action.data.splitlines():
                    request = request_decoder.decode(frame)
                    self.requests.append(request)
                    self.registry_actions(self.registry.core.handle(self.conn, request, self.now))
            elif isinstance(action, CloseRegistry) and self.connected:
                self.connected = False
                self.registry_actions(self.registry.core.disconnect(self.conn, self.now))

    def registry_actions(self, actions: list[registry_core.Action]) -> None:
        core = self.registry.core
        for action in actions:
            if isinstance(action, registry_core.Send):
                target = self.registry.sessions.get(action.conn)
                if target is not None:
                    target.from_registry(encode(action.msg))
            elif isinstance(action, registry_core.HashPassword):
                req = action.request
                self.registry_actions(
                    core.register_hashed(action.conn, req, fake_hash(req.password), self.now)
                )
            elif isinstance(action, registry_core.VerifyPassword):
                ok = action.password_hash == fake_hash(action.request.password)
                self.registry_actions(
                    core.login_verified(action.conn, action.request, ok, self.now)
                )

    def from_registry(self, data: bytes) -> None:
        if self.hold:
            self.held.append(data)
        else:
            self.apply(self.core.registry_data(data, self.now))

    def release(self, index: int = 0) -> None:
        self.apply(self.core.registry_data(self.held.pop(index), self.now))

    def push(self, msg: RegistryReply) -> None:
        """Something the registry pushes to us (an event)."""
        self.apply(self.core.registry_data(encode(msg), self.now))

    def advance(self, seconds: float) -> None:
        """Let time pass, firing the core's timers as the shell would."""
        end = self.now + seconds
        while (deadline := self.core.next_deadline()) is not None and deadline <= end:
            self.now = max(self.now, deadline)
            self.apply(self.core.timer(self.now))
        self.now = end

    def start(self, method: str, *args: Any) -> int:
        command = next(self.commands)
        extra = (self.signer,) if method == "login" else ()
        self.apply(getattr(self.core, method)(command, *args, self.now, *extra))
        return command

    def do(self, method: str, *args: Any) -> Any:
        command = self.start(method, *args)
        done = self.done.pop(command)
        if done.error is not None:
            raise done.error
        return done.value

    def login(self, register: bool = True) -> None:
        if register:
            self.do("register", self.name, PW)
        self.do("login", self.name, PW)

    def notices(self) -> list[str]:
        return [e.text for e in self.shown if isinstance(e, Notice)]

    # -- the other side of links

    def accept(self, cert: bytes | None = None) -> int:
        """A connection to our listener, from whoever showed ``cert`` in TLS."""
        link, actions = self.core.accept(self.now, cert)
        self.apply(actions)
        return link

    def feed(self, link: int, *msgs: Message | bytes) -> None:
        data = b"".join(m if isinstance(m, bytes) else encode(m) for m in msgs)
        self.apply(self.core.link_data(link, data, self.now))

    def frames(self, link: int) -> list[Message]:
        return self.sent.pop(link, [])

    def link_from(self, peer: str) -> int:
        """An open link dialed by ``peer`` (logged in at the registry, with a certificate)."""
        link = self.accept(self.registry.certs[peer])
        self.feed(link, PeerHello(version=PROTOCOL_VERSION, username=peer, nonce="ab" * 16))
        [welcome] = self.frames(link)
        assert isinstance(welcome, PeerWelcome)
        assert self.core.links.get(peer) is not None, self.closed
        return link


def room_with(alice: Driver, *names: str, room: str = "lobby", new_users: bool = True) -> None:
    """``room``, created by alice, with ``names`` as members, online at 10.0.0.9:7100
    (``new_users``: their accounts are made here)."""
    alice.do("create_room", room, False)
    for name in names:
        if new_users:
            alice.registry.user(name)
        alice.do("add_member", room, name)
        key = b64(alice.registry.signers[name].public_key)
        alice.push(
            RoomEvent(
                room=room, username=name, change="online", host="10.0.0.9", port=7100, key=key
            )
        )


@pytest.fixture
def registry() -> Registry:
    return Registry(RegistryConfig(register_burst=10_000, heartbeat_interval=7.0, timeout=21.0))


@pytest.fixture
def alice(registry: Registry) -> Driver:
    driver = Driver(registry)
    driver.login()
    return driver


# ---------------------------------------------------------------------------- heartbeats


def test_without_a_heartbeat_option_the_peer_keeps_the_registrys_pace(alice: Driver) -> None:
    first = len(alice.datagrams)
    assert first == 1  # one at login
    alice.advance(7.0 * 3 + 0.1)
    beats = alice.datagrams[first:]
    assert len(beats) == 3
    login = alice.core.session
    assert login is not None
    pings = [msgspec.json.decode(d.data, type=Ping) for d in beats]
    assert [p.seq for p in pings] == [2, 3, 4]  # growing: a replay is refused
    assert all(p.session == login.session for p in pings)
    assert all(p.mac == heartbeat_mac(unb64(login.heartbeat_key), p.session, p.seq) for p in pings)
    assert all((d.host, d.port) == (REGISTRY, 15500) for d in beats)
    assert not any("heartbeat" in n for n in alice.notices())


def test_an_explicit_heartbeat_too_slow_for_the_registry_gets_a_warning(
    registry: Registry,
) -> None:
    slow = Driver(registry, heartbeat=30.0)
    slow.login()
    [warning] = [n for n in slow.notices() if "heartbeat" in n]
    assert "30 s" in warning and "21 s" in warning and "log you out" in warning
    slow.advance(31)
    assert len(slow.datagrams) == 2  # the interval asked for is kept all the same


def test_an_explicit_heartbeat_within_the_timeout_is_used_without_a_word(
    registry: Registry,
) -> None:
    fast = Driver(registry, heartbeat=2.0)
    fast.login()
    fast.advance(10.1)
    assert len(fast.datagrams) == 6
    assert not any("heartbeat" in n for n in fast.notices())


# ---------------------------------------------------------------------------- one timer


def test_the_shell_needs_one_deadline_and_idle_time_costs_nothing(alice: Driver) -> None:
    deadline = alice.core.next_deadline()
    assert deadline is not None and alice.now < deadline <= alice.now + 7.0
    alice.apply(alice.core.timer(alice.now))  # firing early does nothing
    assert len(alice.datagrams) == 1
    alice.advance(3600)
    assert len(alice.datagrams) == 1 + 514  # every 7 s, nothing else in between


# ---------------------------------------------------------------------------- the registry


def test_a_lost_registry_is_reconnected_with_backoff_and_the_session_restored(
    registry: Registry, alice: Driver
) -> None:
    registry.up = False
    alice.connected = False
    alice.apply(alice.core.registry_closed("connection reset", alice.now))
    assert any("registry unreachable (connection reset)" in n for n in alice.notices())
    assert not alice.core.status().registry
    tries = []
    real_apply = alice.apply

    def counting(actions: list[Action]) -> None:
        if any(isinstance(a, ConnectRegistry) for a in actions):
            tries.append(alice.now)
        real_apply(actions)

    alice.apply = counting  # type: ignore[method-assign]
    alice.advance(30)
    gaps = [round(b - a, 3) for a, b in itertools.pairwise([0.0, *tries])]
    assert gaps[:6] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0]  # capped at reconnect_max
    registry.up = True
    registry.core.disconnect(alice.conn, alice.now)  # the old session was dropped
    alice.advance(10)
    assert any("registry is back; logged in again as alice" in n for n in alice.notices())
    assert alice.core.status().registry


def test_a_registry_that_stops_answering_is_given_up_and_commands_fail_clearly(
    alice: Driver,
) -> None:
    alice.hold = True
    command = alice.start("search", "bob")
    alice.advance(alice.core.config.request_timeout + 0.1)
    error = alice.done[command].error
    assert error is not None and "no answer from the registry" in str(error)
    assert any("registry unreachable" in n for n in alice.notices())


def test_an_unreachable_registry_fails_commands_with_its_address(registry: Registry) -> None:
    registry.up = False
    bob = Driver(registry, "bob")
    with pytest.raises(CommandError, match=r"cannot reach the registry at 10\.0\.0\.1:15600"):
        bob.do("register", "bob", PW)


def test_an_event_that_overtakes_a_member_list_reply_is_applied(
    registry: Registry, alice: Driver
) -> None:
    alice.do("create_room", "lobby", False)
    registry.user("ben")
    registry.core.store.add_member("lobby", "ben")
    alice.hold = True
    # alice's view of lobby is reloaded (as after a registry restart); an event that comes in
    # after the member list was taken, but is handled before the reply, must not be lost
    flow = alice.core._room_view("lobby")
    alice.core.registry.run(flow, lambda view: alice.core._adopt(view) if view else None, print)
    alice.apply(alice.core._take())
    assert isinstance(alice.requests[-1], ListMembers)
    assert len(alice.held) == 1  # the member list, taken before cat was added
    registry.user("cat")
    registry.core.store.add_member("lobby", "cat")
    alice.hold = False
    alice.push(RoomEvent(room="lobby", username="cat", change="added", by="ben"))
    alice.release()
    assert set(alice.core.rooms["lobby"].members) == {"alice", "ben", "cat"}


# ---------------------------------------------------------------------------- links


def test_an_accepted_link_opens_on_a_valid_certificate_and_hello_and_proves_us(
    registry: Registry, alice: Driver
) -> None:
    registry.user("bob")
    link = alice.accept(registry.certs["bob"])
    assert not alice.frames(link)  # nothing said about alice before bob's hello
    alice.feed(link, PeerHello(version=PROTOCOL_VERSION, username="bob", nonce="cd" * 16))
    [welcome] = alice.frames(link)
    assert isinstance(welcome, PeerWelcome) and welcome.username == "alice"
    assert alice.core.certificate is not None
    assert welcome.cert == b64(alice.core.certificate)
    statement = link_statement("accept", "cd" * 16, "alice", "bob")
    assert Verifier().verify(alice.signer.public_key, statement, unb64(welcome.sig))
    assert "bob" in alice.core.linked_peers()


def other_registry_cert(name: str) -> bytes:
    return Authority.create(WALL).issue(name, Signer(b"x" * 32).public_key, WALL)


@pytest.mark.parametrize(
    ("cert", "hello", "why"),
    [
        (None, "bob", "no certificate"),
        ("foreign", "bob", "not issued by this registry"),
        ("bob", "carl", "your certificate is bob's"),
    ],
)
def test_a_dialer_without_a_good_certificate_learns_nothing_and_is_refused(
    registry: Registry, alice: Driver, cert: str | None, hello: str, why: str
) -> None:
    room_with(alice, "bob", "carl")
    der = {None: None, "foreign": other_registry_cert("bob"), "bob": registry.certs["bob"]}[cert]
    link = alice.accept(der)
    forged = RoomMessage(id="f" * 32, room="lobby", origin="bob", seq=1, text="x", ts=0, hops=3)
    alice.feed(
        link,
        PeerHello(version=PROTOCOL_VERSION, username=hello, nonce="cd" * 16),
        forged,
        MeshRooms(rooms=["lobby"]),
    )
    [refusal] = alice.frames(link)
    assert isinstance(refusal, PeerError) and why in refusal.reason
    assert "alice" not in encode(refusal).decode()  # nothing about who we are
    assert link in alice.closed
    assert not [e for e in alice.shown if isinstance(e, RoomText)]
    assert "bob" not in alice.core.linked_peers()


def test_a_certificate_for_a_key_replaced_since_is_refused(
    registry: Registry, alice: Driver
) -> None:
    room_with(alice, "bob")
    old = registry.certs["bob"]
    new_key = b64(Signer(b"n" * 32).public_key)  # bob logged in on another machine
    alice.push(
        RoomEvent(room="lobby", username="bob", change="online", host="h", port=1, key=new_key)
    )
    link = alice.accept(old)
    [refusal] = alice.frames(link)
    assert isinstance(refusal, PeerError) and "replaced" in refusal.reason


def dialed(alice: Driver, registry: Registry, peer: str) -> tuple[int, PeerHello]:
    """alice dials ``peer`` (a room neighbour) and says hello."""
    room_with(alice, peer)
    alice.advance(0.1)
    [dial] = alice.dials
    alice.apply(alice.core.link_connected(dial.link, alice.now))
    [hello] = alice.frames(dial.link)
    assert isinstance(hello, PeerHello) and hello.username == "alice"
    return dial.link, hello


def test_the_acceptor_must_prove_it_is_who_we_dialed(registry: Registry, alice: Driver) -> None:
    link, hello = dialed(alice, registry, "bob")
    alice.feed(link, registry.welcome("bob", hello.nonce, "alice"))
    assert alice.core.links["bob"].id == link and link not in alice.closed


@pytest.mark.parametrize("forgery", ["signature", "nonce", "name", "certificate", "foreign"])
def test_a_welcome_that_does_not_prove_the_dialed_user_is_refused(
    registry: Registry, alice: Driver, forgery: str
) -> None:
    registry.user("mallory")
    link, hello = dialed(alice, registry, "bob")
    welcome = registry.welcome("bob", hello.nonce, "alice")
    if forgery == "signature":
        welcome = registry.welcome("mallory", hello.nonce, "alice")
        welcome = PeerWelcome(version=2, username="bob", cert=welcome.cert, sig=welcome.sig)
    elif forgery == "nonce":  # a statement made for another link (relayed)
        welcome = registry.welcome("bob", "00" * 16, "alice")
    elif forgery == "name":
        welcome = registry.welcome("mallory", hello.nonce, "alice")
    elif forgery == "certificate":  # mallory's certificate, bob's name
        real = registry.welcome("bob", hello.nonce, "alice")
        welcome = PeerWelcome(
            version=2, username="bob", cert=b64(registry.certs["mallory"]), sig=real.sig
        )
    else:
        welcome = PeerWelcome(
            version=2, username="bob", cert=b64(other_registry_cert("bob")), sig=welcome.sig
        )
    alice.feed(link, welcome)
    [refusal] = alice.frames(link)
    assert isinstance(refusal, PeerError) and refusal.code == "cert_refused"
    assert link in alice.closed and "bob" not in alice.core.linked_peers()


@pytest.mark.parametrize(
    ("first", "expected"),
    [
        (RoomMessage(id="a" * 32, room="r", origin="bob", seq=1, text="x", ts=0, hops=1), "hello"),
        (DirectAck(id="d"), "peer_hello"),
        (MeshRooms(rooms=["r"]), "peer_hello"),
    ],
)
def test_an_illegal_first_frame_gets_one_error_and_the_link_closes(
    registry: Registry, alice: Driver, first: Message, expected: str
) -> None:
    registry.user("bob")
    link = alice.accept(registry.certs["bob"])
    alice.feed(link, first)
    [error] = alice.frames(link)
    assert isinstance(error, PeerError) and error.code == "bad_request"
    assert expected in error.reason
    assert alice.closed[link] is False  # closed after the error is flushed


def test_a_second_hello_on_an_open_link_cuts_it(registry: Registry, alice: Driver) -> None:
    registry.user("bob")
    link = alice.link_from("bob")
    alice.feed(link, PeerHello(version=PROTOCOL_VERSION, username="bob", nonce="ef" * 16))
    assert alice.closed[link] is True
    alice.apply(alice.core.link_closed(link, alice.now))
    assert "bob" not in alice.core.linked_peers()


def test_bad_frames_are_counted_and_a_link_that_keeps_sending_them_is_cut(
    registry: Registry, alice: Driver
) -> None:
    registry.user("bob")
    link = alice.link_from("bob")
    nested = b'{"type":"room_msg","x":' + b"[" * 20_000 + b"]" * 20_000 + b"}\n"
    for junk in [b"\xff\xfe\n", b'{"type":"warp"}\n', nested] * 3:
        alice.feed(link, junk)
    assert link not in alice.closed
    assert alice.core._conns[link].bad_frames == 9
    alice.feed(link, b"{}\n", b"{}\n")
    assert alice.closed[link] is True
    assert MAX_BAD_FRAMES == 10


def test_an_accepted_connection_that_never_finishes_its_handshake_is_closed(
    registry: Registry, alice: Driver
) -> None:
    registry.user("bob")
    link = alice.accept(registry.certs["bob"])
    alice.advance(HANDSHAKE_SECONDS - 0.1)
    assert link not in alice.closed
    alice.advance(0.2)
    assert alice.closed[link] is True


def test_a_full_peer_says_so_and_closes(registry: Registry) -> None:
    small = Driver(registry, "alice", max_connections=2)
    small.login()
    registry.user("bob")
    links = [small.accept(registry.certs["bob"]) for _ in range(3)]
    assert not small.frames(links[0]) and not small.frames(links[1])
    [error] = small.frames(links[2])
    assert isinstance(error, PeerError) and error.code == "too_many_connections"
    assert links[2] in small.closed


def test_strangers_holding_connections_open_cannot_take_the_slots_of_real_links(
    registry: Registry,
) -> None:
    alice = Driver(registry, "alice", max_connections=MAX_UNAUTHENTICATED + 4)
    alice.login()
    registry.user("mallory")
    registry.user("bob")
    held = []
    for _ in range(MAX_UNAUTHENTICATED * 5):  # connect, never say hello
        held.append(alice.accept(registry.certs["mallory"]))
        alice.advance(0.01)
    waiting = [link for link in held if link not in alice.closed]
    assert waiting == held[-MAX_UNAUTHENTICATED:]  # the newest; the oldest went first
    assert all(alice.closed[link] is True for link in held[:-MAX_UNAUTHENTICATED])
    bob = alice.link_from("bob")  # a real link still gets in, and works
    alice.feed(bob, DirectMessage(id="d" * 32, sender="bob", text="made it", ts=1.0))
    assert [e.text for e in alice.shown if isinstance(e, DirectText)] == ["made it"]


def test_our_own_dials_stay_within_the_connection_limit(registry: Registry) -> None:
    alice = Driver(registry, "alice", max_connections=4)
    alice.login()
    room_with(alice, *[f"m{k}" for k in range(10)])  # the mesh wants 5 or 6 neighbours
    alice.advance(0.1)
    assert len(alice.dials) == 3  # one slot kept for a neighbour that dials us
    for dial in alice.dials:  # they fail: the plan is made again, still within the limit
        alice.apply(alice.core.link_failed(dial.link, "refused", alice.now))
    alice.dials.clear()
    alice.advance(1.0)
    assert 0 < len(alice.dials) <= 3


# ---------------------------------------------------------------------------- simultaneous dials


def test_when_both_dial_at_once_both_keep_the_link_the_smaller_name_dialed() -> None:
    for me, peer in [("alice", "bob"), ("bob", "alice")]:
        smaller_dialed_new = me < peer
        assert keep_new_link(me, peer, smaller_dialed_new, old_established=10.0, now=10.5)
        assert not keep_new_link(me, peer, not smaller_dialed_new, 10.0, 10.5)
    # a link up for longer than the grace period is never displaced
    assert not keep_new_link("alice", "bob", True, 10.0, 10.0 + GRACE_SECONDS + 0.1)


def test_a_crossing_dial_from_a_larger_name_is_refused_before_it_carries_anything(
    registry: Registry, alice: Driver
) -> None:
    room_with(alice, "bob")
    alice.advance(0.1)
    [dial] = alice.dials
    # bob dialed us meanwhile; "alice" < "bob": alice's dial is the one both ends keep, and
    # bob's is refused at its hello, so no frame is ever sent on a link that is then dropped
    accepted = alice.accept(registry.certs["bob"])
    alice.feed(accepted, PeerHello(version=PROTOCOL_VERSION, username="bob", nonce="ab" * 16))
    [refusal] = alice.frames(accepted)
    assert isinstance(refusal, PeerError) and refusal.code == ErrorCode.LINK_CROSSED
    assert accepted in alice.closed and "bob" not in alice.core.links
    alice.apply(alice.core.link_connected(dial.link, alice.now))
    [hello] = alice.frames(dial.link)
    assert isinstance(hello, PeerHello)
    alice.feed(dial.link, registry.welcome("bob", hello.nonce, "alice"))
    assert alice.core.links["bob"].id == dial.link and dial.link not in alice.closed


def test_a_crossing_dial_from_a_smaller_name_wins_and_ours_is_dropped_without_backoff(
    registry: Registry, alice: Driver
) -> None:
    room_with(alice, "aaron")
    alice.advance(0.1)
    [dial] = alice.dials
    alice.apply(alice.core.link_connected(dial.link, alice.now))
    alice.frames(dial.link)  # our hello is on its way
    accepted = alice.link_from("aaron")  # "aaron" < "alice": his dial is kept
    assert alice.core.links["aaron"].id == accepted
    assert dial.link in alice.closed and accepted not in alice.closed
    # his refusal of our dial arrives afterwards: not a failure, nothing to back off from
    alice.feed(dial.link, PeerError(code=ErrorCode.LINK_CROSSED, reason="our dial to you wins"))
    assert alice.core.links["aaron"].id == accepted
    alice.dials.clear()
    alice.advance(30)
    assert not alice.dials


# ---------------------------------------------------------------------------- backoff and pins


def test_an_unreachable_member_is_retried_with_doubling_backoff(
    registry: Registry, alice: Driver
) -> None:
    room_with(alice, "bob")
    dialed_at = []
    while len(dialed_at) < 7:
        alice.advance(0.01)
        for dial in alice.dials:  # each dial fails at once (nobody listens there)
            dialed_at.append(alice.now)
            alice.apply(alice.core.link_failed(dial.link, "refused", alice.now))
        alice.dials.clear()
    gaps = [round(b - a, 1) for a, b in itertools.pairwise(dialed_at)]
    assert gaps == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
    assert BACKOFF_FIRST == 0.5
    # a sign of life from bob (he comes online again) ends the backoff at once
    alice.push(RoomEvent(room="lobby", username="bob", change="online", host="10.0.0.9", port=7101))
    alice.advance(0.1)
    assert [d.port for d in alice.dials] == [7101]


def test_a_link_used_for_direct_messages_is_kept_while_in_use_then_closed(
    registry: Registry, alice: Driver
) -> None:
    registry.user("bob")
    link = alice.link_from("bob")
    alice.feed(link, DirectMessage(id="d1", sender="bob", text="hi", ts=0.0))
    [ack] = alice.frames(link)
    assert isinstance(ack, DirectAck) and ack.id == "d1"
    assert [e.text for e in alice.shown if isinstance(e, DirectText)] == ["hi"]
    alice.advance(PIN_SECONDS - 1)
    assert link not in alice.closed  # no room needs it, but it was used
    alice.advance(2)
    assert link in alice.closed


def test_room_messages_are_shown_once_and_forwarded_to_the_other_neighbours(
    registry: Registry, alice: Driver
) -> None:
    room_with(alice, "bob", "cat")
    bob, cat = alice.link_from("bob"), alice.link_from("cat")
    alice.feed(bob, MeshRooms(rooms=["lobby"]))
    alice.feed(cat, MeshRooms(rooms=["lobby"]))
    alice.advance(0.1)
    msg = registry.signed(
        RoomMessage(id="b" * 32, room="lobby", origin="bob", seq=1, text="hey", ts=0, hops=5)
    )
    alice.frames(cat)
    alice.feed(bob, msg, msg)
    [forwarded] = [f for f in alice.frames(cat) if isinstance(f, RoomMessage)]
    assert forwarded.id == msg.id and forwarded.hops == 4
    assert not [f for f in alice.frames(bob) if isinstance(f, RoomMessage)]
    assert [e.text for e in alice.shown if isinstance(e, RoomText)] == ["hey"]


def test_logging_out_closes_links_and_answers_what_was_waiting(
    registry: Registry, alice: Driver
) -> None:
    registry.user("bob")
    link = alice.link_from("bob")
    pending = alice.start("send_direct", "bob", "are you there")
    alice.do("logout")
    assert link in alice.closed
    kept = alice.done[pending].value  # not lost: in the outbox until the next login
    assert isinstance(kept, DirectSent) and not kept.delivered and "logged out" in kept.reason
    with pytest.raises(CommandError, match="log in first"):
        alice.do("say", "lobby", "hi")


def test_a_dial_that_completes_after_logout_is_closed_without_a_hello(
    registry: Registry, alice: Driver
) -> None:
    room_with(alice, "bob")
    alice.advance(0.1)
    [dial] = alice.dials
    alice.do("logout")
    alice.apply(alice.core.link_connected(dial.link, alice.now))
    assert not alice.frames(dial.link)  # no hello with an empty name
    assert alice.closed[dial.link] is True


# ---------------------------------------------------------------------------- rates


def test_our_own_messages_are_paced_in_order_not_refused(registry: Registry, alice: Driver) -> None:
    room_with(alice, "bob")
    link = alice.link_from("bob")
    alice.feed(link, MeshRooms(rooms=["lobby"]))
    alice.advance(0.1)
    alice.frames(link)
    burst = alice.core.config.send_burst
    commands = [alice.start("say", "lobby", f"line {i}") for i in range(burst + 10)]
    sent = [f for f in alice.frames(link) if isinstance(f, RoomMessage)]
    assert [m.text for m in sent] == [f"line {i}" for i in range(burst)]
    assert sum(1 for n in alice.notices() if "sending to lobby slowly" in n) == 1
    alice.advance(10 / alice.core.config.send_rate + 0.01)
    sent += [f for f in alice.frames(link) if isinstance(f, RoomMessage)]
    assert [m.text for m in sent] == [f"line {i}" for i in range(burst + 10)]
    assert [m.seq for m in sent] == list(range(1, burst + 11))
    assert all(alice.done[c].error is None for c in commands)


def test_our_announcement_is_split_across_frames_within_their_bound(
    registry: Registry, alice: Driver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(peer_core, "MAX_MESH_ROOMS", 2)
    rooms = [f"room{k}" for k in range(5)]
    registry.user("bob")
    for room in rooms:
        room_with(alice, "bob", room=room, new_users=False)
    link = alice.link_from("bob")
    alice.advance(0.1)
    frames = [f for f in alice.frames(link) if isinstance(f, MeshRooms)]
    assert [len(f.rooms) for f in frames] == [2, 2, 1]
    assert [f.more for f in frames] == [True, True, False]
    assert sorted(r for f in frames for r in f.rooms) == rooms


def test_a_neighbours_endless_announcement_is_bounded_and_only_shared_rooms_count(
    registry: Registry, alice: Driver
) -> None:
    room_with(alice, "bob")
    link = alice.link_from("bob")
    frames = MAX_DECLARED // MAX_MESH_ROOMS * 3  # three times the bound
    many = [[f"r{i}x{k}" for k in range(MAX_MESH_ROOMS)] for i in range(frames)]
    for rooms in many:  # never ending
        alice.feed(link, MeshRooms(rooms=rooms, more=True))
    held = alice.core.links["bob"]
    assert len(held.declaring) == MAX_DECLARED
    alice.feed(link, MeshRooms(rooms=many[0]))  # ends it: what is past the bound was ignored
    assert held.declaring == [] and len(held.declared) == MAX_DECLARED
    assert held.view.theirs == frozenset()  # rooms we are not in pull nothing our way
    alice.feed(link, MeshRooms(rooms=["lobby", *many[0][:10]]))
    assert held.view.theirs == {"lobby"}


def test_huge_message_ids_are_malformed_frames_that_cost_nothing_and_end_the_link(
    registry: Registry, alice: Driver
) -> None:
    room_with(alice, "bob")
    link = alice.link_from("bob")
    alice.feed(link, MeshRooms(rooms=["lobby"]))
    huge = "f" * 60_000  # 60 KB ids grew every peer by 100 MB/s before ids had a format
    frame = (
        b'{"type":"room_msg","id":"%s","room":"lobby","origin":"bob","seq":1,"text":"x",'
        b'"ts":1.0,"hops":5,"sig":""}\n' % huge.encode()
    )
    ihave = b'{"type":"ihave","room":"lobby","origin":"bob","ids":["%s"]}\n' % huge.encode()
    for k in range(MAX_BAD_FRAMES):
        alice.feed(link, frame if k % 2 else ihave)
    assert link not in alice.closed
    router = alice.core.router
    assert isinstance(router, TreeRouter) and router.seen_size == 0
    alice.feed(link, frame)
    assert alice.closed[link] is True  # cut after MAX_BAD_FRAMES
    assert not [e for e in alice.shown if isinstance(e, RoomText)]


def test_a_member_flooding_a_room_is_cut_short_and_the_user_told_once(
    registry: Registry, alice: Driver
) -> None:
    room_with(alice, "bob", "cat")
    bob, cat = alice.link_from("bob"), alice.link_from("cat")
    for link in (bob, cat):
        alice.feed(link, MeshRooms(rooms=["lobby"]))
    alice.advance(0.1)
    alice.frames(cat)
    flood = [
        registry.signed(
            RoomMessage(
                id=f"{i:032x}", room="lobby", origin="bob", seq=i + 1, text=f"{i}", ts=0, hops=5
            )
        )
        for i in range(1000)
    ]
    alice.feed(bob, *flood)
    shown = [e for e in alice.shown if isinstance(e, RoomText)]
    burst = alice.core.config.receive_burst
    assert len(shown) == burst
    passed_on = [f for f in alice.frames(cat) if isinstance(f, RoomMessage)]
    assert len(passed_on) == burst  # what is beyond is not passed on either
    assert sum(1 for n in alice.notices() if "bob sends more than" in n) == 1
    assert bob not in alice.closed  # a fast member is slowed, not cut off
    alice.feed(bob, *flood[:5])  # and the ids it sent are remembered: no second look
    assert len([e for e in alice.shown if isinstance(e, RoomText)]) == burst


def test_a_flood_costs_no_more_signature_checks_than_twice_the_origins_allowance(
    registry: Registry, alice: Driver, monkeypatch: pytest.MonkeyPatch
) -> None:
    checks = [0]
    real = peer_core.check_message

    def counted(*args: Any) -> bool:
        checks[0] += 1
        return real(*args)

    monkeypatch.setattr(peer_core, "check_message", counted)
    room_with(alice, "bob")
    bob = alice.link_from("bob")
    alice.feed(bob, MeshRooms(rooms=["lobby"]))
    flood = [
        registry.signed(
            RoomMessage(
                id=f"{i:032x}", room="lobby", origin="bob", seq=i + 1, text=f"{i}", ts=0, hops=5
            )
        )
        for i in range(1000)
    ]
    alice.feed(bob, *flood)
    burst = alice.core.config.receive_burst
    assert checks[0] == 2 * burst  # the rest dropped before a signature was looked at
    assert alice.core.over_budget == 1000 - 2 * burst
    assert bob not in alice.closed


# ---------------------------------------------------------------------------- blocking


def test_a_blocked_user_is_not_shown_but_still_passed_on_and_acknowledged(
    registry: Registry, alice: Driver
) -> None:
    room_with(alice, "bob", "cat")
    bob, cat = alice.link_from("bob"), alice.link_from("cat")
    for link in (bob, cat):
        alice.feed(link, MeshRooms(rooms=["lobby"]))
    alice.advance(0.1)
    alice.frames(cat)
    assert alice.do("block", "BOB") == ["bob"]
    [saved] = [a for a in alice.saved if a.username == "alice"]
    assert saved.blocked == ["bob"]
    msg = registry.signed(
        RoomMessage(id="b" * 32, room="lobby", origin="bob", seq=1, text="hi", ts=0, hops=5)
    )
    alice.feed(bob, msg, DirectMessage(id="d1", sender="bob", text="psst", ts=0.0))
    assert not [e for e in alice.shown if isinstance(e, RoomText | DirectText)]
    assert [f.id for f in alice.frames(cat) if isinstance(f, RoomMessage)] == [msg.id]
    assert [f for f in alice.frames(bob) if isinstance(f, DirectAck)]  # bob is not told
    assert alice.do("unblock", "bob") == []
    again = registry.signed(
        RoomMessage(id="c" * 32, room="lobby", origin="bob", seq=2, text="back", ts=0, hops=5)
    )
    alice.feed(bob, again)
    assert [e.text for e in alice.shown if isinstance(e, RoomText)] == ["back"]


def test_whom_a_user_blocks_comes_back_with_the_next_login(registry: Registry) -> None:
    alice = Driver(registry)
    alice.do("register", "alice", PW)
    command = next(alice.commands)
    alice.apply(alice.core.login(command, "alice", PW, alice.now, alice.signer, ["Mallory"]))
    assert alice.done[command].error is None
    assert alice.core.blocked() == ["mallory"]
    with pytest.raises(CommandError, match="that is you"):
        alice.do("block", "alice")
