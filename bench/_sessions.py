"""Light registry sessions for the load generators, and the worker process that holds them.

A ``RegistryClient`` is a task, a stream reader and a writer per session; a load generator
holding 100,000 sessions needs less: ``LightSession`` is one asyncio protocol over the
listener's TLS layer (16 KiB buffers), which matches replies to requests by id and only counts
room events (it never decodes them). Sessions connect from a source address given (127.0.0.2
and up: each loopback address has its own 28,000 ephemeral ports), and their heartbeats leave
from one UDP socket per process, each one the session's next MAC'd ping.

``LoadWorker`` holds a share of the sessions in a process of its own (``ProcessWorker`` from
``bench._worker``, commands over a pipe): ``setup`` (connect and log in), ``open_loop`` (requests
at a rate, latency counted from when each was due), ``closed_loop`` (requests in flight),
``churn`` (sessions that log out and in again), ``stats`` and ``stop``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import random
import socket
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import msgspec

from bench.common import PASSWORD, rss_bytes
from p2pchat.listener import TlsLayer
from p2pchat.protocol.framing import LineFramer
from p2pchat.protocol.messages import (
    LIST_LIMIT,
    PROTOCOL_VERSION,
    Error,
    Hello,
    JoinRoom,
    LeaveRoom,
    ListMembers,
    LoggedIn,
    Login,
    Logout,
    MemberList,
    RegistryReply,
    RegistryRequest,
    RoomEvent,
    Search,
    decode_reply,
    encode,
)
from p2pchat.registry import flows
from p2pchat.registry.flows import RegistryClosed, RegistryError
from p2pchat.trust import tls

HEARTBEAT = 20.0
EVENT_PREFIX = b'{"type":"room_event"'
BYE_PREFIX = b'{"type":"bye"'


class LightSession(asyncio.Protocol):
    """One registry session: requests matched to replies by id, room events counted."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.framer = LineFramer()
        self.pending: dict[int, asyncio.Future[RegistryReply]] = {}
        self.ids = itertools.count(1)
        self.events = 0
        self.event_bytes = 0
        self.closed = False
        self.login: LoggedIn | None = None
        self.beats = 0
        self.record: list[tuple[float, str, str]] | None = None
        """If a list: each room event's arrival (monotonic clock), user and change."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        for frame in self.framer.feed(data):
            if frame.startswith(EVENT_PREFIX):
                self.events += 1
                self.event_bytes += len(frame)
                if self.record is not None:
                    event = decode_reply(frame)
                    assert isinstance(event, RoomEvent)
                    self.record.append((time.monotonic(), event.username, event.change))
                continue
            if frame.startswith(BYE_PREFIX):
                continue
            try:
                reply = decode_reply(frame)
            except msgspec.MsgspecError:
                continue
            future = self.pending.pop(reply.id, None) if reply.id is not None else None
            if future is not None and not future.done():
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        for future in self.pending.values():
            if not future.done():
                future.set_exception(RegistryClosed("the registry closed the connection"))
        self.pending.clear()

    async def call(self, request: RegistryRequest) -> RegistryReply:
        if self.closed or self.transport is None:
            raise RegistryClosed("not connected")
        request_id = next(self.ids)
        future: asyncio.Future[RegistryReply] = asyncio.get_running_loop().create_future()
        self.pending[request_id] = future
        self.transport.write(encode(flows.numbered(request, request_id)))
        return await future

    async def expect(self, request: RegistryRequest) -> RegistryReply:
        """``call``, with an error reply raised as ``RegistryError``."""
        reply = await self.call(request)
        if isinstance(reply, Error):
            raise RegistryError(reply.code, reply.reason, reply.retry_after)
        return reply

    def next_ping(self) -> bytes:
        assert self.login is not None
        self.beats += 1
        return encode(flows.heartbeat(self.login, self.beats))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()


async def open_session(
    host: str, port: int, source: str, context: Any, timeout: float = 30.0
) -> LightSession:
    """A TLS session from ``source`` (a loopback address), its hello answered."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    session = LightSession()
    try:
        sock.setblocking(False)
        sock.bind((source, 0))
        await asyncio.wait_for(loop.sock_connect(sock, (host, port)), timeout)
        handshake: asyncio.Future[None] = loop.create_future()
        layer = TlsLayer(loop, session, context, handshake, server_side=False)
        transport, _ = await loop.create_connection(lambda: layer, sock=sock)
    except BaseException:
        sock.close()
        raise
    try:
        await asyncio.wait_for(handshake, timeout)
        await asyncio.wait_for(
            session.expect(Hello(id=0, version=PROTOCOL_VERSION, agent="bench")), timeout
        )
    except BaseException:
        transport.abort()
        raise
    return session


class _Udp(asyncio.DatagramProtocol):
    def error_received(self, exc: Exception) -> None:
        pass


