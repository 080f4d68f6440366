"""The peer: a TCP listener and dialer, a registry session, and the flood router, wired up.

This is the asyncio shell. What to link to comes from ``links.py`` and ``mesh.py``; what to
do with a room message comes from ``router.py``; this module only moves frames and keeps the
timers (dial backoff, registry reconnection). User interfaces call the ``async`` methods
(which raise ``CommandError`` with a sentence for people) and receive ``PeerEvent`` values.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import msgspec

from p2pchat.peer.events import (
    CommandError,
    DirectText,
    Notice,
    PeerEvent,
    RoomsChanged,
    RoomText,
    Status,
)
from p2pchat.peer.links import LinkView, forwarding_table, plan_links
from p2pchat.peer.router import FloodRouter
from p2pchat.protocol.framing import FrameTooLarge, LineFramer
from p2pchat.protocol.messages import (
    MAX_TEXT,
    PROTOCOL_VERSION,
    Bye,
    DirectAck,
    DirectMessage,
    LinkRole,
    MemberInfo,
    MeshRooms,
    Message,
    PeerError,
    PeerHello,
    PeerProof,
    PeerWelcome,
    RoomEvent,
    RoomInfo,
    RoomMessage,
    SearchResult,
    UserAddr,
    encode,
    link_proof,
    peer_decoder,
    text_size_ok,
    valid_name,
)
from p2pchat.registry.client import Event, RegistryClient, RegistryClosed, RegistryError

log = logging.getLogger("p2pchat.peer")

MAX_LINK_BUFFER = 4 << 20
"""A neighbour that lets this much pile up unsent is too slow for the mesh: its link is cut."""
PIN_SECONDS = 300.0
"""A link used for direct messages is kept this long after the last one."""
HANDSHAKE_SECONDS = 10.0
"""An accepted connection must finish its handshake within this."""
MAX_BACKLOG = 256 * 1024
"""Bytes a link may send while its proof is being checked."""
GRACE_SECONDS = 2.0
"""A new link is kept this long even if unneeded, so the other side's ``mesh`` frame can
arrive (it may have dialed us for a room we have not heard of yet)."""


@dataclass(frozen=True, slots=True)
class PeerConfig:
    registry_host: str = "127.0.0.1"
    registry_port: int = 15600
    listen_host: str = "0.0.0.0"
    listen_port: int = 0
    advertise: str | None = None
    heartbeat: float = 20.0
    max_links: int = 6
    max_connections: int = 128
    dial_timeout: float = 3.0
    ack_timeout: float = 5.0
    reconnect_max: float = 10.0


@dataclass(slots=True)
class _Member:
    online: bool
    host: str | None = None
    port: int | None = None


@dataclass(slots=True)
class _Room:
    name: str
    members: dict[str, _Member] = field(default_factory=dict)


def _keepalive(sock: socket.socket | None) -> None:
    """Notice a peer that vanished without a reset (cable pulled, host frozen) in ~25 s."""
    if sock is None:
        return
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 5)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)


class _Link(asyncio.Protocol):
    """One TCP connection with another peer; open once the registry vouched for both ends."""

    def __init__(self, node: PeerNode, dialed: bool, expect: str | None = None) -> None:
        self.node = node
        self.dialed = dialed
        self.expect = expect
        self.peer: str | None = None
        self.view = LinkView()
        self.pinned_until = 0.0
        self.established = 0.0
        self.declared: frozenset[str] = frozenset()
        """Rooms the other side announced; those it is an online member of count
        (``view.theirs``)."""
        self.transport: asyncio.Transport | None = None
        self.framer = LineFramer()
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.bad_frames = 0
        self.nonce = os.urandom(16).hex()
        """What the other side must prove its session for (see ``link_proof``)."""
        self.claimed: str | None = None
        """The name the other side gave in the handshake, before it is vouched for."""
        self.backlog: list[bytes] | None = None
        """Frames held, in order, while the registry checks a proof."""
        self.backlog_bytes = 0
        self.checking: asyncio.Task[None] | None = None
        """The registry's check of the other side's proof, cancelled if the link goes."""
        self._pending: list[bytes] | None = None
        """Frames sent during this turn of the event loop, written together at its end."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        _keepalive(transport.get_extra_info("socket"))
        if self.dialed:
            username = self.node.username or ""
            self.send(
                encode(PeerHello(version=PROTOCOL_VERSION, username=username, nonce=self.nonce))
            )
        elif not self.node.can_accept():
            self.send(encode(PeerError(code="too_many_connections", reason="peer is full")))
            self.close()
        else:  # a connection that never finishes its handshake must not hold a slot
            self.node._loop.call_later(HANDSHAKE_SECONDS, self._handshake_due)

    def _handshake_due(self) -> None:
        if self.peer is None and self.transport is not None and not self.transport.is_closing():
            log.info("closing a connection that did not finish its handshake in time")
            self.abort()

    def data_received(self, data: bytes) -> None:
        try:
            frames = self.framer.feed(data)
        except FrameTooLarge as exc:
            log.warning("closing link to %s: %s", self.peer or "?", exc)
            frames = exc.frames  # what came before it is handled, then the link is cut
            self.node._loop.call_soon(self.abort)
        node = self.node
        for frame in frames:
            if self.transport is None or self.transport.is_closing():
                return
            node.on_frame(self, frame)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.checking is not None:
            self.checking.cancel()
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("link closed during the handshake"))
            self.ready.exception()  # mark retrieved: nobody may be waiting
        if not self.lost.done():
            self.lost.set_result(None)
        self.node.on_link_lost(self)

    def send(self, frame: bytes) -> None:
        """Queue ``frame``; the frames of one loop turn go out in one write (one syscall)."""
        pending = self._pending
        if pending is not None:
            pending.append(frame)
            return
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        self._pending = [frame]
        self.node._loop.call_soon(self.flush)

    def flush(self) -> None:
        frames, self._pending = self._pending, None
        transport = self.transport
        if not frames or transport is None or transport.is_closing():
            return
        transport.write(frames[0] if len(frames) == 1 else b"".join(frames))
        if transport.get_write_buffer_size() > MAX_LINK_BUFFER:
            log.warning("link to %s is not keeping up; cutting it", self.peer)
            transport.abort()

    def abort(self) -> None:
        self._pending = None
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        self.flush()
        if self.transport is not None:
            self.transport.close()


