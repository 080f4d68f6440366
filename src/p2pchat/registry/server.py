"""The registry's asyncio shell: moves bytes between sockets and ``RegistryCore``.

Nothing here decides anything: it frames and decodes, feeds the core with the loop's clock,
and carries out the actions the core returns (sends, closes, password hashing in a thread).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Coroutine
from dataclasses import replace
from typing import Any

import msgspec

from p2pchat.protocol.framing import FrameTooLarge, LineFramer
from p2pchat.protocol.messages import (
    Bye,
    Error,
    ErrorCode,
    Login,
    Message,
    Register,
    decode_error,
    encode,
    ping_decoder,
    request_decoder,
)
from p2pchat.registry.core import (
    Action,
    Close,
    HashPassword,
    RegistryConfig,
    RegistryCore,
    Send,
    VerifyPassword,
)
from p2pchat.registry.passwords import Passwords
from p2pchat.store.base import Store

log = logging.getLogger("p2pchat.registry")

MAX_WRITE_BUFFER = 1 << 20
"""A session that lets this much unsent data pile up is not reading: it is closed."""
MAX_DATAGRAM = 1024


class _TcpSession(asyncio.Protocol):
    __slots__ = ("conn", "framer", "server", "transport")

    def __init__(self, server: RegistryServer) -> None:
        self.server = server
        self.framer = LineFramer()
        self.conn = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.server.accept(self, transport)

    def data_received(self, data: bytes) -> None:
        try:
            frames = self.framer.feed(data)
        except FrameTooLarge as exc:
            for frame in exc.frames:  # answer what came before it, then close
                self.server.receive(self, frame)
            self.server.reject(
                self, Error(id=None, code=ErrorCode.FRAME_TOO_LARGE, reason=str(exc))
            )
            return
        for frame in frames:
            self.server.receive(self, frame)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.lost(self)


class _Heartbeats(asyncio.DatagramProtocol):
    def __init__(self, server: RegistryServer) -> None:
        self.server = server

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        if len(data) > MAX_DATAGRAM:
            return
        try:
            ping = ping_decoder.decode(data.strip())
        except msgspec.MsgspecError:
            log.debug("dropped a malformed datagram from %s", addr[0])
            return
        if not self.server.core.heartbeat(ping.token, self.server.now()):
            log.debug("ignored a ping with an unknown token from %s", addr[0])


class RegistryServer:
    """Listens on TCP (sessions) and UDP (heartbeats) and drives one ``RegistryCore``."""

    def __init__(
        self,
        store: Store,
        *,
        host: str = "0.0.0.0",
        port: int = 15600,
        udp_port: int = 15500,
        config: RegistryConfig | None = None,
        passwords: Passwords | None = None,
        max_connections: int = 20_000,
    ) -> None:
        self.core = RegistryCore(store, config or RegistryConfig())
        self.host = host
        self.port = port
        self.udp_port = udp_port
        self.passwords = passwords or Passwords()
        self.max_connections = max_connections
        self._sessions: dict[int, _TcpSession] = {}
        self._conn_ids = itertools.count(1)
        self._server: asyncio.Server | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Future[None]] = set()
        self._loop = asyncio.get_running_loop()
        self._closing = False

    def now(self) -> float:
        return self._loop.time()

    async def start(self) -> None:
        loop = self._loop
        udp, _ = await loop.create_datagram_endpoint(
            lambda: _Heartbeats(self), local_addr=(self.host, self.udp_port)
        )
        self._udp = udp
        self.udp_port = udp.get_extra_info("sockname")[1]
        self.core.config = replace(self.core.config, udp_port=self.udp_port)
        self._server = await loop.create_server(
            lambda: _TcpSession(self), self.host, self.port, reuse_address=True, backlog=1024
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._ticker = asyncio.create_task(self._tick())

    async def _tick(self) -> None:
        period = min(1.0, self.core.config.timeout / 10)
        while True:
            await asyncio.sleep(period)
            self._apply(self.core.expire(self.now()))

    async def close(self) -> None:
        """Stop listening, say goodbye to every session, stop the timers."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        if self._udp is not None:
            self._udp.close()
        if self._ticker is not None:
            self._ticker.cancel()
        bye = encode(Bye(code="shutdown", reason="the registry is shutting down"))
        for session in list(self._sessions.values()):
            if session.transport is not None:
                session.transport.write(bye)
                session.transport.close()
        for task in list(self._tasks):
            task.cancel()
        if self._server is not None:
            await self._server.wait_closed()

    # ------------------------------------------------------------------ TCP sessions

    def accept(self, session: _TcpSession, transport: asyncio.Transport) -> None:
        peer = transport.get_extra_info("peername")
        if len(self._sessions) >= self.max_connections:
            transport.write(
                encode(
                    Error(
                        id=None,
                        code=ErrorCode.TOO_MANY_CONNECTIONS,
                        reason="the registry is full; try again later",
                    )
                )
            )
            transport.close()
            return
        session.conn = next(self._conn_ids)
        self._sessions[session.conn] = session
        host = peer[0] if peer else "?"
        self.core.connect(session.conn, host, self.now())
        log.debug("session %d from %s", session.conn, host)

    def receive(self, session: _TcpSession, frame: bytes) -> None:
        if session.conn not in self._sessions:
            return
        try:
            request = request_decoder.decode(frame)
        except msgspec.MsgspecError as exc:
            self._write(session, decode_error(frame, exc))
            return
        try:
            actions = self.core.handle(session.conn, request, self.now())
        except Exception:
            log.exception("internal error on %s", type(request).__name__)
            self._write(
                session,
                Error(
                    id=getattr(request, "id", None),
                    code=ErrorCode.INTERNAL,
                    reason="internal error",
                ),
            )
            return
        self._apply(actions)

    def reject(self, session: _TcpSession, error: Error) -> None:
        self._write(session, error)
        if session.transport is not None:
            session.transport.close()

    def lost(self, session: _TcpSession) -> None:
        if self._sessions.pop(session.conn, None) is not None and not self._closing:
            self._apply(self.core.disconnect(session.conn, self.now()))

    def _write(self, session: _TcpSession, msg: Message) -> None:
        self._write_frame(session, encode(msg))

    def _write_frame(self, session: _TcpSession, frame: bytes) -> None:
        transport = session.transport
        if transport is None or transport.is_closing():
            return
        transport.write(frame)
        if transport.get_write_buffer_size() > MAX_WRITE_BUFFER:
            log.warning("session %d does not read its replies; closing it", session.conn)
            transport.abort()

    def _apply(self, actions: list[Action]) -> None:
        last_msg: Message | None = None
        last_frame = b""
        for action in actions:
            if isinstance(action, Send):
                session = self._sessions.get(action.conn)
                if session is None or session.transport is None:
                    continue
                if action.msg is not last_msg:  # one event fanned out is encoded once
                    last_msg, last_frame = action.msg, encode(action.msg)
                self._write_frame(session, last_frame)
            elif isinstance(action, Close):
                session = self._sessions.pop(action.conn, None)
                if session is not None and session.transport is not None:
                    log.info("session %d expired", action.conn)
                    session.transport.close()
            elif isinstance(action, HashPassword):
                self._spawn(self._hash(action.conn, action.request))
            elif isinstance(action, VerifyPassword):
                self._spawn(self._verify(action.conn, action.request, action.password_hash))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _hash(self, conn: int, request: Register) -> None:
        try:
            digest = await asyncio.to_thread(self.passwords.hash, request.password)
            actions = self.core.register_hashed(conn, request, digest, self.now())
        except Exception:
            log.exception("registering %s failed", request.username)
            actions = self.core.auth_failed(conn, request.id)
        self._apply(actions)

    async def _verify(self, conn: int, request: Login, password_hash: str) -> None:
        try:
            ok = await asyncio.to_thread(self.passwords.verify, password_hash, request.password)
            if not ok:
                log.info("wrong password for %s", request.username)
            actions = self.core.login_verified(conn, request, ok, self.now())
        except Exception:
            log.exception("login of %s failed", request.username)
            actions = self.core.auth_failed(conn, request.id)
        self._apply(actions)
