"""The registry's decisions, without I/O.

The core is fed decoded requests, heartbeats and the current time, and returns actions (send
this message on that session, close that session, hash or verify this password). The asyncio
shell in ``server.py`` carries them out. Heartbeat expiry is therefore a matter of calling
``expire(now)`` with a later ``now``, which is how the tests check it without waiting.

Argon2id is deliberately slow, so the core never runs it: it queues the work (``WorkQueue``:
logins before registrations, fairly between source addresses, within fixed bounds) and
returns ``HashPassword`` or ``VerifyPassword`` only when one of the shell's ``hash_workers``
is free. The shell runs the hash in a worker
thread, then calls back ``register_hashed`` / ``login_verified`` / ``auth_failed``, which free
the worker and may start the next job. State is re-checked on the way back, since other
requests may have been served in between.

Identities: the registry is a small certificate authority (``trust/certs.py``). A login that
carries the peer's public key gets a day-long certificate for it, and the key becomes the
account's current one (a login from a new machine supersedes the old key). A connection whose
TLS client certificate is a valid one for the current key may ``resume`` without the password.
Heartbeats name a session and carry an HMAC over a growing sequence number, with a key given
only over TLS: they cannot be forged or replayed.

Who is online, and in which rooms, is kept in memory (``Session.rooms``, ``_present``): events,
online counts and logouts never read the database, so a failing database cannot leave a user
half logged in or out. Every handler reads what it needs before it changes anything; a store
failure then answers ``storage_error`` with nothing applied.
"""

from __future__ import annotations

import bisect
import hashlib
import heapq
import hmac
import ipaddress
import logging
import secrets
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from p2pchat.limits import TokenBucket
from p2pchat.protocol.messages import (
    LIST_LIMIT,
    PROTOCOL_VERSION,
    AddMember,
    Bye,
    CertificateReply,
    CreateRoom,
    Error,
    ErrorCode,
    Hello,
    JoinRoom,
    LeaveRoom,
    ListMembers,
    ListRooms,
    ListUsers,
    LoggedIn,
    Login,
    Logout,
    MemberInfo,
    MemberList,
    Message,
    Ok,
    Ping,
    Register,
    RegistryRequest,
    RemoveMember,
    Renew,
    Resume,
    RoomChange,
    RoomEvent,
    RoomInfo,
    RoomList,
    Search,
    SearchResult,
    Unban,
    UserAddr,
    UserList,
    Welcome,
    b64,
    heartbeat_mac,
    unb64,
    valid_host,
)
from p2pchat.store.base import NameTaken, Room, RoomExists, Store, StoreError
from p2pchat.trust.certs import Authority, TrustError, UserCert, ca_key, read_user_cert

log = logging.getLogger("p2pchat.registry")

# ---------------------------------------------------------------------------- actions


@dataclass(slots=True)
class Send:
    conn: int
    msg: Message


@dataclass(slots=True)
class SendEvents:
    """Room events, in order, for each of the sessions ``conns`` (``batch_events``): to be
    encoded once and written to each at once. One action for all the members of a room a
    round serves alike, not one per member: a round of a big room makes few objects."""

    conns: list[int]
    events: list[RoomEvent]


@dataclass(slots=True)
class Close:
    """Close the session's connection (after sending what came before)."""

    conn: int


@dataclass(slots=True)
class HashPassword:
    """Hash ``request.password``, then call ``RegistryCore.register_hashed``."""

    conn: int
    request: Register


@dataclass(slots=True)
class VerifyPassword:
    """Check ``request.password`` against ``password_hash``, then call ``login_verified``.

    ``password_hash`` is None for a name with no account: the shell then checks the password
    against a hash of its own, so that an unknown name costs (and takes) what a known one does.
    """

    conn: int
    request: Login
    password_hash: str | None
    ticket: str = ""
    """The throttle key a valid login ticket chose, or "" (see ``RegistryCore._login``)."""


Action = Send | SendEvents | Close | HashPassword | VerifyPassword
Job = HashPassword | VerifyPassword

# ---------------------------------------------------------------------------- state


@dataclass(slots=True)
class Session:
    """One TCP session; logged in when ``user`` is set."""

    conn: int
    source_host: str
    greeted: bool = False
    busy: bool = False  # a password job is queued or running for this session
    user: str | None = None
    key: str = ""
    host: str = ""
    port: int = 0
    token: str = ""
    """The session id heartbeats name (public)."""
    heartbeat_key: bytes = b""
    heartbeat_seq: int = 0
    public_key: bytes | None = None
    """The key this login's certificates are for."""
    tls: UserCert | None = None
    """The user certificate the connection presented in TLS, if any (checked)."""
    tls_refused: str = ""
    """Why the certificate it presented is not one we take (what ``resume`` answers)."""
    last_seen: float = 0.0
    rooms: dict[str, str] = field(default_factory=dict)
    """While logged in: the user's rooms, casefolded id -> id as spelled."""


ROOM_LOG_LIMIT = 1000
"""Events one room may hold undelivered (``batch_events``); at the limit they are delivered
at once, to every online member."""
HELD_EVENTS_LIMIT = 50_000
"""Events all rooms together may hold undelivered; at the limit, the room of each new event
is delivered at once."""
EXPIRY_BACKLOG = 512
"""Expiry waits while this many events are held (a mass expiry tells every room of every
session it logs out: it goes at the pace the events are delivered)."""


@dataclass(slots=True)
class _RoomLog:
    """A room's events not yet delivered to all its online members (``batch_events``).

    Events are numbered from 0 for the life of the log. An online member is owed the events
    from its cursor on (``base`` unless noted in ``cursors``), except those whose ``skip``
    is its own session: a member that comes online or joins is noted at the end, so it gets
    nothing from before it was there; one whose events went out with a reply, or in a round,
    is noted where they ended; one that goes away is given what it is owed first (or, disconnected,
    nothing)."""

    base: int = 0
    """The number of ``events[0]``."""
    events: list[tuple[RoomEvent, int]] = field(default_factory=list)
    """Each event, and the session that is not to get it (-1: none)."""
    cursors: dict[int, int] = field(default_factory=dict)
    """Sessions owed events from another number than ``base``."""

    @property
    def end(self) -> int:
        return self.base + len(self.events)

    def owed(self, conn: int, end: int) -> list[RoomEvent]:
        """What session ``conn`` is owed of the events numbered below ``end``."""
        start = self.cursors.get(conn, self.base)
        if start >= end:
            return []
        return [e for e, skip in self.events[start - self.base : end - self.base] if skip != conn]


@dataclass(slots=True)
class _RoomRound:
    """One room's part of a delivery round: its events up to ``end``, to the members online
    when the round began, ``index`` of them done so far."""

    room_key: str
    log: _RoomLog
    end: int
    conns: list[int]
    index: int = 0
    batch: list[RoomEvent] | None = None
    """The events from ``log.base`` to ``end``, for every member owed exactly them."""
    skips: frozenset[int] = frozenset()


