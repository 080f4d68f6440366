"""The registry's decisions, without I/O.

The core is fed decoded requests, heartbeats and the current time, and returns actions (send
this message on that session, close that session, hash or verify this password). The asyncio
shell in ``server.py`` carries them out. Heartbeat expiry is therefore a matter of calling
``expire(now)`` with a later ``now``, which is how the tests check it without waiting.

Argon2id is deliberately slow, so the core never runs it: it returns ``HashPassword`` or
``VerifyPassword`` and the shell runs the hash in a worker thread, then calls back
``register_hashed`` / ``login_verified``. State is re-checked on the way back, since other
requests may have been served in between.
"""

from __future__ import annotations

import heapq
import hmac
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from p2pchat.protocol.messages import (
    LIST_LIMIT,
    PROTOCOL_VERSION,
    AddMember,
    Bye,
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
    RoomChange,
    RoomEvent,
    RoomInfo,
    RoomList,
    Search,
    SearchResult,
    UserAddr,
    UserList,
    Vouch,
    Welcome,
    link_proof,
    valid_host,
    valid_name,
    valid_password,
)
from p2pchat.store.base import NameTaken, RoomExists, Store

log = logging.getLogger("p2pchat.registry")

# ---------------------------------------------------------------------------- actions


@dataclass(slots=True)
class Send:
    conn: int
    msg: Message


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
    """Check ``request.password`` against ``password_hash``, then call ``login_verified``."""

    conn: int
    request: Login
    password_hash: str


Action = Send | Close | HashPassword | VerifyPassword

# ---------------------------------------------------------------------------- state


@dataclass(slots=True)
class Session:
    """One TCP session; logged in when ``user`` is set."""

    conn: int
    source_host: str
    greeted: bool = False
    busy: bool = False  # a password hash is in flight for this session
    user: str | None = None
    key: str = ""
    host: str = ""
    port: int = 0
    token: str = ""
    last_seen: float = 0.0


@dataclass(slots=True)
class _Strikes:
    failures: int = 0
    locked_until: float = 0.0
    last: float = 0.0


