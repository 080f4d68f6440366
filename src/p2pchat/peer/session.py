"""The peer's connection to the registry, as pure decisions: ``RegistrySession``.

It connects when a conversation needs the registry, greets it, runs the conversations
(``registry/flows.py`` generators: each yields a request and is resumed with its reply),
gives up on a registry that leaves a request unanswered, and sends the heartbeat at the pace
the registry asks for. What the registry pushes (room events) and losing it are handed to the
peer core, which decides what they mean for rooms and links.
"""

from __future__ import annotations

import enum
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import msgspec

from p2pchat.peer.actions import (
    Action,
    CloseRegistry,
    ConnectRegistry,
    SendDatagram,
    SendRegistry,
    Show,
)
from p2pchat.peer.events import CommandError, Notice, PeerEvent
from p2pchat.peer.timers import Callback, Timer, Timers
from p2pchat.protocol.framing import FrameTooLarge, LineFramer
from p2pchat.protocol.messages import (
    PROTOCOL_VERSION,
    Bye,
    LoggedIn,
    RegistryReply,
    RoomEvent,
    Welcome,
    decode_reply,
    encode,
)
from p2pchat.registry import flows
from p2pchat.registry.flows import Flow, RegistryClosed, RegistryError, RegistryUntrusted

log = logging.getLogger("p2pchat.peer")

T = TypeVar("T")


class Context:
    """What the parts of one peer core share while an input is handled: its time, the
    actions decided so far, the deadlines, and the injected randomness."""

    def __init__(self, rand: Callable[[int], bytes], wall_offset: float) -> None:
        self.now = 0.0
        self.out: list[Action] = []
        self.timers = Timers()
        self.rand = rand
        self.wall_offset = wall_offset
        """Added to ``now`` for the wall-clock time shown on messages."""

    def take(self) -> list[Action]:
        """The actions decided so far (the list object itself is kept)."""
        out = self.out[:]
        self.out.clear()
        return out

    def at(self, when: float, callback: Callback) -> Timer:
        return self.timers.at(when, callback)

    def show(self, event: PeerEvent) -> None:
        self.out.append(Show(event))

    def notice(self, text: str, room: str | None = None) -> None:
        self.out.append(Show(Notice(text, room)))

    def new_id(self) -> str:
        """128 random bits, as 32 hex digits: message ids and nonces."""
        return self.rand(16).hex()

    @property
    def wall(self) -> float:
        return self.now + self.wall_offset


class Listener(Protocol):
    """What the peer core is told by its registry session."""

    def registry_event(self, event: RoomEvent) -> None: ...

    def registry_ready(self) -> None: ...

    def registry_lost(self, reason: str, was_ready: bool) -> None: ...


class State(enum.Enum):
    OFF = "off"
    CONNECTING = "connecting"
    GREETING = "greeting"
    """Connected; our hello (with the protocol version) is being answered."""
    READY = "ready"


@dataclass(slots=True, eq=False)
class _Run:
    """A conversation in progress."""

    flow: Flow[Any]
    done: Callable[[Any], None]
    failed: Callable[[Exception], None]
    timer: Timer | None = None


