"""Helpers for the terminal UI tests: other peers to chat with, waiting, and screen text."""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from rich.console import Console
from textual import events
from textual.app import App
from textual.keys import _character_to_key
from textual.pilot import Pilot
from textual.widgets import Input

from p2pchat.peer.events import PeerEvent
from p2pchat.peer.node import PeerConfig, PeerNode
from p2pchat.registry.server import RegistryServer
from p2pchat.ui.tui import AutoLogin, ChatApp

WAIT = 10.0
"""Generous: network events on a loaded 2-core machine. Tests return as soon as it happens."""
PASSWORD = "password1"


def peer_config(registry: RegistryServer) -> PeerConfig:
    return PeerConfig(
        registry_host="127.0.0.1",
        registry_port=registry.port,
        listen_host="127.0.0.1",
        advertise="127.0.0.1",
        send_rate=1000.0,  # pastes go out at once: pacing is tested on the peer core
        send_burst=1000,
        receive_rate=1000.0,
        receive_burst=1000,
    )


class Peer:
    """Another user, driven directly through its node; remembers every event."""

    def __init__(self, config: PeerConfig) -> None:
        self.events: list[PeerEvent] = []
        self._changed = asyncio.Event()
        self.node = PeerNode(config, on_event=self._on_event)

    def _on_event(self, event: PeerEvent) -> None:
        self.events.append(event)
        self._changed.set()

    async def until(self, predicate: Callable[[], bool], timeout: float = WAIT) -> None:
        """Wait for the node's state or events to satisfy ``predicate`` (checked on events)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            self._changed.clear()
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"timed out; events: {self.events[-5:]}")
            # state may change without an event (link tables): look again now and then
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.2))


PeerFactory = Callable[..., Awaitable[Peer]]
"""The ``peer`` fixture: ``await peer("bob", room="lobby", create=True)``."""


def fixed_clock(ts: float) -> str:
    return "12:00"


def fixed_day(ts: float) -> str:
    return "Today"


def make_app(registry: RegistryServer, **kwargs: object) -> ChatApp:
    kwargs.setdefault("clock", fixed_clock)
    kwargs.setdefault("day", fixed_day)
    return ChatApp(peer_config(registry), **kwargs)  # type: ignore[arg-type]


def auto(name: str, room: str | None = "lobby") -> AutoLogin:
    return AutoLogin(name, PASSWORD, register=True, room=room)


@asynccontextmanager
async def running(app: ChatApp) -> AsyncIterator[Pilot[int]]:
    """``run_test`` at 80x24 that always closes the app's node, however the test ends."""
    try:
        async with app.run_test(size=(80, 24)) as pilot:
            yield pilot
    finally:
        await app.close_node()


@asynccontextmanager
async def alice_with_bob(
    registry: RegistryServer, peer: PeerFactory
) -> AsyncIterator[tuple[Peer, ChatApp, Pilot[int]]]:
    """alice in the UI and bob as a plain peer, both in lobby and linked to each other."""
    bob = await peer("bob", room="lobby", create=True)
    app = make_app(registry, autologin=auto("alice"))
    async with running(app) as pilot:
        await logged_in(pilot, app)
        assert app.node is not None
        await bob.until(lambda: linked(bob.node, app.node, "lobby"))  # type: ignore[arg-type]
        yield bob, app, pilot


async def settle(pilot: Pilot[int], predicate: Callable[[], bool], timeout: float = WAIT) -> None:
    """Let the UI run until ``predicate`` holds; fail clearly after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("timed out waiting for the UI")
        await pilot.pause(0.02)
    await pilot.pause()


async def write(pilot: Pilot[int], text: str, enter: bool = True) -> None:
    """Type ``text`` into the focused input (at once: Pilot spends ~80 ms a key), then Enter."""
    focused = pilot.app.focused
    assert isinstance(focused, Input), f"focus is on {focused!r}"
    focused.insert_text_at_cursor(text)
    if enter:
        await pilot.press("enter")
    else:
        await pilot.pause()


def burst(app: App[int], *parts: str) -> None:
    """Keys as a terminal delivers a paste without bracketed paste, or a slow link a backlog:
    all queued at once, before the app handles the first. Each part is text typed as is, or
    a key name in angle brackets (``"<enter>"``, ``"<ctrl+u>"``)."""
    for part in parts:
        if part.startswith("<") and part.endswith(">") and len(part) > 2:
            key = part[1:-1]
            last = key.rpartition("+")[2]
            # as a terminal reports it: Alt+1 carries the character "1"
            char = last if key.startswith("alt+") and len(last) == 1 else None
            app.post_message(events.Key(key, char))
            continue
        for char in part:
            if char == "\n":
                app.post_message(events.Key("enter", "\r"))
            else:
                key = char if char.isalnum() else _character_to_key(char)
                app.post_message(events.Key(key, char))


async def logged_in(pilot: Pilot[int], app: ChatApp, room: str | None = "lobby") -> None:
    await settle(pilot, lambda: app.node is not None and app.node.username is not None)
    if room is not None:
        await settle(pilot, lambda: app.convs.current == room)


def linked(a: PeerNode, b: PeerNode, room: str) -> bool:
    """Both ends hold a link and each sees the other online in ``room``: messages flow."""

    def sees(x: PeerNode, y: PeerNode) -> bool:
        name = y.username or ""
        return name in x.linked_peers() and x.roster(room).get(name, False)

    return sees(a, b) and sees(b, a)


def screen_text(app: ChatApp) -> str:
    """The screen as plain text, as a person would read it (no plugin needed)."""
    width, height = app.size
    console = Console(
        width=width,
        height=height,
        file=io.StringIO(),
        record=True,
        color_system=None,
        legacy_windows=False,
        safe_box=False,
    )
    console.print(
        app.screen._compositor.render_update(full=True, screen_stack=app._background_screens)
    )
    return "\n".join(line.rstrip() for line in console.export_text().splitlines())