class PeerNode:
    """One user's peer. ``start()``, then ``login()``; ``close()`` at the end."""

    def __init__(
        self, config: PeerConfig, on_event: Callable[[PeerEvent], None] | None = None
    ) -> None:
        self.config = config
        self._emit_cb = on_event or (lambda event: None)
        self.registry: RegistryClient | None = None
        self.username: str | None = None
        self._password: str | None = None
        self.router: FloodRouter | None = None
        self.rooms: dict[str, _Room] = {}
        self.links: dict[str, _Link] = {}
        self._all_links: set[_Link] = set()
        self._forward: dict[str, list[_Link]] = {}
        self._forward_names: dict[str, list[str]] = {}
        """``_forward`` as peer names, for the router: built when the table changes, not per
        message."""
        self._dialing: dict[str, asyncio.Task[_Link | None]] = {}
        self._backoff: dict[str, tuple[float, float]] = {}  # peer -> (retry at, delay)
        self._acks: dict[str, tuple[asyncio.Future[None], _Link]] = {}
        self._loading: dict[str, list[RoomEvent]] = {}
        """Casefolded room -> events that arrived while its member list was being loaded."""
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._ticker: asyncio.Task[None] | None = None
        self._reconnecting: asyncio.Task[None] | None = None
        self._closing = False
        self._connecting = asyncio.Lock()
        self._building: frozenset[str] = frozenset()  # rooms whose mesh waits for a dial
        self._repairing: set[str] = set()  # rooms that lost a link, until whole again
        self._mesh_changed = asyncio.Event()
        self._wake = float("inf")  # when a backoff or a pin runs out: the next replan is due
        self._loop = asyncio.get_running_loop()
        self.port = 0

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Open the listener (``listen_port`` 0 picks a free port)."""
        cfg = self.config
        self._server = await self._loop.create_server(
            lambda: self._track(_Link(self, dialed=False)), cfg.listen_host, cfg.listen_port
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._ticker = asyncio.create_task(self._tick())

    async def close(self) -> None:
        """Log out, close every link after flushing what was queued, stop listening."""
        self._closing = True
        self._cancel_tasks()
        if self.registry is not None:
            if self.username is not None and not self.registry.closed.is_set():
                with contextlib.suppress(RegistryError, ConnectionError, TimeoutError):
                    await asyncio.wait_for(self.registry.logout(), 2.0)
            await self.registry.close()
        if self._server is not None:
            self._server.close()
        lost = [link.lost for link in self._all_links]
        for link in list(self._all_links):
            link.close()  # flushes queued frames first
        if lost:
            await asyncio.wait(lost, timeout=2.0)
        for link in list(self._all_links):
            link.abort()

    def abort(self) -> None:
        """Stop at once, saying nothing to anyone: what a crash looks like from outside.

        Benchmarks and tests of churn use it; a user's peer always uses ``close()``.
        """
        self._closing = True
        self._cancel_tasks()
        if self.registry is not None:
            self.registry.abort()
        if self._server is not None:
            self._server.close()
        for link in list(self._all_links):
            link.abort()

    def _cancel_tasks(self) -> None:
        for task in [*self._tasks, *self._dialing.values(), self._ticker, self._reconnecting]:
            if task is not None:
                task.cancel()

    def _track(self, link: _Link) -> _Link:
        self._all_links.add(link)
        return link

    def can_accept(self) -> bool:
        return len(self._all_links) <= self.config.max_connections

    def _emit(self, event: PeerEvent) -> None:
        try:
            self._emit_cb(event)
        except Exception:
            log.exception("event handler failed")

    def _notice(self, text: str, room: str | None = None) -> None:
        self._emit(Notice(text, room))

    def status(self) -> Status:
        """Registry is reported up when connected and, if we are logged in, logged in there."""
        client = self.registry
        registry = (
            client is not None
            and not client.closed.is_set()
            and (self.username is None or client.session is not None)
        )
        beat = self.registry.last_heartbeat if self.registry else None
        return Status(registry, self.username, len(self.links), beat)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ registry

    async def _registry(self) -> RegistryClient:
        async with self._connecting:  # one session at a time, however many commands wait
            if self.registry is not None and not self.registry.closed.is_set():
                return self.registry
            cfg = self.config
            try:
                client = await RegistryClient.connect(
                    cfg.registry_host,
                    cfg.registry_port,
                    timeout=5.0,
                    on_event=self._on_registry_event,
                )
            except RegistryError as exc:  # it answered the hello with an error
                raise CommandError(f"the registry refused us: {exc.reason}") from None
            except (OSError, TimeoutError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
                raise CommandError(
                    f"cannot reach the registry at {cfg.registry_host}:{cfg.registry_port}: "
                    f"{reason}"
                ) from None
            self.registry = client
            self._spawn(self._watch_registry(client))
            return client

    async def _call(self, coro_fn: Callable[[RegistryClient], Coroutine[Any, Any, Any]]) -> Any:
        client = await self._registry()
        try:
            return await coro_fn(client)
        except RegistryError as exc:
            raise CommandError(exc.reason) from None
        except RegistryClosed as exc:
            raise CommandError(f"lost the registry: {exc}") from None

    async def _watch_registry(self, client: RegistryClient) -> None:
        await client.closed.wait()
        if self._closing or client is not self.registry:
            return
        self._emit(self.status())
        if self.username is None:
            self._notice(f"registry connection closed: {client.close_reason}")
            return
        self._notice(
            f"registry unreachable ({client.close_reason}); chat with linked peers goes on, "
            "reconnecting"
        )
        self._reconnecting = asyncio.create_task(self._reconnect())

    async def _reconnect(self) -> None:
        delay = 0.5
        refused = ""
        while not self._closing and self.username and self._password:
            await asyncio.sleep(delay)
            try:
                await self._login(self.username, self._password)
            except CommandError as exc:
                log.info("registry reconnect failed: %s", exc)
                delay = min(delay * 2, self.config.reconnect_max)
                reachable = self.registry is not None and not self.registry.closed.is_set()
                if reachable and str(exc) != refused:  # say so once per reason, not per try
                    refused = str(exc)
                    self._notice(f"the registry is back but refuses our login: {exc}; retrying")
                continue
            self._notice(f"registry is back; logged in again as {self.username}")
            return

    async def register(self, username: str, password: str) -> None:
        await self._call(lambda c: c.register(username, password))

    async def login(self, username: str, password: str) -> str:
        if self.username is not None:
            raise CommandError(f"already logged in as {self.username}")
        await self._login(username, password)
        assert self.username is not None
        return self.username

    async def _login(self, username: str, password: str) -> None:
        cfg = self.config
        session = await self._call(
            lambda c: c.login(
                username, password, self.port, host=cfg.advertise, heartbeat=cfg.heartbeat
            )
        )
        if self.router is None or self.router.me != session.username:
            self.router = FloodRouter(session.username)
        self.username = session.username
        self._password = password
        await self._load_rooms()
        self._emit(self.status())

    async def _load_rooms(self) -> None:
        """Fetch our rooms' member lists (at login, and again after the registry returns).

        Each room is replaced as soon as it is loaded, so the old views keep serving the
        mesh meanwhile; rooms we are no longer in are dropped at the end.
        """
        infos: list[RoomInfo] = await self._call(lambda c: c.rooms())
        mine = [info.room for info in infos if info.member]
        for room in mine:
            self._loading.setdefault(room.casefold(), [])  # buffer their events from now on
        try:
            for room in mine:
                view = await self._room_view(room)
                if view is not None:
                    self.rooms[view.name] = view
        finally:  # if the registry went away midway, stop buffering for the rooms not loaded
            for room in mine:
                self._loading.pop(room.casefold(), None)
        for name in set(self.rooms) - set(mine):
            del self.rooms[name]
        self._replan()
        self._emit(RoomsChanged())

    async def _room_view(self, room: str) -> _Room | None:
        """Load a room's members, then replay the events that came in while we waited.

        Pushed events are handled the moment they arrive, before the awaited reply resumes
        us; without the replay, an event just after the reply would be lost for good.
        None if we were removed from the room meanwhile.
        """
        key = room.casefold()
        buffered: list[RoomEvent] | None = self._loading.setdefault(key, [])
        try:
            reply: tuple[str, list[MemberInfo]] = await self._call(lambda c: c.room_members(room))
        finally:
            if self._loading.get(key) is buffered:
                del self._loading[key]
            else:
                buffered = None
        if buffered is None:
            return None
        name, members = reply
        view = _Room(name, {m.username: _Member(m.online, m.host, m.port) for m in members})
        for event in buffered:
            _apply(view, event)
        return view

    async def logout(self) -> None:
        if self.username is None:
            raise CommandError("not logged in")
        if self._reconnecting is not None:
            self._reconnecting.cancel()
        try:
            if self.registry is not None and not self.registry.closed.is_set():
                await self._call(lambda c: c.logout())
            # else: the registry already dropped our session; logging out here is enough
        finally:
            self._logged_out()

    def _logged_out(self) -> None:
        self.username = None
        self._password = None
        self.rooms = {}
        for task in self._dialing.values():
            task.cancel()
        for link in list(self._all_links):
            link.close()
        self._emit(RoomsChanged())
        self._emit(self.status())

    def _require_login(self) -> str:
        if self.username is None:
            raise CommandError("log in first: /login USER PASSWORD")
        return self.username

    async def search(self, username: str) -> SearchResult:
        result: SearchResult = await self._call(lambda c: c.search(username))
        return result

    async def users(self) -> list[UserAddr]:
        result: list[UserAddr] = await self._call(lambda c: c.users())
        return result

    async def list_rooms(self) -> list[RoomInfo]:
        result: list[RoomInfo] = await self._call(lambda c: c.rooms())
        return result

    async def members(self, room: str) -> list[MemberInfo]:
        result: list[MemberInfo] = await self._call(lambda c: c.members(room))
        return result

    async def create_room(self, room: str, private: bool = False) -> None:
        self._require_login()
        await self._call(lambda c: c.create_room(room, private))
        await self._adopt_room(room)

    async def join_room(self, room: str) -> None:
        self._require_login()
        await self._call(lambda c: c.join_room(room))
        await self._adopt_room(room)

    async def leave_room(self, room: str) -> None:
        self._require_login()
        await self._call(lambda c: c.leave_room(room))
        self.rooms.pop(self.room_name(room), None)
        self._replan()
        self._emit(RoomsChanged())

    async def add_member(self, room: str, username: str) -> None:
        self._require_login()
        await self._call(lambda c: c.add_member(room, username))

    async def remove_member(self, room: str, username: str) -> None:
        self._require_login()
        await self._call(lambda c: c.remove_member(room, username))

    def room_name(self, room: str) -> str:
        """The spelling of one of our rooms, whatever the casing typed."""
        key = room.casefold()
        for name in self.rooms:
            if name.casefold() == key:
                return name
        return room

    def _on_registry_event(self, event: Event) -> None:
        if isinstance(event, Bye):
            log.info("registry says bye: %s", event.reason)
            return
        me = self.username
        if me is None:
            return
        who, change = event.username, event.change
        if who == me:
            if change == "added":
                self._notice(f"{event.by} added you to {event.room}", event.room)
                self._spawn(self._adopt_room(event.room))
            elif change == "removed":
                self.rooms.pop(event.room, None)
                self._loading.pop(event.room.casefold(), None)  # a load in flight is void
                self._notice(f"{event.by} removed you from {event.room}", event.room)
                self._replan()
                self._emit(RoomsChanged())
            return
        if change in ("online", "joined", "added"):
            self._backoff.pop(who, None)
        buffered = self._loading.get(event.room.casefold())
        if buffered is not None:
            buffered.append(event)
        room = self.rooms.get(event.room)
        if room is not None:
            _apply(room, event)
        elif buffered is None:
            return
        if event.by != me:  # our own /add or /remove was answered with ok: already
            self._notice(_describe(event), event.room)
        self._replan()
        self._emit(RoomsChanged(event.room))

    async def _adopt_room(self, room: str) -> None:
        try:
            view = await self._room_view(room)
        except CommandError as exc:
            log.warning("could not load room %s: %s", room, exc)
            return
        if view is None:
            return
        self.rooms[view.name] = view
        self._replan()
        self._emit(RoomsChanged(view.name))

    # ------------------------------------------------------------------ mesh

    def _replan(self) -> None:
        """Bring links in line with the mesh the room views call for."""
        me = self.username
        if me is None or self._closing:
            return
        now = self._loop.time()
        online = {
            name: [
                user
                for user, m in room.members.items()
                if m.online and user != me and not self._backing_off(user, now)
            ]
            for name, room in self.rooms.items()
        }
        self._refresh_theirs()
        views = {}
        wake = [retry for retry, _ in self._backoff.values() if retry > now]
        for peer, link in self.links.items():
            link.view.pinned = link.pinned_until > now
            if link.view.pinned:
                wake.append(link.pinned_until)
            views[peer] = link.view
        self._wake = min(wake, default=float("inf"))
        plan = plan_links(me, online, views, self.config.max_links)
        self._building = plan.waiting
        if self._repairing:
            for room in sorted(self._repairing - plan.waiting):
                self._repairing.discard(room)
                if room in self.rooms:
                    self._notice(f"mesh of {room} repaired", room)
        for peer in plan.dial:
            if peer not in self._dialing:
                self._dialing[peer] = asyncio.create_task(self._dial_member(peer))
        for peer, rooms in plan.announce.items():
            link = self.links[peer]
            link.view.mine = rooms
            link.send(encode(MeshRooms(rooms=sorted(rooms))))
        for peer in plan.close:
            log.debug("closing unneeded link to %s", peer)
            self.links[peer].close()
        self._rebuild_forwarding()

    def my_rooms(self) -> list[str]:
        """The rooms we are a member of, as the registry spells them."""
        return sorted(self.rooms, key=str.casefold)

    def roster(self, room: str) -> dict[str, bool]:
        """A room's members (in our view, kept current by the registry's events) -> online."""
        view = self.rooms.get(self.room_name(room))
        return {user: m.online for user, m in view.members.items()} if view else {}

    def linked_peers(self) -> frozenset[str]:
        """The users we hold an established link with."""
        return frozenset(self.links)

    def mesh_links(self, room: str) -> list[str]:
        """The peers a message in ``room`` is flooded to (links either side holds for it)."""
        return [link.peer or "" for link in self._forward.get(self.room_name(room), ())]

    async def _mesh_ready(self, room: str, timeout: float) -> None:
        """Wait, briefly, while the room's mesh is still being dialed (just after a login or a
        join), so that a message sent at once reaches everyone the mesh is about to link."""
        loop = self._loop
        deadline = loop.time() + timeout
        while room in self._building and any(self._dialing.values()):
            left = deadline - loop.time()
            if left <= 0:
                return
            self._mesh_changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._mesh_changed.wait(), left)

    def _refresh_theirs(self) -> None:
        """A non-member's announcement must not pull our room's messages its way."""
        rooms = self.rooms
        for peer, link in self.links.items():
            link.view.theirs = frozenset(
                r for r in link.declared if r in rooms and _online(rooms[r], peer)
            )

    def _rebuild_forwarding(self) -> None:
        self._mesh_changed.set()
        table = forwarding_table({p: link.view for p, link in self.links.items()})
        self._forward = {room: [self.links[p] for p in peers] for room, peers in table.items()}
        self._forward_names = table

    def _backing_off(self, peer: str, now: float) -> bool:
        entry = self._backoff.get(peer)
        return entry is not None and entry[0] > now

    def _address(self, peer: str) -> tuple[str, int] | None:
        for room in self.rooms.values():
            m = room.members.get(peer)
            if m is not None and m.online and m.host and m.port:
                return m.host, m.port
        return None

    async def _dial_member(self, peer: str) -> _Link | None:
        try:
            address = self._address(peer)
            if address is None:
                return None
            link = await self._dial(peer, *address)
            if link is None:
                self._failed(peer)
            return link
        finally:
            self._dialing.pop(peer, None)
            self._mesh_changed.set()

    def _failed(self, peer: str) -> None:
        """A member we could not reach is left out of our mesh until a retry succeeds."""
        if peer in self.links:  # it reached us meanwhile: nothing to back off from
            return
        _, delay = self._backoff.get(peer, (0.0, 0.25))
        delay = min(delay * 2, 8.0)
        self._backoff[peer] = (self._loop.time() + delay, delay)
        self._replan()

    async def _dial(self, peer: str, host: str, port: int) -> _Link | None:
        loop = self._loop
        made: _Link | None = None
        try:
            _, link = await asyncio.wait_for(
                loop.create_connection(
                    lambda: self._track(_Link(self, dialed=True, expect=peer)), host, port
                ),
                self.config.dial_timeout,
            )
            made = link
            await asyncio.wait_for(asyncio.shield(link.ready), self.config.dial_timeout)
        except (OSError, TimeoutError) as exc:
            log.info("cannot link to %s at %s:%d: %s", peer, host, port, exc)
            if made is not None:
                made.abort()  # it never finished its handshake
            return None
        return self.links.get(peer)  # another link may have won a simultaneous dial

    async def _tick(self) -> None:
        """Retries dials whose backoff ran out, and lets pinned links expire."""
        while True:
            await asyncio.sleep(0.5)
            if self.username is not None and self._loop.time() >= self._wake:
                self._replan()

    # ------------------------------------------------------------------ links

    def on_frame(self, link: _Link, frame: bytes) -> None:
        if link.backlog is not None:  # a proof is being checked: hold what follows, in order
            link.backlog.append(frame)
            link.backlog_bytes += len(frame)
            if link.backlog_bytes > MAX_BACKLOG:
                link.abort()
            return
        try:
            msg = peer_decoder.decode(frame)
        except msgspec.MsgspecError as exc:
            link.bad_frames += 1
            log.warning("dropped a bad frame from %s: %s", link.peer or "?", exc)
            if link.bad_frames > 10:
                link.abort()
            return
        if link.peer is None:
            self._handshake(link, msg)
            return
        if type(msg) is RoomMessage:
            self._on_room_message(link, msg)
        elif isinstance(msg, DirectMessage):
            self._on_direct(link, msg)
        elif isinstance(msg, DirectAck):
            self._settle(link, msg.id, None)
        elif isinstance(msg, MeshRooms):
            link.declared = frozenset(msg.rooms[:1000])
            self._refresh_theirs()
            self._rebuild_forwarding()
        elif isinstance(msg, PeerError):
            log.info("peer %s reports %s: %s", link.peer, msg.code, msg.reason)
            if msg.id is not None:
                self._settle(link, msg.id, CommandError(f"{link.peer} refused it: {msg.reason}"))
        else:
            log.warning("unexpected %s from %s; closing the link", type(msg).__name__, link.peer)
            link.abort()

    def _handshake(self, link: _Link, msg: Message) -> None:
        """hello -> welcome (with the acceptor's proof) -> proof (the dialer's); each side has
        the registry check the other's proof before the link opens, so a peer cannot claim a
        name whose session it does not hold."""
        me, token = self.username, self._token()
        if link.dialed:
            if (
                link.claimed is not None
                or not isinstance(msg, PeerWelcome)
                or msg.version != PROTOCOL_VERSION
                or msg.username != link.expect
            ):
                if isinstance(msg, PeerError):  # refused: full, logging out, not vouched...
                    log.info("%s refused our link: %s", link.expect, msg.reason)
                else:
                    log.warning(
                        "%s answered as %r; closing", link.expect, getattr(msg, "username", None)
                    )
                link.abort()
                return
            if me is None or token is None:
                link.abort()
                return
            link.claimed = msg.username
            link.backlog = []
            # our proof goes out at once, checked while we check theirs: one registry round
            # trip instead of two before the link opens
            proof = link_proof(token, "dial", msg.nonce, me, msg.username)
            link.send(encode(PeerProof(proof=proof)))
            link.checking = asyncio.create_task(self._check_proof(link, "accept", msg.proof))
            return
        if link.claimed is not None:  # the dialer's proof is due
            if not isinstance(msg, PeerProof):
                link.abort()
                return
            link.backlog = []
            link.checking = asyncio.create_task(self._check_proof(link, "dial", msg.proof))
            return
        if not isinstance(msg, PeerHello) or msg.version != PROTOCOL_VERSION:
            link.send(encode(PeerError(code="bad_request", reason="expected peer_hello v1")))
            link.close()
            return
        if (
            me is None
            or token is None
            or not valid_name(msg.username)
            or msg.username.casefold() == me.casefold()
        ):
            link.send(encode(PeerError(code="bad_request", reason="not accepting this link")))
            link.close()
            return
        link.claimed = msg.username
        proof = link_proof(token, "accept", msg.nonce, me, msg.username)
        link.send(
            encode(
                PeerWelcome(version=PROTOCOL_VERSION, username=me, nonce=link.nonce, proof=proof)
            )
        )

    def _token(self) -> str | None:
        session = self.registry.session if self.registry is not None else None
        return session.token if session is not None else None

    async def _check_proof(self, link: _Link, role: LinkRole, proof: str) -> None:
        """Have the registry vouch for the other side, then open the link.

        Only the session we are logged in with is asked, within the dial timeout: a link must
        not wait for (or trigger) a reconnection to the registry.
        """
        claimed = link.claimed or ""
        client = self.registry
        try:
            if client is None or client.closed.is_set() or client.session is None:
                raise RegistryError("not_vouched", "the registry is unreachable just now")
            await asyncio.wait_for(
                client.vouch(claimed, role, link.nonce, proof), self.config.dial_timeout
            )
        except (RegistryError, ConnectionError, TimeoutError) as exc:
            reason = exc.reason if isinstance(exc, RegistryError) else "no answer from the registry"
            # usually churn (the other side logged out meanwhile); an impostor looks the same
            log.info("refused a link claiming to be %s: %s", claimed, reason)
            link.send(encode(PeerError(code="not_vouched", reason=reason)))
            link.close()
            return
        if link.transport is None or link.transport.is_closing():
            return
        if self.username is None:
            link.close()
            return
        backlog, link.backlog = link.backlog or [], None
        self._open(link, claimed)
        for frame in backlog:
            if link.transport is None or link.transport.is_closing():
                break
            self.on_frame(link, frame)

    def _open(self, link: _Link, peer: str) -> None:
        link.peer = peer
        old = self.links.get(peer)
        if old is not None and old is not link:
            # Both dialed at once: both ends keep the link the smaller name dialed, so they
            # agree. A link that has been up a while is kept instead: a newcomer claiming the
            # same name must not displace it.
            now = self._loop.time()
            settled = now - old.established > GRACE_SECONDS
            if settled or link.dialed != ((self.username or "") < peer):
                link.peer = None
                link.close()
                link.ready.set_result(None)
                return
            old.peer = None
            old.close()
            link.pinned_until = old.pinned_until
        self.links[peer] = link
        link.established = self._loop.time()
        link.pinned_until = max(link.pinned_until, link.established + GRACE_SECONDS)
        self._backoff.pop(peer, None)
        if not link.ready.done():
            link.ready.set_result(None)
        log.info("linked with %s", peer)
        self._replan()
        self._emit(self.status())

    def _settle(self, link: _Link, msg_id: str, error: CommandError | None) -> None:
        """An answer to one of our direct messages, if it came over the link it went out on."""
        pending = self._acks.get(msg_id)
        if pending is None or pending[1] is not link or pending[0].done():
            return
        if error is None:
            pending[0].set_result(None)
        else:
            pending[0].set_exception(error)

    def on_link_lost(self, link: _Link) -> None:
        self._all_links.discard(link)
        peer = link.peer
        if peer is None or self.links.get(peer) is not link:
            return
        del self.links[peer]
        if self._closing:
            return
        rooms = sorted(link.view.mine | link.view.theirs)
        if rooms and self.username is not None:
            self._notice(f"link to {peer} lost; repairing the mesh of {', '.join(rooms)}")
            self._repairing.update(rooms)
        self._replan()
        self._emit(self.status())

    # ------------------------------------------------------------------ messages

    def _on_room_message(self, link: _Link, msg: RoomMessage) -> None:
        room = self.rooms.get(msg.room)
        router = self.router
        if room is None or router is None:
            log.debug("dropped a message for %s, not one of our rooms", msg.room)
            return
        if not text_size_ok(msg.text):
            log.warning("dropped an oversized or empty message from %s", link.peer)
            return
        peer = link.peer or ""
        route = router.receive(
            msg,
            peer,
            self._loop.time(),
            self._forward_names.get(msg.room, ()),
            room.members,
        )
        if route.dropped is not None:
            if route.dropped != "duplicate":
                log.warning("dropped a message in %s from %s: %s", msg.room, peer, route.dropped)
            return
        forward = route.forward
        if forward is not None:
            links = self.links
            frame = forward.frame
            for target in forward.targets:
                links[target].send(frame)
        self._emit(RoomText(msg.room, msg.origin, msg.text, msg.ts))

    def _on_direct(self, link: _Link, msg: DirectMessage) -> None:
        if msg.sender != link.peer:
            reason = "the sender must be the link's own user"
            link.send(encode(PeerError(code="bad_request", reason=reason, id=msg.id)))
            return
        if not text_size_ok(msg.text):
            reason = f"texts are 1-{MAX_TEXT} bytes"
            link.send(encode(PeerError(code="text_too_long", reason=reason, id=msg.id)))
            return
        link.pinned_until = self._loop.time() + PIN_SECONDS
        link.send(encode(DirectAck(id=msg.id)))
        self._emit(DirectText(msg.sender, msg.text, msg.ts, peer=msg.sender))

    async def say(self, room: str, text: str) -> int:
        """Flood ``text`` to ``room``; returns how many neighbours it was handed to."""
        me = self._require_login()
        _check_text(text)
        name = self.room_name(room)
        if name not in self.rooms:
            raise CommandError(f"you are not a member of {room}; /join {room} first")
        await self._mesh_ready(name, self.config.dial_timeout)
        assert self.router is not None
        targets = self._forward.get(name, [])
        forward = self.router.originate(
            name, text, self._loop.time(), [t.peer or "" for t in targets], ts=time.time()
        )
        for link in targets:
            link.send(forward.frame)
        self._emit(RoomText(name, me, text, forward.msg.ts, mine=True))
        return len(targets)

    async def send_direct(self, username: str, text: str) -> str:
        """Send ``text`` to one user and wait for their peer to acknowledge it."""
        me = self._require_login()
        _check_text(text)
        link = self._linked(username)
        if link is None:
            result = await self.search(username)
            if not result.online or result.host is None or result.port is None:
                raise CommandError(f"{result.username} is offline")
            if result.username == me:
                raise CommandError("that is you")
            link = self.links.get(result.username) or await self._dial(
                result.username, result.host, result.port
            )
            if link is None:
                raise CommandError(f"cannot reach {result.username}'s peer")
        peer = link.peer or username
        msg = DirectMessage(id=os.urandom(16).hex(), sender=me, text=text, ts=time.time())
        ack: asyncio.Future[None] = self._loop.create_future()
        self._acks[msg.id] = (ack, link)
        link.pinned_until = self._loop.time() + PIN_SECONDS
        try:
            link.send(encode(msg))
            await asyncio.wait_for(asyncio.shield(ack), self.config.ack_timeout)
        except TimeoutError:
            raise CommandError(f"{peer} did not acknowledge the message") from None
        finally:
            self._acks.pop(msg.id, None)
        self._emit(DirectText(me, text, msg.ts, peer=peer, mine=True))
        return peer

    def _linked(self, username: str) -> _Link | None:
        key = username.casefold()
        for peer, link in self.links.items():
            if peer.casefold() == key:
                return link
        return None


def _online(room: _Room, user: str) -> bool:
    member = room.members.get(user)
    return member is not None and member.online


def _apply(room: _Room, event: RoomEvent) -> None:
    """A pushed membership or presence change, applied to our view of the room."""
    who, change = event.username, event.change
    if change in ("online", "joined", "added"):
        room.members[who] = _Member(event.host is not None, event.host, event.port)
    elif change == "offline":
        room.members[who] = _Member(False)
    else:  # left, removed
        room.members.pop(who, None)


def _check_text(text: str) -> None:
    if not text.strip():
        raise CommandError("nothing to send")
    if not text_size_ok(text):
        raise CommandError(f"message too long: at most {MAX_TEXT} bytes")


def _describe(event: RoomEvent) -> str:
    who, room = event.username, event.room
    return {
        "online": f"{who} came online in {room}",
        "offline": f"{who} went offline in {room}",
        "joined": f"{who} joined {room}",
        "left": f"{who} left {room}",
        "added": f"{event.by} added {who} to {room}",
        "removed": f"{event.by} removed {who} from {room}",
    }[event.change]