class RegistrySession:
    """One peer's connection and login at the registry."""

    def __init__(
        self,
        ctx: Context,
        listener: Listener,
        *,
        host: str,
        port: int,
        heartbeat: float | None,
        request_timeout: float,
        agent: str,
    ) -> None:
        self._ctx = ctx
        self._listener = listener
        self.host, self.port = host, port
        self._heartbeat = heartbeat
        self._request_timeout = request_timeout
        self._agent = agent
        self.state = State.OFF
        self._framer = LineFramer()
        self.welcome: Welcome | None = None
        self.login: LoggedIn | None = None
        """Our login, while the registry holds it."""
        self._close_reason = ""
        self._runs: dict[int, _Run] = {}
        """Request id -> the conversation waiting for its reply."""
        self._waiting: list[_Run] = []
        """Conversations to start once the connection is ready."""
        self._ids = itertools.count(1)
        self._beat_timer: Timer | None = None
        self._beats = 0
        self.last_heartbeat: float | None = None
        self.identity: str | None = None
        """The user whose certificate we show when connecting (to ``resume``), if any."""
        self.ca_cert: bytes | None = None
        """The certificate the registry presented on the current connection (TLS)."""

    @property
    def ready(self) -> bool:
        return self.state is State.READY

    # ------------------------------------------------------------------ conversations

    def run(
        self, flow: Flow[T], done: Callable[[T], None], failed: Callable[[Exception], None]
    ) -> None:
        """Start a conversation; connect first if need be."""
        run = _Run(flow, done, failed)
        if self.state is State.READY:
            self._step(run, None)
            return
        self._waiting.append(run)
        if self.state is State.OFF:
            self.state = State.CONNECTING
            self._ctx.out.append(ConnectRegistry(self.host, self.port, self.identity))

    def _step(self, run: _Run, reply: RegistryReply | None) -> None:
        """Resume ``run`` with ``reply`` (None to start it) and send what it asks next."""
        try:
            request = run.flow.send(reply)  # type: ignore[arg-type]
        except StopIteration as finished:
            run.done(finished.value)
            return
        except (RegistryError, RegistryClosed, CommandError) as exc:
            run.failed(exc)
            return
        request_id = next(self._ids)
        self._runs[request_id] = run
        run.timer = self._ctx.at(
            self._ctx.now + self._request_timeout, lambda now: self._unanswered(request_id)
        )
        self._ctx.out.append(SendRegistry(encode(flows.numbered(request, request_id))))

    def _throw(self, run: _Run, exc: Exception) -> None:
        if run.timer is not None:
            run.timer.cancel()
        try:
            run.flow.throw(exc)
        except StopIteration as finished:  # the flow caught it and finished anyway
            run.done(finished.value)
        except (RegistryError, RegistryClosed, CommandError) as raised:
            run.failed(raised)
        else:  # a flow that asks for more after losing the registry is abandoned
            run.flow.close()
            run.failed(exc)

    def _unanswered(self, request_id: int) -> None:
        if request_id in self._runs:
            log.warning("the registry did not answer within %g s", self._request_timeout)
            self._ctx.out.append(CloseRegistry(abort=True))
            self._lost("no answer from the registry")

    # ------------------------------------------------------------------ the connection

    def connected(self, ca_cert: bytes | None) -> None:
        """The connection is up (``ca_cert``: what the registry showed in TLS, already checked
        against the pin): greet the registry."""
        self.ca_cert = ca_cert
        self.state = State.GREETING
        self._framer = LineFramer()
        self._close_reason = ""

        def ready(welcome: Welcome) -> None:
            self.welcome = welcome
            self.state = State.READY
            waiting, self._waiting = self._waiting, []
            for run in waiting:
                self._step(run, None)
            self._listener.registry_ready()

        def refused(exc: Exception) -> None:
            reason = exc.reason if isinstance(exc, RegistryError) else str(exc)
            self._ctx.out.append(CloseRegistry())
            message = f"the registry refused us: {reason}"
            self._lost(message, failure=message)

        self._step(_Run(flows.hello(PROTOCOL_VERSION, self._agent), ready, refused), None)

    def failed(self, reason: str) -> None:
        """The connection could not be made."""
        message = f"cannot reach the registry at {self.host}:{self.port}: {reason}"
        self._lost(message, failure=message)

    def refused(self, reason: str) -> None:
        """We refused the registry (its certificate is not the pinned one)."""
        self._lost(reason, failure=reason, kind=RegistryUntrusted)

    def data(self, data: bytes) -> None:
        try:
            frames = self._framer.feed(data)
            too_large: FrameTooLarge | None = None
        except FrameTooLarge as exc:  # answer what came before it, then give up the connection
            frames, too_large = exc.frames, exc
        for frame in frames:
            self._frame(frame)
        if too_large is not None and self.state is not State.OFF:
            self._ctx.out.append(CloseRegistry(abort=True))
            self._lost("the registry sent an oversized frame")

    def _frame(self, frame: bytes) -> None:
        try:
            msg = decode_reply(frame)
        except msgspec.MsgspecError as exc:
            log.warning("ignored a malformed frame from the registry: %s", str(exc)[:200])
            return
        if isinstance(msg, RoomEvent):
            self._listener.registry_event(msg)
            return
        if isinstance(msg, Bye):
            log.info("registry says bye: %s", msg.reason)
            self._close_reason = msg.reason
            return
        run = self._runs.pop(msg.id, None) if msg.id is not None else None
        if run is None:
            log.warning("an unexpected %s from the registry", type(msg).__name__)
            return
        if run.timer is not None:
            run.timer.cancel()
        self._step(run, msg)

    def closed(self, reason: str) -> None:
        """The connection closed or broke."""
        if self.state is not State.OFF:
            self._lost(reason)

    def close(self) -> None:
        """We close the connection ourselves (shutting down)."""
        if self.state is not State.OFF:
            self._ctx.out.append(CloseRegistry())
        self._lost("closed by this peer")

    def _lost(
        self, reason: str, failure: str | None = None, kind: type[RegistryClosed] = RegistryClosed
    ) -> None:
        """Fail every conversation in progress, with ``failure`` (by default "lost the
        registry: reason"), then tell the core."""
        if self.state is State.OFF and not self._waiting:
            return
        reason = self._close_reason or reason
        was_ready = self.state is State.READY
        self.state = State.OFF
        self.logged_out()
        runs = [*self._runs.values(), *self._waiting]
        self._runs, self._waiting = {}, []
        for run in runs:
            self._throw(run, kind(failure or f"lost the registry: {reason}"))
        self._listener.registry_lost(reason, was_ready)

    # ------------------------------------------------------------------ login and heartbeats

    def logged_in(self, login: LoggedIn) -> None:
        """Keep ``login`` alive with heartbeats at the registry's pace (or ours, if set)."""
        self.login = login
        chosen = self._heartbeat
        if chosen is not None and chosen >= login.timeout:
            self._ctx.notice(
                f"your heartbeat interval of {chosen:g} s is not shorter than the registry's "
                f"timeout of {login.timeout:g} s, so the registry will log you out; leave "
                f"--heartbeat out to use the registry's {login.heartbeat_interval:g} s"
            )
        if self._beat_timer is not None:
            self._beat_timer.cancel()
        self._beats = 0
        self._beat(login, chosen or login.heartbeat_interval)

    def _beat(self, login: LoggedIn, interval: float) -> None:
        if self.login is not login:
            return
        ctx = self._ctx
        self._beats += 1
        ping = flows.heartbeat(login, self._beats)
        ctx.out.append(SendDatagram(self.host, login.udp_port, encode(ping)))
        self.last_heartbeat = ctx.now
        self._beat_timer = ctx.at(ctx.now + interval, lambda now: self._beat(login, interval))

    def logged_out(self) -> None:
        self.login = None
        if self._beat_timer is not None:
            self._beat_timer.cancel()
            self._beat_timer = None
