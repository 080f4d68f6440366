"""The registry's asyncio shell: moves bytes between sockets and ``RegistryCore``.

Nothing here decides anything about accounts or rooms: it frames and decodes, feeds the core
with the clock, and carries out the actions the core returns (sends, closes, password hashing
in a bounded pool of threads). What it does decide is how the machine's resources are shared:

- **Connections.** Its listener (``p2pchat.listener``) admits at most ``max_connections`` (by
  default derived from the open-files limit) and ``max_per_address`` from one address; beyond,
  a connection gets one error frame and is closed without a transport being made. When the
  process runs out of file descriptors anyway, accepting pauses for a second, with one log
  line, instead of spinning; TLS layers have bounded buffers.
- **Fairness.** Frames wait in a small queue per connection and are served round-robin, a few
  per connection per turn, so one connection's pipelined flood delays the others by at most a
  turn each. A connection whose queue is full is not read until it drains; one that does not
  read its replies (past the transport's high-water mark) is not served until it does.
- **Memory.** Unprocessed input (partial frames and queued frames) is bounded in total; past
  the bound, the connection holding the most is closed.
- **Time.** One timer, re-armed after each batch of actions at the core's next deadline; the
  clock is injectable, so tests can drive it.
- **Room events.** The core holds them per room (``batch_events``); the shell hands them out
  in rounds, ``FLUSH_SLICE`` sessions per turn of the event loop, between the turns that serve
  requests, each member's share of a round encoded once and written at once. Rounds start at
  most every ``FLUSH_EVERY`` seconds and take at most ``FLUSH_SHARE`` of the time: a presence
  change in a 10,000-member room no longer stops everything for 10,000 writes, and many
  changes in a row cost each member one write a round.
- **TLS 1.3** on every connection, with the registry's CA certificate (``trust/``); a client
  may show a user certificate (to ``resume``), which is handed to the core. A client that does
  not speak TLS never gets a session.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import ssl
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace

import msgspec

from p2pchat.deadline import DeadlineTimer
from p2pchat.listener import Listener, Slot, default_max_connections
from p2pchat.protocol.framing import FrameTooLarge, LineFramer
from p2pchat.protocol.messages import (
    Bye,
    Error,
    ErrorCode,
    Message,
    RoomEvent,
    decode,
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
    SendEvents,
    VerifyPassword,
)
from p2pchat.registry.passwords import Passwords
from p2pchat.store.base import Store
from p2pchat.trust import tls
from p2pchat.trust.certs import Authority

log = logging.getLogger("p2pchat.registry")

MAX_WRITE_BUFFER = 1 << 20
"""A session that lets this much unsent data pile up is not reading: it is closed."""
MAX_DATAGRAM = 1024
QUEUE_FRAMES = 32
"""Frames a connection may have waiting; beyond, it is not read until they are served."""
QUEUE_BYTES = 128 * 1024
TURN_FRAMES = 4
"""Frames served from one connection before the next connection's turn."""
BATCH_FRAMES = 64
"""Frames served before the event loop gets to do anything else (reading, timers)."""
MAX_INPUT = 32 << 20
"""Unprocessed input held for all connections together, in bytes."""
MAX_PER_ADDRESS = 64
FLUSH_SLICE = 64
"""Sessions given their room events in one turn of the event loop. Each write wakes the
session's reader, so a turn of writes takes longer than its CPU time: 256 a turn gave other
requests a p99 of about 100 ms during a 10,000-member room's rounds, 64 about 11 ms."""
FLUSH_EVERY = 0.05
"""Seconds at least between the starts of two rounds of room events: while events keep
coming, each member gets them in one write per round rather than one per event."""
FLUSH_SHARE = 0.5
"""The share of the time rounds of room events may take: a round that took 0.3 s of work
is followed by the next one 0.6 s after it began, at the earliest."""


