"""The peer's protocol as pure decisions: ``PeerCore``.

Fed what happened (a link connected, bytes arrived on link 3, the registry replied, the user
typed ``/say``, a deadline passed), each with the time ``now``, it returns what to do
(``actions.py``): write these bytes on link 3, dial that address, show this line, finish that
command. It owns no socket, no clock and no global randomness (ids come from an injected
``rand``), so the same code runs under asyncio (``node.py``), and many instances run on one
virtual clock in the simulated network of the tests.

The parts it wires together are pure too: the link state machine (``linkstate.py``), the mesh
and the link planner (``mesh.py``, ``links.py``), the flood router (``router.py``) and the
registry conversations (``registry/flows.py``, run here as generators: a flow yields a request
and is resumed with its reply).
"""

from __future__ import annotations

import itertools
import logging
import os
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import msgspec

from p2pchat.limits import TokenBucket
from p2pchat.peer.actions import (
    Action,
    CloseLink,
    Dial,
    Done,
    SaveBlocked,
    SaveCertificate,
    SendLink,
)
from p2pchat.peer.catchup import RoomLog
from p2pchat.peer.directs import LOGGED_OUT, Directs
from p2pchat.peer.events import (
    CommandError,
    DirectText,
    PeerEvent,
    RoomsChanged,
    RoomText,
    Status,
)
from p2pchat.peer.history import History, Outgoing, StoredMessage
from p2pchat.peer.identity import Identity, check_message, check_welcome
from p2pchat.peer.links import LinkView, forwarding_table, plan_links
from p2pchat.peer.linkstate import Link, LinkEvent, LinkProtocolError, LinkState
from p2pchat.peer.plumtree import TreeRouter
from p2pchat.peer.roomview import RoomView, describe
from p2pchat.peer.router import Check, Drop, FloodDesign, FloodRouter, Send
from p2pchat.peer.session import Context, RegistrySession
from p2pchat.peer.sync import Access
from p2pchat.peer.timers import Timer
from p2pchat.protocol.framing import FrameTooLarge
from p2pchat.protocol.messages import (
    MAX_MESH_ROOMS,
    MAX_TEXT,
    PROTOCOL_VERSION,
    DirectAck,
    DirectMessage,
    ErrorCode,
    Graft,
    IHave,
    LoggedIn,
    MemberInfo,
    MeshRooms,
    Message,
    PeerError,
    PeerHello,
    PeerWelcome,
    Prune,
    RoomEvent,
    RoomInfo,
    RoomMessage,
    SyncBatch,
    SyncDigest,
    SyncRequest,
    SyncSummary,
    b64,
    decode,
    encode,
    peer_decoder,
    text_size_ok,
    unb64,
)
from p2pchat.registry import flows
from p2pchat.registry.flows import Flow, RegistryClosed, RegistryError, RegistryUntrusted
from p2pchat.trust.certs import TrustError, UserCert, ca_key, read_user_cert
from p2pchat.trust.signing import Signer, Verifier, room_message_bytes

log = logging.getLogger("p2pchat.peer")

T = TypeVar("T")

PIN_SECONDS = 300.0
"""A link used for direct messages is kept this long after the last one."""
HANDSHAKE_SECONDS = 10.0
"""An accepted connection must finish its handshake within this."""
MAX_UNAUTHENTICATED = 16
"""Accepted connections waiting for their hello, in a pool of their own: a newcomer closes
the oldest, so strangers holding connections open cannot take the slots of real links."""
GRACE_SECONDS = 2.0
"""A new link is kept this long even if unneeded, so the other side's ``mesh`` frame can
arrive (it may have dialed us for a room we have not heard of yet)."""
MAX_BAD_FRAMES = 10
MAX_BLOCKED = 1000
MAX_PACED = 500
"""Our messages that may wait for their turn in one room."""
MAX_DECLARED = 4096
"""Most rooms taken from one link's announcement (the registry caps rooms per user lower)."""
PENALTY_SECONDS = 300.0
"""A peer whose link we cut for badly signed messages is left out of our mesh this long."""
MAX_PENALIZED = 1024
"""Undecodable frames a link may send before it is cut."""
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 8.0
"""Dial retries to an unreachable member: 0.5 s, doubling up to this."""


RELAY_HOPS = 64
"""Hops given to a message passed on after catch-up (each router caps it at its own)."""
LEAVE_WAIT_MAX = 5
"""``/leave`` waits at most this many ``leave_linger`` for our messages to spread."""


@dataclass(frozen=True, slots=True)
class PeerConfig:
    registry_host: str = "127.0.0.1"
    registry_port: int = 15600
    listen_host: str = "0.0.0.0"
    listen_port: int = 0
    advertise: str | None = None
    heartbeat: float | None = None
    """Seconds between heartbeats; None: the interval the registry asks for."""
    max_links: int = 6
    max_connections: int = 128
    dial_timeout: float = 3.0
    ack_timeout: float = 5.0
    reconnect_max: float = 10.0
    request_timeout: float = 15.0
    """A registry that leaves a request unanswered this long is taken as gone."""
    replan_delay: float = 0.02
    """Membership changes within this are planned for together (a login storm is one replan)."""
    leave_linger: float = 2.0
    """``/leave`` right after we spoke in the room waits until this long after our last message
    there (and until every message we queued for it is out): our neighbours may have been
    joining or leaving themselves and dropped it, and only while we stay do new links and
    their catch-up pass it on (and those neighbours pass it on: ``catchup.RELAY_FRESH``).
    On the simulated network, five scripts of join, say, leave in a row lost 42-54 of 300
    deliveries without it, none with both (``tests/peer/test_catchup.py``)."""
    agent: str = "p2pchat"
    secure: bool = True
    """False: no TLS, certificates or signatures (names are taken on trust); only for
    benchmarks that measure what security costs."""
    registry_fingerprint: str | None = None
    """The registry CA's fingerprint to expect (otherwise pinned on first use)."""
    data_dir: str | None = None
    """Where this peer keeps its keys and certificates (default: the user's data folder)."""
    config_dir: str | None = None
    """Where pinned registries are kept (default: the user's config folder)."""
    design: Literal["tree", "flood"] = "tree"
    """How room messages spread: tree push with lazy repair (Plumtree), or flooding."""
    max_bad_signatures: int = 3
    """A link that brings this many badly signed room messages is cut."""
    send_rate: float = 5.0
    send_burst: int = 20
    """Our own messages in a room: a burst of ``send_burst``, then ``send_rate`` a second."""
    receive_rate: float = 20.0
    receive_burst: int = 60
    """What we take from one member in one room: more than an honest peer sends (its own
    limit above), so jitter on the way never trips it."""


# ---------------------------------------------------------------------------- bookkeeping


@dataclass(slots=True, eq=False)
class _Say:
    """A room message waiting (briefly) for its room's mesh to be dialed."""

    command: int
    room: str
    text: str
    timer: Timer | None = None


@dataclass(slots=True)
class _Backoff:
    retry_at: float
    delay: float


