"""``RegistryClient``: the one way the peer, the UI, tests and benchmarks talk to a registry.

Requests are matched to replies by id, so several may be in flight at once. Pushed events
(room changes, ``bye``) go to a callback or, without one, to a bounded queue read with
``events()``. After login a task sends the heartbeat over UDP.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TypeVar

import msgspec

from p2pchat import listener
from p2pchat.protocol.framing import FrameTooLarge, LineFramer
from p2pchat.protocol.messages import (
    PROTOCOL_VERSION,
    Bye,
    Error,
    ErrorCode,
    LoggedIn,
    MemberInfo,
    Ok,
    Ping,
    RegistryReply,
    RegistryRequest,
    RoomEvent,
    RoomInfo,
    SearchResult,
    UserAddr,
    Welcome,
    decode_reply,
    encode,
    unb64,
)
from p2pchat.registry import flows
from p2pchat.registry.flows import RegistryClosed, RegistryError
from p2pchat.trust import tls
from p2pchat.trust.certs import fingerprint

__all__ = ["Event", "RegistryClient", "RegistryClosed", "RegistryError"]

log = logging.getLogger("p2pchat.registry.client")

Event = RoomEvent | Bye
T = TypeVar("T")
EVENT_QUEUE = 10_000


READ_LIMIT = 1 << 17
"""The stream reader's buffer limit: past it, the connection is not read until we catch up."""


@functools.cache
def _plain_context() -> ssl.SSLContext:
    """One client context for every connection that shows no certificate: a context costs
    memory and time to make, and a benchmark holds tens of thousands of sessions."""
    return tls.client()


class _Stream(asyncio.StreamReaderProtocol):
    """A stream protocol that keeps its transport, for the ``StreamWriter`` made after the
    connection (``listener.connect`` takes a protocol, not a factory)."""

    transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        super().connection_made(transport)


