"""A simulated network: many ``PeerCore``s and one ``RegistryCore`` on one virtual clock.

The real protocol code runs unchanged; only the shells are simulated. Links are reliable
ordered byte streams (TCP) with a latency per pair of hosts, jitter per segment and, as loss,
the delay of a retransmission; heartbeats are datagrams that loss drops. Hosts can crash (their
connections reset), be partitioned from each other (streams stall, then break as keepalive
would notice), and the registry can be stopped and started again with its database. Everything
is deterministic for a seed, and idle time costs nothing, so thousands of simulated seconds
pass in a real second. Tests and benchmarks use it; nothing in ``src/`` does.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import random
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from p2pchat.peer.actions import (
    Action,
    CloseLink,
    CloseRegistry,
    ConnectRegistry,
    Dial,
    Done,
    SendDatagram,
    SendLink,
    SendRegistry,
    Show,
)
from p2pchat.peer.core import PeerConfig, PeerCore
from p2pchat.peer.events import CommandError, DirectText, Notice, PeerEvent, RoomText
from p2pchat.peer.history import History
from p2pchat.peer.mesh import mesh_graph
from p2pchat.protocol.framing import FrameTooLarge, LineFramer
from p2pchat.protocol.messages import (
    Message,
    decode,
    decode_error,
    encode,
    ping_decoder,
    request_decoder,
)
from p2pchat.registry import core as registry_core
from p2pchat.registry.core import RegistryConfig, RegistryCore
from p2pchat.store import SqliteStore
from p2pchat.trust.certs import Authority
from p2pchat.trust.signing import Signer

REGISTRY_HOST = "10.0.0.1"
REGISTRY_PORT = 15600
UDP_PORT = 15500
PASSWORD = "secret-pw"
WALL = 1.8e9
"""The simulated wall clock at virtual time 0 (certificates are dated with it)."""
KEEPALIVE = 25.0
"""A stalled connection is declared dead after this (TCP keepalive in the real shell)."""


def fake_hash(password: str) -> str:
    """Argon2 is slow on purpose; the simulation only needs hashes that match."""
    return "sim$" + hashlib.sha256(password.encode()).hexdigest()


@dataclass(eq=False)
class _End:
    """One end of a simulated TCP connection."""

    host: str
    deliver: Callable[[bytes], None]
    closed: Callable[[], None]
    alive: bool = True
    last_arrival: float = 0.0
    """Arrivals at this end stay in order: never before the previous one."""
    batch: list[bytes] | None = None
    """Data arriving at ``last_arrival``, delivered together (as one read would)."""


@dataclass(eq=False)
class Conn:
    a: _End
    b: _End
    stalled_since: float | None = None

    def other(self, end: _End) -> _End:
        return self.b if end is self.a else self.a


class Seen:
    """What a peer showed its user, for tests to look at."""

    events: list[PeerEvent]

    def room_texts(self, room: str | None = None) -> list[RoomText]:
        return [
            e
            for e in self.events
            if isinstance(e, RoomText) and not e.mine and (room is None or e.room == room)
        ]

    def directs(self) -> list[DirectText]:
        return [e for e in self.events if isinstance(e, DirectText) and not e.mine]

    def notices(self) -> list[str]:
        return [e.text for e in self.events if isinstance(e, Notice)]

    def got(self, room: str, sender: str, text: str) -> int:
        return sum(1 for e in self.room_texts(room) if e.sender == sender and e.text == text)


@dataclass
class SimPeer(Seen):
    """A peer core on a simulated host, with what it showed and what its commands returned."""

    name: str
    host: str
    core: PeerCore
    net: SimNet
    port: int = 7000
    events: list[PeerEvent] = field(default_factory=list)
    results: dict[int, Done] = field(default_factory=dict)
    conns: dict[int, tuple[Conn, _End]] = field(default_factory=dict)
    registry_end: tuple[Conn, _End] | None = None
    crashed: bool = False
    record: Callable[[PeerEvent], bool] = lambda event: True
    timer_at: float | None = None
    signer: Signer | None = None
    history: History | None = None
    """The user's history on this machine (kept across a restart of the peer)."""
    tamper: Callable[[bytes], bytes] | None = None
    """A malicious peer: what it does to every frame it sends on its links."""

    # -- commands: start one, or run one to its end

    def start(self, method: str, *args: Any) -> int:
        """Start a command of the core (``say``, ``login``...); returns its id."""
        command = next(self.net._commands)
        extra: tuple[Any, ...] = ()
        if method == "login":
            if self.history is None:
                self.history = History(":memory:")
            extra = (self.signer, (), self.history)
        self.net._feed(self, getattr(self.core, method)(command, *args, self.net.now, *extra))
        return command

    def do(self, method: str, *args: Any, timeout: float = 60.0) -> Any:
        """Run a command until it finishes (in simulated time); raises its CommandError."""
        command = self.start(method, *args)
        self.net.run_until(lambda: command in self.results, timeout=timeout)
        done = self.results.pop(command)
        if done.error is not None:
            raise done.error
        return done.value


