"""``RegistryClient``: the one way the peer, the UI, tests and benchmarks talk to a registry.

Requests are matched to replies by id, so several may be in flight at once. Pushed events
(room changes, ``bye``) go to a callback or, without one, to a bounded queue read with
``events()``. After login a task sends the heartbeat over UDP.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import msgspec

from p2pchat.protocol.framing import FrameTooLarge, LineFramer
from p2pchat.protocol.messages import (
    PROTOCOL_VERSION,
    AddMember,
    Bye,
    CreateRoom,
    Error,
    ErrorCode,
    Hello,
    JoinRoom,
    LeaveRoom,
    LinkRole,
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
    RemoveMember,
    RoomEvent,
    RoomInfo,
    RoomList,
    Search,
    SearchResult,
    Unban,
    UserAddr,
    UserList,
    Vouch,
    Welcome,
    decode_reply,
    encode,
)

log = logging.getLogger("p2pchat.registry.client")

Event = RoomEvent | Bye
R = TypeVar("R", bound=Message)
P = TypeVar("P", UserList, RoomList, MemberList)
EVENT_QUEUE = 10_000


class RegistryError(Exception):
    """The registry answered with an error; ``code`` is stable, ``reason`` is for people."""

    def __init__(self, code: str, reason: str, retry_after: float | None = None) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason
        self.retry_after = retry_after


class RegistryClosed(ConnectionError):
    """The session with the registry is over."""


class _Heartbeat(asyncio.DatagramProtocol):
    def error_received(self, exc: Exception) -> None:  # e.g. ICMP port unreachable
        log.debug("heartbeat datagram error: %s", exc)


class RegistryClient:
    """One TCP session with a registry. Use ``await RegistryClient.connect(host, port)``."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        host: str,
        on_event: Callable[[Event], None] | None = None,
    ) -> None:
        self.host = host
        self._reader = reader
        self._writer = writer
        self._on_event = on_event
        self._events: asyncio.Queue[Event | None] = asyncio.Queue(EVENT_QUEUE)
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Message]] = {}
        self._read_task = asyncio.create_task(self._read_loop())
        self._heartbeat_task: asyncio.Task[None] | None = None
        self.welcome: Welcome | None = None
        self.session: LoggedIn | None = None
        self.closed = asyncio.Event()
        self.close_reason = ""
        self.last_heartbeat: float | None = None

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        *,
        timeout: float = 10.0,
        on_event: Callable[[Event], None] | None = None,
        agent: str = "p2pchat",
    ) -> RegistryClient:
        """Connect and exchange hellos (protocol version check)."""
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, limit=1 << 17), timeout
        )
        client = cls(reader, writer, host, on_event)
        try:
            client.welcome = await asyncio.wait_for(
                client._call(
                    Hello(id=client._next_id(), version=PROTOCOL_VERSION, agent=agent), Welcome
                ),
                timeout,
            )
        except BaseException:
            await client.close()
            raise
        return client

    # ------------------------------------------------------------------ plumbing

    def _next_id(self) -> int:
        return next(self._ids)

    async def _call(self, request: Any, expect: type[R]) -> R:
        if self.closed.is_set():
            raise RegistryClosed(self.close_reason or "not connected")
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._pending[request.id] = future
        try:
            self._writer.write(encode(request))
            reply = await future
        finally:
            self._pending.pop(request.id, None)
        if isinstance(reply, Error):
            raise RegistryError(reply.code, reply.reason, reply.retry_after)
        if not isinstance(reply, expect):
            raise RegistryError(
                "bad_reply", f"expected {expect.__name__}, got {type(reply).__name__}"
            )
        return reply

    async def _read_loop(self) -> None:
        framer = LineFramer()
        reason = "the registry closed the connection"
        try:
            while data := await self._reader.read(65536):
                for frame in framer.feed(data):
                    self._dispatch(frame)
        except FrameTooLarge as exc:
            for frame in exc.frames:
                self._dispatch(frame)
            reason = "the registry sent an oversized frame"
        except (ConnectionError, OSError) as exc:
            reason = f"connection to the registry lost: {exc}"
        finally:
            self._shut(reason)

    def _dispatch(self, frame: bytes) -> None:
        try:
            msg = decode_reply(frame)
        except msgspec.MsgspecError as exc:
            log.warning("ignored a malformed frame from the registry: %s", exc)
            return
        if isinstance(msg, RoomEvent | Bye):
            if isinstance(msg, Bye):
                self.close_reason = msg.reason
            self._push(msg)
            return
        future = self._pending.get(msg.id) if msg.id is not None else None
        if future is not None and not future.done():
            future.set_result(msg)
        elif isinstance(msg, Error):
            log.warning("registry error: %s: %s", msg.code, msg.reason)

    def _push(self, event: Event | None) -> None:
        if event is not None and self._on_event is not None:
            self._on_event(event)
            return
        if self._events.full():  # nobody reads: keep the newest
            self._events.get_nowait()
        self._events.put_nowait(event)

    def _shut(self, reason: str) -> None:
        if self.closed.is_set():
            return
        self.close_reason = self.close_reason or reason
        self.closed.set()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(RegistryClosed(self.close_reason))
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
        self._push(None)
        self._writer.close()

    async def events(self) -> AsyncIterator[Event]:
        """Pushed events until the session ends (only when no ``on_event`` callback is set)."""
        while (event := await self._events.get()) is not None:
            yield event

    def abort(self) -> None:
        """Reset the connection without a word (tests of crashes use it)."""
        transport = self._writer.transport
        self._shut("aborted by this client")
        transport.abort()

    async def close(self) -> None:
        self._shut("closed by this client")
        self._read_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError, OSError):
            await self._read_task
        with contextlib.suppress(ConnectionError, OSError):
            await self._writer.wait_closed()

    # ------------------------------------------------------------------ operations

    async def register(self, username: str, password: str) -> None:
        await self._call(Register(id=self._next_id(), username=username, password=password), Ok)

    async def login(
        self,
        username: str,
        password: str,
        port: int,
        *,
        host: str | None = None,
        heartbeat: float | None = None,
        ticket: str | None = None,
    ) -> LoggedIn:
        """Log in and start heartbeats every ``heartbeat`` seconds (default: the registry's).

        ``heartbeat=0`` sends none (tests of expiry use it). ``ticket``: the one from an
        earlier ``LoggedIn`` for this user, so that others' wrong guesses do not slow us.
        """
        request = Login(
            id=self._next_id(),
            username=username,
            password=password,
            port=port,
            host=host,
            ticket=ticket,
        )
        self.session = await self._call(request, LoggedIn)
        interval = self.session.heartbeat_interval if heartbeat is None else heartbeat
        if interval > 0:
            self._heartbeat_task = asyncio.create_task(self._heartbeat(self.session, interval))
        return self.session

    async def _heartbeat(self, session: LoggedIn, interval: float) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            _Heartbeat, remote_addr=(self.host, session.udp_port)
        )
        frame = encode(Ping(token=session.token))
        try:
            while True:
                transport.sendto(frame)
                self.last_heartbeat = loop.time()
                await asyncio.sleep(interval)
        finally:
            transport.close()

    async def ping_tcp(self) -> None:
        """The heartbeat over the TCP session, for networks that drop UDP."""
        if self.session is None:
            raise RegistryError(ErrorCode.NOT_LOGGED_IN, "log in first")
        await self._call(Ping(id=self._next_id(), token=self.session.token), Ok)

    async def logout(self) -> None:
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
            self._heartbeat_task = None
        await self._call(Logout(id=self._next_id()), Ok)
        self.session = None

    async def search(self, username: str) -> SearchResult:
        return await self._call(Search(id=self._next_id(), username=username), SearchResult)

    async def _pages(self, request: Callable[[int, str | None], Any], expect: type[P]) -> list[P]:
        """Every page of a listing: ask again ``after`` the last name until ``more`` is off."""
        pages: list[P] = []
        after: str | None = None
        while True:
            page = await self._call(request(self._next_id(), after), expect)
            pages.append(page)
            last = _last_name(page)
            if not page.more or last is None:
                return pages
            after = last

    async def users(self) -> list[UserAddr]:
        """Every online user (all pages)."""
        pages = await self._pages(lambda i, after: ListUsers(id=i, after=after), UserList)
        return [user for page in pages for user in page.users]

    async def vouch(self, username: str, role: LinkRole, nonce: str, proof: str) -> None:
        """Raises RegistryError (``not_vouched``) unless ``proof`` is ``username``'s, for us,
        made in ``role`` (how ``username`` came to the link)."""
        me = self.session.username if self.session else ""
        request = Vouch(
            id=self._next_id(), username=username, peer=me, role=role, nonce=nonce, proof=proof
        )
        await self._call(request, Ok)

    async def create_room(self, room: str, private: bool = False) -> None:
        await self._call(CreateRoom(id=self._next_id(), room=room, private=private), Ok)

    async def join_room(self, room: str) -> None:
        await self._call(JoinRoom(id=self._next_id(), room=room), Ok)

    async def leave_room(self, room: str) -> None:
        await self._call(LeaveRoom(id=self._next_id(), room=room), Ok)

    async def add_member(self, room: str, username: str, may_add: bool | None = None) -> None:
        request = AddMember(id=self._next_id(), room=room, username=username, may_add=may_add)
        await self._call(request, Ok)

    async def remove_member(self, room: str, username: str, ban: bool = False) -> None:
        request = RemoveMember(id=self._next_id(), room=room, username=username, ban=ban)
        await self._call(request, Ok)

    async def unban(self, room: str, username: str) -> None:
        await self._call(Unban(id=self._next_id(), room=room, username=username), Ok)

    async def rooms(self, mine: bool = False) -> list[RoomInfo]:
        """Every room this session can see (all pages); with ``mine``, only its user's."""
        pages = await self._pages(
            lambda i, after: ListRooms(id=i, after=after, mine=mine), RoomList
        )
        return [room for page in pages for room in page.rooms]

    async def members(self, room: str) -> list[MemberInfo]:
        """Every member of ``room`` with online state and address (all pages)."""
        return (await self.room_members(room))[1]

    async def room_members(self, room: str) -> tuple[str, list[MemberInfo]]:
        """The room's name as the registry spells it, and all its members (all pages)."""
        pages = await self._pages(
            lambda i, after: ListMembers(id=i, room=room, after=after), MemberList
        )
        return pages[0].room, [member for page in pages for member in page.members]


def _last_name(page: UserList | RoomList | MemberList) -> str | None:
    """The name to continue a listing after, or None for an empty page."""
    if isinstance(page, UserList):
        return page.users[-1].username if page.users else None
    if isinstance(page, RoomList):
        return page.rooms[-1].room if page.rooms else None
    return page.members[-1].username if page.members else None