class _TcpSession(asyncio.Protocol):
    __slots__ = (
        "conn",
        "dead",
        "framer",
        "full",
        "held",
        "host",
        "queue",
        "queued",
        "reading",
        "ready",
        "reject",
        "server",
        "slot",
        "stalled",
        "transport",
    )

    def __init__(self, server: RegistryServer, slot: Slot) -> None:
        self.server = server
        self.slot = slot
        self.host = slot.host
        self.framer = LineFramer()
        self.conn = 0
        self.transport: asyncio.Transport | None = None
        self.queue: deque[bytes] = deque()
        self.queued = 0  # bytes in queue
        self.held = 0  # bytes of input held for this session: queued and partial
        self.ready = False  # in the server's round-robin
        self.full = False  # its queue is full: not read until served
        self.stalled = False  # it does not read its replies: not served until it does
        self.reading = True
        self.reject: Error | None = None  # to send once the queue is served, then close
        self.dead = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.server.made(self)

    def data_received(self, data: bytes) -> None:
        self.server.received(self, data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.lost(self)

    def pause_writing(self) -> None:
        self.server.stall(self, True)

    def resume_writing(self) -> None:
        self.server.stall(self, False)


class _Heartbeats(asyncio.DatagramProtocol):
    def __init__(self, server: RegistryServer) -> None:
        self.server = server

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        if len(data) > MAX_DATAGRAM:
            return
        try:
            ping = decode(ping_decoder, data.strip())
        except msgspec.MsgspecError:
            log.debug("dropped a malformed datagram from %s", addr[0])
            return
        if not self.server.core.heartbeat(ping, self.server.now()):
            log.debug("ignored a ping that is not a valid heartbeat from %s", addr[0])


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
        max_connections: int | None = None,
        max_per_address: int = MAX_PER_ADDRESS,
        max_input: int = MAX_INPUT,
        clock: Callable[[], float] | None = None,
        authority: Authority | None = None,
        secure: bool = True,
    ) -> None:
        """``authority``: the registry's CA (a new one, kept in memory only, if None).
        ``secure`` False serves plain TCP: for benchmarks that measure what TLS costs."""
        self.max_connections = max_connections or default_max_connections()
        config = config or RegistryConfig()
        config = replace(
            config,
            max_anonymous=min(config.max_anonymous, max(1, self.max_connections // 2)),
            batch_events=True,
        )
        self._loop = asyncio.get_running_loop()
        self.now: Callable[[], float] = clock or self._loop.time
        self.authority = authority or Authority.create(time.time())
        self.core = RegistryCore(
            store,
            config,
            authority=self.authority,
            wall_offset=time.time() - self.now(),
        )
        self.tls: ssl.SSLContext | None = tls.registry_server(self.authority) if secure else None
        self.host = host
        self.port = port
        self.udp_port = udp_port
        self.passwords = passwords or Passwords()
        self.max_per_address = max_per_address
        self.max_input = max_input
        self.listener = Listener(
            lambda slot: _TcpSession(self, slot),
            host=host,
            port=port,
            tls=self.tls,
            refuse_full=encode(
                Error(
                    id=None,
                    code=ErrorCode.TOO_MANY_CONNECTIONS,
                    reason="the registry is full; try again later",
                )
            ),
            refuse_address=encode(
                Error(
                    id=None,
                    code=ErrorCode.TOO_MANY_CONNECTIONS,
                    reason="too many connections from your address",
                )
            ),
            max_connections=self.max_connections,
            max_per_address=max_per_address,
            exempt=config.exempt,
            log=log,
        )
        self._sessions: dict[int, _TcpSession] = {}
        self._input = 0  # bytes held by all sessions
        self._ready: deque[_TcpSession] = deque()
        self._serving = False
        self._conn_ids = itertools.count(1)
        self._udp: asyncio.DatagramTransport | None = None
        self._timer = DeadlineTimer(self.now, self.on_timer)
        self._hashers = ThreadPoolExecutor(
            max_workers=max(1, config.hash_workers), thread_name_prefix="p2pchat-argon2"
        )
        self._closing = False
        self._flush: asyncio.Handle | None = None
        self._in_flush = False
        self._round_start = -1e9
        self._round_work = 0.0
        self._next_round = -1e9
        self._frames: dict[int, tuple[object, bytes]] = {}
        """A round's frames: of each event, and of each event list many sessions get, by the
        object's id (the object is kept with it, so the id is not reused while it lives)."""

    @property
    def refused(self) -> int:
        """Connections refused at accept, for benchmarks and tests."""
        return self.listener.refused

    # ------------------------------------------------------------------ life cycle

    async def start(self) -> None:
        loop = self._loop
        udp, _ = await loop.create_datagram_endpoint(
            lambda: _Heartbeats(self), local_addr=(self.host, self.udp_port)
        )
        self._udp = udp
        self.udp_port = udp.get_extra_info("sockname")[1]
        self.core.config = replace(self.core.config, udp_port=self.udp_port)
        try:
            await self.listener.start()
        except BaseException:
            udp.close()
            raise
        self.port = self.listener.port
        self._arm()

    async def close(self) -> None:
        """Stop listening, say goodbye to every session, stop the timer and the hashers."""
        self._closing = True
        self.listener.close()
        if self._udp is not None:
            self._udp.close()
        self._timer.cancel()
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        bye = encode(Bye(code=ErrorCode.SHUTDOWN, reason="the registry is shutting down"))
        for session in list(self._sessions.values()):
            if session.transport is not None:
                session.transport.write(bye)
                session.transport.close()
        self._hashers.shutdown(wait=False, cancel_futures=True)
        await asyncio.sleep(0)  # let the transports' close callbacks run

    # ------------------------------------------------------------------ the one timer

    def _arm(self) -> None:
        """One timer, at the core's next deadline (none if it has none)."""
        if not self._closing:
            self._timer.arm(self.core.next_deadline())

    @property
    def timer_deadline(self) -> float | None:
        """When the timer will fire, on the injected clock (None: not armed)."""
        return self._timer.at

    def on_timer(self) -> None:
        """The timer fired (tests with an injected clock call it after moving the clock)."""
        try:
            self._apply(self.core.expire(self.now()))
        except Exception:
            # Never let expiry die: silent sessions would then stay online for good.
            log.exception("expiring sessions failed; trying again in 1 s")
            self._timer.arm(self.now() + 1.0)
            return
        self._arm()

    # ------------------------------------------------------------------ TCP sessions

    def made(self, session: _TcpSession) -> None:
        if self._closing:
            assert session.transport is not None
            session.transport.close()
            return
        session.conn = next(self._conn_ids)
        self._sessions[session.conn] = session
        log.debug("session %d from %s", session.conn, session.host)
        assert session.transport is not None
        cert = tls.peer_certificate(session.transport.get_extra_info("ssl_object"))
        self._apply(self.core.connect(session.conn, session.host, self.now(), cert))
        self._arm()

    def received(self, session: _TcpSession, data: bytes) -> None:
        if session.dead or session.reject is not None:
            return
        try:
            frames = session.framer.feed(data)
        except FrameTooLarge as exc:
            frames = exc.frames  # answered first, then the error, then the end
            session.reject = Error(id=None, code=ErrorCode.FRAME_TOO_LARGE, reason=str(exc))
            session.framer = LineFramer()
        queue = session.queue
        for frame in frames:
            queue.append(frame)
            session.queued += len(frame)
        self._hold(session)
        if queue or session.reject is not None:
            self._schedule(session)
        if len(queue) >= QUEUE_FRAMES or session.queued >= QUEUE_BYTES:
            session.full = True
        self._reading(session)
        if self._input > self.max_input:
            self._shed()

    def _reading(self, session: _TcpSession) -> None:
        """Read a connection only while its queue has room and it reads its own replies."""
        want = not (session.full or session.stalled or session.reject or session.dead)
        if want != session.reading and session.transport is not None:
            session.reading = want
            if want:
                session.transport.resume_reading()
            else:
                session.transport.pause_reading()

    def stall(self, session: _TcpSession, stalled: bool) -> None:
        """The connection's unsent replies passed the transport's high-water mark (or fell
        back under it): its requests wait, so its output stays near that mark, whatever it
        sends."""
        session.stalled = stalled
        self._reading(session)
        if not stalled and (session.queue or session.reject is not None):
            self._schedule(session)

    def _hold(self, session: _TcpSession) -> None:
        """Account for the input ``session`` holds (its queue and its partial frame)."""
        held = 0 if session.dead else session.queued + session.framer.buffered
        self._input += held - session.held
        session.held = held

    def _shed(self) -> None:
        """Too much input held in all: close the connections holding the most."""
        while self._input > self.max_input:
            victim = max(self._sessions.values(), key=lambda s: s.held, default=None)
            if victim is None or victim.held == 0:
                return
            log.warning(
                "input buffers full (%d bytes); closing session %d from %s, which held %d",
                self._input,
                victim.conn,
                victim.host,
                victim.held,
            )
            reason = "the registry is short of input buffers; this connection held the most"
            self._kill(victim, Error(id=None, code=ErrorCode.OVERLOADED, reason=reason))

    def _kill(self, session: _TcpSession, error: Error | None) -> None:
        """Drop everything the session holds and close it (after ``error``, if any)."""
        if error is not None:
            self._write(session, error)
        session.dead = True
        session.queue.clear()
        session.queued = 0
        session.framer = LineFramer()
        self._hold(session)
        if session.transport is not None:
            session.transport.close()

    def _schedule(self, session: _TcpSession) -> None:
        if not session.ready:
            session.ready = True
            self._ready.append(session)
        if not self._serving:
            self._serving = True
            self._loop.call_soon(self._serve)

    def _serve(self) -> None:
        """Serve queued frames round-robin: ``TURN_FRAMES`` per connection per turn, at most
        ``BATCH_FRAMES`` before the loop gets its turn."""
        self._serving = False
        budget = BATCH_FRAMES
        ready = self._ready
        while ready and budget > 0:
            session = ready.popleft()
            session.ready = False
            if session.dead or session.stalled or session.conn not in self._sessions:
                continue  # a stalled one is scheduled again when it reads
            turn = min(TURN_FRAMES, budget)
            queue = session.queue
            while queue and turn > 0:
                frame = queue.popleft()
                session.queued -= len(frame)
                turn -= 1
                budget -= 1
                self._handle(session, frame)
            self._hold(session)
            if queue:
                session.ready = True
                ready.append(session)
            elif session.reject is not None:
                self._kill(session, session.reject)
            elif session.full:
                session.full = False
                self._reading(session)
        if ready and not self._serving:
            self._serving = True
            self._loop.call_soon(self._serve)
        self._arm()

    def _handle(self, session: _TcpSession, frame: bytes) -> None:
        if session.conn not in self._sessions:
            return
        request_id: int | None = None
        try:
            try:
                request = decode(request_decoder, frame)
            except msgspec.MsgspecError as exc:
                self._write(session, decode_error(frame, exc))
                return
            request_id = request.id
            self._apply(self.core.handle(session.conn, request, self.now()))
        except Exception:  # a bug: one traceback, one answer, and the session goes on
            log.exception("internal error on a frame from session %d", session.conn)
            self._write(
                session, Error(id=request_id, code=ErrorCode.INTERNAL, reason="internal error")
            )

    def lost(self, session: _TcpSession) -> None:
        if session.transport is None:
            return
        session.dead = True
        session.queue.clear()
        session.queued = 0
        session.framer = LineFramer()
        self._hold(session)
        session.slot.release()
        session.transport = None
        if self._sessions.pop(session.conn, None) is not None and not self._closing:
            self._apply(self.core.disconnect(session.conn, self.now()))
            self._arm()

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

    def _apply(
        self,
        actions: list[Action],
        frames: dict[int, tuple[object, bytes]] | None = None,
    ) -> None:
        last_msg: Message | None = None
        last_frame = b""
        if frames is None:
            frames = {}
        for action in actions:
            if isinstance(action, Send):
                session = self._sessions.get(action.conn)
                if session is None or session.transport is None:
                    continue
                if action.msg is not last_msg:  # one event fanned out is encoded once
                    last_msg, last_frame = action.msg, encode(action.msg)
                self._write_frame(session, last_frame)
            elif isinstance(action, SendEvents):
                if len(action.conns) == 1:
                    data = _joined(action.events, frames)
                elif (cached := frames.get(id(action.events))) is not None:
                    data = cached[1]  # the same list in an earlier slice of the round
                else:
                    data = _joined(action.events, frames)
                    frames[id(action.events)] = (action.events, data)
                for conn in action.conns:
                    session = self._sessions.get(conn)
                    if session is not None and session.transport is not None:
                        self._write_frame(session, data)
            elif isinstance(action, Close):
                session = self._sessions.pop(action.conn, None)
                if session is not None and session.transport is not None:
                    log.info("session %d closed by the registry", action.conn)
                    session.transport.close()
            else:
                self._hash(action)
        if not self._in_flush and self.core.events_waiting:
            self._want_flush()

    # ------------------------------------------------------------------ room events

    def _want_flush(self) -> None:
        """Go on with the round under way at the next turn, or start the next round when
        its time comes (see ``FLUSH_EVERY``, ``FLUSH_SHARE``)."""
        if self._flush is not None or self._closing:
            return
        delay = 0.0 if self.core.flushing else self._next_round - self._loop.time()
        if delay > 0:
            self._flush = self._loop.call_later(delay, self._flush_some)
        else:
            self._flush = self._loop.call_soon(self._flush_some)

    def _flush_some(self) -> None:
        """One turn's share of a round: ``FLUSH_SLICE`` sessions get their room events."""
        self._flush = None
        started = time.perf_counter()
        if not self.core.flushing:
            self._round_start, self._round_work = self._loop.time(), 0.0
        self._in_flush = True
        try:
            self._apply(self.core.flush(FLUSH_SLICE), self._frames)
        finally:
            self._in_flush = False
            self._round_work += time.perf_counter() - started
        if not self.core.flushing:  # the round is over
            self._frames.clear()
            pause = max(FLUSH_EVERY, self._round_work / FLUSH_SHARE)
            self._next_round = self._round_start + pause
        if self.core.events_waiting:
            self._want_flush()
        self._arm()  # expiry may have waited for these events

    # ------------------------------------------------------------------ password work

    def _hash(self, job: HashPassword | VerifyPassword) -> None:
        """Run one password job on a worker thread; the core has counted it as running."""
        if isinstance(job, HashPassword):
            work: Future[object] = self._hashers.submit(self.passwords.hash, job.request.password)
        else:
            work = self._hashers.submit(
                self.passwords.verify, job.password_hash, job.request.password
            )
        work.add_done_callback(lambda done: self._from_worker(job, done))

    def _from_worker(self, job: HashPassword | VerifyPassword, done: Future[object]) -> None:
        with contextlib.suppress(RuntimeError):  # a closed loop: the registry has stopped
            self._loop.call_soon_threadsafe(self._hashed, job, done)

    def _hashed(self, job: HashPassword | VerifyPassword, done: Future[object]) -> None:
        if self._closing or done.cancelled():
            return
        request = job.request
        now = self.now()
        try:
            result = done.result()
            if isinstance(job, HashPassword):
                actions = self.core.register_hashed(job.conn, job.request, str(result), now)
            else:
                if not result:
                    log.info("wrong password for %s", job.request.username)
                actions = self.core.login_verified(
                    job.conn, job.request, bool(result), now, job.ticket
                )
        except Exception:
            log.exception("%s of %s failed", type(request).__name__, request.username)
            actions = self.core.auth_failed(job.conn, request.id)
        self._apply(actions)
        self._arm()


def _joined(events: list[RoomEvent], frames: dict[int, tuple[object, bytes]]) -> bytes:
    """The frames of ``events``, each event encoded once for all the sessions it goes to."""
    out = []
    for event in events:
        cached = frames.get(id(event))
        if cached is None:
            cached = frames[id(event)] = (event, encode(event))
        out.append(cached[1])
    return b"".join(out)