async def _open(
    host: str, port: int, context: ssl.SSLContext | None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """``asyncio.open_connection``, but through the listener's TLS layer: its buffers are
    sized for small frames (asyncio's own allocates 256 KiB per connection, which made each
    client cost 300 KiB)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=READ_LIMIT, loop=loop)
    protocol = _Stream(reader)
    await listener.connect(protocol, host, port, context)
    assert protocol.transport is not None
    return reader, asyncio.StreamWriter(protocol.transport, protocol, reader, loop)


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
        self._pending: dict[int, asyncio.Future[RegistryReply]] = {}
        self._read_task = asyncio.create_task(self._read_loop())
        self._heartbeat_task: asyncio.Task[None] | None = None
        self.welcome: Welcome | None = None
        self.session: LoggedIn | None = None
        self.closed = asyncio.Event()
        self.close_reason = ""
        self.last_heartbeat: float | None = None
        self.fingerprint: str | None = None
        """Of the certificate the registry presented (None over plain TCP)."""
        self.ca_cert: bytes | None = None
        self._beats = 0

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        *,
        timeout: float = 10.0,
        on_event: Callable[[Event], None] | None = None,
        agent: str = "p2pchat",
        pinned: str | None = None,
        cert: tuple[Path, Path] | None = None,
        secure: bool = True,
    ) -> RegistryClient:
        """Connect over TLS and exchange hellos (protocol version check).

        ``pinned``: the fingerprint the registry must present (TrustError otherwise; without
        one, whatever it presents is taken and kept in ``fingerprint``). ``cert``: a user
        certificate and key to present (for ``resume``). ``secure`` False: plain TCP, for
        benchmarks against a registry started that way.
        """
        context = tls.client(*cert) if cert else _plain_context()
        reader, writer = await asyncio.wait_for(
            _open(host, port, context if secure else None), timeout
        )
        client = cls(reader, writer, host, on_event)
        presented = tls.peer_certificate(writer.get_extra_info("ssl_object"))
        if presented is not None:
            client.fingerprint, client.ca_cert = fingerprint(presented), presented
        try:
            if secure and pinned is not None:
                tls.check_pin(f"{host}:{port}", presented or b"", pinned)
            client.welcome = await asyncio.wait_for(
                client._run(flows.hello(PROTOCOL_VERSION, agent)), timeout
            )
        except BaseException:
            await client.close()
            raise
        return client

    # ------------------------------------------------------------------ plumbing

    def _next_id(self) -> int:
        return next(self._ids)

    async def _send(self, request: RegistryRequest) -> RegistryReply:
        """Send one request (numbered here) and wait for the reply with its id."""
        if self.closed.is_set():
            raise RegistryClosed(self.close_reason or "not connected")
        request = flows.numbered(request, self._next_id())
        future: asyncio.Future[RegistryReply] = asyncio.get_running_loop().create_future()
        self._pending[request.id] = future  # type: ignore[index]
        try:
            self._writer.write(encode(request))
            return await future
        finally:
            self._pending.pop(request.id, None)  # type: ignore[arg-type]

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

    async def _run(self, flow: flows.Flow[T]) -> T:
        """Drive a flow: send each request it yields, feed it the reply, until it returns."""
        try:
            request = next(flow)
            while True:
                reply = await self._send(request)
                request = flow.send(reply)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

    async def register(self, username: str, password: str) -> None:
        await self._run(flows.register(username, password))

    async def login(
        self,
        username: str,
        password: str,
        port: int,
        *,
        host: str | None = None,
        heartbeat: float | None = None,
        ticket: str | None = None,
        key: bytes | None = None,
    ) -> LoggedIn:
        """Log in and start heartbeats every ``heartbeat`` seconds (default: the registry's).

        ``heartbeat=0`` sends none (tests of expiry use it). ``ticket``: the one from an
        earlier ``LoggedIn`` for this user, so that others' wrong guesses do not slow us.
        """
        session = await self._run(flows.login(username, password, port, host, ticket, key))
        self.session = session
        self._beat_every(session, heartbeat)
        return session

    async def resume(
        self, port: int, *, host: str | None = None, heartbeat: float | None = None
    ) -> LoggedIn:
        """Log in again with the certificate shown in TLS (``connect(cert=...)``); heartbeats
        as for ``login``."""
        session = await self._run(flows.resume(port, host))
        self.session = session
        self._beat_every(session, heartbeat)
        return session

    async def renew(self) -> bytes:
        """A fresh certificate (DER) for our key."""
        return unb64(await self._run(flows.renew()))

    def _beat_every(self, session: LoggedIn, heartbeat: float | None) -> None:
        interval = session.heartbeat_interval if heartbeat is None else heartbeat
        if interval > 0:
            self._heartbeat_task = asyncio.create_task(self._heartbeat(session, interval))

    def next_ping(self, request_id: int | None = None) -> Ping:
        """The next heartbeat of our login (each one's sequence number is one more)."""
        assert self.session is not None
        self._beats += 1
        return flows.heartbeat(self.session, self._beats, request_id)

    async def _heartbeat(self, session: LoggedIn, interval: float) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            _Heartbeat, remote_addr=(self.host, session.udp_port)
        )
        try:
            while self.session is session:
                transport.sendto(encode(self.next_ping()))
                self.last_heartbeat = loop.time()
                await asyncio.sleep(interval)
        finally:
            transport.close()

    async def ping_tcp(self) -> None:
        """The heartbeat over the TCP session, for networks that drop UDP."""
        if self.session is None:
            raise RegistryError(ErrorCode.NOT_LOGGED_IN, "log in first")
        await self._run(flows.call(self.next_ping(0), Ok))

    async def logout(self) -> None:
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
            self._heartbeat_task = None
        await self._run(flows.logout())
        self.session = None

    async def search(self, username: str) -> SearchResult:
        return await self._run(flows.search(username))

    async def users(self) -> list[UserAddr]:
        """Every online user (all pages)."""
        return await self._run(flows.users())

    async def create_room(self, room: str, private: bool = False) -> None:
        await self._run(flows.create_room(room, private))

    async def join_room(self, room: str) -> None:
        await self._run(flows.join_room(room))

    async def leave_room(self, room: str) -> None:
        await self._run(flows.leave_room(room))

    async def add_member(self, room: str, username: str, may_add: bool | None = None) -> None:
        await self._run(flows.add_member(room, username, may_add))

    async def remove_member(self, room: str, username: str, ban: bool = False) -> None:
        await self._run(flows.remove_member(room, username, ban))

    async def unban(self, room: str, username: str) -> None:
        await self._run(flows.unban(room, username))

    async def rooms(self, mine: bool = False) -> list[RoomInfo]:
        """Every room this session can see (all pages); with ``mine``, only its user's."""
        return await self._run(flows.rooms(mine))

    async def members(self, room: str) -> list[MemberInfo]:
        """Every member of ``room`` with online state and address (all pages)."""
        return (await self.room_members(room))[1]

    async def room_members(self, room: str) -> tuple[str, list[MemberInfo]]:
        """The room's name as the registry spells it, and all its members (all pages)."""
        return await self._run(flows.room_members(room))
