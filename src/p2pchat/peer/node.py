"""The peer's asyncio shell: sockets, TLS, one timer, and the ``PeerCore`` that decides.

It feeds the core what the sockets and the clock report, and carries out the actions the core
returns. After each batch it re-arms a single ``call_later`` for ``core.next_deadline()`` (as
aioquic's protocol does): no polling loop. User interfaces call the ``async`` methods (which
raise ``CommandError`` with a sentence for people) and receive ``PeerEvent`` values.

Every connection is TLS 1.3 (``trust/tls.py``); the registry's certificate is checked against
the one pinned for its address before anything is sent. Connections to us come through a
``Listener`` (``p2pchat.listener``, shared with the registry): at most ``max_connections`` of
them (bounded by the open-files limit), 16 from one address (loopback exempt), half of them
at most in their TLS handshake; an out-of-descriptors pause instead of a spinning accept loop;
TLS layers with bounded buffers, on the links we dial too. The asyncio protocols are in
``transport.py``; the files kept on this machine (key, certificate, history, pins) in
``localdata.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import ssl
import time
from collections.abc import Callable, Collection, Coroutine
from dataclasses import replace
from typing import Any

from p2pchat.deadline import DeadlineTimer
from p2pchat.listener import LOOPBACK, TLS_HANDSHAKE, Listener, connect, default_max_connections
from p2pchat.peer.actions import (
    Action,
    CloseLink,
    CloseRegistry,
    ConnectRegistry,
    Dial,
    Done,
    SaveBlocked,
    SaveCertificate,
    SendDatagram,
    SendLink,
    SendRegistry,
    Show,
)
from p2pchat.peer.core import PeerConfig, PeerCore
from p2pchat.peer.directs import DirectSent
from p2pchat.peer.events import CommandError, Notice, PeerEvent, RoomText, Status
from p2pchat.peer.history import History, HistoryError, Outgoing
from p2pchat.peer.localdata import LocalData
from p2pchat.peer.transport import Heartbeats, LinkProtocol, RegistryProtocol
from p2pchat.protocol.messages import (
    ErrorCode,
    MemberInfo,
    PeerError,
    RoomInfo,
    SearchResult,
    UserAddr,
    encode,
)
from p2pchat.trust import tls
from p2pchat.trust.certs import TrustError

__all__ = ["PeerConfig", "PeerNode"]

log = logging.getLogger("p2pchat.peer")

MAX_PER_ADDRESS = 16
"""Connections to us from one address (not exempt) at once. A peer holds one link per other
user, and a room's mesh asks for a handful of neighbours, so 16 users behind one address
linked to us at once is more than honest use needs; and 16 is the pool of connections
waiting for their hello, which one address thus cannot take alone."""
CLOSE_WAIT = 2.0
"""How long ``close()`` waits for the logout and for links to flush."""


class PeerNode:
    """One user's peer. ``start()``, then ``login()``; ``close()`` at the end."""

    def __init__(
        self,
        config: PeerConfig,
        on_event: Callable[[PeerEvent], None] | None = None,
        *,
        clock: Callable[[], float] | None = None,
        max_per_address: int = MAX_PER_ADDRESS,
        exempt: Collection[str] = LOOPBACK,
    ) -> None:
        """``exempt``: addresses not capped per address (by default this machine's: other
        users' peers here, the demo's, tests'; a stranger comes from elsewhere)."""
        allowed = default_max_connections()
        if config.max_connections > allowed:  # each connection is a file descriptor
            config = replace(config, max_connections=allowed)
        self.config = config
        self._on_event = on_event or (lambda event: None)
        self._loop = asyncio.get_running_loop()
        self.clock = clock or self._loop.time
        self.core = PeerCore(config, wall_offset=time.time() - self.clock())
        self.local = LocalData(config)
        self._ca_cert: bytes | None = None
        self._trust_refusal: str | None = None
        self._dialer: ssl.SSLContext | None = None
        self._history: History | None = None
        self._acceptor: ssl.SSLContext | None = None
        self.links: dict[int, LinkProtocol] = {}
        self._dials: dict[int, asyncio.Task[None]] = {}
        self.registry: RegistryProtocol | None = None
        self._heartbeats = Heartbeats()
        self._commands: dict[int, asyncio.Future[Any]] = {}
        self._command_ids = itertools.count(1)
        self.max_per_address = max_per_address
        self.exempt = frozenset(exempt)
        self.listener: Listener | None = None
        self._timer = DeadlineTimer(self.clock, self._fire)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._dead = False
        self.port = 0

    # ------------------------------------------------------------------ carrying out actions

    def apply(self, actions: list[Action]) -> None:
        """Carry out what the core decided, then re-arm the one timer."""
        if self._dead:
            return
        for action in actions:
            if type(action) is SendLink:
                link = self.links.get(action.link)
                if link is not None:
                    link.send(action.data)
            elif type(action) is Show:
                try:
                    self._on_event(action.event)
                except Exception:
                    log.exception("event handler failed")
            elif type(action) is Done:
                self._finish(action)
            else:
                self._carry_out(action)
        self._rearm()

    def _carry_out(self, action: Action) -> None:
        if isinstance(action, CloseLink):
            link = self.links.get(action.link)
            if link is not None:
                link.close(action.abort)
            dial = self._dials.pop(action.link, None)
            if dial is not None:
                dial.cancel()
        elif isinstance(action, SaveCertificate):
            self._save_certificate(action)
        elif isinstance(action, SaveBlocked):
            self.local.save_blocked(action.username, action.blocked)
        elif isinstance(action, Dial):
            self._dials[action.link] = self._spawn(self._dial(action))
        elif isinstance(action, SendRegistry):
            if self.registry is not None:
                self.registry.write(action.data)
        elif isinstance(action, ConnectRegistry):
            self._spawn(self._connect_registry(action))
        elif isinstance(action, CloseRegistry):
            registry, self.registry = self.registry, None
            if registry is not None:
                registry.close(action.abort)
        elif isinstance(action, SendDatagram):
            self._spawn(self._heartbeats.send(action.host, action.port, action.data))

    def _finish(self, done: Done) -> None:
        future = self._commands.pop(done.command, None)
        if future is None or future.done():
            return
        if done.error is not None:
            future.set_exception(done.error)
        else:
            future.set_result(done.value)

    def _rearm(self) -> None:
        """One timer, for the core's next deadline."""
        self._timer.arm(self.core.next_deadline())

    def _fire(self) -> None:
        self.apply(self.core.timer(self.clock()))

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _dial(self, action: Dial) -> None:
        secure = self.config.secure
        try:
            if secure and self._dialer is None:
                raise OSError(0, "we have no certificate to show")
            await asyncio.wait_for(
                connect(
                    LinkProtocol(self, action.link),
                    action.host,
                    action.port,
                    self._dialer if secure else None,
                ),
                self.config.dial_timeout,
            )
        except (OSError, TimeoutError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            self.apply(self.core.link_failed(action.link, reason or "timed out", self.clock()))
        finally:
            self._dials.pop(action.link, None)

    async def _connect_registry(self, action: ConnectRegistry) -> None:
        secure = self.config.secure
        context = None
        if secure:
            own = self.local.own_files(action.identity)
            context = tls.client(*own) if own else tls.client()
        self._trust_refusal = None
        try:
            await asyncio.wait_for(
                self._loop.create_connection(
                    lambda: RegistryProtocol(self),
                    action.host,
                    action.port,
                    ssl=context,
                    server_hostname="" if secure else None,
                ),
                self.config.dial_timeout + 2.0,
            )
        except (OSError, TimeoutError) as exc:
            if isinstance(exc, ssl.SSLError):
                reason = f"TLS failed ({exc.reason or exc}): not a p2pchat registry, or it is full"
            elif isinstance(exc, OSError) and exc.strerror:
                reason = exc.strerror
            else:
                reason = "timed out"
            self.apply(self.core.registry_failed(reason, self.clock()))
            return
        if self._trust_refusal is not None:
            self.apply(self.core.registry_untrusted(self._trust_refusal, self.clock()))

    def check_registry(self, presented: bytes | None) -> None:
        """Before anything is sent: the registry must show the certificate pinned for its
        address; ``TrustError`` if not."""
        if not self.config.secure:
            return
        fingerprint = self.local.check_registry(presented)
        if fingerprint is not None:
            self._on_event_safe(
                Notice(
                    f"trusting the registry at {self.local.registry} from now on: its "
                    f"certificate's fingerprint is {fingerprint} (ask its operator to confirm it)"
                )
            )
        if self._ca_cert is None and presented is not None:
            self._ca_cert = presented
            if self._acceptor is not None:
                tls.trust_registry(self._acceptor, presented)

    def registry_refused(self, reason: str) -> None:
        self._trust_refusal = reason

    def _save_certificate(self, action: SaveCertificate) -> None:
        try:
            self.local.save_certificate(action.username, action.der)
            own = self.local.own_files(action.username)
            if own is not None:
                self._dialer = tls.client(*own)
        except (OSError, ssl.SSLError) as exc:
            log.warning("cannot keep our certificate: %s", exc)

    def _on_event_safe(self, event: PeerEvent) -> None:
        try:
            self._on_event(event)
        except Exception:
            log.exception("event handler failed")

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Open the listener (``listen_port`` 0 picks a free port)."""
        cfg = self.config
        if cfg.secure:
            self._acceptor = tls.peer_server(time.time())

        def refusal(reason: str) -> bytes:
            return encode(PeerError(code=ErrorCode.TOO_MANY_CONNECTIONS, reason=reason))

        listener = Listener(
            lambda slot: LinkProtocol(self, None, slot),
            host=cfg.listen_host,
            port=cfg.listen_port,
            tls=self._acceptor,
            refuse_full=refusal("peer is full"),
            refuse_address=refusal("too many connections from your address"),
            max_connections=cfg.max_connections,
            max_per_address=self.max_per_address,
            exempt=self.exempt,
            max_opening=max(1, cfg.max_connections // 2),
            log=log,
            handshake_timeout=TLS_HANDSHAKE,
        )
        await listener.start()
        self.listener = listener
        self.port = self.core.port = listener.port

    async def close(self) -> None:
        """Log out, close every link after flushing what was queued, stop listening."""
        if self._dead:
            return
        if self.core.username is not None and self.core.status().registry:
            with contextlib.suppress(CommandError, TimeoutError):
                await asyncio.wait_for(self.logout(), CLOSE_WAIT)
        lost = [link.lost for link in self.links.values()]
        self.apply(self.core.shut_down(self.clock()))
        if self.listener is not None:
            self.listener.close()
        if lost:
            await asyncio.wait(lost, timeout=CLOSE_WAIT)
        self._stop()

    def abort(self) -> None:
        """Stop at once, saying nothing to anyone: what a crash looks like from outside.

        Benchmarks and tests of churn use it; a user's peer always uses ``close()``.
        """
        if self.listener is not None:
            self.listener.close()
        if self.registry is not None:
            self.registry.close(abort=True)
        for link in list(self.links.values()):
            link.close(abort=True)
        self._stop()

    def _stop(self) -> None:
        self._dead = True
        self._timer.cancel()
        if self._history is not None:
            self._history.close()
            self._history = None
        for task in list(self._tasks):
            task.cancel()
        for link in list(self.links.values()):
            link.close(abort=True)
        self._heartbeats.close()
        for future in self._commands.values():
            if not future.done():
                future.set_exception(CommandError("the peer was stopped"))

    # ------------------------------------------------------------------ commands

    async def _command(self, start: Callable[[int, float], list[Action]]) -> Any:
        if self._dead:
            raise CommandError("the peer was stopped")
        command = next(self._command_ids)
        future: asyncio.Future[Any] = self._loop.create_future()
        self._commands[command] = future
        self.apply(start(command, self.clock()))
        return await future

    async def register(self, username: str, password: str) -> None:
        await self._command(lambda c, now: self.core.register(c, username, password, now))

    async def login(self, username: str, password: str) -> str:
        signer, history = None, None
        if self.config.secure:
            try:
                signer, history = self.local.for_login(username)
            except (OSError, TrustError, ValueError, HistoryError) as exc:
                raise CommandError(f"cannot use our files for {username}: {exc}") from None
        blocked = self.local.load_blocked(username)
        try:
            name: str = await self._command(
                lambda c, now: self.core.login(c, username, password, now, signer, blocked, history)
            )
        except BaseException:
            if history is not None:
                history.close()
            raise
        self._history = history
        return name

    def history(self, room: str, n: int = 50) -> list[RoomText]:
        """The last ``n`` messages of ``room`` kept on this machine, oldest first."""
        return self.core.history(room, n)

    async def logout(self) -> None:
        try:
            await self._command(self.core.logout)
        finally:
            self._close_history()

    def _close_history(self) -> None:
        if self._history is not None and self.core.username is None:
            self._history.close()
            self._history = None

    async def search(self, username: str) -> SearchResult:
        result: SearchResult = await self._command(
            lambda c, now: self.core.search(c, username, now)
        )
        return result

    async def users(self) -> list[UserAddr]:
        result: list[UserAddr] = await self._command(self.core.users)
        return result

    async def list_rooms(self) -> list[RoomInfo]:
        result: list[RoomInfo] = await self._command(self.core.list_rooms)
        return result

    async def members(self, room: str) -> list[MemberInfo]:
        result: list[MemberInfo] = await self._command(
            lambda c, now: self.core.members(c, room, now)
        )
        return result

    async def create_room(self, room: str, private: bool = False) -> None:
        await self._command(lambda c, now: self.core.create_room(c, room, private, now))

    async def join_room(self, room: str) -> None:
        await self._command(lambda c, now: self.core.join_room(c, room, now))

    async def leave_room(self, room: str) -> None:
        await self._command(lambda c, now: self.core.leave_room(c, room, now))

    async def add_member(self, room: str, username: str, may_add: bool | None = None) -> None:
        await self._command(lambda c, now: self.core.add_member(c, room, username, now, may_add))

    async def remove_member(self, room: str, username: str, ban: bool = False) -> None:
        await self._command(lambda c, now: self.core.remove_member(c, room, username, now, ban))

    async def unban(self, room: str, username: str) -> None:
        await self._command(lambda c, now: self.core.unban(c, room, username, now))

    async def block(self, username: str, blocked: bool = True) -> list[str]:
        """Stop (or start again) showing a user's messages; returns whom we block."""
        start = self.core.block if blocked else self.core.unblock
        names: list[str] = await self._command(lambda c, now: start(c, username, now))
        return names

    def blocked(self) -> list[str]:
        return self.core.blocked()

    async def say(self, room: str, text: str) -> int:
        """Flood ``text`` to ``room``; returns how many neighbours it was handed to."""
        count: int = await self._command(lambda c, now: self.core.say(c, room, text, now))
        return count

    async def send_direct(self, username: str, text: str) -> DirectSent:
        """Send ``text`` to one user: delivered (their peer acknowledged it), or kept in the
        outbox and sent when they can be reached (a ``DirectUpdate`` event tells the end)."""
        sent: DirectSent = await self._command(
            lambda c, now: self.core.send_direct(c, username, text, now)
        )
        return sent

    async def resend_direct(self, username: str | None = None) -> int:
        """Queue the failed direct messages (to ``username``, or all) again, same ids."""
        count: int = await self._command(lambda c, now: self.core.resend(c, username, now))
        return count

    def outbox(self) -> list[Outgoing]:
        """Our direct messages not yet delivered, oldest first."""
        return self.core.outbox()

    # ------------------------------------------------------------------ views, for the UIs

    @property
    def username(self) -> str | None:
        return self.core.username

    def status(self) -> Status:
        return self.core.status()

    def room_name(self, room: str) -> str:
        return self.core.room_name(room)

    def my_rooms(self) -> list[str]:
        return self.core.my_rooms()

    def roster(self, room: str) -> dict[str, bool]:
        return self.core.roster(room)

    def linked_peers(self) -> frozenset[str]:
        return self.core.linked_peers()

    def mesh_links(self, room: str) -> list[str]:
        return self.core.mesh_links(room)
