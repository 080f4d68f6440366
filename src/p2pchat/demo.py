"""``p2pchat demo``: a working chat room on this machine in one command.

A registry (SQLite in a temporary folder, on 127.0.0.1, free ports), three small bot peers
chatting in ``lobby`` and answering when addressed, and you: the terminal UI (or the line mode)
logged in as a fresh user who is already in ``lobby``. Everything runs in this one process
and on the loopback interface only; quitting logs everyone out, closes the registry and
removes the temporary folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import getpass
import logging
import os
import random
import re
import secrets
import shutil
import signal
import sys
import tempfile
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from p2pchat.peer.events import CommandError, DirectText, PeerEvent, RoomText, Status
from p2pchat.peer.node import PeerConfig, PeerNode
from p2pchat.registry.client import RegistryClient
from p2pchat.registry.core import RegistryConfig
from p2pchat.registry.passwords import Passwords
from p2pchat.registry.server import RegistryServer
from p2pchat.store import SqliteStore
from p2pchat.ui import exits

log = logging.getLogger("p2pchat.demo")

HOST = "127.0.0.1"
LOBBY = "lobby"
BOTS = ("ada", "grace", "linus")
HEARTBEAT = 5.0
MAX_CHATTER = 400
"""The bots stop making small talk after this many lines (they still answer)."""

CHATTER = (
    "the mesh held up fine during the last restart",
    "anyone else think heartbeats every few seconds are a bit chatty?",
    "flooding is crude, but duplicates are dropped by message id, so it works",
    "I just counted: every message here went peer to peer, the registry saw none of it",
    "coffee break in five",
    "reading docs/protocol.md, the framing is one JSON object per line",
    "tip: Ctrl+N and Ctrl+P switch conversations",
    "tip: Tab completes commands, room names and usernames",
    "who wants to try a private room? /create ROOM private, then /add ROOM USER",
    "my link to the registry dropped once and chat just kept going",
    "sqlite in WAL mode is plenty for a registry this size",
    "the member list on the right shows who is online",
    "back from lunch",
    "/members lobby shows where everyone listens",
    "typing while messages arrive is fine, the input line stays put",
)
QUESTIONS = (
    "did you see the new room list?",
    "how many links do you hold right now?",
    "are you still on the night shift?",
    "what is your favourite flood-control trick?",
    "ready for the demo?",
)
ANSWERS = (
    "yes, looks good",
    "a few, the planner keeps it bounded",
    "not this week",
    "dropping duplicates by id, nothing fancy",
    "always",
)
_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""Stop cleanly on these (SIGHUP: the terminal window was closed; see ``_hung_up``)."""

REPLIES = (
    "hi {user}! mention one of us and we answer; /msg {me} something and I echo it back",
    "{user}: good to see you here",
    "{user}, try /help for everything you can type",
    "{user}: agreed",
    "{user}, all of this runs on 127.0.0.1; the README says how to run it for real",
)


class Bot:
    """One demo peer: answers direct messages with an echo. The demo decides room replies."""

    def __init__(self, name: str, config: PeerConfig, demo: Demo) -> None:
        self.name = name
        self.demo = demo
        self.node = PeerNode(config, on_event=self._on_event)

    def _on_event(self, event: PeerEvent) -> None:
        if isinstance(event, DirectText) and not event.mine:
            if event.sender not in self.demo.bot_names:
                self.demo.spawn(self._echo(event.sender, event.text))
        elif self is not self.demo.bots[0]:
            return
        elif isinstance(event, RoomText) and not event.mine:
            self.demo.heard(event)
        elif isinstance(event, Status) and self.demo.username in self.node.linked_peers():
            self.demo.user_linked.set()

    async def _echo(self, user: str, text: str) -> None:
        await asyncio.sleep(0.3)
        with contextlib.suppress(CommandError):
            await self.node.send_direct(user, f"echo: {text}")

    async def say(self, text: str) -> None:
        with contextlib.suppress(CommandError):
            await self.node.say(LOBBY, text)


