"""The peer shell's asyncio protocols: one per link, one for the registry, the heartbeats.

They move bytes between sockets and the shell (``node.py``), which hands them to the core.
What they decide is only what sockets need: keepalives, one write per loop turn, cutting a
neighbour that does not read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import Protocol

from p2pchat.listener import Slot
from p2pchat.peer.actions import Action
from p2pchat.peer.core import PeerCore
from p2pchat.trust import tls
from p2pchat.trust.certs import TrustError

log = logging.getLogger("p2pchat.peer")

MAX_LINK_BUFFER = 4 << 20
"""A neighbour that lets this much pile up unsent is too slow for the mesh: its link is cut."""


class Shell(Protocol):
    """What the protocols need of the shell that owns them."""

    core: PeerCore
    links: dict[int, LinkProtocol]
    registry: RegistryProtocol | None

    def clock(self) -> float: ...

    def apply(self, actions: list[Action]) -> None: ...

    def check_registry(self, presented: bytes | None) -> None: ...

    def registry_refused(self, reason: str) -> None: ...


def keepalive(sock: socket.socket | None) -> None:
    """Notice a peer that vanished without a reset (cable pulled, host frozen) in ~25 s."""
    if sock is None:
        return
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 5)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)


class LinkProtocol(asyncio.Protocol):
    """Moves one link's bytes; the frames of one loop turn go out in one write. An accepted
    one (``link_id`` None) holds its ``slot`` in the listener until it ends."""

    def __init__(self, shell: Shell, link_id: int | None, slot: Slot | None = None) -> None:
        self.shell = shell
        self.slot = slot
        self.id = link_id if link_id is not None else 0
        self.accepted = link_id is None
        self.transport: asyncio.Transport | None = None
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending: list[bytes] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        keepalive(transport.get_extra_info("socket"))
        shell = self.shell
        if self.accepted:
            cert = tls.peer_certificate(transport.get_extra_info("ssl_object"))
            self.id, actions = shell.core.accept(shell.clock(), cert)
        else:
            actions = shell.core.link_connected(self.id, shell.clock())
        shell.links[self.id] = self
        shell.apply(actions)

    def data_received(self, data: bytes) -> None:
        shell = self.shell
        shell.apply(shell.core.link_data(self.id, data, shell.clock()))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.slot is not None:
            self.slot.release()
        shell = self.shell
        if shell.links.get(self.id) is self:
            del shell.links[self.id]
        if not self.lost.done():
            self.lost.set_result(None)
        shell.apply(shell.core.link_closed(self.id, shell.clock()))

    def send(self, data: bytes) -> None:
        pending = self._pending
        if pending is not None:
            pending.append(data)
            return
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        self._pending = [data]
        asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        frames, self._pending = self._pending, None
        transport = self.transport
        if not frames or transport is None or transport.is_closing():
            return
        transport.write(frames[0] if len(frames) == 1 else b"".join(frames))
        if transport.get_write_buffer_size() > MAX_LINK_BUFFER:
            log.warning("link %d is not keeping up; cutting it", self.id)
            transport.abort()

    def close(self, abort: bool) -> None:
        if self.transport is None:
            return
        if abort:
            self._pending = None
            self.transport.abort()
        else:
            self.flush()
            self.transport.close()


class RegistryProtocol(asyncio.Protocol):
    """The connection to the registry: checked against the pinned certificate before the core
    sends anything on it."""

    def __init__(self, shell: Shell) -> None:
        self.shell = shell
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        shell = self.shell
        presented = tls.peer_certificate(transport.get_extra_info("ssl_object"))
        try:
            shell.check_registry(presented)
        except TrustError as exc:  # nothing was sent: close, and say why
            shell.registry_refused(str(exc))
            transport.abort()
            return
        shell.registry = self
        shell.apply(shell.core.registry_connected(shell.clock(), presented))

    def data_received(self, data: bytes) -> None:
        shell = self.shell
        shell.apply(shell.core.registry_data(data, shell.clock()))

    def connection_lost(self, exc: Exception | None) -> None:
        shell = self.shell
        if shell.registry is self:
            shell.registry = None
            reason = f"connection to the registry lost: {exc}" if exc else "the registry closed"
            shell.apply(shell.core.registry_closed(reason, shell.clock()))

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def close(self, abort: bool) -> None:
        if self.transport is not None:
            if abort:
                self.transport.abort()
            else:
                self.transport.close()


class _Datagrams(asyncio.DatagramProtocol):
    def error_received(self, exc: Exception) -> None:  # e.g. ICMP port unreachable
        log.debug("heartbeat datagram error: %s", exc)


class Heartbeats:
    """UDP endpoints for heartbeats, one per registry address, opened on first use."""

    def __init__(self) -> None:
        self._endpoints: dict[tuple[str, int], asyncio.Future[asyncio.DatagramTransport]] = {}

    async def send(self, host: str, port: int, data: bytes) -> None:
        key = (host, port)
        endpoint = self._endpoints.get(key)
        if endpoint is None:
            endpoint = self._endpoints[key] = asyncio.ensure_future(self._open(key))
        try:
            transport = await endpoint
        except OSError as exc:
            log.warning("cannot send heartbeats to %s:%d: %s", *key, exc)
            del self._endpoints[key]
            return
        transport.sendto(data)

    @staticmethod
    async def _open(key: tuple[str, int]) -> asyncio.DatagramTransport:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(_Datagrams, remote_addr=key)
        return transport

    def close(self) -> None:
        for endpoint in self._endpoints.values():
            if endpoint.done() and not endpoint.cancelled() and endpoint.exception() is None:
                endpoint.result().close()