class PeerCore:
    """One user's peer, as decisions. Every input method returns the actions to carry out."""

    def __init__(
        self,
        config: PeerConfig,
        *,
        rand: Callable[[int], bytes] = os.urandom,
        wall_offset: float = 0.0,
    ) -> None:
        self.config = config
        self.port = 0
        """Our listener's port; the shell sets it once listening."""
        self._ctx = ctx = Context(rand, wall_offset)
        self._out = ctx.out
        self._timers = ctx.timers
        self._ids = itertools.count(1)
        self.username: str | None = None
        self._password: str | None = None
        self._tickets: dict[str, str] = {}
        self.identity: Identity | None = None
        self._ca_key: bytes | None = None
        """The registry CA's public key: what every certificate is checked against."""
        self._verifier = Verifier()
        self._seqs: dict[str, int] = {}
        """Room -> the seq of our last message there."""
        self._said_at: dict[str, float] = {}
        """Room -> when we last sent a message there, or, while a ``/leave`` waits, last saw
        our messages there not yet able to spread (``leave_linger``); our rooms only."""
        self._renew_timer: Timer | None = None
        self._router_timer: Timer | None = None
        self._router_dirty = False
        self._history: History | None = None
        self.roomlog: RoomLog | None = None
        """History, catch-up and per-sender order (once logged in with a history)."""
        self._router_rooms: dict[str, frozenset[str]] = {}
        """The forwarding sets as the router knows them."""
        self._penalized: dict[str, float] = {}
        self._blocked: set[str] = set()
        self._outgoing = TokenBucket(config.send_rate, config.send_burst, max_keys=MAX_DECLARED)
        """Our messages per room."""
        self._incoming = TokenBucket(config.receive_rate, config.receive_burst, max_keys=100_000)
        self._per_link = TokenBucket(
            2 * config.receive_rate, 2 * config.receive_burst, max_keys=100_000
        )
        """Room messages per link, room and origin, before any signature is checked: a
        member's flood costs no more than twice what the origin's rate lets through."""
        """Others' messages per room and origin."""
        self._flood_notices: dict[str, float] = {}
        self.over_budget = 0
        """Room messages dropped unchecked: past their link's budget for their origin."""
        self._paced: dict[str, deque[_Say]] = {}
        """Room -> our messages waiting for their turn (see ``send_rate``)."""
        self._pacing_said: dict[str, bool] = {}
        """Peers whose link we cut for badly signed messages -> until when we refuse them."""
        """Casefolded username -> the registry's ticket from our last login: it spares us
        the throttles that others' wrong guesses at our password cause."""
        self._logging_in = False
        self._closing = False
        self.router: FloodDesign | TreeRouter | None = None
        self.rooms: dict[str, RoomView] = {}
        self._loading: dict[str, list[RoomEvent]] = {}
        """Casefolded room -> events that arrived while its member list was being loaded."""
        self.links: dict[str, Link] = {}
        """Open links by peer name."""
        self._conns: dict[int, Link] = {}
        """Every link in any state, by id."""
        self._dialing: dict[str, Link] = {}
        """Links we dialed that are not open yet, by the peer dialed."""
        self._forward: dict[str, list[str]] = {}
        """Room -> peers a room message goes to (links either side holds for the room)."""
        self._backoff: dict[str, _Backoff] = {}
        self._building: frozenset[str] = frozenset()
        """Rooms whose mesh waits for a dial."""
        self._repairing: set[str] = set()
        """Rooms that lost a link, until whole again."""
        self._replan_timer: Timer | None = None
        self._wake_timer: Timer | None = None
        self._says: list[_Say] = []
        self.directs: Directs | None = None
        """Our direct messages on their way (once logged in)."""
        self.registry = RegistrySession(
            ctx,
            self,
            host=config.registry_host,
            port=config.registry_port,
            heartbeat=config.heartbeat,
            request_timeout=config.request_timeout,
            agent=config.agent,
        )
        self._reconnect_timer: Timer | None = None
        self._reconnect_delay = BACKOFF_FIRST
        self._refusal = ""

    # ================================================================== plumbing

    @property
    def _now(self) -> float:
        return self._ctx.now

    def _take(self) -> list[Action]:
        """The actions decided by one input; the router's deadline is re-armed once here, not
        after each of the frames an input may carry."""
        if self._router_dirty:
            self._router_dirty = False
            self._arm_router()
        return self._ctx.take()

    def _at(self, now: float) -> None:
        self._ctx.now = now

    def _show(self, event: PeerEvent) -> None:
        self._ctx.show(event)

    def _notice(self, text: str, room: str | None = None) -> None:
        self._ctx.notice(text, room)

    def _done(self, command: int, value: object = None) -> None:
        self._out.append(Done(command, value))

    def _fail(self, command: int, error: Exception | str) -> None:
        self._out.append(Done(command, error=CommandError(str(error))))

    def _send(self, link: Link, msg: Message) -> None:
        self._out.append(SendLink(link.id, encode(msg)))

    def _close(self, link: Link, abort: bool = False) -> None:
        if link.state is not LinkState.CLOSED:
            self._out.append(CloseLink(link.id, abort))

    def next_deadline(self) -> float | None:
        """When ``timer`` must next be called, if ever."""
        return self._timers.next_deadline()

    def timer(self, now: float) -> list[Action]:
        self._at(now)
        self._timers.fire(now)
        return self._take()

    @property
    def session(self) -> LoggedIn | None:
        """Our login at the registry, while it holds."""
        return self.registry.login

    def status(self) -> Status:
        """Registry is reported up when connected and, if we are logged in, logged in there."""
        reg = self.registry
        up = reg.ready and (self.username is None or reg.login is not None)
        return Status(up, self.username, len(self.links), reg.last_heartbeat)

    # ================================================================== the registry

    def registry_connected(self, now: float, ca_cert: bytes | None = None) -> list[Action]:
        """The connection to the registry is up; ``ca_cert`` is the certificate it showed
        in TLS, which the shell has checked against the pinned fingerprint."""
        self._at(now)
        if ca_cert is not None:
            try:
                self._ca_key = ca_key(ca_cert)
            except TrustError as exc:
                self.registry.failed(f"it is not a p2pchat registry ({exc})")
                return self._take()
        elif self.config.secure:
            self.registry.failed("it showed no certificate (TLS is required)")
            return self._take()
        self.registry.connected(ca_cert)
        return self._take()

    @property
    def certificate(self) -> bytes | None:
        """Our certificate (DER), once the registry issued one."""
        identity = self.identity
        return identity.cert.der if identity is not None and identity.cert else None

    def registry_failed(self, reason: str, now: float) -> list[Action]:
        """The connection to the registry could not be made."""
        self._at(now)
        self.registry.failed(reason)
        return self._take()

    def registry_untrusted(self, reason: str, now: float) -> list[Action]:
        """The registry's certificate is not the one pinned (nothing was sent to it)."""
        self._at(now)
        self.registry.refused(reason)
        return self._take()

    def registry_data(self, data: bytes, now: float) -> list[Action]:
        self._at(now)
        self.registry.data(data)
        return self._take()

    def registry_closed(self, reason: str, now: float) -> list[Action]:
        """The registry connection closed or broke."""
        self._at(now)
        self.registry.closed(reason)
        return self._take()

    def registry_ready(self) -> None:
        self._show(self.status())

    def registry_event(self, event: RoomEvent) -> None:
        self._on_room_event(event)

    def registry_lost(self, reason: str, was_ready: bool) -> None:
        """Chat over existing links goes on; if we are logged in, log in again with backoff."""
        if self._closing:
            return
        self._show(self.status())
        if self.username is None:
            if was_ready:
                self._notice(f"registry connection closed: {reason}")
            return
        if was_ready:
            self._notice(
                f"registry unreachable ({reason}); chat with linked peers goes on, reconnecting"
            )
        if self._reconnect_timer is None or not self._reconnect_timer.active:
            self._schedule_reconnect()

    def _schedule_reconnect(self) -> None:
        delay = self._reconnect_delay
        self._reconnect_delay = min(delay * 2, self.config.reconnect_max)
        self._reconnect_timer = self._timers.at(self._now + delay, self._reconnect)

    def _reconnect(self, now: float) -> None:
        user, password = self.username, self._password
        if self._closing or user is None or password is None:
            return

        def back(_: str) -> None:
            self._reconnect_delay = BACKOFF_FIRST
            self._refusal = ""
            self._notice(f"registry is back; logged in again as {self.username}")

        def failed(exc: Exception) -> None:
            log.info("registry reconnect failed: %s", exc)
            if isinstance(exc, RegistryError) and exc.reason != self._refusal:
                self._refusal = exc.reason  # say so once per reason, not per try
                self._notice(f"the registry is back but refuses our login: {exc.reason}; retrying")
            elif isinstance(exc, RegistryUntrusted) and str(exc) != self._refusal:
                self._refusal = str(exc)
                self._notice(f"{exc}; retrying")
            if self.username is not None and not self._closing:
                self._schedule_reconnect()

        self.registry.run(self._login_flow(user, password, resume=True), back, failed)

    def _on_logged_in(self, login: LoggedIn, password: str) -> None:
        if self.router is None or self.router.me != login.username:
            self.router = self._make_router(login.username)
            self._router_rooms = {}
            self._rebuild_forwarding()
        self.username = login.username
        self._password = password
        self.registry.logged_in(login)
        if login.cert is not None:
            self._take_certificate(login.username, login.cert)
        if self.directs is None:
            self.directs = Directs(
                self._ctx,
                self._history or History(":memory:"),
                login.username,
                ack_timeout=self.config.ack_timeout,
                link_to=self._linked,
                transmit=self._transmit_direct,
                locate=lambda user, found, failed: self.registry.run(
                    flows.search(user), found, failed
                ),
                dial=self._reach,
            )
            self.directs.recover()
        if self.roomlog is None and self._history is not None and self.identity is not None:
            self.roomlog = RoomLog(
                self._ctx,
                self._history,
                access=self._access,
                accept=self._accept_caught,
                send=self._send_frame,
                show=self._show_message,
                neighbours=lambda room: self._forward.get(room, ()),
                relay=self._relay_caught_up,
            )

    def _relay_caught_up(self, entry: StoredMessage, via: str) -> None:
        """Pass on a fresh message we got by catch-up (checked already) as if it had come
        live from ``via``; catch-up shows it."""
        view = self.rooms.get(self.room_name(entry.room))
        router = self.router
        if view is None or router is None:
            return
        msg = RoomMessage(
            id=entry.id,
            room=self.room_name(entry.room),
            origin=entry.origin,
            seq=entry.seq,
            ts=entry.ts,
            text=entry.text,
            hops=RELAY_HOPS,
            sig=b64(entry.sig),
        )
        result = router.receive(msg, via, self._now, _Speakers(view, msg.ts, self._ctx.wall))
        if result.sends:
            self._dispatch(result.sends)
        self._router_dirty = True

    def _access(self, room: str, peer: str) -> Access:
        """What the registry lists of ``peer`` in ``room``: for who may see which history."""
        view = self.rooms.get(self.room_name(room))
        member = view.members.get(peer) if view is not None else None
        if view is None or member is None:
            return Access(False)
        return Access(True, member.since, public=not view.private)

    def _accept_caught(self, entry: StoredMessage) -> bool:
        """A message that came by catch-up: signed with the key the registry lists for its
        origin now (messages signed with a key superseded since cannot be checked)."""
        view = self.rooms.get(self.room_name(entry.room))
        member = view.members.get(entry.origin) if view is not None else None
        if member is None or member.key != entry.key:
            return False
        data = room_message_bytes(
            entry.room, entry.origin, entry.id, entry.seq, entry.ts, entry.text
        )
        return self._verifier.verify(entry.key, data, entry.sig)

    def _send_frame(self, peer: str, frame: bytes) -> None:
        link = self.links.get(peer)
        if link is not None:
            self._out.append(SendLink(link.id, frame))

    def _show_message(self, event: PeerEvent) -> None:
        """Show, unless it is a message from someone we block."""
        if isinstance(event, RoomText | DirectText) and event.sender.casefold() in self._blocked:
            return
        self._show(event)

    def history(self, room: str, n: int) -> list[RoomText]:
        """The last ``n`` messages of ``room`` kept here (oldest first)."""
        if self.roomlog is None:
            return []
        return [
            event
            for event in self.roomlog.last(self.room_name(room), n)
            if event.sender.casefold() not in self._blocked
        ]

    def _make_router(self, me: str) -> FloodDesign | TreeRouter:
        if self.config.design == "flood":
            flood = FloodRouter(me, new_id=self._ctx.new_id)
            return FloodDesign(flood, lambda room: self._forward.get(room, ()))
        return TreeRouter(me, new_id=self._ctx.new_id)

    def _take_certificate(self, username: str, cert: str) -> None:
        """Check a certificate the registry issued us, keep it, and plan its renewal."""
        identity, ca = self.identity, self._ca_key
        if identity is None or ca is None:
            return
        try:
            mine = read_user_cert(unb64(cert), ca, self._ctx.wall)
        except (TrustError, ValueError) as exc:
            self._notice(f"the registry issued a certificate we cannot use: {exc}")
            return
        if mine.public_key != identity.signer.public_key or mine.username != username:
            self._notice("the registry issued a certificate for another key or name; ignored")
            return
        identity.cert = mine
        self.registry.identity = username
        self._out.append(SaveCertificate(username, mine.der))
        if self._renew_timer is not None:
            self._renew_timer.cancel()
        renew_at = identity.renew_at()
        if renew_at is not None:
            self._renew_timer = self._timers.at(renew_at - self._ctx.wall_offset, self._renew)

    def _cert_valid(self) -> bool:
        cert = self.identity.cert if self.identity is not None else None
        return cert is not None and cert.not_before <= self._ctx.wall < cert.not_after

    def _renew(self, now: float) -> None:
        """Ask for a fresh certificate while online (they last a day)."""
        user = self.username
        if user is None or not self.registry.ready:
            return

        def failed(exc: Exception) -> None:
            log.info("renewing our certificate failed: %s; trying again in a minute", exc)
            self._renew_timer = self._timers.at(self._now + 60.0, self._renew)

        self.registry.run(flows.renew(), lambda cert: self._take_certificate(user, cert), failed)

    # ================================================================== commands

    def _command(self, command: int, flow: Flow[T], finish: Callable[[T], object]) -> None:
        """Run ``flow`` for a user command; ``finish`` turns its outcome into the result."""

        def done(value: T) -> None:
            try:
                result = finish(value)
            except CommandError as exc:
                self._fail(command, exc)
                return
            self._done(command, result)

        def failed(exc: Exception) -> None:
            self._fail(command, exc.reason if isinstance(exc, RegistryError) else exc)

        self.registry.run(flow, done, failed)

    def _require_login(self) -> str:
        if self.username is None:
            raise CommandError("log in first: /login USER PASSWORD")
        return self.username

    def _guarded(self, command: int, now: float, body: Callable[[], None]) -> list[Action]:
        """Run a command's body; a CommandError it raises fails the command."""
        self._at(now)
        try:
            body()
        except CommandError as exc:
            self._fail(command, exc)
        return self._take()

    def register(self, command: int, username: str, password: str, now: float) -> list[Action]:
        return self._guarded(
            command,
            now,
            lambda: self._command(command, flows.register(username, password), _nothing),
        )

    def login(
        self,
        command: int,
        username: str,
        password: str,
        now: float,
        signer: Signer | None = None,
        blocked: Iterable[str] = (),
        history: History | None = None,
    ) -> list[Action]:
        """``signer``: this user's key on this machine (the shell keeps it in a file); the
        registry certifies it at login. ``blocked``: whom this user blocks (kept by the
        shell too)."""

        def body() -> None:
            if self.username is not None:
                raise CommandError(f"already logged in as {self.username}")
            if self._logging_in:
                raise CommandError("a login is already in progress")
            if self.config.secure and signer is None:
                raise CommandError("no key to log in with")
            if signer is not None and (
                self.identity is None or self.identity.signer.public_key != signer.public_key
            ):
                self.identity = Identity(signer)
                self.registry.identity = None
            self._logging_in = True
            self._blocked = {name.casefold() for name in list(blocked)[:MAX_BLOCKED]}
            self._history = history

            def finish(name: str) -> str:
                self._logging_in = False
                return name

            def failed(exc: Exception) -> None:
                self._logging_in = False
                self._fail(command, exc.reason if isinstance(exc, RegistryError) else exc)

            self.registry.run(
                self._login_flow(username, password),
                lambda name: self._done(command, finish(name)),
                failed,
            )

        return self._guarded(command, now, body)

    def _login_flow(self, username: str, password: str, resume: bool = False) -> Flow[str]:
        """Log in with the password, or (``resume``, after losing the registry) with the
        certificate shown in TLS if it is still good, falling back to the password."""
        cfg = self.config
        session = None
        if resume and self.registry.identity == username and self._cert_valid():
            try:
                session = yield from flows.resume(self.port, cfg.advertise)
            except RegistryError as exc:
                if exc.code != ErrorCode.CERT_REFUSED:
                    raise
                log.info("resuming with our certificate was refused: %s", exc.reason)
                self.registry.identity = None
        if session is None:
            ticket = self._tickets.get(username.casefold())
            key = self.identity.signer.public_key if self.identity is not None else None
            session = yield from flows.login(
                username, password, self.port, cfg.advertise, ticket, key
            )
        if session.ticket is not None:
            self._tickets[username.casefold()] = session.ticket
        self._on_logged_in(session, password)
        yield from self._load_rooms()
        self._show(self.status())
        return session.username

    def logout(self, command: int, now: float) -> list[Action]:
        def body() -> None:
            if self.username is None:
                raise CommandError("not logged in")
            if self._reconnect_timer is not None:
                self._reconnect_timer.cancel()
            if not self.registry.ready or self.registry.login is None:
                self._logged_out()  # the registry dropped our session already
                self._done(command)
                return

            def done(_: None) -> None:
                self._logged_out()
                self._done(command)

            def failed(exc: Exception) -> None:
                self._logged_out()
                self._fail(command, exc.reason if isinstance(exc, RegistryError) else exc)

            self.registry.run(flows.logout(), done, failed)

        return self._guarded(command, now, body)

    def _logged_out(self) -> None:
        self.username = None
        self._password = None
        self.registry.logged_out()
        self.roomlog = self._history = None
        self.rooms = {}
        self._said_at = {}
        self._loading = {}
        for link in list(self._conns.values()):
            self._close(link)
            link.state = LinkState.CLOSED  # a dial that completes later is closed at once
        self._conns, self.links, self._dialing = {}, {}, {}
        paced = [p for queue in self._paced.values() for p in queue]
        self._paced, self._pacing_said = {}, {}
        for pending in [*paced, *self._says]:
            if pending.timer is not None:
                pending.timer.cancel()
            self._fail(pending.command, "logged out")
        self._says = []
        directs, self.directs = self.directs, None
        if directs is not None:
            directs.close(LOGGED_OUT)
        self._show(RoomsChanged())
        self._show(self.status())

    def search(self, command: int, username: str, now: float) -> list[Action]:
        return self._query(command, flows.search(username), now)

    def users(self, command: int, now: float) -> list[Action]:
        return self._query(command, flows.users(), now)

    def list_rooms(self, command: int, now: float) -> list[Action]:
        return self._query(command, flows.rooms(), now)

    def members(self, command: int, room: str, now: float) -> list[Action]:
        return self._query(command, _members_only(flows.room_members(room)), now)

    def _query(self, command: int, flow: Flow[Any], now: float) -> list[Action]:
        return self._guarded(command, now, lambda: self._command(command, flow, _same))

    def add_member(
        self, command: int, room: str, username: str, now: float, may_add: bool | None = None
    ) -> list[Action]:
        """``may_add`` (the owner only): whether the member may add others to the room."""
        return self._logged_in(command, flows.add_member(room, username, may_add), now)

    def remove_member(
        self, command: int, room: str, username: str, now: float, ban: bool = False
    ) -> list[Action]:
        """``ban``: and keep them out of the room (its owner only) until ``unban``."""
        return self._logged_in(command, flows.remove_member(room, username, ban), now)

    def unban(self, command: int, room: str, username: str, now: float) -> list[Action]:
        return self._logged_in(command, flows.unban(room, username), now)

    def block(self, command: int, username: str, now: float, blocked: bool = True) -> list[Action]:
        """Stop (or, ``blocked`` False, start again) showing ``username``'s direct and room
        messages; the room still gets theirs from us (we pass them on): only our view
        changes, and nobody is told."""

        def body() -> None:
            me = self._require_login()
            key = username.casefold()
            if key == me.casefold():
                raise CommandError("that is you")
            if blocked and len(self._blocked) >= MAX_BLOCKED:
                raise CommandError(f"you block {MAX_BLOCKED} users already")
            if blocked:
                self._blocked.add(key)
            else:
                self._blocked.discard(key)
            self._out.append(SaveBlocked(me, sorted(self._blocked)))
            self._done(command, self.blocked())

        return self._guarded(command, now, body)

    def unblock(self, command: int, username: str, now: float) -> list[Action]:
        return self.block(command, username, now, blocked=False)

    def blocked(self) -> list[str]:
        """Who we block (casefolded names)."""
        return sorted(self._blocked)

    def create_room(self, command: int, room: str, private: bool, now: float) -> list[Action]:
        flow = self._then_adopt(flows.create_room(room, private), room, private)
        return self._logged_in(command, flow, now)

    def join_room(self, command: int, room: str, now: float) -> list[Action]:
        flow = self._then_adopt(flows.join_room(room), room, private=False)
        return self._logged_in(command, flow, now)

    def leave_room(self, command: int, room: str, now: float) -> list[Action]:
        def body() -> None:
            self._require_login()
            self._leave_when_said(command, room, self.username)

        return self._guarded(command, now, body)

    def _leave_when_said(
        self, command: int, room: str, me: str | None, asked: float | None = None
    ) -> None:
        """Leave ``room`` once what we said there has had ``leave_linger`` to spread, over a
        mesh that is up: a message said while our links were still being dialed went to
        none of them, and only the catch-up of the links that come up passes it on."""
        if self.username is None or self.username != me:
            self._fail(command, "logged out")
            return
        name = self.room_name(room)
        said = self._said_at.get(name)
        if name in self.rooms and said is not None:
            asked = self._now if asked is None else asked
            linger = self.config.leave_linger
            queued = name in self._paced or any(s.room == name for s in self._says)
            if queued or self._replanning or name in self._building:
                self._said_at[name] = said = self._now  # the linger counts from a settled mesh
            due = min(said + linger, asked + LEAVE_WAIT_MAX * linger)
            if due > self._now:
                self._timers.at(
                    min(due, self._now + linger / 4),
                    lambda _: self._leave_when_said(command, room, me, asked),
                )
                return

        def left(_: None) -> None:
            self._forget_room(self.room_name(room))
            self._want_replan()
            self._show(RoomsChanged())

        self._command(command, flows.leave_room(room), left)

    def _logged_in(
        self,
        command: int,
        flow: Flow[Any],
        now: float,
        finish: Callable[[Any], object] = lambda _: None,
    ) -> list[Action]:
        def body() -> None:
            self._require_login()
            self._command(command, flow, finish)

        return self._guarded(command, now, body)

    def _then_adopt(self, first: Flow[None], room: str, private: bool) -> Flow[None]:
        """``first`` (create or join), then load the room's members and take it in."""
        yield from first
        try:
            view = yield from self._room_view(room)
        except (RegistryError, RegistryClosed) as exc:
            log.warning("could not load room %s: %s", room, exc)
            return
        if view is not None:
            view.private = private
            self._adopt(view)

    # ================================================================== rooms

    def room_name(self, room: str) -> str:
        """The spelling of one of our rooms, whatever the casing typed."""
        if room in self.rooms:
            return room
        key = room.casefold()
        for name in self.rooms:
            if name.casefold() == key:
                return name
        return room

    def my_rooms(self) -> list[str]:
        """The rooms we are a member of, as the registry spells them."""
        return sorted(self.rooms, key=str.casefold)

    def roster(self, room: str) -> dict[str, bool]:
        """A room's members (in our view, kept current by the registry's events) -> online."""
        view = self.rooms.get(self.room_name(room))
        return {user: m.online for user, m in view.members.items()} if view else {}

    def linked_peers(self) -> frozenset[str]:
        """The users we hold an open link with."""
        return frozenset(self.links)

    def link_peer(self, link_id: int) -> str | None:
        """Who a link is with (or who we dialed), if known yet."""
        link = self._conns.get(link_id)
        return None if link is None else link.peer or link.expect

    def mesh_links(self, room: str) -> list[str]:
        """The peers a message in ``room`` is flooded to (links either side holds for it)."""
        return list(self._forward.get(self.room_name(room), ()))

    def _load_rooms(self) -> Flow[None]:
        """Fetch our rooms' member lists (at login, and again after the registry returns).

        Each room is replaced as soon as it is loaded, so the old views keep serving the
        mesh meanwhile; rooms we are no longer in are dropped at the end.
        """
        infos: list[RoomInfo] = yield from flows.rooms(mine=True)
        mine = [info.room for info in infos]
        private = {info.room: info.private for info in infos}
        for room in mine:
            self._loading.setdefault(room.casefold(), [])  # hold their events from now on
        try:
            for room in mine:
                view = yield from self._room_view(room)
                if view is not None:
                    view.private = private.get(view.name, True)
                    self.rooms[view.name] = view
        finally:  # if the registry went away midway, stop holding for the rooms not loaded
            for room in mine:
                self._loading.pop(room.casefold(), None)
        for name in set(self.rooms) - set(mine):
            del self.rooms[name]
        self._want_replan()
        self._show(RoomsChanged())

    def _room_view(self, room: str) -> Flow[RoomView | None]:
        """Load a room's members, then replay the events that came in while we waited.

        Events are handled the moment they arrive, which may be before an earlier reply is
        processed; without the hold-back, an event just after the reply would be lost.
        None if we were removed from the room meanwhile.
        """
        key = room.casefold()
        held: list[RoomEvent] | None = self._loading.setdefault(key, [])
        try:
            name, members = yield from flows.room_members(room)
        finally:
            if self._loading.get(key) is held:
                del self._loading[key]
            else:
                held = None
        if held is None:
            return None
        view = RoomView.from_list(name, members, self.config.max_links)
        for event in held:
            view.apply(event)
        return view

    def _adopt(self, view: RoomView) -> None:
        self.rooms[view.name] = view
        self._want_replan()
        self._show(RoomsChanged(view.name))

    def _on_room_event(self, event: RoomEvent) -> None:
        me = self.username
        if me is None:
            return
        who, change = event.username, event.change
        if who == me:
            if change == "added":
                self._notice(f"{event.by} added you to {event.room}", event.room)

                def failed(exc: Exception) -> None:
                    log.warning("could not load room %s: %s", event.room, exc)

                self.registry.run(
                    self._room_view(event.room),
                    lambda view: self._adopt(view) if view is not None else None,
                    failed,
                )
            elif change == "removed":
                self._forget_room(event.room)
                self._loading.pop(event.room.casefold(), None)  # a load in flight is void
                self._notice(f"{event.by} removed you from {event.room}", event.room)
                self._want_replan()
                self._show(RoomsChanged())
            return
        if change in ("online", "joined", "added"):
            self._backoff.pop(who, None)
            if self.directs is not None and event.host and event.port:
                self.directs.online(who, event.host, event.port)
        held = self._loading.get(event.room.casefold())
        if held is not None:
            held.append(event)
        view = self.rooms.get(event.room)
        if view is not None:
            view.apply(event, self._ctx.wall)
        elif held is None:
            return
        if event.by != me:  # our own /add or /remove was answered with ok: already
            self._notice(describe(event), event.room)
        if view is not None and self.roomlog is not None and change != "offline":
            for msg, link_id in self.roomlog.known(event.room, who):  # it spoke as it joined
                link = self._conns.get(link_id)
                if link is not None and link.is_open:
                    self._on_room_message(link, msg)
        self._want_replan()
        self._show(RoomsChanged(event.room))

    def _forget_room(self, room: str) -> None:
        """We left ``room`` or were removed from it."""
        self.rooms.pop(room, None)
        self._said_at.pop(room, None)
        if self.router is not None:
            self.router.forget_room(room)
        if self.roomlog is not None:
            self.roomlog.left(room)

    # ================================================================== the mesh

    def _want_replan(self) -> None:
        """Plan links soon: changes that come together are planned for once."""
        if self._replan_timer is None or not self._replan_timer.active:
            self._replan_timer = self._timers.at(self._now + self.config.replan_delay, self._replan)

    def _replan(self, now: float) -> None:
        """Bring links in line with the mesh the room views call for."""
        self._replan_timer = None
        me = self.username
        if me is None or self._closing:
            self._release_says()
            return
        wanted: dict[str, frozenset[str]] = {}
        for name, view in self.rooms.items():
            for peer in self._neighbours(view, me, now):
                wanted[peer] = wanted.get(peer, frozenset()) | {name}
        self._refresh_theirs()
        views: dict[str, LinkView] = {}
        wake = [b.retry_at for b in self._backoff.values() if b.retry_at > now]
        for peer, link in self.links.items():
            link.view.pinned = link.pinned_until > now
            if link.view.pinned:
                wake.append(link.pinned_until)
            views[peer] = link.view
        plan = plan_links(wanted, self.rooms.keys(), views)
        self._building = plan.waiting
        if self._repairing:
            for room in sorted(self._repairing - plan.waiting):
                self._repairing.discard(room)
                if room in self.rooms:
                    self._notice(f"mesh of {room} repaired", room)
        for peer in plan.dial:
            if peer not in self._dialing and self._may_dial():
                address = self._address(peer)
                if address is not None:
                    self._dial(peer, *address)
        for peer, rooms in plan.announce.items():
            link = self.links[peer]
            link.view.mine = rooms
            self._announce(link, sorted(rooms))
        for peer in plan.close:
            log.debug("closing unneeded link to %s", peer)
            self._close(self.links[peer])
        self._rebuild_forwarding()
        if self._wake_timer is not None:
            self._wake_timer.cancel()
        if wake:  # a backoff or a pin runs out: plan again then
            self._wake_timer = self._timers.at(min(wake), self._replan)
        self._release_says()

    def _neighbours(self, view: RoomView, me: str, now: float) -> frozenset[str]:
        """Our neighbours in a room's mesh, computed without the members we cannot reach just
        now (so the mesh closes around them instead of waiting)."""
        mesh = view.mesh
        mesh.add(me)
        away = [p for p, b in self._backoff.items() if b.retry_at > now and p in mesh]
        away += [p for p, until in self._penalized.items() if until > now and p in mesh]
        for peer in away:
            mesh.remove(peer)
        try:
            return mesh.neighbours(me)
        finally:
            for peer in away:
                mesh.add(peer)

    def _announce(self, link: Link, rooms: list[str]) -> None:
        """Our rooms for this link, split so that no frame outgrows its bound."""
        chunks = [rooms[i : i + MAX_MESH_ROOMS] for i in range(0, len(rooms), MAX_MESH_ROOMS)]
        for i, chunk in enumerate(chunks or [[]]):
            self._send(link, MeshRooms(rooms=chunk, more=i < len(chunks) - 1))

    def _on_mesh(self, link: Link, msg: MeshRooms) -> None:
        """An announcement (or a part of one); past ``MAX_DECLARED`` rooms the rest is
        ignored: no peer shares that many rooms with us."""
        parts = link.declaring
        room = MAX_DECLARED - len(parts)
        parts.extend(msg.rooms[: max(0, room)])
        if msg.more:
            return
        link.declared, link.declaring = frozenset(parts), []
        self._refresh_theirs()
        self._rebuild_forwarding()

    def _refresh_theirs(self) -> None:
        """A non-member's announcement must not pull our room's messages its way."""
        rooms = self.rooms
        for peer, link in self.links.items():
            link.view.theirs = frozenset(
                r for r in link.declared if r in rooms and rooms[r].is_online(peer)
            )

    def _rebuild_forwarding(self) -> None:
        """The forwarding set of each room; the router learns what changed (new neighbours
        before lost ones, so that tree push counts them as feeding it)."""
        self._forward = forwarding_table({p: link.view for p, link in self.links.items()})
        router = self.router
        if router is None:
            return
        new = {room: frozenset(peers) for room, peers in self._forward.items()}
        old = self._router_rooms
        for room, peers in new.items():
            for peer in peers - old.get(room, frozenset()):
                router.neighbour_up(room, peer)
                if self.roomlog is not None:
                    self.roomlog.serves(room, peer)
        for room, peers in old.items():
            for peer in peers - new.get(room, frozenset()):
                self._dispatch(router.neighbour_down(room, peer))
        self._router_rooms = new
        self._router_dirty = True

    def _dispatch(self, sends: list[Send]) -> None:
        """Carry out a router's sends: each frame to each target we still hold a link with."""
        out, links = self._out, self.links
        for send in sends:
            frame = send.frame
            for target in send.targets:
                link = links.get(target)
                if link is not None:
                    out.append(SendLink(link.id, frame))

    def _arm_router(self) -> None:
        """The deadlines of the router (tree push: announcements to flush, grafts to ask)
        and of the room log (catch-up, order, waits), as one of ours."""
        router, roomlog = self.router, self.roomlog
        deadlines = [
            d
            for d in (
                router.next_deadline() if router is not None else None,
                roomlog.next_deadline() if roomlog is not None else None,
            )
            if d is not None
        ]
        deadline = min(deadlines) if deadlines else None
        timer = self._router_timer
        if timer is not None and timer.active and timer.when == deadline:
            return
        if timer is not None:
            timer.cancel()
        self._router_timer = None
        if deadline is not None:
            self._router_timer = self._timers.at(deadline, self._router_due)

    def _router_due(self, now: float) -> None:
        self._router_timer = None
        if self.router is not None:
            self._dispatch(self.router.on_timer(now))
        if self.roomlog is not None:
            self.roomlog.timer(now)
        self._router_dirty = True

    def _address(self, peer: str) -> tuple[str, int] | None:
        for view in self.rooms.values():
            m = view.members.get(peer)
            if m is not None and m.online and m.host and m.port:
                return m.host, m.port
        return None

    # ================================================================== links

    def _may_dial(self) -> bool:
        """Our own dials count against ``max_connections`` too (one slot is kept for a
        neighbour dialing us); a mesh that wants more waits for the next plan."""
        return len(self._conns) < self.config.max_connections - 1

    def _dial(self, peer: str, host: str, port: int) -> Link:
        link = Link(
            id=next(self._ids), dialed=True, nonce=self._ctx.new_id(), state=LinkState.DIALING
        )
        link.expect = peer
        link.deadline = self._now + 2 * self.config.dial_timeout
        self._conns[link.id] = link
        self._dialing[peer] = link
        self._timers.at(link.deadline, lambda now: self._due(link, now))
        self._out.append(Dial(link.id, host, port))
        return link

    def _due(self, link: Link, now: float) -> None:
        """A link that is not open by its deadline is given up."""
        if link.state in (LinkState.OPEN, LinkState.CLOSED) or now < link.deadline:
            return
        if link.dialed:
            log.info("cannot link to %s: no handshake in time", link.expect)
        else:
            log.info("closing a connection that did not finish its handshake in time")
        self._close(link, abort=True)
        self._link_gone(link)

    def accept(self, now: float, cert: bytes | None = None) -> tuple[int, list[Action]]:
        """Someone connected to our listener, showing ``cert`` in TLS (required, and checked
        against the registry's CA by the shell): a new link, waiting for their hello."""
        self._at(now)
        waiting = [c for c in self._conns.values() if c.state is LinkState.AWAIT_HELLO]
        if len(waiting) >= MAX_UNAUTHENTICATED:  # the newcomer takes the oldest one's place
            oldest = min(waiting, key=lambda c: c.deadline)
            log.info("too many connections wait for their hello; closing the oldest")
            self._close(oldest, abort=True)
            self._link_gone(oldest)
        link = Link(next(self._ids), False, self._ctx.new_id(), LinkState.AWAIT_HELLO)
        self._conns[link.id] = link
        refusal = None
        if len(self._conns) > self.config.max_connections:
            refusal = PeerError(code=ErrorCode.TOO_MANY_CONNECTIONS, reason="peer is full")
        elif self.config.secure:
            try:
                theirs = self._check_cert(cert)
            except TrustError as exc:
                log.info("refused a link: %s", exc)
                refusal = PeerError(code=ErrorCode.CERT_REFUSED, reason=str(exc))
            else:
                link.peer, link.peer_key = theirs.username, theirs.public_key
        if refusal is not None:  # one frame, then nothing it sends is read
            self._send(link, refusal)
            self._close(link)
            self._link_gone(link)
        else:  # a connection that never finishes its handshake must not hold a slot
            link.deadline = now + HANDSHAKE_SECONDS
            self._timers.at(link.deadline, lambda now: self._due(link, now))
        return link.id, self._take()

    def _check_cert(self, cert: bytes | None) -> UserCert:
        """A peer's certificate, checked: this registry's, valid now, and for the key the
        registry lists for that user when we know it (a key replaced by a later login, on
        another machine, is refused)."""
        if cert is None:
            raise TrustError("no certificate")
        if self._ca_key is None:
            raise TrustError("we do not know the registry's CA yet")
        theirs = read_user_cert(cert, self._ca_key, self._ctx.wall)
        known = self._known_key(theirs.username)
        if known is not None and known != theirs.public_key:
            raise TrustError(f"{theirs.username}'s certificate is for a key replaced since")
        return theirs

    def _known_key(self, user: str) -> bytes | None:
        for view in self.rooms.values():
            member = view.members.get(user)
            if member is not None and member.key is not None:
                return member.key
        return None

    def link_connected(self, link_id: int, now: float) -> list[Action]:
        """A dial succeeded (in TLS, with our certificate): say hello."""
        self._at(now)
        link = self._conns.get(link_id)
        if link is None or link.state is not LinkState.DIALING or self.username is None:
            self._out.append(CloseLink(link_id, abort=True))  # given up, or logged out
            return self._take()
        link.advance(LinkEvent.CONNECTED)
        link.deadline = now + self.config.dial_timeout
        self._timers.at(link.deadline, lambda now: self._due(link, now))
        self._send(
            link,
            PeerHello(version=PROTOCOL_VERSION, username=self.username or "", nonce=link.nonce),
        )
        return self._take()

    def link_failed(self, link_id: int, reason: str, now: float) -> list[Action]:
        """A dial failed (refused, unreachable, timed out)."""
        self._at(now)
        link = self._conns.get(link_id)
        if link is not None:
            log.info("cannot link to %s: %s", link.expect, reason)
            self._link_gone(link)
        return self._take()

    def link_closed(self, link_id: int, now: float) -> list[Action]:
        self._at(now)
        link = self._conns.get(link_id)
        if link is not None:
            self._link_gone(link)
        return self._take()

    def _link_gone(self, link: Link) -> None:
        was_open = link.is_open
        link.state = LinkState.CLOSED
        self._conns.pop(link.id, None)
        if was_open and self.directs is not None:
            self.directs.link_down(link.id)
        if link.dialed and link.expect is not None and self._dialing.get(link.expect) is link:
            del self._dialing[link.expect]
            if not was_open:
                self._dial_failed(link.expect)
        peer = link.peer
        if peer is None or self.links.get(peer) is not link:
            self._release_says()
            return
        del self.links[peer]
        if self._closing:
            return
        if self.roomlog is not None:
            self.roomlog.link_down(peer)
        rooms = sorted(link.view.mine | link.view.theirs)
        if rooms and self.username is not None:
            self._notice(f"link to {peer} lost; repairing the mesh of {', '.join(rooms)}")
            self._repairing.update(rooms)
        self._rebuild_forwarding()
        self._want_replan()
        self._show(self.status())

    def _dial_failed(self, peer: str) -> None:
        """A member we could not reach is left out of our mesh until a retry succeeds."""
        if self.directs is not None:
            self.directs.unreachable(peer)
        if peer in self.links:  # it reached us meanwhile: nothing to back off from
            return
        entry = self._backoff.get(peer)
        delay = min(entry.delay * 2, BACKOFF_MAX) if entry else BACKOFF_FIRST
        self._backoff[peer] = _Backoff(self._now + delay, delay)
        self._want_replan()

    def link_data(self, link_id: int, data: bytes, now: float) -> list[Action]:
        """Bytes arrived on a link."""
        self._at(now)
        link = self._conns.get(link_id)
        if link is None:
            return self._take()
        try:
            frames = link.framer.feed(data)
            too_large: FrameTooLarge | None = None
        except FrameTooLarge as exc:  # what came before it is handled, then the link is cut
            frames, too_large = exc.frames, exc
        for frame in frames:
            if link.state is LinkState.CLOSED:
                break
            self._on_frame(link, frame)
        if too_large is not None and link.state is not LinkState.CLOSED:
            log.warning("closing link to %s: %s", link.peer or "?", too_large)
            self._close(link, abort=True)
            self._link_gone(link)
        return self._take()

    def _on_frame(self, link: Link, frame: bytes) -> None:
        try:
            msg = decode(peer_decoder, frame)
        except msgspec.MsgspecError as exc:
            link.bad_frames += 1
            log.warning("dropped a bad frame from %s: %s", link.peer or "?", str(exc)[:200])
            if link.bad_frames > MAX_BAD_FRAMES:
                self._close(link, abort=True)
                self._link_gone(link)
            return
        if type(msg) is RoomMessage and link.state is LinkState.OPEN:  # the hot path
            self._on_room_message(link, msg)
            return
        state = link.state
        try:
            link.advance(type(msg))
        except LinkProtocolError as exc:
            self._illegal(link, state, msg, exc)
            return
        if isinstance(msg, PeerHello):
            self._on_hello(link, msg)
        elif isinstance(msg, PeerWelcome):
            self._on_welcome(link, msg)
        elif isinstance(msg, DirectMessage):
            self._on_direct(link, msg)
        elif isinstance(msg, DirectAck):
            if self.directs is not None:
                self.directs.acked(link, msg.id)
        elif isinstance(msg, MeshRooms):
            self._on_mesh(link, msg)
        elif isinstance(msg, IHave | Graft | Prune):
            self._on_tree_frame(link, msg)
        elif isinstance(msg, SyncDigest | SyncSummary | SyncRequest | SyncBatch):
            if self.roomlog is not None:
                self.roomlog.frame(link.peer or "", msg)
                self._router_dirty = True
        elif isinstance(msg, PeerError):
            log.info("peer %s reports %s: %s", link.peer, msg.code, msg.reason)
            if msg.id is not None and self.directs is not None:
                self.directs.refused(link, msg.id, msg.reason)

    def _illegal(self, link: Link, state: LinkState, msg: Message, exc: LinkProtocolError) -> None:
        """The one path for a frame the link's state does not allow."""
        if state is LinkState.AWAIT_HELLO:
            reason = f"expected peer_hello v{PROTOCOL_VERSION}"
            self._send(link, PeerError(code=ErrorCode.BAD_REQUEST, reason=reason))
            self._close(link)
        else:
            if isinstance(msg, PeerError) and msg.code == ErrorCode.LINK_CROSSED:
                log.debug("%s is dialing us at the same time; its link is kept", link.expect)
                self._close(link)
                if link.expect is not None and self._dialing.get(link.expect) is link:
                    del self._dialing[link.expect]  # not a failure: no back-off
                self._link_gone(link)
                return
            if isinstance(msg, PeerError):  # refused: full, logging out, certificate...
                log.info("%s refused our link: %s", link.expect or link.peer, msg.reason)
            else:
                log.warning("closing the link to %s: %s", link.peer or link.expect or "?", exc)
            self._close(link, abort=True)
        self._link_gone(link)

    def _on_hello(self, link: Link, msg: PeerHello) -> None:
        """Acceptor: the dialer is known (its certificate); now we say who we are."""
        me, identity = self.username, self.identity
        secure = self.config.secure
        if msg.version != PROTOCOL_VERSION:
            reason = f"this peer speaks protocol version {PROTOCOL_VERSION}"
        elif me is None or (secure and (identity is None or identity.cert is None)):
            reason = "not accepting links: not logged in"
        elif secure and msg.username != link.peer:
            reason = f"your certificate is {link.peer}'s, not {msg.username}'s"
        elif msg.username.casefold() == me.casefold():
            reason = "not accepting this link"
        elif self._penalized.get(msg.username, 0.0) > self._now:
            reason = "not accepting links from you for a while: you sent badly signed messages"
        elif self._crossed(msg.username):
            self._send(link, PeerError(code=ErrorCode.LINK_CROSSED, reason="our dial to you wins"))
            self._close(link)
            self._link_gone(link)
            return
        else:
            if identity is not None and identity.cert is not None:
                self._send(link, identity.welcome(msg.nonce, me, msg.username))
            else:  # without security (benchmarks): a bare welcome
                self._send(link, PeerWelcome(version=PROTOCOL_VERSION, username=me))
            self._open(link, msg.username)
            return
        self._send(link, PeerError(code=ErrorCode.BAD_REQUEST, reason=reason))
        self._close(link)
        self._link_gone(link)

    def _crossed(self, peer: str) -> bool:
        """Both of us dialed at once: the smaller name's dial is kept, decided here, before
        either link carries anything, so nothing is sent on a link the other end then drops."""
        ours = self._dialing.get(peer)
        if ours is None:
            return False
        if (self.username or "") < peer:
            return True
        del self._dialing[peer]  # theirs wins: ours is dropped before it carried anything
        self._close(ours)
        self._conns.pop(ours.id, None)
        ours.state = LinkState.CLOSED
        return False

    def _on_welcome(self, link: Link, msg: PeerWelcome) -> None:
        """Dialer: the acceptor proves who it is (its certificate and a signature)."""
        expect, me = link.expect or "", self.username
        try:
            if msg.version != PROTOCOL_VERSION:
                raise TrustError(f"it speaks protocol version {msg.version}")
            if me is None:
                raise TrustError("we logged out meanwhile")
            if self.config.secure:
                if self._ca_key is None:
                    raise TrustError("we do not know the registry's CA")
                theirs = check_welcome(msg, expect, link.nonce, me, self._ca_key, self._ctx.wall)
                known = self._known_key(expect)
                if known is not None and known != theirs.public_key:
                    raise TrustError(f"{expect}'s certificate is for a key replaced since")
                link.peer_key = theirs.public_key
            elif msg.username != expect:
                raise TrustError(f"{expect}'s address answered as {msg.username}")
        except TrustError as exc:
            log.warning("refused the link to %s: %s", expect, exc)
            self._send(link, PeerError(code=ErrorCode.CERT_REFUSED, reason=str(exc)))
            self._close(link)
            self._link_gone(link)
            return
        self._open(link, expect)

    def _open(self, link: Link, peer: str) -> None:
        now = self._now
        link.peer = peer
        if self._dialing.get(peer) is link:
            del self._dialing[peer]
        old = self.links.get(peer)
        if old is not None and old is not link:
            if not keep_new_link(self.username or "", peer, link.dialed, old.established, now):
                link.peer = None
                self._close(link)
                self._link_gone(link)
                if self.directs is not None:
                    self.directs.linked(peer, old)
                return
            old.peer = None
            self._close(old)
            self._conns.pop(old.id, None)
            old.state = LinkState.CLOSED
            link.pinned_until = old.pinned_until
        self.links[peer] = link
        link.established = now
        link.pinned_until = max(link.pinned_until, now + GRACE_SECONDS)
        self._backoff.pop(peer, None)
        log.info("linked with %s", peer)
        if self.directs is not None:
            self.directs.linked(peer, link)
        self._want_replan()
        self._show(self.status())

    # ================================================================== messages

    def _on_room_message(self, link: Link, msg: RoomMessage) -> None:
        view = self.rooms.get(msg.room)
        router = self.router
        if view is None or router is None:
            log.debug("dropped a message for %s, not one of our rooms", msg.room)
            return
        if not text_size_ok(msg.text):
            log.warning("dropped an oversized or empty message from %s", link.peer)
            return
        peer = link.peer or ""
        roomlog = self.roomlog
        wall = self._ctx.wall
        speakers = _Speakers(view, msg.ts, wall)
        if roomlog is not None and not (peer in speakers and msg.origin in speakers):
            # someone who joined a moment ago: wait for the registry to say so
            if not roomlog.hold(msg, peer, link.id):
                log.info("dropped a message in %s from %s: too many wait", msg.room, msg.origin)
            self._router_dirty = True
            return
        result = router.receive(msg, peer, self._now, speakers, self._admit_message(view, link))
        if result.sends:
            self._dispatch(result.sends)
        self._router_dirty = True
        dropped = result.dropped
        if dropped is not None:
            if dropped not in (Drop.DUPLICATE, Drop.RATE_LIMITED, Drop.OVER_BUDGET):
                log.warning("dropped a message in %s from %s: %s", msg.room, peer, dropped)
            if dropped is Drop.BAD_SIGNATURE:
                self._bad_signature(link)
            return
        if not result.deliver:
            return
        key = view.author_key(msg.origin, msg.ts, wall)
        if roomlog is not None and key is not None:
            roomlog.received(msg, key, peer)
            self._router_dirty = True
        else:
            self._show_message(RoomText(msg.room, msg.origin, msg.text, msg.ts))

    def _on_tree_frame(self, link: Link, msg: IHave | Graft | Prune) -> None:
        """Tree push's control frames: announcements, grafts, prunes."""
        view = self.rooms.get(msg.room)
        router = self.router
        if view is None or router is None:
            return
        result = router.receive(msg, link.peer or "", self._now, view.members)
        if result.dropped is not None and result.dropped is not Drop.DUPLICATE:
            log.info(
                "ignored a %s in %s from %s: %s",
                msg.__struct_config__.tag,
                msg.room,
                link.peer,
                result.dropped,
            )
        self._dispatch(result.sends)
        self._router_dirty = True

    def _admit_message(self, view: RoomView, link: Link) -> Check:
        """The last checks of a new room message (not a duplicate): the link's budget for its
        origin, its origin's signature, then its origin's rate (one member cannot flood a
        room: what is beyond is neither shown nor passed on)."""

        def check(msg: RoomMessage) -> Drop | None:
            if self._per_link.take(f"{link.id}\0{msg.room}\0{msg.origin}", self._now) > 0:
                self.over_budget += 1  # dropped before its signature costs anything
                return Drop.OVER_BUDGET
            if self.config.secure:
                key = view.author_key(msg.origin, msg.ts, self._ctx.wall)
                if not check_message(self._verifier, msg, key):
                    return Drop.BAD_SIGNATURE
            if self._incoming.take(f"{msg.room}\0{msg.origin}", self._now) > 0:
                self._flooding(msg.room, msg.origin)
                return Drop.RATE_LIMITED
            return None

        return check

    def _flooding(self, room: str, origin: str) -> None:
        """Say so, once a minute per room and sender."""
        key = f"{room}\0{origin}"
        if self._flood_notices.get(key, -1e9) + 60.0 > self._now:
            return
        self._flood_notices[key] = self._now
        while len(self._flood_notices) > MAX_PENALIZED:
            del self._flood_notices[next(iter(self._flood_notices))]
        self._notice(
            f"{origin} sends more than {self.config.receive_rate:g} messages a second in {room}; "
            "what is beyond is not shown",
            room,
        )

    def _bad_signature(self, link: Link) -> None:
        """A link that keeps bringing forged or altered messages is cut (the mesh routes
        around it; the originals arrive over the other paths)."""
        link.bad_signatures += 1
        if link.bad_signatures >= self.config.max_bad_signatures:
            log.warning(
                "cutting the link to %s: %d badly signed messages", link.peer, link.bad_signatures
            )
            self._close(link, abort=True)
            self._link_gone(link)
            if link.peer is not None:  # and not taken back for a while, in either direction
                self._penalized[link.peer] = self._now + PENALTY_SECONDS
                while len(self._penalized) > MAX_PENALIZED:
                    del self._penalized[next(iter(self._penalized))]
                self._want_replan()

    def _on_direct(self, link: Link, msg: DirectMessage) -> None:
        if msg.sender != link.peer:
            reason = "the sender must be the link's own user"
            self._send(link, PeerError(code=ErrorCode.BAD_REQUEST, reason=reason, id=msg.id))
            return
        if not text_size_ok(msg.text):
            reason = f"texts are 1-{MAX_TEXT} bytes"
            self._send(link, PeerError(code=ErrorCode.TEXT_TOO_LONG, reason=reason, id=msg.id))
            return
        link.pinned_until = self._now + PIN_SECONDS
        self._send(link, DirectAck(id=msg.id))
        directs = self.directs
        if directs is not None and not directs.first_time(msg.sender, msg.id):
            return  # a resend of one we have (our acknowledgement was lost): shown once
        if msg.sender.casefold() not in self._blocked:  # acknowledged all the same
            self._show(DirectText(msg.sender, msg.text, msg.ts, peer=msg.sender))

    def say(self, command: int, room: str, text: str, now: float) -> list[Action]:
        """Flood ``text`` to ``room``; the result is how many neighbours it was handed to."""

        def body() -> None:
            self._require_login()
            _check_text(text)
            name = self.room_name(room)
            if name not in self.rooms:
                raise CommandError(f"you are not a member of {room}; /join {room} first")
            queue = self._paced.setdefault(name, deque())
            if len(queue) >= MAX_PACED:
                raise CommandError(
                    f"{len(queue)} messages already wait to go to {name} (at most "
                    f"{self.config.send_rate:g} a second in a room); try again later"
                )
            queue.append(_Say(command, name, text))
            if len(queue) == 1:
                self._pace(name)

        return self._guarded(command, now, body)

    def _pace(self, room: str, now: float | None = None) -> None:
        """Our messages to a room go out in order, at most ``send_rate`` a second after a
        burst: a paste of many lines is sent, slowly, rather than refused."""
        queue = self._paced.get(room)
        while queue:
            wait = self._outgoing.take(room, self._now)
            if wait > 0:
                if len(queue) == 1 or not self._pacing_said.get(room):
                    self._pacing_said[room] = True
                    self._notice(
                        f"sending to {room} slowly: {len(queue)} waiting (at most "
                        f"{self.config.send_rate:g} messages a second in a room)",
                        room,
                    )
                self._timers.at(self._now + wait, lambda now: self._pace(room, now))
                return
            self._send_when_meshed(queue.popleft())
        self._paced.pop(room, None)
        self._pacing_said.pop(room, None)

    def _send_when_meshed(self, pending: _Say) -> None:
        if self._mesh_settled(pending.room):
            self._flood(pending)
            return
        self._says.append(pending)  # the mesh is being dialed: wait for it, briefly
        pending.timer = self._timers.at(
            self._now + self.config.dial_timeout, lambda now: self._flood(pending)
        )

    @property
    def _replanning(self) -> bool:
        return self._replan_timer is not None and self._replan_timer.active

    def _mesh_settled(self, room: str) -> bool:
        return not self._replanning and not (room in self._building and self._dialing)

    def _release_says(self) -> None:
        for pending in [s for s in self._says if self._mesh_settled(s.room)]:
            self._flood(pending)

    def _flood(self, pending: _Say) -> None:
        if pending in self._says:
            self._says.remove(pending)
        if pending.timer is not None:
            pending.timer.cancel()
        me, router = self.username, self.router
        if me is None or router is None or pending.room not in self.rooms:
            self._fail(pending.command, f"you are no longer in {pending.room}")
            return
        identity = self.identity
        roomlog = self.roomlog
        if roomlog is not None and identity is not None:
            seq = roomlog.next_seq(pending.room, me, identity.signer.public_key)
        else:
            seq = self._seqs.get(pending.room, 0) + 1
        self._seqs[pending.room] = seq
        self._said_at[pending.room] = self._now
        origination = router.originate(
            pending.room,
            pending.text,
            self._now,
            ts=self._ctx.wall,
            seq=seq,
            sign=identity.sign_message if identity is not None and self.config.secure else None,
        )
        if roomlog is not None and identity is not None:
            roomlog.sent(origination.msg, identity.signer.public_key)
        self._dispatch(origination.sends)
        self._router_dirty = True
        self._show(RoomText(pending.room, me, pending.text, origination.msg.ts, mine=True))
        self._done(pending.command, len(self._forward.get(pending.room, ())))

    def send_direct(self, command: int, username: str, text: str, now: float) -> list[Action]:
        """Send ``text`` to one user: done with a ``DirectSent``, delivered (their peer
        acknowledged it) or kept in the outbox to be sent when they can be reached."""

        def body() -> None:
            self._require_login()
            _check_text(text)
            if self.directs is None:
                raise CommandError("not logged in")
            self.directs.send(command, username, text)

        return self._guarded(command, now, body)

    def resend(self, command: int, username: str | None, now: float) -> list[Action]:
        """Queue the failed direct messages (to ``username``, or all) again; done with how
        many."""

        def body() -> None:
            self._require_login()
            if self.directs is None:
                raise CommandError("not logged in")
            self._done(command, len(self.directs.resend(username)))

        return self._guarded(command, now, body)

    def outbox(self) -> list[Outgoing]:
        """Our direct messages not yet delivered (queued, on their way, or failed)."""
        return [] if self.directs is None else self.directs.pending()

    def _transmit_direct(self, link: Link, msg: DirectMessage) -> None:
        link.pinned_until = self._now + PIN_SECONDS
        self._send(link, msg)

    def _reach(self, peer: str, host: str, port: int) -> None:
        """Dial ``peer`` for a direct message, unless a link is open or on its way."""
        if peer not in self._dialing and self._linked(peer) is None and self._may_dial():
            self._dial(peer, host, port)

    def _linked(self, username: str) -> Link | None:
        key = username.casefold()
        for peer, link in self.links.items():
            if peer.casefold() == key:
                return link
        return None

    # ================================================================== shutting down

    def shut_down(self, now: float) -> list[Action]:
        """Close every link (after flushing what was queued) and the registry connection."""
        self._at(now)
        self._closing = True
        for link in list(self._conns.values()):
            self._close(link)
        self.registry.close()
        return self._take()