class Demo:
    """The registry and the bots; ``start()``, then the user logs in, then ``stop()``."""

    def __init__(
        self,
        *,
        user: str | None = None,
        seed: int = 1,
        pace: tuple[float, float] = (3.0, 7.0),
        bots: tuple[str, ...] = BOTS,
    ) -> None:
        self.username = pick_username(user, taken=bots)
        self.password = secrets.token_urlsafe(12)
        self.rng = random.Random(seed)
        self.pace = pace
        self.bot_names = bots
        self.folder = Path(tempfile.mkdtemp(prefix="p2pchat-demo-"))
        self.store: SqliteStore | None = None
        self.server: RegistryServer | None = None
        self.bots: list[Bot] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = False
        self.user_linked = asyncio.Event()
        """Set once the first bot has a link with the user: a greeting would now arrive."""

    @property
    def user_config(self) -> PeerConfig:
        """How the user's peer (TUI or line mode) reaches this demo."""
        assert self.server is not None
        return _peer_config(self.server, self.folder)

    async def start(self) -> None:
        self.store = SqliteStore(self.folder / "registry.db")
        self.server = RegistryServer(
            self.store,
            host=HOST,
            port=0,
            udp_port=0,
            config=RegistryConfig(heartbeat_interval=HEARTBEAT, timeout=3 * HEARTBEAT),
            passwords=Passwords("cheapest"),  # a throwaway registry: start fast
        )
        await self.server.start()
        config = _peer_config(self.server, self.folder)
        self.bots = [Bot(name, config, self) for name in self.bot_names]
        for i, bot in enumerate(self.bots):
            await bot.node.start()
            password = secrets.token_urlsafe(12)
            await bot.node.register(bot.name, password)
            await bot.node.login(bot.name, password)
            if i == 0:
                await bot.node.create_room(LOBBY)
            else:
                await bot.node.join_room(LOBBY)
        client = await RegistryClient.connect(HOST, self.server.port)
        try:
            await client.register(self.username, self.password)
        finally:
            await client.close()
        self.spawn(self._chatter())

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        if self._stopping:  # a bot heard something while closing: no task outlives stop()
            coro.close()
            return
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def heard(self, event: RoomText) -> None:
        """A room message from someone else: bots named in it answer; otherwise maybe one."""
        if event.sender in self.bot_names or event.room != LOBBY:
            return
        named = [b for b in self.bots if re.search(rf"\b{b.name}\b", event.text, re.I)]
        if not named and self.rng.random() < 0.5:
            named = [self.rng.choice(self.bots)]
        for bot in named:
            reply = self.rng.choice(REPLIES).format(user=event.sender, me=bot.name)
            self.spawn(self._later(self.rng.uniform(0.5, 1.5), bot.say(reply)))

    @staticmethod
    async def _later(delay: float, coro: Coroutine[Any, Any, None]) -> None:
        try:
            await asyncio.sleep(delay)
        except asyncio.CancelledError:
            coro.close()
            raise
        await coro

    async def _chatter(self) -> None:
        """Greet the user once linked with them, then small talk every few seconds."""
        if not self.bots:
            return
        first = self.bots[0]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.user_linked.wait(), 10.0)
        await first.say(
            f"welcome, {self.username}! we are bots. Say something, mention "
            f"{', '.join(b.name for b in self.bots)} or /msg one of us."
        )
        for _ in range(MAX_CHATTER):
            await asyncio.sleep(self.rng.uniform(*self.pace))
            bot = self.rng.choice(self.bots)
            others = [b for b in self.bots if b is not bot]
            if others and self.rng.random() < 0.3:
                other = self.rng.choice(others)
                await bot.say(f"{other.name}, {self.rng.choice(QUESTIONS)}")
                await asyncio.sleep(self.rng.uniform(0.8, 2.0))
                await other.say(f"{bot.name}: {self.rng.choice(ANSWERS)}")
            else:
                await bot.say(self.rng.choice(CHATTER))

    async def stop(self) -> None:
        """Bots log out, the registry closes, the temporary folder goes."""
        self._stopping = True
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2.0)
        await asyncio.gather(*(bot.node.close() for bot in self.bots), return_exceptions=True)
        if self.server is not None:
            await self.server.close()
        if self.store is not None:
            self.store.close()
        shutil.rmtree(self.folder, ignore_errors=True)