@dataclass(slots=True)
class Throttle:
    """Slows down repeated wrong passwords for one key (an account or a source address).

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


@dataclass(slots=True)
class TokenBucket:
    """Per-key rate limit: ``burst`` at once, then ``rate`` per second; bounded key count."""

    rate: float
    burst: float
    max_keys: int = 100_000
    _keys: dict[str, tuple[float, float]] = field(default_factory=dict)  # key -> (tokens, t)

    def take(self, key: str, now: float) -> float:
        """Take one token; return 0 if allowed, else how many seconds until one is free."""
        tokens, last = self._keys.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < 1:
            self._keys[key] = (tokens, now)
            return (1 - tokens) / self.rate if self.rate > 0 else float("inf")
        self._keys[key] = (tokens - 1, now)
        while len(self._keys) > self.max_keys:
            del self._keys[next(iter(self._keys))]
        return 0.0


def _err(req_id: int | None, code: ErrorCode, reason: str, **extra: Any) -> Error:
    return Error(id=req_id, code=code, reason=reason, **extra)


class RegistryCore:
    """Accounts, presence and rooms. One instance per registry process."""

    def __init__(
        self,
        store: Store,
        config: RegistryConfig | None = None,
        token_factory: Callable[[], str] = lambda: secrets.token_urlsafe(24),
    ) -> None:
        self.store = store
        self.config = config or RegistryConfig()
        self._new_token = token_factory
        self.sessions: dict[int, Session] = {}
        self.online: dict[str, Session] = {}  # by casefolded username
        self._by_token: dict[str, Session] = {}
        self._expiry: list[tuple[float, int, str]] = []  # (deadline, conn, token)
        self.account_throttle = Throttle(free=3)
        self.address_throttle = Throttle(free=10)
        self.registrations = TokenBucket(self.config.register_rate, self.config.register_burst)
        self._anonymous: dict[type, Callable[[Session, Any, float], list[Action]]] = {
            Hello: self._hello,
            Register: self._register,
            Login: self._login,
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
            ListRooms: self._rooms,
            ListMembers: self._members,
            Vouch: self._vouch,
        }

    # ------------------------------------------------------------------ session lifecycle

    def connect(self, conn: int, source_host: str, now: float) -> None:
        self.sessions[conn] = Session(conn=conn, source_host=source_host, last_seen=now)
        # a session that never logs in and falls silent must not hold its slot for ever
        heapq.heappush(self._expiry, (now + self.config.timeout, conn, ""))

    def disconnect(self, conn: int, now: float) -> list[Action]:
        """The connection closed or broke: log its user out at once."""
        session = self.sessions.pop(conn, None)
        if session is None:
            return []
        return self._logout_session(session)

    def handle(self, conn: int, request: RegistryRequest, now: float) -> list[Action]:
        session = self.sessions[conn]
        session.last_seen = now
        if not session.greeted and not isinstance(request, Hello):
            return [
                Send(
                    conn,
                    _err(
                        _req_id(request),
                        ErrorCode.HELLO_REQUIRED,
                        "send hello with the protocol version first",
                    ),
                )
            ]
        handler = self._anonymous.get(type(request))
        if handler is not None:
            return handler(session, request, now)
        if session.user is None:
            return [Send(conn, _not_logged_in(_req_id(request)))]
        return self._logged_in[type(request)](session, session.user, request, now)

    # ------------------------------------------------------------------ heartbeats

    def heartbeat(self, token: str, now: float) -> bool:
        """A UDP ping. Unknown or stale tokens are ignored (False)."""
        session = self._by_token.get(token)
        if session is None:
            return False
        session.last_seen = now
        return True

    def expire(self, now: float) -> list[Action]:
        """Disconnect every session not heard from within the timeout."""
        actions: list[Action] = []
        heap = self._expiry
        timeout = self.config.timeout
        while heap and heap[0][0] <= now:
            _, conn, token = heapq.heappop(heap)
            session = self._by_token.get(token) if token else self.sessions.get(conn)
            if session is None or (not token and session.user is not None):
                continue  # logged out (or, for an anonymous entry, logged in) since
            deadline = session.last_seen + timeout
            if deadline > now:
                heapq.heappush(heap, (deadline, conn, token))
                continue
            del self.sessions[conn]
            if token:
                log.info("%s missed its heartbeats; logged out", session.user)
                reason = f"no heartbeat for {timeout:g} seconds; logged out"
            else:
                reason = f"idle for {timeout:g} seconds without logging in"
            actions.append(Send(conn, Bye(code="timeout", reason=reason)))
            actions.append(Close(conn))
            actions.extend(self._logout_session(session))
        return actions

    def next_deadline(self) -> float | None:
        return self._expiry[0][0] if self._expiry else None

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
        if not valid_name(req.username):
            return [Send(s.conn, _err(req.id, ErrorCode.INVALID_USERNAME, _NAME_RULE))]
        if not valid_password(req.password):
            return [Send(s.conn, _err(req.id, ErrorCode.INVALID_PASSWORD, _PASSWORD_RULE))]
        if s.busy:
            return [Send(s.conn, _busy(req.id))]
        wait = self.registrations.take(s.source_host, now)
        if wait > 0:
            return [Send(s.conn, _rate_limited(req.id, "too many registrations", wait))]
        if self.store.get_account(req.username) is not None:
            return [Send(s.conn, _taken(req))]
        s.busy = True
        return [HashPassword(s.conn, req)]

    def auth_failed(self, conn: int, req_id: int) -> list[Action]:
        """Hashing or verifying a password raised: answer, and free the session for a retry."""
        s = self.sessions.get(conn)
        if s is None:
            return []
        s.busy = False
        return [Send(conn, _err(req_id, ErrorCode.INTERNAL, "internal error; try again"))]

    def register_hashed(
        self, conn: int, req: Register, password_hash: str, now: float
    ) -> list[Action]:
        s = self.sessions.get(conn)
        if s is None:
            return []
        s.busy = False
        try:
            self.store.create_account(req.username, password_hash)
        except NameTaken:
            return [Send(conn, _taken(req))]
        log.info("registered %s", req.username)
        return [Send(conn, Ok(id=req.id))]

    def _login(self, s: Session, req: Login, now: float) -> list[Action]:
        if s.user is not None:
            return [
                Send(
                    s.conn,
                    _err(req.id, ErrorCode.ALREADY_LOGGED_IN, f"already logged in as {s.user}"),
                )
            ]
        if not 0 < req.port < 65536:
            return [Send(s.conn, _err(req.id, ErrorCode.BAD_REQUEST, "port must be 1-65535"))]
        if req.host is not None and not valid_host(req.host):
            return [
                Send(
                    s.conn,
                    _err(req.id, ErrorCode.BAD_REQUEST, "host must be an IP address or DNS name"),
                )
            ]
        if s.busy:
            return [Send(s.conn, _busy(req.id))]
        wait = max(
            self.account_throttle.retry_after(req.username.casefold(), now),
            self.address_throttle.retry_after(s.source_host, now),
        )
        if wait > 0:
            return [Send(s.conn, _rate_limited(req.id, "too many failed logins", wait))]
        account = self.store.get_account(req.username)
        if account is None:
            self.address_throttle.fail(s.source_host, now)
            return [Send(s.conn, _no_user(req.id, req.username))]
        # Counted as a failure of the account until proven right, so that parallel guesses on
        # many sessions are throttled as they start rather than after their hashes finish.
        # (The address is charged only for real failures: many users may share one address.)
        self.account_throttle.fail(req.username.casefold(), now)
        s.busy = True
        return [VerifyPassword(s.conn, req, account.password_hash)]

    def login_verified(self, conn: int, req: Login, ok: bool, now: float) -> list[Action]:
        s = self.sessions.get(conn)
        if s is None:
            return []
        s.busy = False
        key = req.username.casefold()
        if not ok:
            self.address_throttle.fail(s.source_host, now)
            return [Send(conn, _err(req.id, ErrorCode.WRONG_PASSWORD, "wrong password"))]
        self.account_throttle.succeed(key)
        account = self.store.get_account(req.username)
        if account is None:  # deleted meanwhile
            return [Send(conn, _no_user(req.id, req.username))]
        if key in self.online:
            return [
                Send(
                    conn,
                    _err(req.id, ErrorCode.ALREADY_ONLINE, f"{account.username} is already online"),
                )
            ]
        if s.user is not None:
            return [
                Send(
                    conn,
                    _err(req.id, ErrorCode.ALREADY_LOGGED_IN, f"already logged in as {s.user}"),
                )
            ]
        token = self._new_token()
        s.user, s.key, s.token = account.username, key, token
        s.host = req.host or s.source_host
        s.port = req.port
        s.last_seen = now
        self.online[key] = s
        self._by_token[token] = s
        heapq.heappush(self._expiry, (now + self.config.timeout, conn, token))
        log.info("%s logged in at %s:%d", account.username, s.host, s.port)
        cfg = self.config
        actions: list[Action] = [
            Send(
                conn,
                LoggedIn(
                    id=req.id,
                    username=account.username,
                    token=token,
                    host=s.host,
                    port=s.port,
                    udp_port=cfg.udp_port,
                    heartbeat_interval=cfg.heartbeat_interval,
                    timeout=cfg.timeout,
                ),
            )
        ]
        for room in self.store.rooms_of(account.username):
            actions.extend(self._tell_room(room, s, "online", host=s.host, port=s.port))
        return actions

    def _logout(self, s: Session, user: str, req: Logout, now: float) -> list[Action]:
        log.info("%s logged out", user)
        actions = self._logout_session(s)
        heapq.heappush(self._expiry, (now + self.config.timeout, s.conn, ""))  # idle rule again
        actions.insert(0, Send(s.conn, Ok(id=req.id)))
        return actions

    def _logout_session(self, s: Session) -> list[Action]:
        if s.user is None:
            return []
        user = s.user
        self.online.pop(s.key, None)
        self._by_token.pop(s.token, None)
        s.user, s.key, s.token = None, "", ""
        actions: list[Action] = []
        for room in self.store.rooms_of(user):
            actions.extend(self._tell_room(room, None, "offline", username=user))
        return actions

    def _tcp_ping(self, s: Session, req: Ping, now: float) -> list[Action]:
        if s.user is None or req.token != s.token:
            return [Send(s.conn, _err(req.id, ErrorCode.NOT_LOGGED_IN, "unknown session token"))]
        return [Send(s.conn, Ok(id=req.id))] if req.id is not None else []

    def _search(self, s: Session, user: str, req: Search, now: float) -> list[Action]:
        account = self.store.get_account(req.username) if valid_name(req.username) else None
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
                ),
            )
        ]

    def _users(self, s: Session, user: str, req: ListUsers, now: float) -> list[Action]:
        limit = _limit(req.limit)
        after = (req.after or "").casefold()
        keys = sorted(k for k in self.online if k > after)
        page = keys[:limit]
        users = [
            UserAddr(username=p.user or "", host=p.host, port=p.port)
            for p in (self.online[k] for k in page)
        ]
        return [Send(s.conn, UserList(id=req.id, users=users, more=len(keys) > limit))]

    # ------------------------------------------------------------------ rooms

    def _create_room(self, s: Session, user: str, req: CreateRoom, now: float) -> list[Action]:
        if not valid_name(req.room):
            return [Send(s.conn, _err(req.id, ErrorCode.INVALID_ROOM, _ROOM_RULE))]
        try:
            self.store.create_room(req.room, req.private, user)
        except RoomExists:
            return [
                Send(s.conn, _err(req.id, ErrorCode.ROOM_EXISTS, f"room {_q(req.room)} exists"))
            ]
        return [Send(s.conn, Ok(id=req.id))]

    def _join_room(self, s: Session, user: str, req: JoinRoom, now: float) -> list[Action]:
        room = self.store.get_room(req.room) if valid_name(req.room) else None
        if room is None:
            return [Send(s.conn, _no_room(req.id, req.room))]
        if room.private and not self._is_member(room.room, user):
            return [
                Send(
                    s.conn,
                    _err(
                        req.id,
                        ErrorCode.PRIVATE_ROOM,
                        f"{room.room} is private: a member must add you",
                    ),
                )
            ]
        if not self.store.add_member(room.room, user):
            return [Send(s.conn, _err(req.id, ErrorCode.ALREADY_MEMBER, f"already in {room.room}"))]
        actions: list[Action] = [Send(s.conn, Ok(id=req.id))]
        actions.extend(self._tell_room(room.room, s, "joined", host=s.host, port=s.port))
        return actions

    def _leave_room(self, s: Session, user: str, req: LeaveRoom, now: float) -> list[Action]:
        room = self.store.get_room(req.room) if valid_name(req.room) else None
        if room is None:
            return [Send(s.conn, _no_room(req.id, req.room))]
        if not self.store.remove_member(room.room, user):
            return [Send(s.conn, _not_member(req.id, user, room.room))]
        if room.owner.casefold() == user.casefold():
            self._hand_over(room.room)
        actions: list[Action] = [Send(s.conn, Ok(id=req.id))]
        actions.extend(self._tell_room(room.room, s, "left", username=user))
        return actions

    def _hand_over(self, room: str) -> None:
        """An owner who leaves hands the room to the longest-standing member; empty rooms go."""
        remaining = self.store.members(room)
        if remaining:
            self.store.set_owner(room, remaining[0])
        else:
            self.store.delete_room(room)

    def _add_member(self, s: Session, user: str, req: AddMember, now: float) -> list[Action]:
        room = self.store.get_room(req.room) if valid_name(req.room) else None
        if room is None:
            return [Send(s.conn, _no_room(req.id, req.room))]
        if not self._is_member(room.room, user):
            return [Send(s.conn, _not_member(req.id, user, room.room))]
        account = self.store.get_account(req.username) if valid_name(req.username) else None
        if account is None:
            return [Send(s.conn, _no_user(req.id, req.username))]
        if not self.store.add_member(room.room, account.username):
            return [
                Send(
                    s.conn,
                    _err(
                        req.id,
                        ErrorCode.ALREADY_MEMBER,
                        f"{account.username} is already in {room.room}",
                    ),
                )
            ]
        target = self.online.get(account.username.casefold())
        actions: list[Action] = [Send(s.conn, Ok(id=req.id))]
        actions.extend(
            self._tell_room(
                room.room,
                None,
                "added",
                username=account.username,
                by=user,
                host=target.host if target else None,
                port=target.port if target else None,
            )
        )
        return actions

    def _remove_member(self, s: Session, user: str, req: RemoveMember, now: float) -> list[Action]:
        room = self.store.get_room(req.room) if valid_name(req.room) else None
        if room is None:
            return [Send(s.conn, _no_room(req.id, req.room))]
        if room.owner.casefold() != user.casefold():
            return [
                Send(
                    s.conn,
                    _err(req.id, ErrorCode.NOT_OWNER, f"only {room.owner} may remove members"),
                )
            ]
        account = self.store.get_account(req.username) if valid_name(req.username) else None
        if account is None:
            return [Send(s.conn, _no_user(req.id, req.username))]
        if account.username.casefold() == user.casefold():
            return [
                Send(
                    s.conn,
                    _err(req.id, ErrorCode.BAD_REQUEST, "to leave your own room, use leave_room"),
                )
            ]
        if not self._is_member(room.room, account.username):
            return [Send(s.conn, _not_member(req.id, account.username, room.room))]
        # told before the removal, so that the member being removed hears of it too
        actions: list[Action] = [Send(s.conn, Ok(id=req.id))]
        actions.extend(
            self._tell_room(room.room, None, "removed", username=account.username, by=user)
        )
        self.store.remove_member(room.room, account.username)
        return actions

    def _rooms(self, s: Session, user: str, req: ListRooms, now: float) -> list[Action]:
        mine = {r.casefold() for r in self.store.rooms_of(user)}
        limit = _limit(req.limit)
        after = (req.after or "").casefold()
        counts = self.store.member_counts()
        visible = [
            r
            for r in self.store.list_rooms()
            if r.room.casefold() > after and (not r.private or r.room.casefold() in mine)
        ]
        infos = [
            RoomInfo(
                room=r.room,
                private=r.private,
                owner=r.owner,
                members=counts.get(r.room, 0),
                online=sum(1 for m in self.store.members(r.room) if m.casefold() in self.online),
                member=r.room.casefold() in mine,
            )
            for r in visible[:limit]
        ]
        return [Send(s.conn, RoomList(id=req.id, rooms=infos, more=len(visible) > limit))]

    def _members(self, s: Session, user: str, req: ListMembers, now: float) -> list[Action]:
        room = self.store.get_room(req.room) if valid_name(req.room) else None
        if room is None:
            return [Send(s.conn, _no_room(req.id, req.room))]
        members = self.store.members(room.room)
        if room.private and user.casefold() not in _keys(members):
            return [
                Send(
                    s.conn,
                    _err(req.id, ErrorCode.PRIVATE_ROOM, f"{room.room} is private: members only"),
                )
            ]
        limit = _limit(req.limit)
        after = (req.after or "").casefold()
        names = sorted((m for m in members if m.casefold() > after), key=str.casefold)
        owner = room.owner.casefold()
        infos: list[MemberInfo] = []
        for name in names[:limit]:
            peer = self.online.get(name.casefold())
            infos.append(
                MemberInfo(
                    username=name,
                    online=peer is not None,
                    owner=name.casefold() == owner,
                    host=peer.host if peer else None,
                    port=peer.port if peer else None,
                )
            )
        return [
            Send(
                s.conn,
                MemberList(id=req.id, room=room.room, members=infos, more=len(names) > limit),
            )
        ]

    def _vouch(self, s: Session, user: str, req: Vouch, now: float) -> list[Action]:
        """Tell a peer whether the one on the other end of a link holds the claimed session."""
        target = self.online.get(req.username.casefold())
        if req.peer != user:
            reason = "a proof can only be checked by the peer it was made for"
        elif target is None or target.user != req.username:  # the exact spelling, too
            reason = f"{_q(req.username)} is not online"
        elif not hmac.compare_digest(
            link_proof(target.token, req.role, req.nonce, target.user, user).encode(),
            req.proof.encode(),
        ):
            reason = f"the proof does not match {target.user}'s session"
        else:
            return [Send(s.conn, Ok(id=req.id))]
        return [Send(s.conn, _err(req.id, ErrorCode.NOT_VOUCHED, reason))]

    # ------------------------------------------------------------------ helpers

    def _is_member(self, room: str, user: str) -> bool:
        return user.casefold() in _keys(self.store.members(room))

    def _tell_room(
        self,
        room: str,
        subject: Session | None,
        change: RoomChange,
        *,
        username: str | None = None,
        host: str | None = None,
        port: int | None = None,
        by: str | None = None,
    ) -> list[Action]:
        """An event for every online member of ``room`` except the session that caused it."""
        name = username or (subject.user if subject else None) or ""
        event = RoomEvent(room=room, username=name, change=change, host=host, port=port, by=by)
        skip = subject.conn if subject else -1
        actions: list[Action] = []
        for member in self.store.members(room):
            peer = self.online.get(member.casefold())
            if peer is not None and peer.conn != skip:
                actions.append(Send(peer.conn, event))
        return actions


_NAME_RULE = "usernames are 1-32 letters, digits, '_', '.' or '-'"
_ROOM_RULE = "room ids are 1-32 letters, digits, '_', '.' or '-'"
_PASSWORD_RULE = "passwords are 6-256 characters"


def _q(name: str) -> str:
    """A name from a request, quoted and cut short: replies must stay small."""
    return repr(name if len(name) <= 40 else name[:40] + "...")


def _rate_limited(req_id: int, what: str, wait: float) -> Error:
    return _err(
        req_id,
        ErrorCode.RATE_LIMITED,
        f"{what}; try again in {wait:.1f} s",
        retry_after=round(wait, 3),
    )


def _no_user(req_id: int, name: str) -> Error:
    return _err(req_id, ErrorCode.NO_SUCH_USER, f"no user {_q(name)}")


def _keys(names: list[str]) -> set[str]:
    return {n.casefold() for n in names}


def _limit(limit: int) -> int:
    return max(1, min(limit, LIST_LIMIT))


def _req_id(request: RegistryRequest) -> int | None:
    return request.id


def _busy(req_id: int) -> Error:
    return _err(req_id, ErrorCode.BAD_REQUEST, "a register or login is already in progress")


def _taken(req: Register) -> Error:
    return _err(req.id, ErrorCode.NAME_TAKEN, f"the name {_q(req.username)} is taken")


def _not_logged_in(req_id: int | None) -> Error:
    return _err(req_id, ErrorCode.NOT_LOGGED_IN, "log in first")


def _no_room(req_id: int, room: str) -> Error:
    return _err(req_id, ErrorCode.NO_SUCH_ROOM, f"no room {_q(room)}")


def _not_member(req_id: int, user: str, room: str) -> Error:
    return _err(req_id, ErrorCode.NOT_A_MEMBER, f"{user} is not a member of {room}")