class SimNet:
    """The simulated network. ``add_peer`` to populate it, ``run*`` to let time pass."""

    def __init__(
        self,
        seed: int = 0,
        *,
        latency: float = 0.005,
        jitter: float = 0.0,
        loss: float = 0.0,
        spread: float = 0.0,
        peer_config: PeerConfig | None = None,
        registry_config: RegistryConfig | None = None,
    ) -> None:
        """``latency``: mean one-way delay; each pair of hosts gets its own, drawn within
        ``spread`` (a fraction) of it. ``jitter``: extra random delay per segment, up to this.
        ``loss``: chance a segment is lost (a datagram is dropped; a stream segment arrives a
        retransmission timeout later)."""
        self.seed = seed
        self.rng = random.Random(seed)
        self.now = 0.0
        self.latency, self.jitter, self.loss, self.spread = latency, jitter, loss, spread
        self.peer_config = peer_config or PeerConfig(
            registry_host=REGISTRY_HOST, registry_port=REGISTRY_PORT, dial_timeout=1.0
        )
        self.registry_config = registry_config or RegistryConfig(
            udp_port=UDP_PORT,
            register_burst=1_000_000,
            timeout=60.0,
            room_change_rate=1000.0,
            room_change_burst=1_000_000,
        )
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._commands = itertools.count(1)
        self._pair_latency: dict[tuple[str, str], float] = {}
        self._hosts = (f"10.0.{i // 250}.{i % 250 + 2}" for i in itertools.count())
        self.peers: dict[str, SimPeer] = {}
        self._listening: dict[tuple[str, int], SimPeer] = {}
        self._partitions: list[tuple[frozenset[str], frozenset[str]]] = []
        self._conns: set[Conn] = set()
        self.store = SqliteStore(":memory:")
        self.authority = Authority.create(WALL)
        self.registry: RegistryCore | None = None
        self._registry_conns: dict[int, tuple[Conn, _End, LineFramer]] = {}
        self._registry_ids = itertools.count(1)
        self._registry_timer: float | None = None
        self.frames: Counter[str] = Counter()
        """Frames sent on peer links, by type."""
        self.start_registry()

    # ================================================================== time

    def at(self, when: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._queue, (when, next(self._seq), fn))

    def run_until(self, done: Callable[[], bool], timeout: float = 60.0, poll: float = 0.0) -> None:
        """Let time pass until ``done()``; raises TimeoutError after ``timeout`` sim seconds.

        ``done`` is asked after every event, or, with ``poll``, once simulated time has moved
        on by that much (for costly conditions).
        """
        deadline = self.now + timeout
        checked = self.now
        while not done():
            while True:
                if not self._queue or self._queue[0][0] > deadline:
                    self.now = max(self.now, deadline)
                    raise TimeoutError(f"not done after {timeout} simulated seconds")
                self._step()
                if self.now - checked >= poll or not self._queue:
                    checked = self.now
                    break

    def run_for(self, seconds: float) -> None:
        end = self.now + seconds
        while self._queue and self._queue[0][0] <= end:
            self._step()
        self.now = end

    def _step(self) -> None:
        when, _, fn = heapq.heappop(self._queue)
        self.now = max(self.now, when)
        fn()

    # ================================================================== hosts and links

    def _delay(self, a: str, b: str) -> float:
        key = (a, b) if a < b else (b, a)
        base = self._pair_latency.get(key)
        if base is None:
            base = self.latency * (1 + self.spread * (2 * self.rng.random() - 1))
            self._pair_latency[key] = base
        delay = base
        if self.jitter:
            delay += self.rng.random() * self.jitter
        if self.loss and self.rng.random() < self.loss:
            delay += max(0.2, 3 * base)  # a retransmission timeout
        return delay

    def set_latency(self, a: str, b: str, seconds: float) -> None:
        """Fix the one-way latency between two hosts (peer names or the registry)."""
        ha, hb = self._host_of(a), self._host_of(b)
        self._pair_latency[(ha, hb) if ha < hb else (hb, ha)] = seconds

    def _host_of(self, name: str) -> str:
        return REGISTRY_HOST if name == "registry" else self.peers[name].host

    def _cut(self, a: str, b: str) -> bool:
        return any((a in x and b in y) or (a in y and b in x) for x, y in self._partitions)

    def _send(self, conn: Conn, src: _End, data: bytes) -> None:
        dst = conn.other(src)
        if not (src.alive and dst.alive):
            return
        when = max(dst.last_arrival, self.now + self._delay(src.host, dst.host))
        if when == dst.last_arrival and dst.batch is not None:
            dst.batch.append(data)
            return
        batch = [data]
        dst.last_arrival, dst.batch = when, batch
        self.at(when, lambda: self._arrive(conn, src, dst, batch))

    def _arrive(self, conn: Conn, src: _End, dst: _End, batch: list[bytes]) -> None:
        if dst.batch is batch:
            dst.batch = None
        if not dst.alive:
            return
        if self._cut(src.host, dst.host):  # stalled: try again once healed (or broken)
            self.at(self.now + 0.1, lambda: self._arrive(conn, src, dst, batch))
            return
        dst.deliver(b"".join(batch))

    def _close(self, conn: Conn, src: _End, abort: bool) -> None:
        """``src`` closes: it is told at once, the other end one latency later (after the
        data already sent, unless reset)."""
        if not src.alive:
            return
        src.alive = False
        dst = conn.other(src)
        when = self.now + self._delay(src.host, dst.host)
        if not abort:
            when = max(when, dst.last_arrival)
        dst.last_arrival = when

        def arrive() -> None:
            if dst.alive:
                dst.alive = False
                dst.closed()

        self.at(when, arrive)
        src.closed()

    # ================================================================== peers

    def add_peer(
        self,
        name: str,
        *,
        register: bool = True,
        login: bool = True,
        config: PeerConfig | None = None,
        record: Callable[[PeerEvent], bool] | None = None,
    ) -> SimPeer:
        host = next(self._hosts)
        rng = random.Random(f"{self.seed}:{name}")
        core = PeerCore(config or self.peer_config, rand=rng.randbytes, wall_offset=WALL)
        peer = SimPeer(name, host, core, self, signer=Signer(rng.randbytes(32)))
        if record is not None:
            peer.record = record
        core.port = peer.port
        self.peers[name] = peer
        self._listening[host, peer.port] = peer
        if register:
            peer.do("register", name, PASSWORD)
        if login:
            peer.do("login", name, PASSWORD)
        return peer

    def inject(self, sender: str, to: str, data: bytes) -> None:
        """``sender`` writes ``data`` (frames of its own making) on its link to ``to``."""
        peer = self.peers[sender]
        link = peer.core.links[to]
        conn, end = peer.conns[link.id]
        self._send(conn, end, data)

    def crash(self, name: str) -> None:
        """The peer's process dies: its connections reset, it does nothing more."""
        peer = self.peers[name]
        peer.crashed = True
        self._listening.pop((peer.host, peer.port), None)
        for conn, end in list(peer.conns.values()):
            self._close(conn, end, abort=True)
        if peer.registry_end is not None:
            self._close(*peer.registry_end, abort=True)

    def restart(self, name: str, *, login: bool = True) -> SimPeer:
        """A crashed peer's user starts a new peer (same host, a new port) and logs in."""
        old = self.peers.pop(name)
        assert old.crashed, "crash it first"
        rng = random.Random(f"{self.seed}:{name}:{self.now}")
        core = PeerCore(old.core.config, rand=rng.randbytes, wall_offset=WALL)
        peer = SimPeer(
            name,
            old.host,
            core,
            self,
            port=old.port + 1,
            record=old.record,
            signer=old.signer,
            history=old.history,
        )
        core.port = peer.port
        self.peers[name] = peer
        self._listening[peer.host, peer.port] = peer
        if login:
            peer.do("login", name, PASSWORD)
        return peer

    def partition(self, side_a: Iterable[str], side_b: Iterable[str]) -> None:
        """Hosts on one side cannot reach the other (``registry`` names the registry)."""
        a = frozenset(self._host_of(n) for n in side_a)
        b = frozenset(self._host_of(n) for n in side_b)
        self._partitions.append((a, b))
        cut = [c for c in self._conns if self._cut(c.a.host, c.b.host)]
        for conn in cut:
            conn.stalled_since = self.now
        self.at(self.now + KEEPALIVE, lambda: self._keepalive(cut))

    def heal(self) -> None:
        self._partitions.clear()

    def _keepalive(self, conns: list[Conn]) -> None:
        for conn in conns:
            if conn.a.alive and self._cut(conn.a.host, conn.b.host):
                self._close(conn, conn.a, abort=True)

    def _feed(self, peer: SimPeer, actions: list[Action]) -> None:
        """Carry out a peer core's actions, as its asyncio shell would."""
        if peer.crashed:
            return
        for action in actions:
            if isinstance(action, SendLink):
                entry = peer.conns.get(action.link)
                if entry is not None:
                    data = peer.tamper(action.data) if peer.tamper else action.data
                    self._count(data)
                    self._send(entry[0], entry[1], data)
            elif isinstance(action, Show):
                if peer.record(action.event):
                    peer.events.append(action.event)
            elif isinstance(action, Done):
                peer.results[action.command] = action
            elif isinstance(action, Dial):
                self._dial(peer, action)
            elif isinstance(action, CloseLink):
                entry = peer.conns.get(action.link)
                if entry is not None:
                    self._close(entry[0], entry[1], action.abort)
            elif isinstance(action, ConnectRegistry):
                self._connect_registry(peer, action.identity is not None)
            elif isinstance(action, SendRegistry):
                if peer.registry_end is not None:
                    self._send(*peer.registry_end, action.data)
            elif isinstance(action, CloseRegistry):
                registry_end, peer.registry_end = peer.registry_end, None
                if registry_end is not None:
                    self._close(*registry_end, action.abort)
            elif isinstance(action, SendDatagram):
                self._datagram(peer, action)
        self._rearm(peer)

    def _count(self, data: bytes) -> None:
        for frame in data.split(b"\n"):
            if frame:
                start = frame.find(b'"type":"') + 8
                self.frames[frame[start : frame.find(b'"', start)].decode()] += 1

    def _rearm(self, peer: SimPeer) -> None:
        deadline = peer.core.next_deadline()
        if deadline is None or deadline == peer.timer_at:
            return
        peer.timer_at = deadline

        def fire() -> None:
            if peer.timer_at == deadline and not peer.crashed:
                peer.timer_at = None
                self._feed(peer, peer.core.timer(self.now))

        self.at(deadline, fire)

    def _dial(self, peer: SimPeer, action: Dial) -> None:
        target = self._listening.get((action.host, action.port))
        link_id = action.link
        timeout = peer.core.config.dial_timeout
        if target is None or target.crashed:
            rtt = 2 * self._delay(peer.host, action.host)
            self.at(
                self.now + rtt,
                lambda: self._feed(peer, peer.core.link_failed(link_id, "refused", self.now)),
            )
            return
        if self._cut(peer.host, target.host):
            self.at(
                self.now + timeout,
                lambda: self._feed(peer, peer.core.link_failed(link_id, "timed out", self.now)),
            )
            return
        dialer = _End(peer.host, lambda d: None, lambda: None)
        acceptor = _End(target.host, lambda d: None, lambda: None)
        conn = Conn(dialer, acceptor)
        self._conns.add(conn)
        one_way = self._delay(peer.host, target.host)

        def syn() -> None:  # the acceptor's kernel completes the handshake
            if target.crashed or not dialer.alive:
                return
            accepted_id, actions = target.core.accept(self.now, peer.core.certificate)
            target.conns[accepted_id] = (conn, acceptor)
            acceptor.deliver = lambda d: self._feed(
                target, target.core.link_data(accepted_id, d, self.now)
            )
            acceptor.closed = lambda: self._gone(target, accepted_id)
            acceptor.last_arrival = self.now
            self._feed(target, actions)

        def syn_ack() -> None:
            if peer.crashed or not dialer.alive:
                return
            peer.conns[link_id] = (conn, dialer)
            dialer.deliver = lambda d: self._feed(peer, peer.core.link_data(link_id, d, self.now))
            dialer.closed = lambda: self._gone(peer, link_id)
            dialer.last_arrival = self.now
            self._feed(peer, peer.core.link_connected(link_id, self.now))

        self.at(self.now + one_way, syn)
        self.at(self.now + 2 * one_way, syn_ack)

    def _gone(self, peer: SimPeer, link_id: int) -> None:
        entry = peer.conns.pop(link_id, None)
        if entry is not None:
            self._conns.discard(entry[0])
            self._feed(peer, peer.core.link_closed(link_id, self.now))

    # ================================================================== the registry

    def start_registry(self) -> None:
        """Start (or restart) the registry on the same database."""
        self.registry = RegistryCore(
            self.store, self.registry_config, authority=self.authority, wall_offset=WALL
        )

    def stop_registry(self) -> None:
        """The registry process dies: every session's connection resets."""
        self.registry = None
        for conn, end, _ in list(self._registry_conns.values()):
            self._close(conn, end, abort=True)
        self._registry_conns.clear()

    def _connect_registry(self, peer: SimPeer, with_cert: bool) -> None:
        one_way = self._delay(peer.host, REGISTRY_HOST)
        if self.registry is None or self._cut(peer.host, REGISTRY_HOST):
            wait = 2 * one_way if self.registry is None else peer.core.config.dial_timeout
            reason = "refused" if self.registry is None else "timed out"
            self.at(
                self.now + wait,
                lambda: self._feed(peer, peer.core.registry_failed(reason, self.now)),
            )
            return
        client = _End(peer.host, lambda d: None, lambda: None)
        server = _End(REGISTRY_HOST, lambda d: None, lambda: None)
        conn = Conn(client, server)
        self._conns.add(conn)
        conn_id = next(self._registry_ids)

        def syn() -> None:
            registry = self.registry
            if registry is None or not client.alive:
                return
            framer = LineFramer()
            self._registry_conns[conn_id] = (conn, server, framer)
            server.deliver = lambda d: self._registry_data(conn_id, d)
            server.closed = lambda: self._registry_gone(conn_id)
            server.last_arrival = self.now
            cert = peer.core.certificate if with_cert else None
            self._registry_actions(registry.connect(conn_id, peer.host, self.now, cert))
            self._rearm_registry()

        def syn_ack() -> None:
            if peer.crashed or not client.alive:
                return
            peer.registry_end = (conn, client)
            client.deliver = lambda d: self._feed(peer, peer.core.registry_data(d, self.now))
            client.closed = lambda: self._registry_closed(peer, client)
            client.last_arrival = self.now
            self._feed(peer, peer.core.registry_connected(self.now, self.authority.cert))

        self.at(self.now + one_way, syn)
        self.at(self.now + 2 * one_way, syn_ack)

    def _registry_closed(self, peer: SimPeer, end: _End) -> None:
        if peer.registry_end is not None and peer.registry_end[1] is end:
            peer.registry_end = None
            self._feed(peer, peer.core.registry_closed("the registry closed", self.now))

    def _registry_gone(self, conn_id: int) -> None:
        entry = self._registry_conns.pop(conn_id, None)
        if entry is not None:
            self._conns.discard(entry[0])
        if entry is not None and self.registry is not None:
            self._registry_actions(self.registry.disconnect(conn_id, self.now))

    def _registry_data(self, conn_id: int, data: bytes) -> None:
        registry = self.registry
        entry = self._registry_conns.get(conn_id)
        if registry is None or entry is None:
            return
        try:
            frames = entry[2].feed(data)
        except FrameTooLarge as exc:
            frames = exc.frames
        for frame in frames:
            try:
                request = decode(request_decoder, frame)
            except msgspec.MsgspecError as exc:
                error = decode_error(frame, exc)
                self._send(entry[0], entry[1], encode(error))
                continue
            self._registry_actions(registry.handle(conn_id, request, self.now))

    def _registry_actions(self, actions: list[registry_core.Action]) -> None:
        registry = self.registry
        if registry is None:
            return
        last: Message | None = None
        frame = b""
        for action in actions:
            if isinstance(action, registry_core.Send):
                entry = self._registry_conns.get(action.conn)
                if entry is None:
                    continue
                if action.msg is not last:  # an event fanned out is encoded once
                    last, frame = action.msg, encode(action.msg)
                self._send(entry[0], entry[1], frame)
            elif isinstance(action, registry_core.Close):
                entry = self._registry_conns.pop(action.conn, None)
                if entry is not None:
                    self._close(entry[0], entry[1], abort=False)
            elif isinstance(action, registry_core.HashPassword):
                request = action.request
                self._registry_actions(
                    registry.register_hashed(
                        action.conn, request, fake_hash(request.password), self.now
                    )
                )
            elif isinstance(action, registry_core.VerifyPassword):
                login = action.request
                ok = action.password_hash == fake_hash(login.password)
                self._registry_actions(registry.login_verified(action.conn, login, ok, self.now))
        self._rearm_registry()

    def _rearm_registry(self) -> None:
        registry = self.registry
        deadline = registry.next_deadline() if registry is not None else None
        if deadline is None or deadline == self._registry_timer:
            return
        self._registry_timer = deadline

        def fire() -> None:
            if self._registry_timer == deadline and self.registry is registry:
                self._registry_timer = None
                assert registry is not None
                self._registry_actions(registry.expire(self.now))

        self.at(deadline, fire)

    def _datagram(self, peer: SimPeer, action: SendDatagram) -> None:
        if self.loss and self.rng.random() < self.loss:
            return
        if self._cut(peer.host, REGISTRY_HOST):
            return

        def arrive() -> None:
            if self.registry is None or action.port != self.registry_config.udp_port:
                return
            try:
                ping = ping_decoder.decode(action.data.strip())
            except msgspec.MsgspecError:
                return
            self.registry.heartbeat(ping, self.now)

        self.at(self.now + self._delay(peer.host, REGISTRY_HOST), arrive)

    # ================================================================== conveniences

    def room(self, name: str, members: list[str]) -> None:
        """``members[0]`` creates ``name`` and adds the others; runs until the mesh of its
        online members is up."""
        owner = self.peers[members[0]]
        owner.do("create_room", name, False)
        for member in members[1:]:
            owner.do("add_member", name, member)
        self.wait_mesh(name)

    def mesh_ready(
        self,
        room: str,
        names: Iterable[str] | None = None,
        graph: dict[str, frozenset[str]] | None = None,
    ) -> bool:
        """Every edge of the room's mesh (over ``names``, by default its online members) is
        a link both ends hold for the room."""
        names = list(self.online_in(room) if names is None else names)
        if graph is None:
            graph = mesh_graph(names, self.peer_config.max_links)
        for name in names:
            core = self.peers[name].core
            if room not in core.rooms:
                return False
            for neighbour in graph[name]:
                link = core.links.get(neighbour)
                if link is None or room not in link.view.mine or room not in link.view.theirs:
                    return False
        return True

    def wait_mesh(
        self, room: str, names: Iterable[str] | None = None, timeout: float = 60.0
    ) -> None:
        listed = list(self.online_in(room) if names is None else names)
        graph = mesh_graph(listed, self.peer_config.max_links)
        self.run_until(lambda: self.mesh_ready(room, listed, graph), timeout, poll=0.05)

    def online_in(self, room: str) -> list[str]:
        """Members of ``room`` (as the registry's store has them) whose peers are logged in."""
        return [n for n in self.online() if self.store.membership(room, n) is not None]

    def say(self, sender: str, room: str, text: str) -> int:
        count: int = self.peers[sender].do("say", room, text)
        return count

    def online(self) -> list[str]:
        return [n for n, p in self.peers.items() if not p.crashed and p.core.username is not None]


__all__ = ["PASSWORD", "CommandError", "SimNet", "SimPeer"]