class _Speakers:
    """Who may author or pass on a room message sent at ``ts``: the room's members, and those
    who left it a moment ago if it was sent before they left (see ``RoomView.speaks``)."""

    __slots__ = ("_ts", "_view", "_wall")

    def __init__(self, view: RoomView, ts: float, wall: float) -> None:
        self._view, self._ts, self._wall = view, ts, wall

    def __contains__(self, user: object) -> bool:
        return isinstance(user, str) and self._view.speaks(user, self._ts, self._wall)


def keep_new_link(me: str, peer: str, new_dialed: bool, old_established: float, now: float) -> bool:
    """Two links to the same peer (both dialed at once): which one both ends keep.

    The one the smaller name dialed, so both ends agree without a word. A link that has been up
    a while is kept instead: a newcomer claiming the same name must not displace it.
    """
    if now - old_established > GRACE_SECONDS:
        return False
    return new_dialed == (me < peer)


def _check_text(text: str) -> None:
    if not text.strip():
        raise CommandError("nothing to send")
    if not text_size_ok(text):
        raise CommandError(f"message too long: at most {MAX_TEXT} bytes")


def _nothing(_: object) -> None:
    return None


def _same(value: T) -> T:
    return value


def _members_only(flow: Flow[tuple[str, list[MemberInfo]]]) -> Flow[list[MemberInfo]]:
    _, members = yield from flow
    return members
