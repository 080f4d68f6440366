"""Accepting connections within the process's means, for the registry and for every peer.

asyncio's ``create_server`` accepts whatever comes, makes a transport (and a TLS layer with a
256 KiB buffer) for each connection, and, out of file descriptors, logs a traceback and tries
again at once, spinning. ``Listener`` runs its own accept loop instead:

- **Caps.** At most ``max_connections`` at once (by default derived from the open-files limit,
  ``default_max_connections``) and ``max_per_address`` from one address; ``exempt`` addresses
  are not capped per address. Beyond, a connection gets one frame (the owner's refusal) and is
  closed at once: no transport, no task, no buffer, no handshake.
- **Handshakes.** Optionally, connections from addresses not exempt that are still in their
  TLS handshake are held in a pool of ``max_opening``: a newcomer beyond it closes the oldest
  one of the address holding the most, so strangers that never finish a handshake cannot hold
  every slot, and one that does finish (in milliseconds) is not the one closed.
- **Descriptors.** When the process runs out of file descriptors anyway, accepting pauses for
  ``ACCEPT_RETRY`` with one log line (at most one per 30 s), instead of spinning.
- **TLS buffers.** Every TLS connection, accepted here or dialed with ``connect``, goes through
  ``TlsLayer``: asyncio's TLS layer with a read buffer of one TLS record and bounded input and
  output buffers.

The listener decides nothing about what a connection is for: each admitted connection gets a
``Slot`` (its place in the counts) and the owner's protocol, which releases the slot when the
connection ends.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
import socket
import ssl
from asyncio import sslproto
from collections.abc import Callable, Collection

LOOPBACK = frozenset({"127.0.0.1", "::1"})
ACCEPT_BATCH = 64
"""Connections taken from the backlog in one turn of the event loop."""
ACCEPT_RETRY = 1.0
"""Seconds accepting pauses when the process is out of file descriptors."""
TLS_HANDSHAKE = 10
"""A connection that has not finished its TLS handshake by then is closed."""
TLS_READ_SIZE = 16 * 1024
"""The TLS layer's read buffer, which asyncio allocates (and fills) for every connection: its
default, 256 KiB, made each idle registry session cost 280 KiB (2.7 GB for 10,000 sessions).
One TLS record is at most 16 KiB, and frames are small."""
TLS_READ_BUFFER = 16 * 1024
"""Encrypted input the TLS layer keeps for a connection that is not being read, besides the
one read in progress (``TLS_READ_SIZE``); asyncio's default, 256 KiB, would let each such
connection hold a quarter of a megabyte outside its owner's bounds."""
TLS_WRITE_BUFFER = 64 * 1024
"""Output the TLS layer keeps for a connection that does not read it before its protocol is
told to stop (``pause_writing``), as a plain transport does by default (asyncio's default for
TLS is 512 KiB)."""
_OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
_LOG_EVERY = 30.0


def default_max_connections(soft_limit: int | None = None) -> int:
    """Connections the open-files limit allows, leaving room for the process's own files
    (a database, datagram sockets, the listening sockets, threads, a connection being
    refused): the limit less 64, less a tenth."""
    if soft_limit is None:
        soft_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft_limit == resource.RLIM_INFINITY or soft_limit > 1 << 20:
        soft_limit = 1 << 20
    return max(1, soft_limit - 64 - soft_limit // 10)


class TlsLayer(sslproto.SSLProtocol):
    """asyncio's TLS layer, with a read buffer of ``TLS_READ_SIZE`` and its input and output
    buffers bounded (``TLS_READ_BUFFER``, ``TLS_WRITE_BUFFER``): the owners' bounds count only
    what reaches their protocols."""

    max_size = TLS_READ_SIZE

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        app_protocol: asyncio.BaseProtocol,
        context: ssl.SSLContext,
        handshake: asyncio.Future[None],
        *,
        server_side: bool,
        handshake_timeout: int = TLS_HANDSHAKE,
    ) -> None:
        super().__init__(
            loop,
            app_protocol,
            context,
            handshake,
            server_side=server_side,
            ssl_handshake_timeout=handshake_timeout,
        )
        transport = self._app_transport
        transport.set_write_buffer_limits(high=TLS_WRITE_BUFFER)
        transport.set_read_buffer_limits(high=TLS_READ_BUFFER)


async def _handshake(transport: asyncio.BaseTransport, handshake: asyncio.Future[None]) -> None:
    """Wait for the TLS handshake; on failure (or cancellation), close the connection."""
    try:
        await handshake
    except BaseException:
        transport.close()
        raise