@dataclass(slots=True)
class _Strikes:
    failures: int = 0
    locked_until: float = 0.0
    last: float = 0.0


@dataclass(slots=True)
class Throttle:
    """Slows down repeated wrong passwords for one key.

    The first ``free`` failures cost nothing; each later one doubles a lockout, up to
    ``max_lock`` seconds. A key is forgotten ``forget_after`` seconds after its last failure,
    and at most ``max_keys`` keys are kept, so an attacker cannot grow the table.
    """

    free: int
    max_lock: float = 60.0
    forget_after: float = 900.0
    max_keys: int = 100_000
    _keys: dict[str, _Strikes] = field(default_factory=dict)

    def retry_after(self, key: str, now: float) -> float:
        strikes = self._keys.get(key)
        if strikes is None:
            return 0.0
        if now - strikes.last > self.forget_after:
            del self._keys[key]
            return 0.0
        return max(0.0, strikes.locked_until - now)

    def fail(self, key: str, now: float) -> None:
        strikes = self._keys.pop(key, None) or _Strikes()
        self._keys[key] = strikes  # re-insert: the dict stays ordered by last failure
        strikes.failures += 1
        strikes.last = now
        over = strikes.failures - self.free
        if over > 0:
            strikes.locked_until = now + min(self.max_lock, 2.0 ** (over - 1))
        while len(self._keys) > self.max_keys:
            del self._keys[next(iter(self._keys))]

    def succeed(self, key: str) -> None:
        self._keys.pop(key, None)


K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class FairQueue(Generic[K, T]):
    """Items queued per key and served round-robin between keys, one item per turn.

    Bounded in total (``max_total``) and per key (``max_per_key``): ``push`` refuses beyond.
    One key with many items waits its turn like a key with one.
    """

    def __init__(self, max_total: int, max_per_key: int) -> None:
        self.max_total = max_total
        self.max_per_key = max_per_key
        self._queues: dict[K, deque[T]] = {}
        self._turns: deque[K] = deque()
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def has_room(self, key: K) -> bool:
        queue = self._queues.get(key)
        return self._len < self.max_total and (queue is None or len(queue) < self.max_per_key)

    def push(self, key: K, item: T) -> bool:
        if not self.has_room(key):
            return False
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = deque()
            self._turns.append(key)
        queue.append(item)
        self._len += 1
        return True

    def pop(self) -> T | None:
        if not self._turns:
            return None
        key = self._turns.popleft()
        queue = self._queues[key]
        item = queue.popleft()
        self._len -= 1
        if queue:
            self._turns.append(key)
        else:
            del self._queues[key]
        return item


class WorkQueue:
    """Password jobs in three lanes, each fair between addresses: logins that present a valid
    ticket, other logins, registrations.

    A higher lane goes first, except that every ``share``-th job comes from the lowest lane
    waiting: a flood of registrations cannot delay logins by more than a job or so, and a
    flood of logins cannot stop registrations. Bounded in total and per address per lane.
    """

    TICKET, LOGIN, REGISTER = 0, 1, 2

    def __init__(self, max_total: int, max_per_key: int, share: int = 4) -> None:
        self.max_total = max_total
        self.share = share
        self._lanes: list[FairQueue[str, Job]] = [
            FairQueue(max_total, max_per_key) for _ in range(3)
        ]
        self._run = 0  # jobs taken from a higher lane while a lower one waited

    def __len__(self) -> int:
        return sum(len(lane) for lane in self._lanes)

    @staticmethod
    def lane(job: Job) -> int:
        if isinstance(job, HashPassword):
            return WorkQueue.REGISTER
        return WorkQueue.TICKET if job.ticket else WorkQueue.LOGIN

    def has_room(self, lane: int, key: str) -> bool:
        return len(self) < self.max_total and self._lanes[lane].has_room(key)

    def push(self, key: str, job: Job) -> bool:
        lane = self.lane(job)
        return self.has_room(lane, key) and self._lanes[lane].push(key, job)

    def pop(self) -> Job | None:
        waiting = [lane for lane in self._lanes if len(lane)]
        if not waiting:
            return None
        if len(waiting) == 1:
            self._run = 0
            return waiting[0].pop()
        self._run += 1
        if self._run >= self.share:
            self._run = 0
            return waiting[-1].pop()
        return waiting[0].pop()


@dataclass(slots=True, frozen=True)
class RegistryConfig:
    udp_port: int = 15500
    heartbeat_interval: float = 20.0
    timeout: float = 60.0
    server: str = "p2pchat-registry"
    register_rate: float = 1.0
    """Registrations per second allowed from one address, after a burst of ``register_burst``;
    each costs an Argon2id hash, so unbounded registration would be a cheap way to load us."""
    register_burst: int = 30
    login_timeout: float = 20.0
    """A session that is not logged in is closed after this long without a request."""
    max_anonymous: int = 1000
    """Most sessions not logged in at once; beyond, the oldest idle one is closed."""
    allow_advertise: bool = False
    """Whether ``login`` may publish a ``host`` other than the address the session comes from."""
    exempt: frozenset[str] = frozenset({"127.0.0.1", "::1"})
    """Addresses whose connections are not pooled per address (local clients, see
    docs/security.md): each of their sessions counts as an address of its own."""
    hash_workers: int = 2
    """Password hashes run at once (the shell's worker threads)."""
    hash_queue: int = 256
    """Password jobs waiting at most, in all."""
    hash_queue_per_address: int = 8
    """Password jobs waiting at most from one address."""
    max_rooms_per_user: int = 256
    max_owned_rooms: int = 64
    room_change_rate: float = 1.0
    """Room requests (create, join, leave, add, remove, unban) per second per user, after a
    burst of ``room_change_burst``: each may send an event to every online member."""
    room_change_burst: int = 30
    batch_events: bool = False
    """Room events held per room and handed out by ``flush`` (one ``SendEvents`` per member
    and round, whatever the number of events), and before any reply to a member, rather
    than a ``Send`` per member at once. The asyncio shell sets it: a 10,000-member room made
    each presence change 10,000 writes in one go. Off, for in-process drivers that carry out
    ``Send`` only."""


def _err(req_id: int | None, code: ErrorCode, reason: str, **extra: Any) -> Error:
    return Error(id=req_id, code=code, reason=reason, **extra)