async def heartbeats(
    host: str,
    udp_port: int,
    sessions: list[LightSession],
    stop: asyncio.Event,
    sent: list[int],
    period: float = HEARTBEAT,
) -> None:
    """Each session's next ping every ``period`` seconds, phases spread evenly."""
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(_Udp, remote_addr=(host, udp_port))
    start = loop.time()
    done = 0
    try:
        while not stop.is_set():
            k = len(sessions)
            if k:
                due = int((loop.time() - start) / period * k)
                while done < due:
                    session = sessions[done % k]
                    if session.login is not None and not session.closed:
                        transport.sendto(session.next_ping())
                        sent[0] += 1
                    done += 1
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.01)
    finally:
        transport.close()


def sources(count: int, first: int = 2) -> list[str]:
    """``count`` loopback addresses, 127.0.0.<first> onwards (at most 250 of them)."""
    if first + count > 255:
        raise ValueError(f"{count} source addresses from 127.0.0.{first} do not fit in 127.0.0.x")
    return [f"127.0.0.{first + i}" for i in range(count)]


async def schedule(
    rate: float, seconds: float, start_at: float
) -> AsyncIterator[tuple[int, float]]:
    """``seconds * rate`` steps, each ``(i, due)`` at its due time on the monotonic clock
    (which the processes of a machine share): open loop, late steps come at once."""
    loop = asyncio.get_running_loop()
    for i in range(int(seconds * rate)):
        due = start_at + i / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        yield i, due


def mix(text: str) -> tuple[list[str], list[float]]:
    """``search:45,members:45`` as kinds and weights."""
    kinds, weights = [], []
    for part in text.split(","):
        name, _, w = part.partition(":")
        kinds.append(name.strip())
        weights.append(float(w or 1))
    return kinds, weights