async def connect(
    protocol: asyncio.Protocol,
    host: str,
    port: int,
    context: ssl.SSLContext | None,
    *,
    handshake_timeout: int = TLS_HANDSHAKE,
) -> None:
    """Dial ``host``:``port`` for ``protocol``: in plain TCP without a ``context``, otherwise
    in TLS through ``TlsLayer`` (what ``create_connection(ssl=...)`` does, with the layer's
    buffers sized as for accepted connections). Returns once ``protocol`` has its transport;
    raises ``OSError`` (``ssl.SSLError`` among them) if the connection or the handshake fails."""
    loop = asyncio.get_running_loop()
    if context is None:
        await loop.create_connection(lambda: protocol, host, port)
        return
    handshake: asyncio.Future[None] = loop.create_future()
    layer = TlsLayer(
        loop, protocol, context, handshake, server_side=False, handshake_timeout=handshake_timeout
    )
    transport, _ = await loop.create_connection(lambda: layer, host, port)
    await _handshake(transport, handshake)


class Slot:
    """One admitted connection's place in its listener's counts, released once: by the
    owner's protocol when the connection ends, or by the listener if it never began."""

    __slots__ = ("_listener", "host", "opening", "released", "task")

    def __init__(self, listener: Listener, host: str) -> None:
        self._listener = listener
        self.host = host
        self.opening = False
        """In the pool of handshakes (not exempt, handshake not finished)."""
        self.released = False
        self.task: asyncio.Future[None] | None = None

    def release(self) -> None:
        if not self.released:
            self.released = True
            self._listener._released(self)