class RegistryCore:
    """Accounts, presence and rooms. One instance per registry process."""

    def __init__(
        self,
        store: Store,
        config: RegistryConfig | None = None,
        token_factory: Callable[[], str] = lambda: secrets.token_urlsafe(24),
        *,
        authority: Authority | None = None,
        wall_offset: float = 0.0,
    ) -> None:
        self.store = store
        self.config = config or RegistryConfig()
        self._new_token = token_factory
        self.authority = authority
        """Issues user certificates; without one, logins get none (peers cannot link)."""
        self._wall_offset = wall_offset
        """Added to ``now`` for the wall-clock time certificates are dated with."""
        self._ticket_key = store.secret()
        self.sessions: dict[int, Session] = {}
        self.online: dict[str, Session] = {}  # by casefolded username
        self._online_keys: list[str] = []  # the same keys, sorted, for paging
        self._by_token: dict[str, Session] = {}
        self._present: dict[str, dict[str, int]] = {}  # room key -> its online members' conns
        self._logs: dict[str, _RoomLog] = {}  # room key -> events held (``batch_events``)
        self._round: deque[_RoomRound] = deque()  # rooms being delivered (``flush``)
        self._held = 0  # events in all the logs
        self._anonymous: dict[int, None] = {}  # sessions not logged in, oldest first
        self._expiry: list[tuple[float, int, str]] = []  # (deadline, conn, token)
        self.pair_throttle = Throttle(free=3)  # failed logins per (account, address)
        self.ticket_throttle = Throttle(free=3)  # failed logins per (account, ticket)
        self.address_throttle = Throttle(free=10)  # failed logins per address
        self.registrations = TokenBucket(self.config.register_rate, self.config.register_burst)
        self.room_changes = TokenBucket(self.config.room_change_rate, self.config.room_change_burst)
        self.jobs = WorkQueue(self.config.hash_queue, self.config.hash_queue_per_address)
        self.running = 0
        self._anonymous_handlers: dict[type, Callable[[Session, Any, float], list[Action]]] = {
            Hello: self._hello,
            Register: self._register,
            Login: self._login,
            Resume: self._resume,
            Ping: self._tcp_ping,
        }
        # these need a login: they are handed the session's username
        self._logged_in: dict[type, Callable[[Session, str, Any, float], list[Action]]] = {
            Logout: self._logout,
            Search: self._search,
            ListUsers: self._users,
            CreateRoom: self._create_room,
            JoinRoom: self._join_room,
            LeaveRoom: self._leave_room,
            AddMember: self._add_member,
            RemoveMember: self._remove_member,
            Unban: self._unban,
            ListRooms: self._rooms,
            ListMembers: self._members,
            Renew: self._renew,
        }

    # ------------------------------------------------------------------ session lifecycle

    def connect(
        self, conn: int, source_host: str, now: float, cert: bytes | None = None
    ) -> list[Action]:
        """A new connection (with the user certificate it showed in TLS, if any). Beyond
        ``max_anonymous`` sessions not logged in, the oldest idle one makes room: connections
        that never log in cannot crowd out those that would."""
        session = Session(conn=conn, source_host=source_host, last_seen=now)
        if cert is not None and self.authority is not None:
            try:
                session.tls = read_user_cert(
                    cert, ca_key(self.authority.cert), now + self._wall_offset
                )
            except TrustError as exc:
                session.tls_refused = str(exc)
                log.info(
                    "a connection from %s showed a certificate we refuse: %s", source_host, exc
                )
        self.sessions[conn] = session
        self._anonymous[conn] = None
        heapq.heappush(self._expiry, (now + self.config.login_timeout, conn, ""))
        actions: list[Action] = []
        if len(self._anonymous) > self.config.max_anonymous:
            victim = next((c for c in self._anonymous if not self.sessions[c].busy), None)
            if victim is not None:
                del self._anonymous[victim]
                del self.sessions[victim]
                reason = "too many connections waiting to log in; this was the oldest"
                bye = Bye(code=ErrorCode.TOO_MANY_CONNECTIONS, reason=reason)
                actions.append(Send(victim, bye))
                actions.append(Close(victim))
        return actions

    def disconnect(self, conn: int, now: float) -> list[Action]:
        """The connection closed or broke: log its user out at once."""
        session = self.sessions.pop(conn, None)
        if session is None:
            return []
        self._anonymous.pop(conn, None)
        return self._logout_session(session, deliver=False)

    def handle(self, conn: int, request: RegistryRequest, now: float) -> list[Action]:
        session = self.sessions[conn]
        session.last_seen = now
        if not session.greeted and not isinstance(request, Hello):
            return [
                Send(
                    conn,
                    _err(
                        request.id,
                        ErrorCode.HELLO_REQUIRED,
                        "send hello with the protocol version first",
                    ),
                )
            ]
        # the events a member is owed go before its reply, as if each had been sent at once
        owed = self._drain(session) if self._logs and session.user is not None else []
        handler = self._anonymous_handlers.get(type(request))
        try:
            if handler is not None:
                actions = handler(session, request, now)
            elif session.user is None:
                actions = [Send(conn, _not_logged_in(request.id))]
            else:
                actions = self._logged_in[type(request)](session, session.user, request, now)
        except StoreError as exc:
            actions = [Send(conn, _storage_error(request.id, type(request).__name__, exc))]
        return owed + actions if owed else actions

    # ------------------------------------------------------------------ heartbeats

    def heartbeat(self, ping: Ping, now: float) -> bool:
        """A UDP ping. One for an unknown session, with a wrong MAC, or with a sequence number
        not above the last one (a replay) is ignored (False)."""
        session = self._by_token.get(ping.session)
        if session is None or ping.seq <= session.heartbeat_seq:
            return False
        expected = heartbeat_mac(session.heartbeat_key, ping.session, ping.seq)
        if not hmac.compare_digest(expected, ping.mac):
            return False
        session.heartbeat_seq = ping.seq
        session.last_seen = now
        return True

    def expire(self, now: float) -> list[Action]:
        """Disconnect every session not heard from within its limit: ``timeout`` when logged
        in, ``login_timeout`` when not (unless a password check is pending for it)."""
        actions: list[Action] = []
        heap = self._expiry
        cfg = self.config
        while heap and heap[0][0] <= now and self._held < EXPIRY_BACKLOG:
            _, conn, token = heapq.heappop(heap)
            session = self._by_token.get(token) if token else self.sessions.get(conn)
            if session is None or (not token and session.user is not None):
                continue  # logged out (or, for an anonymous entry, logged in) since
            limit = cfg.timeout if token else cfg.login_timeout
            deadline = (now if session.busy else session.last_seen) + limit
            if deadline > now:
                heapq.heappush(heap, (deadline, conn, token))
                continue
            del self.sessions[conn]
            self._anonymous.pop(conn, None)
            if token:
                log.info("%s missed its heartbeats; logged out", session.user)
                reason = f"no heartbeat for {limit:g} seconds; logged out"
            else:
                reason = f"idle for {limit:g} seconds without logging in"
            actions.extend(self._logout_session(session, deliver=True))
            actions.append(Send(conn, Bye(code=ErrorCode.TIMEOUT, reason=reason)))
            actions.append(Close(conn))
        return actions

    def next_deadline(self) -> float | None:
        """When ``expire`` is next due; None while it waits for held events to go out (the
        shell asks again once it has delivered them)."""
        if not self._expiry or self._held >= EXPIRY_BACKLOG:
            return None
        return self._expiry[0][0]

    # ------------------------------------------------------------------ password work

    def _queue(self, s: Session, job: Job, req_id: int) -> list[Action] | None:
        """Queue a password job fairly; None if it was queued, else the refusal."""
        if not self.jobs.push(self._work_key(s), job):
            return [Send(s.conn, _busy_hashing(req_id))]
        s.busy = True
        return None

    def _work_key(self, s: Session) -> str:
        host = s.source_host
        return f"{host}#{s.conn}" if host in self.config.exempt else host

    def _pump(self) -> list[Action]:
        """Start queued password jobs while a worker is free."""
        actions: list[Action] = []
        while self.running < self.config.hash_workers:
            job = self.jobs.pop()
            if job is None:
                break
            session = self.sessions.get(job.conn)
            if session is None or not session.busy:
                continue  # its connection closed meanwhile: no work for nobody
            self.running += 1
            actions.append(job)
        return actions

    def _job_done(self, conn: int) -> Session | None:
        self.running = max(0, self.running - 1)
        session = self.sessions.get(conn)
        if session is not None:
            session.busy = False
        return session

    def auth_failed(self, conn: int, req_id: int) -> list[Action]:
        """Hashing or verifying a password raised: answer, and free the session for a retry."""
        s = self._job_done(conn)
        actions = self._pump()
        if s is not None:
            actions.insert(0, Send(conn, _err(req_id, ErrorCode.INTERNAL, "internal error")))
            actions[:0] = self._drain(s)
        return actions

    # ------------------------------------------------------------------ handlers

    def _hello(self, s: Session, req: Hello, now: float) -> list[Action]:
        if req.version != PROTOCOL_VERSION:
            return [
                Send(
                    s.conn,
                    _err(
                        req.id,
                        ErrorCode.UNSUPPORTED_VERSION,
                        f"this registry speaks protocol version {PROTOCOL_VERSION}",
                    ),
                )
            ]
        s.greeted = True
        cfg = self.config
        return [
            Send(
                s.conn,
                Welcome(
                    id=req.id,
                    version=PROTOCOL_VERSION,
                    server=cfg.server,
                    udp_port=cfg.udp_port,
                    heartbeat_interval=cfg.heartbeat_interval,
                    timeout=cfg.timeout,
                ),
            )
        ]

    def _register(self, s: Session, req: Register, now: float) -> list[Action]:
        # the name and the password's length were checked by the decoder (messages.Register)
        if s.busy:
            return [Send(s.conn, _busy(req.id))]
        existing = self.store.lookalike(req.username)
        if existing is not None:
            return [Send(s.conn, _taken(req, existing))]
        if not self.jobs.has_room(WorkQueue.REGISTER, self._work_key(s)):
            return [Send(s.conn, _busy_hashing(req.id))]
        wait = self.registrations.take(s.source_host, now)
        if wait > 0:
            return [Send(s.conn, _rate_limited(req.id, "too many registrations", wait))]
        return self._queue(s, HashPassword(s.conn, req), req.id) or self._pump()

    def register_hashed(
        self, conn: int, req: Register, password_hash: str, now: float
    ) -> list[Action]:
        s = self._job_done(conn)
        actions = self._pump()
        if s is None:
            return actions
        try:
            self.store.create_account(req.username, password_hash)
        except NameTaken as exc:
            reply: Message = _taken(req, exc.existing)
        except StoreError as exc:
            reply = _storage_error(req.id, "register", exc)
        else:
            log.info("registered %s", req.username)
            reply = Ok(id=req.id)
        actions.insert(0, Send(conn, reply))
        actions[:0] = self._drain(s)  # a session may register while logged in
        return actions

    def _login(self, s: Session, req: Login, now: float) -> list[Action]:
        if s.user is not None:
            return [
                Send(
                    s.conn,
                    _err(req.id, ErrorCode.ALREADY_LOGGED_IN, f"already logged in as {s.user}"),
                )
            ]
        if req.host is not None:
            refusal = self._check_advertised(s, req)
            if refusal is not None:
                return [Send(s.conn, refusal)]
        if s.busy:
            return [Send(s.conn, _busy(req.id))]
        key = req.username.casefold()
        ticket = self._ticket_key_of(key, req.ticket) if req.ticket else ""
        if ticket:  # a previous good login: others' failures do not count against it
            wait = self.ticket_throttle.retry_after(ticket, now)
        else:
            wait = max(
                self.pair_throttle.retry_after(_pair(key, s.source_host), now),
                self.address_throttle.retry_after(s.source_host, now),
            )
        if wait > 0:
            return [Send(s.conn, _rate_limited(req.id, "too many failed logins", wait))]
        lane = WorkQueue.TICKET if ticket else WorkQueue.LOGIN
        if not self.jobs.has_room(lane, self._work_key(s)):
            return [Send(s.conn, _busy_hashing(req.id))]
        account = self.store.get_account(req.username)
        # Counted as a failure until proven right, so that parallel guesses on many sessions
        # are throttled as they start rather than after their hashes finish. An unknown name
        # is checked against a hash all the same: its answer, and its cost, are a wrong
        # password's.
        if ticket:
            self.ticket_throttle.fail(ticket, now)
        else:
            self.pair_throttle.fail(_pair(key, s.source_host), now)
        job = VerifyPassword(s.conn, req, account.password_hash if account else None, ticket)
        return self._queue(s, job, req.id) or self._pump()

    def _check_advertised(self, s: Session, req: Login) -> Error | None:
        host = req.host or ""
        if not valid_host(host):
            return _err(req.id, ErrorCode.BAD_REQUEST, "host must be an IP address or DNS name")
        if self.config.allow_advertise or _same_address(host, s.source_host):
            return None
        return _err(
            req.id,
            ErrorCode.ADVERTISE_NOT_ALLOWED,
            f"this registry publishes the address it sees ({s.source_host}), not {host!r}; "
            "leave host out (or start the registry with --allow-advertise)",
        )

    def login_verified(
        self, conn: int, req: Login, ok: bool, now: float, ticket: str = ""
    ) -> list[Action]:
        s = self._job_done(conn)
        actions = self._pump()
        if s is None:
            return actions
        key = req.username.casefold()
        if not ok:
            if not ticket:
                self.address_throttle.fail(s.source_host, now)
            actions.insert(0, Send(conn, _wrong_password(req.id)))
            return actions
        if ticket:
            self.ticket_throttle.succeed(ticket)
        else:
            self.pair_throttle.succeed(_pair(key, s.source_host))
        try:
            actions[:0] = self._go_online(s, req, now)
        except StoreError as exc:
            actions.insert(0, Send(conn, _storage_error(req.id, "login", exc)))
        return actions

    def _resume(self, s: Session, req: Resume, now: float) -> list[Action]:
        """Logged in again by the TLS client certificate, without a password hash."""
        if s.user is not None:
            return [
                Send(
                    s.conn,
                    _err(req.id, ErrorCode.ALREADY_LOGGED_IN, f"already logged in as {s.user}"),
                )
            ]
        cert = s.tls
        if cert is None:
            if s.tls_refused:
                reason = f"{s.tls_refused}; log in with the password"
            else:
                reason = "resume needs this registry's certificate for the user; log in instead"
            return [Send(s.conn, _err(req.id, ErrorCode.CERT_REFUSED, reason))]
        account = self.store.get_account(cert.username)
        if account is None or account.public_key != cert.public_key:
            reason = (
                f"the key of this certificate is no longer {cert.username}'s (a later login "
                "replaced it); log in with the password"
            )
            return [Send(s.conn, _err(req.id, ErrorCode.CERT_REFUSED, reason))]
        login = Login(
            id=req.id,
            username=account.username,
            password="",
            port=req.port,
            host=req.host,
            key=b64(cert.public_key),
        )
        if req.host is not None:
            refusal = self._check_advertised(s, login)
            if refusal is not None:
                return [Send(s.conn, refusal)]
        return self._go_online(s, login, now)

    def _renew(self, s: Session, user: str, req: Renew, now: float) -> list[Action]:
        if s.public_key is None or self.authority is None:
            reason = "this session has no key to certify (log in with one)"
            return [Send(s.conn, _err(req.id, ErrorCode.CERT_REFUSED, reason))]
        cert = self.authority.issue(user, s.public_key, now + self._wall_offset)
        return [Send(s.conn, CertificateReply(id=req.id, cert=b64(cert)))]

    def _go_online(self, s: Session, req: Login, now: float) -> list[Action]:
        """Every read first; then the session is online, all at once."""
        key = req.username.casefold()
        account = self.store.get_account(req.username)
        rooms = self.store.rooms_of(req.username)
        if account is None:  # the hash was checked against the stand-in: cannot be right
            return [Send(s.conn, _wrong_password(req.id))]
        if key in self.online:
            return [
                Send(
                    s.conn,
                    _err(req.id, ErrorCode.ALREADY_ONLINE, f"{account.username} is already online"),
                )
            ]
        if s.user is not None:
            return [
                Send(
                    s.conn,
                    _err(req.id, ErrorCode.ALREADY_LOGGED_IN, f"already logged in as {s.user}"),
                )
            ]
        public_key = unb64(req.key) if req.key is not None else None
        if public_key is not None and public_key != account.public_key:
            self.store.set_key(account.username, public_key)  # the last write before going on
        cert = None
        if public_key is not None and self.authority is not None:
            cert = b64(self.authority.issue(account.username, public_key, now + self._wall_offset))
        token = self._new_token()
        heartbeat_key = secrets.token_bytes(32)
        s.user, s.key, s.token = account.username, key, token
        s.heartbeat_key, s.heartbeat_seq, s.public_key = heartbeat_key, 0, public_key
        s.host = req.host or s.source_host
        s.port = req.port
        s.last_seen = now
        s.rooms = {room.casefold(): room for room in rooms}
        self.online[key] = s
        bisect.insort(self._online_keys, key)
        self._by_token[token] = s
        self._anonymous.pop(s.conn, None)
        heapq.heappush(self._expiry, (now + self.config.timeout, s.conn, token))
        log.info("%s logged in at %s:%d", account.username, s.host, s.port)
        cfg = self.config
        actions: list[Action] = [
            Send(
                s.conn,
                LoggedIn(
                    id=req.id,
                    username=account.username,
                    session=token,
                    heartbeat_key=b64(heartbeat_key),
                    host=s.host,
                    port=s.port,
                    udp_port=cfg.udp_port,
                    heartbeat_interval=cfg.heartbeat_interval,
                    timeout=cfg.timeout,
                    ticket=self._issue_ticket(key) if req.password else None,
                    cert=cert,
                ),
            )
        ]
        for room_key, room in s.rooms.items():
            self._present_in(s, room_key)
            actions.extend(
                self._tell_room(
                    room_key, room, s, "online", host=s.host, port=s.port, key=public_key
                )
            )
        return actions

    # A login ticket is "NONCE.MAC": MAC = HMAC(the registry's key, account key, NONCE). It
    # proves a past good login for that account and nothing else (it is not a credential);
    # its throttle key is the account and the nonce.

    def _issue_ticket(self, key: str) -> str:
        nonce = secrets.token_hex(8)
        return f"{nonce}.{self._ticket_mac(key, nonce)}"

    def _ticket_mac(self, key: str, nonce: str) -> str:
        msg = f"p2pchat-ticket\0{key}\0{nonce}".encode()
        return hmac.new(self._ticket_key, msg, hashlib.sha256).hexdigest()[:32]

    def _ticket_key_of(self, key: str, ticket: str) -> str:
        """The throttle key of a valid ticket for account ``key``, or "" if it is not one."""
        nonce, _, mac = ticket.partition(".")
        expected = self._ticket_mac(key, nonce).encode()
        if not nonce or not hmac.compare_digest(mac.encode(), expected):
            return ""
        return f"{key}\0{nonce}"

    def _logout(self, s: Session, user: str, req: Logout, now: float) -> list[Action]:
        log.info("%s logged out", user)
        actions = self._logout_session(s, deliver=True)
        self._anonymous[s.conn] = None
        heapq.heappush(self._expiry, (now + self.config.login_timeout, s.conn, ""))
        actions.insert(0, Send(s.conn, Ok(id=req.id)))
        return actions

    def _logout_session(self, s: Session, *, deliver: bool) -> list[Action]:
        """Offline at once, from memory only: this cannot fail. ``deliver``: the session is
        still there to be given the room events it is owed (first)."""
        if s.user is None:
            return []
        user, key = s.user, s.key
        self.online.pop(key, None)
        index = bisect.bisect_left(self._online_keys, key)
        if index < len(self._online_keys) and self._online_keys[index] == key:
            del self._online_keys[index]
        self._by_token.pop(s.token, None)
        s.user, s.key, s.token = None, "", ""
        actions: list[Action] = []
        for room_key in s.rooms:
            actions.extend(self._absent(s, room_key, key, deliver))
        for room_key, room in s.rooms.items():
            actions.extend(self._tell_room(room_key, room, None, "offline", username=user))
        s.rooms = {}
        return actions

    def _tcp_ping(self, s: Session, req: Ping, now: float) -> list[Action]:
        if s.user is None or req.session != s.token or not self.heartbeat(req, now):
            reason = "not a valid heartbeat for this session"
            return [Send(s.conn, _err(req.id, ErrorCode.NOT_LOGGED_IN, reason))]
        return [Send(s.conn, Ok(id=req.id))] if req.id is not None else []

    def _search(self, s: Session, user: str, req: Search, now: float) -> list[Action]:
        """An online user's address is given: it is what a direct message needs."""
        account = self.store.get_account(req.username)
        if account is None:
            return [Send(s.conn, _no_user(req.id, req.username))]
        peer = self.online.get(account.username.casefold())
        if peer is None:
            return [Send(s.conn, SearchResult(id=req.id, username=account.username, online=False))]
        return [
            Send(
                s.conn,
                SearchResult(
                    id=req.id,
                    username=account.username,
                    online=True,
                    host=peer.host,
                    port=peer.port,
                    key=b64(peer.public_key) if peer.public_key else None,
                ),
            )
        ]

    def _users(self, s: Session, user: str, req: ListUsers, now: float) -> list[Action]:
        """Names only: an address is given by ``search`` and to fellow members."""
        limit = _limit(req.limit)
        keys = self._online_keys
        start = bisect.bisect_right(keys, (req.after or "").casefold())
        page = keys[start : start + limit]
        users = [UserAddr(username=self.online[k].user or "") for k in page]
        more = start + limit < len(keys)
        return [Send(s.conn, UserList(id=req.id, users=users, more=more))]

    # ------------------------------------------------------------------ rooms

    def _room_change(self, user: str, req_id: int, now: float) -> Error | None:
        """Charge one room change to the user; the refusal if none is left."""
        wait = self.room_changes.take(user.casefold(), now)
        return _rate_limited(req_id, "too many room changes", wait) if wait > 0 else None

    def _visible(self, s: Session, name: str) -> Room | None:
        """The room, unless it does not exist or is private and ``s`` is not in it: to a
        non-member, a private room and a missing one look the same."""
        room = self.store.get_room(name)
        if room is None or (room.private and room.room.casefold() not in s.rooms):
            return None
        return room

    def _too_many_rooms(self, req_id: int, who: str, count: int) -> Error | None:
        cap = self.config.max_rooms_per_user
        if count < cap:
            return None
        return _err(req_id, ErrorCode.TOO_MANY_ROOMS, f"{who} in {cap} rooms, the most allowed")

    def _create_room(self, s: Session, user: str, req: CreateRoom, now: float) -> list[Action]:
        refused = self._room_change(user, req.id, now)
        if refused:
            return [Send(s.conn, refused)]
        too_many = self._too_many_rooms(req.id, "you are", len(s.rooms))
        if too_many is None and self.store.owned_count(user) >= self.config.max_owned_rooms:
            cap = self.config.max_owned_rooms
            too_many = _err(req.id, ErrorCode.TOO_MANY_ROOMS, f"you own {cap} rooms, the most")
        if too_many is not None:
            return [Send(s.conn, too_many)]
        try:
            room = self.store.create_room(req.room, req.private, user)
        except RoomExists:
            reason = f"the room id {_q(req.room)} is taken"
            return [Send(s.conn, _err(req.id, ErrorCode.ROOM_EXISTS, reason))]
        self._enter(s, room.room)
        return [Send(s.conn, Ok(id=req.id))]

    def _join_room(self, s: Session, user: str, req: JoinRoom, now: float) -> list[Action]:
        refused = self._room_change(user, req.id, now)
        if refused:
            return [Send(s.conn, refused)]
        room = self._visible(s, req.room)
        if room is None:
            return [Send(s.conn, _no_room(req.id, req.room))]
        if room.room.casefold() in s.rooms:
            return [Send(s.conn, _err(req.id, ErrorCode.ALREADY_MEMBER, f"already in {room.room}"))]
        if self.store.is_banned(room.room, user):
            reason = f"you are banned from {room.room}"
            return [Send(s.conn, _err(req.id, ErrorCode.BANNED, reason))]
        too_many = self._too_many_rooms(req.id, "you are", len(s.rooms))
        if too_many is not None:
            return [Send(s.conn, too_many)]
        if not self.store.add_member(room.room, user):
            return [Send(s.conn, _err(req.id, ErrorCode.ALREADY_MEMBER, f"already in {room.room}"))]
        self._enter(s, room.room)
        actions: list[Action] = [Send(s.conn, Ok(id=req.id))]
        actions.extend(
            self._tell_room(
                room.room.casefold(),
                room.room,
                s,
                "joined",
                host=s.host,
                port=s.port,
                key=s.public_key,
                since=now + self._wall_offset,
            )
        )
        return actions

    def _leave_room(self, s: Session, user: str, req: LeaveRoom, now: float) -> list[Action]:
        refused = self._room_change(user, req.id, now)
        if refused:
            return [Send(s.conn, refused)]
        room = self._visible(s, req.room)
        if room is None:
            return [Send(s.conn, _no_room(req.id, req.room))]
        if room.room.casefold() not in s.rooms or not self.store.leave_room(room.room, user):
            return [Send(s.conn, _not_member(req.id, user, room.room))]
        actions: list[Action] = self._leave(s, room.room)
        actions.append(Send(s.conn, Ok(id=req.id)))
        actions.extend(self._tell_room(room.room.casefold(), room.room, s, "left", username=user))
        return actions

    def _add_member(self, s: Session, user: str, req: AddMember, now: float) -> list[Action]:
        refused = self._room_change(user, req.id, now)
        if refused:
            return [Send(s.conn, refused)]
        room = self._visible(s, req.room)
        if room is None:
            return [Send(s.conn, _no_room(req.id, req.room))]
        if room.room.casefold() not in s.rooms:
            return [Send(s.conn, _not_member(req.id, user, room.room))]
        owner = room.owner.casefold() == user.casefold()
        if not owner and (req.may_add is not None or room.private):
            if req.may_add is not None:
                reason = f"only {room.owner} may let members add others to {room.room}"
                return [Send(s.conn, _err(req.id, ErrorCode.NOT_OWNER, reason))]
            if not self.store.membership(room.room, user):
                reason = f"only {room.owner}, or members they allowed, may add to {room.room}"
                return [Send(s.conn, _err(req.id, ErrorCode.NOT_OWNER, reason))]
        account = self.store.get_account(req.username)
        if account is None:
            return [Send(s.conn, _no_user(req.id, req.username))]
        name = account.username
        if self.store.membership(room.room, name) is not None:
            if owner and req.may_add is not None:
                self.store.set_may_add(room.room, name, req.may_add)
                return [Send(s.conn, Ok(id=req.id))]
            reason = f"{name} is already in {room.room}"
            return [Send(s.conn, _err(req.id, ErrorCode.ALREADY_MEMBER, reason))]
        if not owner and self.store.is_banned(room.room, name):
            reason = f"{name} is banned from {room.room}; only {room.owner} can let them back"
            return [Send(s.conn, _err(req.id, ErrorCode.BANNED, reason))]
        target = self.online.get(name.casefold())
        count = len(target.rooms) if target else len(self.store.rooms_of(name))
        too_many = self._too_many_rooms(req.id, f"{name} is", count)
        if too_many is not None:
            return [Send(s.conn, too_many)]
        if not self.store.add_member(room.room, name, bool(req.may_add)):
            reason = f"{name} is already in {room.room}"
            return [Send(s.conn, _err(req.id, ErrorCode.ALREADY_MEMBER, reason))]
        if target is not None:
            self._enter(target, room.room)
        actions: list[Action] = [Send(s.conn, Ok(id=req.id))]
        actions.extend(
            self._tell_room(
                room.room.casefold(),
                room.room,
                None,
                "added",
                username=name,
                by=user,
                host=target.host if target else None,
                port=target.port if target else None,
                key=account.public_key,
                since=now + self._wall_offset,
            )
        )
        return actions

    def _owned(
        self, s: Session, user: str, req: RemoveMember | Unban, now: float
    ) -> tuple[Room, str] | Error:
        """The room and the user named by an owner's request, or the error for it."""
        refused = self._room_change(user, req.id, now)
        if refused:
            return refused
        room = self._visible(s, req.room)
        if room is None:
            return _no_room(req.id, req.room)
        if room.owner.casefold() != user.casefold():
            return _err(req.id, ErrorCode.NOT_OWNER, f"only {room.owner} may do this")
        account = self.store.get_account(req.username)
        if account is None:
            return _no_user(req.id, req.username)
        return room, account.username

    def _remove_member(self, s: Session, user: str, req: RemoveMember, now: float) -> list[Action]:
        found = self._owned(s, user, req, now)
        if isinstance(found, Error):
            return [Send(s.conn, found)]
        room, name = found
        if name.casefold() == user.casefold():
            reason = "to leave your own room, use leave_room"
            return [Send(s.conn, _err(req.id, ErrorCode.BAD_REQUEST, reason))]
        if not self.store.remove_member(room.room, name, ban=req.ban):
            if req.ban:  # a ban needs no membership: it keeps them from joining
                return [Send(s.conn, Ok(id=req.id))]
            return [Send(s.conn, _not_member(req.id, name, room.room))]
        # told while the member being removed is still present, so that they hear of it too
        room_key = room.room.casefold()
        actions: list[Action] = [Send(s.conn, Ok(id=req.id))]
        actions.extend(
            self._tell_room(room_key, room.room, None, "removed", username=name, by=user)
        )
        target = self.online.get(name.casefold())
        if target is not None:
            actions.extend(self._leave(target, room.room))
        return actions

    def _unban(self, s: Session, user: str, req: Unban, now: float) -> list[Action]:
        found = self._owned(s, user, req, now)
        if isinstance(found, Error):
            return [Send(s.conn, found)]
        self.store.unban(found[0].room, found[1])
        return [Send(s.conn, Ok(id=req.id))]

    def _rooms(self, s: Session, user: str, req: ListRooms, now: float) -> list[Action]:
        limit = _limit(req.limit)
        after = (req.after or "").casefold()
        rows = self.store.rooms_page(user, after, limit + 1, req.mine)
        infos = [
            RoomInfo(
                room=r.room,
                private=r.private,
                owner=r.owner,
                members=r.members,
                online=self.online_in(r.room),
                member=r.room.casefold() in s.rooms,
            )
            for r in rows[:limit]
        ]
        return [Send(s.conn, RoomList(id=req.id, rooms=infos, more=len(rows) > limit))]

    def _members(self, s: Session, user: str, req: ListMembers, now: float) -> list[Action]:
        """Addresses go to members only: they are the ones who link to each other."""
        room = self._visible(s, req.room)
        if room is None:
            return [Send(s.conn, _no_room(req.id, req.room))]
        limit = _limit(req.limit)
        rows = self.store.members_page(room.room, (req.after or "").casefold(), limit + 1)
        member = room.room.casefold() in s.rooms
        owner = room.owner.casefold()
        infos: list[MemberInfo] = []
        for row in rows[:limit]:
            name = row.username
            peer = self.online.get(name.casefold())
            infos.append(
                MemberInfo(
                    username=name,
                    online=peer is not None,
                    owner=name.casefold() == owner,
                    host=peer.host if peer and member else None,
                    port=peer.port if peer and member else None,
                    key=b64(row.public_key) if member and row.public_key else None,
                    since=row.since if member else None,
                )
            )
        return [
            Send(
                s.conn,
                MemberList(id=req.id, room=room.room, members=infos, more=len(rows) > limit),
            )
        ]

    # ------------------------------------------------------------------ presence in rooms

    def _enter(self, s: Session, room: str) -> None:
        """``s``'s user is now a member of ``room`` (already written to the store)."""
        room_key = room.casefold()
        s.rooms[room_key] = room
        self._present_in(s, room_key)

    def _present_in(self, s: Session, room_key: str) -> None:
        """``s`` is now an online member of the room: owed its events from now on."""
        self._present.setdefault(room_key, {})[s.key] = s.conn
        log = self._logs.get(room_key)
        if log is not None:
            log.cursors[s.conn] = log.end

    def _leave(self, s: Session, room: str) -> list[Action]:
        """``s``'s user is no longer a member of ``room``: what it is owed of the room's
        events, before it goes."""
        room_key = room.casefold()
        s.rooms.pop(room_key, None)
        return self._absent(s, room_key, s.key, True)

    def _absent(self, s: Session, room_key: str, user_key: str, deliver: bool) -> list[Action]:
        present = self._present.get(room_key)
        if present is not None:
            present.pop(user_key, None)
            if not present:
                del self._present[room_key]
        log = self._logs.get(room_key)
        if log is None:
            return []
        events = log.owed(s.conn, log.end) if deliver else []
        log.cursors.pop(s.conn, None)
        return [SendEvents([s.conn], events)] if events else []

    def online_in(self, room: str) -> int:
        """Online members of ``room`` (from memory)."""
        return len(self._present.get(room.casefold(), ()))

    def _tell_room(
        self,
        room_key: str,
        room: str,
        subject: Session | None,
        change: RoomChange,
        *,
        username: str | None = None,
        host: str | None = None,
        port: int | None = None,
        by: str | None = None,
        key: bytes | None = None,
        since: float | None = None,
    ) -> list[Action]:
        """An event for every online member of the room except the session that caused it:
        sent at once, or held in the room's log (``batch_events``)."""
        name = username or (subject.user if subject else None) or ""
        event = RoomEvent(
            room=room,
            username=name,
            change=change,
            host=host,
            port=port,
            by=by,
            key=b64(key) if key is not None else None,
            since=since,
        )
        skip = subject.conn if subject else -1
        present = self._present.get(room_key)
        if not present:
            return []
        if not self.config.batch_events:
            return [Send(conn, event) for conn in present.values() if conn != skip]
        log = self._logs.get(room_key)
        if log is None:
            log = self._logs[room_key] = _RoomLog()
        log.events.append((event, skip))
        self._held += 1
        if len(log.events) >= ROOM_LOG_LIMIT or self._held >= HELD_EVENTS_LIMIT:
            return self._deliver_room(room_key, log)
        return []

    # ------------------------------------------------------------------ held room events

    @property
    def events_waiting(self) -> bool:
        """Whether ``flush`` has events to deliver (``batch_events``)."""
        return bool(self._logs)

    @property
    def flushing(self) -> bool:
        """Whether a delivery round is under way (``flush`` goes on with it)."""
        return bool(self._round)

    def _drain(self, s: Session) -> list[Action]:
        """What ``s`` is owed in every room, now (before a reply to it)."""
        if len(self._logs) < len(s.rooms):
            keys = [k for k in self._logs if k in s.rooms]
        else:
            keys = [k for k in s.rooms if k in self._logs]
        actions: list[Action] = []
        for room_key in keys:
            log = self._logs[room_key]
            end = log.end
            events = log.owed(s.conn, end)
            if log.cursors.get(s.conn, log.base) < end:
                log.cursors[s.conn] = end
            if events:
                actions.append(SendEvents([s.conn], events))
        return actions

    def _deliver_room(self, room_key: str, log: _RoomLog) -> list[Action]:
        """Everything the room holds, to every online member, at once (its log is full)."""
        end = log.end
        batch, skips = _shared(log, end)
        shared = SendEvents([], batch)
        actions: list[Action] = []
        for conn in self._present.get(room_key, {}).values():
            if conn not in skips and log.cursors.get(conn, log.base) == log.base:
                shared.conns.append(conn)
            elif events := log.owed(conn, end):
                actions.append(SendEvents([conn], events))
        if shared.conns:
            actions.append(shared)
        self._held -= len(log.events)
        log.base, log.events, log.cursors = end, [], {}
        del self._logs[room_key]  # a round under way with it finds nothing left to send
        return actions

    def flush(self, budget: int) -> list[Action]:
        """Deliver held room events (``batch_events``), to at most ``budget`` sessions: each
        online member of a room gets all it is owed there in one ``SendEvents``. A round
        takes the rooms holding events when it begins, each up to its last event then;
        later calls go on with it, and events that come meanwhile wait for the next round.
        The shell decides when rounds run and how many sessions a call serves."""
        if not self._round:
            for room_key, log in self._logs.items():
                conns = list(self._present.get(room_key, {}).values())
                self._round.append(_RoomRound(room_key, log, log.end, conns))
        actions: list[Action] = []
        while self._round and budget > 0:
            part = self._round[0]
            log = part.log
            if part.batch is None:
                part.batch, part.skips = _shared(log, part.end)
            base = log.base
            conns = part.conns
            shared: SendEvents | None = None
            while part.index < len(conns) and budget > 0:
                conn = conns[part.index]
                part.index += 1
                s = self.sessions.get(conn)
                if s is None or part.room_key not in s.rooms:
                    continue  # gone: it was given what it was owed as it went
                start = log.cursors.get(conn, base)
                if start >= part.end:
                    continue
                if start == base and conn not in part.skips:
                    if shared is None:
                        shared = SendEvents([], part.batch)
                        actions.append(shared)
                    shared.conns.append(conn)
                    budget -= 1
                elif events := log.owed(conn, part.end):
                    actions.append(SendEvents([conn], events))
                    budget -= 1
                log.cursors[conn] = part.end  # a reply to it before the round ends: no more
            if part.index >= len(conns):
                self._round.popleft()
                self._finish(part)
        return actions

    def _finish(self, part: _RoomRound) -> None:
        """Every member online at the round's start has had the room's events up to its end."""
        log = part.log
        if self._logs.get(part.room_key) is not log:
            return
        if part.end > log.base:
            done = part.end - log.base
            del log.events[:done]
            self._held -= done
            log.base = part.end
        log.cursors = {c: n for c, n in log.cursors.items() if n > log.base}
        if not log.events:
            del self._logs[part.room_key]