class LoadWorker:
    """A share of the sessions, in its own process. ``handle(cmd, arg)`` is the pipe's end."""

    def __init__(self) -> None:
        self.sessions: list[LightSession] = []
        self.users: list[str] = []
        self.stop_beats = asyncio.Event()
        self.sent = [0]
        self.beat_task: asyncio.Task[None] | None = None
        self.joined: dict[int, str] = {}
        self.rng = random.Random(0)
        self.page_rows: list[int] = []
        self.page_bytes: list[int] = []

    async def handle(self, cmd: str, arg: dict[str, Any]) -> Any:
        method = getattr(self, f"cmd_{cmd}")
        return await method(**arg)

    async def cmd_setup(
        self,
        host: str,
        port: int,
        udp_port: int,
        users: Sequence[str],
        addresses: Sequence[str],
        per_address: int,
        concurrency: int = 64,
        seed: int = 0,
        record: bool = False,
        period: float = HEARTBEAT,
    ) -> dict[str, Any]:
        """Connect and log in one session per user (``per_address`` from each address), then
        send each one's heartbeat every ``period`` seconds; ``record``: note each room
        event's arrival (``events``)."""
        self.rng = random.Random(seed)
        rss0 = rss_bytes()
        self.users = list(users)
        self.sessions = [None] * len(users)  # type: ignore[list-item]
        context = tls.client()
        sem = asyncio.Semaphore(concurrency)
        failures: list[str] = []

        async def one(i: int, user: str) -> None:
            async with sem:
                try:
                    s = await open_session(host, port, addresses[i // per_address], context)
                    reply = await s.expect(
                        Login(id=0, username=user, password=PASSWORD, port=40000 + i % 20000)
                    )
                except (TimeoutError, OSError, RegistryError) as exc:
                    failures.append(f"{user}: {exc!r}")
                    return
                assert isinstance(reply, LoggedIn)
                s.login = reply
                if record:
                    s.record = []
                self.sessions[i] = s

        t = time.perf_counter()
        await asyncio.gather(*(one(i, u) for i, u in enumerate(self.users)))
        seconds = time.perf_counter() - t
        self.sessions = [s for s in self.sessions if s is not None]
        self.beat_task = asyncio.create_task(
            heartbeats(host, udp_port, self.sessions, self.stop_beats, self.sent, period)
        )
        gc.collect()
        gc.freeze()  # the sessions: kept out of this process's collections
        return {
            "sessions": len(self.sessions),
            "seconds": seconds,
            "failed": len(failures),
            "failures": failures[:5],
            "rss_growth": rss_bytes() - rss0,
        }

    async def _request(
        self, session: LightSession, who: int, kind: str, users: Sequence[str], rooms: Sequence[str]
    ) -> None:
        """``search`` a random user; ``members`` of a random room (all of it: one page of a
        small room); ``page``: one page of the first room's members, from a random name on;
        ``join_leave``: join a random room, or leave the one joined before."""
        rng = self.rng
        if kind == "search":
            await session.expect(Search(id=0, username=rng.choice(users)))
        elif kind == "members":
            reply = await session.expect(ListMembers(id=0, room=rng.choice(rooms)))
            assert isinstance(reply, MemberList)
        elif kind == "page":
            reply = await session.expect(
                ListMembers(id=0, room=rooms[0], after=rng.choice(users), limit=LIST_LIMIT)
            )
            assert isinstance(reply, MemberList)
            self.page_rows.append(len(reply.members))
            self.page_bytes.append(len(encode(reply)))
        else:
            room = self.joined.pop(who, None)
            if room is not None:
                await session.expect(LeaveRoom(id=0, room=room))
            else:
                room = rng.choice(rooms)
                self.joined[who] = room
                try:
                    await session.expect(JoinRoom(id=0, room=room))
                except RegistryError:  # already a member: its own room
                    self.joined.pop(who, None)

    async def cmd_open_loop(
        self,
        rate: float,
        seconds: float,
        mix_text: str,
        users: Sequence[str],
        rooms: Sequence[str],
        start_at: float,
    ) -> dict[str, Any]:
        """Requests at ``rate`` a second from random sessions, from ``start_at`` (the monotonic
        clock, shared by the processes of this machine); latency from when each was due."""
        kinds, weights = mix(mix_text)
        loop = asyncio.get_running_loop()
        lat: dict[str, list[float]] = {k: [] for k in kinds}
        errors = [0]
        busy: set[int] = set()
        tasks: set[asyncio.Task[None]] = set()
        sessions = self.sessions
        rng = self.rng

        async def timed(kind: str, who: int, due: float) -> None:
            try:
                await self._request(sessions[who], who, kind, users, rooms)
                lat[kind].append((loop.time() - due) * 1000)
            except (RegistryError, ConnectionError):
                errors[0] += 1
            finally:
                busy.discard(who)

        gc.disable()
        try:
            async for _, due in schedule(rate, seconds, start_at):
                while len(busy) >= len(sessions):  # all waiting: late, counted from due
                    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                who = rng.randrange(len(sessions))
                while who in busy:  # one request at a time per session, as a peer does
                    who = rng.randrange(len(sessions))
                busy.add(who)
                task = asyncio.create_task(timed(rng.choices(kinds, weights)[0], who, due))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.wait(tasks, timeout=10.0)
        finally:
            gc.enable()
        pages = (self.page_rows, self.page_bytes)
        self.page_rows, self.page_bytes = [], []
        return {
            "latency_ms": lat,
            "errors": errors[0],
            "unanswered": len(tasks),
            "page_rows": pages[0],
            "page_bytes": pages[1],
        }

    async def cmd_closed_loop(
        self,
        lanes: int,
        seconds: float,
        users: Sequence[str],
        rooms: Sequence[str],
    ) -> dict[str, Any]:
        """``lanes`` requests in flight (searches and member listings) for ``seconds``."""
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        lat: list[float] = []
        rng = self.rng
        sessions = self.sessions

        async def lane(j: int) -> None:
            session = sessions[j * len(sessions) // lanes]
            while loop.time() < end:
                t = loop.time()
                if rng.random() < 0.5:
                    await session.expect(Search(id=0, username=rng.choice(users)))
                else:
                    await session.expect(ListMembers(id=0, room=rng.choice(rooms)))
                lat.append((loop.time() - t) * 1000)

        gc.disable()
        try:
            t0 = loop.time()
            await asyncio.gather(*(lane(j) for j in range(lanes)))
            elapsed = loop.time() - t0
        finally:
            gc.enable()
        return {"count": len(lat), "elapsed": elapsed, "latency_ms": lat}

    async def cmd_churn(
        self, count: int, rate: float, seconds: float, start_at: float
    ) -> dict[str, Any]:
        """The first ``count`` sessions log out and in again, one change every 1/``rate``
        seconds in all (each a presence change the registry tells the sessions' rooms)."""
        changes: list[tuple[float, str, str]] = []
        errors = 0
        online = [True] * count
        async for i, _ in schedule(rate, seconds, start_at):
            j = (i // 2) % count
            session = self.sessions[j]
            sent = time.monotonic()
            try:
                if online[j]:
                    await session.expect(Logout(id=0))
                    session.login = None
                else:
                    reply = await session.expect(
                        Login(id=0, username=self.users[j], password=PASSWORD, port=40000 + j)
                    )
                    assert isinstance(reply, LoggedIn)
                    session.login = reply
                    session.beats = 0
                online[j] = not online[j]
                changes.append((sent, self.users[j], "online" if online[j] else "offline"))
            except (RegistryError, ConnectionError):
                errors += 1
        return {"changes": changes, "errors": errors}

    async def cmd_events(self) -> list[tuple[float, str, str]]:
        """The room events recorded (and forgotten here)."""
        out: list[tuple[float, str, str]] = []
        for s in self.sessions:
            if s.record:
                out.extend(s.record)
                s.record = []
        return out

    async def cmd_stats(self) -> dict[str, Any]:
        return {
            "sessions": len(self.sessions),
            "closed": sum(1 for s in self.sessions if s.closed),
            "heartbeats": self.sent[0],
            "events": sum(s.events for s in self.sessions),
            "event_bytes": sum(s.event_bytes for s in self.sessions),
            "rss": rss_bytes(),
            "monotonic": time.monotonic(),
        }

    async def cmd_stop(self) -> dict[str, Any]:
        self.stop_beats.set()
        if self.beat_task is not None:
            with contextlib.suppress(Exception):
                await self.beat_task
        for s in self.sessions:
            s.close()
        await asyncio.sleep(0)
        gc.unfreeze()
        return {}