class Listener:
    """Listening sockets for ``host``:``port`` and their accept loop; ``protocol(slot)``
    makes the protocol of each admitted connection (it must call ``slot.release()`` from
    ``connection_lost``)."""

    def __init__(
        self,
        protocol: Callable[[Slot], asyncio.Protocol],
        *,
        host: str | None,
        port: int,
        tls: ssl.SSLContext | None,
        refuse_full: bytes,
        refuse_address: bytes,
        max_connections: int,
        max_per_address: int,
        exempt: Collection[str] = LOOPBACK,
        max_opening: int | None = None,
        log: logging.Logger,
        handshake_timeout: int = TLS_HANDSHAKE,
    ) -> None:
        """``refuse_full`` and ``refuse_address``: the frame sent to a connection refused
        because the listener is full, or because its address is. ``max_opening``: the pool
        of handshakes (None: none of its own, they count in ``max_connections`` only)."""
        self._protocol = protocol
        self.host = host
        self.port = port
        self.tls = tls
        self.refuse_full = refuse_full
        self.refuse_address = refuse_address
        self.max_connections = max_connections
        self.max_per_address = max_per_address
        self.exempt = frozenset(exempt)
        self.max_opening = max_opening
        self.handshake_timeout = handshake_timeout
        self.log = log
        self.sockets: list[socket.socket] = []
        self.held = 0
        """Connections admitted and not released (those in their handshake included)."""
        self.per_address: dict[str, int] = {}
        self.refused = 0
        """Connections refused at accept, for benchmarks and tests."""
        self.evicted = 0
        """Handshakes closed to make room in the pool of handshakes."""
        self.pauses = 0
        self._starting: set[Slot] = set()  # admitted, transport not made yet
        self._opening: dict[Slot, None] = {}  # the pool of handshakes, oldest first
        self._opening_per_address: dict[str, int] = {}
        self._loop = asyncio.get_running_loop()
        self._accepting = False
        self._closing = False
        self._logged = -1e9

    # ------------------------------------------------------------------ life cycle

    async def start(self) -> None:
        """Listen (on every address ``host`` names, one port) and start accepting; raises
        ``OSError`` if an address cannot be bound."""
        self.sockets = await self._listen()
        self.port = self.sockets[0].getsockname()[1]
        self._start_accepting()

    async def _listen(self) -> list[socket.socket]:
        """Bound, listening, non-blocking sockets for ``host`` (every address it names)."""
        infos = await self._loop.getaddrinfo(
            self.host or None,
            self.port,
            family=socket.AF_UNSPEC,
            type=socket.SOCK_STREAM,
            flags=socket.AI_PASSIVE,
        )
        sockets: list[socket.socket] = []
        port = self.port
        seen: set[tuple[int, object]] = set()
        try:
            for family, kind, proto, _, address in infos:
                if (family, address[0]) in seen:
                    continue
                seen.add((family, address[0]))
                sock = socket.socket(family, kind, proto)
                sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind((address[0], port, *address[2:]))
                sock.listen(1024)
                sock.setblocking(False)
                port = port or sock.getsockname()[1]  # every address on the same port
        except BaseException:
            for sock in sockets:
                sock.close()
            raise
        return sockets

    def close(self) -> None:
        """Stop accepting, close the listening sockets and the connections still in their
        handshake (the others are their owners' to close)."""
        self._closing = True
        self._stop_accepting()
        for sock in self.sockets:
            sock.close()
        for slot in list(self._starting):
            if slot.task is not None:
                slot.task.cancel()

    # ------------------------------------------------------------------ accepting

    def _start_accepting(self) -> None:
        if not self._accepting:
            self._accepting = True
            for sock in self.sockets:
                self._loop.add_reader(sock.fileno(), self._accept, sock)

    def _stop_accepting(self) -> None:
        if self._accepting:
            self._accepting = False
            for sock in self.sockets:
                if sock.fileno() >= 0:
                    self._loop.remove_reader(sock.fileno())

    def _accept(self, sock: socket.socket) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, address = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                if exc.errno in _OUT_OF_RESOURCES:
                    self._pause_accepting(exc)
                else:
                    self.log.warning("accepting a connection failed: %s", exc)
                return
            self._admit(conn, address[0])

    def _pause_accepting(self, exc: OSError) -> None:
        """Out of file descriptors (or memory): stop accepting for a while, one log line."""
        self._stop_accepting()
        self.pauses += 1
        now = self._loop.time()
        if now - self._logged >= _LOG_EVERY:
            self.log.warning(
                "cannot accept connections (%s) with %d open; pausing accepts for %g s "
                "(%d pauses so far); lower the connection limit or raise the open-files limit",
                exc.strerror or exc,
                self.held,
                ACCEPT_RETRY,
                self.pauses,
            )
            self._logged = now
        self._loop.call_later(ACCEPT_RETRY, self._resume_accepting)

    def _resume_accepting(self) -> None:
        if not self._closing:
            self._start_accepting()

    def _admit(self, conn: socket.socket, host: str) -> None:
        if self.held >= self.max_connections:
            self._refuse(conn, self.refuse_full)
            return
        exempt = host in self.exempt
        if not exempt and self.per_address.get(host, 0) >= self.max_per_address:
            self._refuse(conn, self.refuse_address)
            return
        slot = Slot(self, host)
        self.held += 1
        self.per_address[host] = self.per_address.get(host, 0) + 1
        if self.tls is not None and self.max_opening is not None and not exempt:
            if len(self._opening) >= self.max_opening:
                self._evict()
            slot.opening = True
            self._opening[slot] = None
            self._opening_per_address[host] = self._opening_per_address.get(host, 0) + 1
        try:
            conn.setblocking(False)
            slot.task = asyncio.ensure_future(self._open(slot, conn))
        except Exception:
            slot.release()
            conn.close()
            raise
        self._starting.add(slot)
        slot.task.add_done_callback(lambda task: self._opened(task, slot))

    def _evict(self) -> None:
        """Make room in the pool of handshakes: close the oldest handshake of the addresses
        holding the most."""
        counts = self._opening_per_address
        most = max(counts.values())
        victim = next(slot for slot in self._opening if counts[slot.host] == most)
        self._leave_pool(victim)
        self.evicted += 1
        if victim.task is not None:
            victim.task.cancel()

    def _leave_pool(self, slot: Slot) -> None:
        if slot.opening:
            slot.opening = False
            del self._opening[slot]
            left = self._opening_per_address[slot.host] - 1
            if left:
                self._opening_per_address[slot.host] = left
            else:
                del self._opening_per_address[slot.host]

    async def _open(self, slot: Slot, conn: socket.socket) -> None:
        """Make the connection's transport: plain, or TLS through ``TlsLayer`` (what
        ``connect_accepted_socket(ssl=...)`` does, but with the TLS layer made here, so that
        its buffers are ours to size). Raises if the handshake fails."""
        protocol = self._protocol(slot)
        handshake: asyncio.Future[None] = self._loop.create_future()
        made: asyncio.BaseProtocol = protocol
        if self.tls is not None:
            made = TlsLayer(
                self._loop,
                protocol,
                self.tls,
                handshake,
                server_side=True,
                handshake_timeout=self.handshake_timeout,
            )
        try:
            transport, _ = await self._loop.connect_accepted_socket(lambda: made, sock=conn)
        except BaseException:
            conn.close()  # no transport took it
            raise
        if self.tls is not None:
            await _handshake(transport, handshake)

    def _opened(self, task: asyncio.Future[None], slot: Slot) -> None:
        self._starting.discard(slot)
        self._leave_pool(slot)
        slot.task = None
        if task.cancelled():  # closed by us: evicted, or the listener is closing
            slot.release()
        elif task.exception() is not None:
            self.log.info(
                "a connection from %s failed before it began (not TLS, or a handshake error): %s",
                slot.host,
                task.exception(),
            )
            slot.release()  # its owner's protocol never began: undo what _admit counted

    def _refuse(self, conn: socket.socket, frame: bytes) -> None:
        """One frame, best effort, and close: no transport, no task, no buffer."""
        self.refused += 1
        try:
            conn.setblocking(False)
            conn.send(frame)
        except OSError:
            pass
        conn.close()

    def _released(self, slot: Slot) -> None:
        self._leave_pool(slot)
        self.held -= 1
        left = self.per_address.get(slot.host, 0) - 1
        if left > 0:
            self.per_address[slot.host] = left
        else:
            self.per_address.pop(slot.host, None)
