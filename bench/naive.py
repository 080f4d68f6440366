"""The naive design, for comparison only: the sender writes every room message to every member.

This is what the course's student projects do: before each message the sender asks the
registry for the room's member list (``RegistryClient.members``), then writes the message over a
direct TCP connection to each online member. Connections are kept open once made (the kindest
variant of the design: most projects open one per message). Frames are the same JSON lines as
the real peer's, encoded once per message, so the comparison is about the pattern, not the
codec. Nothing here is used outside ``bench/``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable

import msgspec

from p2pchat.peer.events import PeerEvent, RoomText
from p2pchat.protocol.framing import LineFramer
from p2pchat.protocol.messages import RoomMessage, encode, peer_decoder
from p2pchat.registry.client import RegistryClient


class _Counters:
    """Mirrors the counters of ``FloodRouter`` that the benchmark reads."""

    __slots__ = ("delivered", "duplicates", "frames_out")

    def __init__(self) -> None:
        self.delivered = 0
        self.duplicates = 0
        self.frames_out = 0


class _Inbound(asyncio.Protocol):
    def __init__(self, peer: NaivePeer) -> None:
        self.peer = peer
        self.framer = LineFramer()
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.peer.inbound.add(self)

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        for frame in self.framer.feed(data):
            try:
                msg = peer_decoder.decode(frame)
            except msgspec.MsgspecError:
                continue
            if type(msg) is RoomMessage:
                peer.router.delivered += 1
                peer.emit(RoomText(msg.room, msg.origin, msg.text, msg.ts))

    def connection_lost(self, exc: Exception | None) -> None:
        self.peer.inbound.discard(self)


class NaivePeer:
    """A room member in the naive design; same surface as ``PeerNode`` where the bench needs it.

    ``ask_registry`` false keeps the last member list instead of asking before each message.
    """

    def __init__(
        self,
        registry_port: int,
        on_event: Callable[[PeerEvent], None],
        *,
        ask_registry: bool = True,
        secure: bool = True,
    ) -> None:
        self.registry_port = registry_port
        self.secure = secure
        self.emit = on_event
        self.ask_registry = ask_registry
        self.router = _Counters()
        self.username: str | None = None
        self.registry: RegistryClient | None = None
        self.links: dict[tuple[str, int], asyncio.Transport] = {}
        """Outbound connections kept open, by member address."""
        self.inbound: set[_Inbound] = set()
        self._connecting: dict[tuple[str, int], asyncio.Future[asyncio.Transport | None]] = {}
        self._server: asyncio.Server | None = None
        self._members: list[tuple[str, str, int]] = []
        self.port = 0

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Inbound(self), "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def login(self, username: str, password: str) -> None:
        self.registry = await RegistryClient.connect(
            "127.0.0.1", self.registry_port, on_event=lambda event: None, secure=self.secure
        )
        await self.registry.login(username, password, self.port, heartbeat=20.0)
        self.username = username

    async def _member_list(self, room: str) -> list[tuple[str, str, int]]:
        if self.ask_registry or not self._members:
            assert self.registry is not None
            members = await self.registry.members(room)
            self._members = [
                (m.username, m.host, m.port)
                for m in members
                if m.online and m.host and m.port and m.username != self.username
            ]
        return self._members

    async def _connect(self, address: tuple[str, int]) -> asyncio.Transport | None:
        transport = self.links.get(address)
        if transport is not None and not transport.is_closing():
            return transport
        pending = self._connecting.get(address)
        if pending is not None:
            return await pending
        loop = asyncio.get_running_loop()
        future: asyncio.Future[asyncio.Transport | None] = loop.create_future()
        self._connecting[address] = future
        result: asyncio.Transport | None = None
        try:
            result, _ = await loop.create_connection(asyncio.Protocol, *address)
            self.links[address] = result
        except OSError:
            result = None
        finally:
            del self._connecting[address]
            future.set_result(result)
        return result

    async def warm(self, room: str) -> None:
        """Open the connections to every member ahead of time (not part of any timing)."""
        members = await self._member_list(room)
        await asyncio.gather(*(self._connect((host, port)) for _, host, port in members))

    async def say(self, room: str, text: str) -> int:
        """Ask the registry who is in ``room``, then write the message to each of them."""
        ts = time.time()
        members = await self._member_list(room)
        assert self.username is not None
        msg = RoomMessage(
            id=os.urandom(16).hex(),
            room=room,
            origin=self.username,
            seq=1,
            text=text,
            ts=ts,
            hops=0,
        )
        frame = encode(msg)
        sent = 0
        links = self.links
        for _, host, port in members:
            transport = links.get((host, port))
            if transport is None or transport.is_closing():
                transport = await self._connect((host, port))
                if transport is None:
                    continue
            transport.write(frame)
            sent += 1
        self.router.frames_out += sent
        self.emit(RoomText(room, self.username, text, ts, mine=True))
        return sent

    async def close(self) -> None:
        if self.registry is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.registry.logout(), 2.0)
            await self.registry.close()
        if self._server is not None:
            self._server.close()
        for transport in self.links.values():
            transport.close()
        for inbound in list(self.inbound):
            if inbound.transport is not None:
                inbound.transport.close()
        await asyncio.sleep(0)