def _shared(log: _RoomLog, end: int) -> tuple[list[RoomEvent], frozenset[int]]:
    """The events from ``log.base`` to ``end``, and the sessions some of them skip."""
    held = log.events[: max(0, end - log.base)]
    return [e for e, _ in held], frozenset(skip for _, skip in held if skip >= 0)


def _pair(key: str, host: str) -> str:
    return f"{key}\0{host}"


def _same_address(a: str, b: str) -> bool:
    """Whether two addresses are one, an IPv4 address and its IPv6-mapped form alike."""
    try:
        x, y = ipaddress.ip_address(a), ipaddress.ip_address(b)
    except ValueError:
        return a == b
    if isinstance(x, ipaddress.IPv6Address) and x.ipv4_mapped is not None:
        x = x.ipv4_mapped
    if isinstance(y, ipaddress.IPv6Address) and y.ipv4_mapped is not None:
        y = y.ipv4_mapped
    return x == y


def _q(name: str) -> str:
    """A name from a request, quoted and cut short: replies must stay small."""
    return repr(name if len(name) <= 40 else name[:40] + "...")


def _rate_limited(req_id: int, what: str, wait: float) -> Error:
    return _err(
        req_id,
        ErrorCode.RATE_LIMITED,
        f"{what}; try again in {wait:.1f} s",
        retry_after=round(max(wait, 0.001), 3),
    )