def _peer_config(server: RegistryServer, folder: Path) -> PeerConfig:
    """Keys, certificates and the registry's pin live in the demo's folder, and the registry's
    fingerprint is known: the demo made it."""
    return PeerConfig(
        registry_host=HOST,
        registry_port=server.port,
        listen_host=HOST,
        advertise=HOST,
        heartbeat=HEARTBEAT,
        registry_fingerprint=server.authority.fingerprint,
        data_dir=str(folder / "peers"),
        config_dir=str(folder / "peers"),
    )


def pick_username(wanted: str | None = None, taken: tuple[str, ...] = BOTS) -> str:
    """``--user``, else the login name made valid, else ``you``; never a bot's name."""
    name = wanted
    if name is None:
        with contextlib.suppress(Exception):
            name = os.environ.get("USER") or getpass.getuser()
    name = re.sub(r"[^A-Za-z0-9_.\-]", "", name or "")[:30]
    if not name or name == "root":
        name = "you"
    if name.casefold() in (t.casefold() for t in taken):
        name += "_"
    return name


async def run_demo(
    *,
    tui: bool = True,
    duration: float | None = None,
    user: str | None = None,
    seed: int = 1,
    bell: bool = True,
) -> int:
    """Start everything, hand over to the user, stop everything; the exit status."""
    demo = Demo(user=user, seed=seed)
    stop = asyncio.Event()
    interrupted: list[int] = []
    loop = asyncio.get_running_loop()

    def stop_on(sig: int) -> None:
        if sig == signal.SIGINT:
            interrupted.append(sig)
        stop.set()

    for sig in _SIGNALS:
        if tui and sig == signal.SIGHUP:
            handler = functools.partial(_hung_up, demo)
        else:
            handler = functools.partial(stop_on, sig)
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, handler)
    timer = loop.call_later(duration, stop.set) if duration is not None else None
    try:
        try:
            await demo.start()
        except (OSError, CommandError) as exc:
            print(f"error: the demo could not start: {exc}", file=sys.stderr)
            return exits.CANNOT_START
        if tui:
            from p2pchat.ui.tui import AutoLogin, run_tui

            login = AutoLogin(demo.username, demo.password, room=LOBBY)
            code = await run_tui(demo.user_config, autologin=login, stop=stop, bell=bell)
        else:
            code = await _line_mode(demo, stop, stop_on_eof=duration is None)
    finally:
        if timer is not None:
            timer.cancel()
        await demo.stop()
        for sig in _SIGNALS:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
    print("demo stopped: bots logged out, registry closed, temporary folder removed", flush=True)
    return exits.INTERRUPTED if interrupted else code


def _hung_up(demo: Demo) -> None:
    """The terminal went away under the full-screen UI.

    Textual would block for ever restoring a terminal that is gone, and every other part of
    the demo lives in this process and ends with it: remove the temporary folder and leave.
    """
    shutil.rmtree(demo.folder, ignore_errors=True)
    os._exit(128 + signal.SIGHUP)


async def _line_mode(demo: Demo, stop: asyncio.Event, *, stop_on_eof: bool) -> int:
    """The line mode, already logged in and in lobby, for scripts and tests."""
    from p2pchat.ui.line import LineUI, run_line_mode

    async def setup(node: PeerNode, ui: LineUI) -> None:
        await node.login(demo.username, demo.password)
        await node.join_room(LOBBY)
        ui.target = LOBBY
        assert demo.server is not None
        ui.write(
            f"* demo: registry on {HOST}:{demo.server.port}, bots "
            f"{', '.join(demo.bot_names)} in {LOBBY}; you are {demo.username}; "
            f"plain lines go to {LOBBY}; /help, /quit"
        )

    return await run_line_mode(demo.user_config, stop, setup=setup, stop_on_eof=stop_on_eof)