def _busy_hashing(req_id: int) -> Error:
    return _rate_limited(req_id, "too many password checks waiting", 1.0)


def _storage_error(req_id: int | None, what: str, exc: StoreError) -> Error:
    log.error("storage error in %s: %s", what, exc)  # one line, no traceback: it is not a bug
    return _err(
        req_id,
        ErrorCode.STORAGE_ERROR,
        "the registry cannot use its database just now; nothing was changed; try again later",
    )


def _wrong_password(req_id: int) -> Error:
    return _err(req_id, ErrorCode.WRONG_PASSWORD, "wrong password, or no such user")


def _no_user(req_id: int, name: str) -> Error:
    return _err(req_id, ErrorCode.NO_SUCH_USER, f"no user {_q(name)}")


def _limit(limit: int) -> int:
    return max(1, min(limit, LIST_LIMIT))


def _busy(req_id: int) -> Error:
    return _err(req_id, ErrorCode.BAD_REQUEST, "a register or login is already in progress")


def _taken(req: Register, existing: str) -> Error:
    if existing.casefold() == req.username.casefold():
        reason = f"the name {_q(req.username)} is taken"
    else:
        reason = f"the name {_q(req.username)} looks too much like {existing!r}, which exists"
    return _err(req.id, ErrorCode.NAME_TAKEN, reason)


def _not_logged_in(req_id: int | None) -> Error:
    return _err(req_id, ErrorCode.NOT_LOGGED_IN, "log in first")


def _no_room(req_id: int, room: str) -> Error:
    return _err(req_id, ErrorCode.NO_SUCH_ROOM, f"no room {_q(room)}")


def _not_member(req_id: int, user: str, room: str) -> Error:
    return _err(req_id, ErrorCode.NOT_A_MEMBER, f"{user} is not a member of {room}")
