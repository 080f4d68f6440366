"""Typing and pasting: every line sent once, in order, whatever the burst; nothing cut silently;
the line bounded at a message's size; the event loop never held by a long paste."""

from __future__ import annotations

import asyncio
from pathlib import Path

from textual import events
from textual.widgets import Input

from p2pchat.peer.events import RoomText
from p2pchat.protocol.messages import MAX_TEXT
from p2pchat.registry.server import RegistryServer
from p2pchat.ui.tui.screens import LoginScreen
from p2pchat.ui.tui.widgets import MAX_PASTE_LINES, ChatInput
from tests.ui.harness import (
    PASSWORD,
    Peer,
    PeerFactory,
    alice_with_bob,
    burst,
    logged_in,
    make_app,
    running,
    screen_text,
    settle,
    write,
)


def said(bob: Peer) -> list[str]:
    return [e.text for e in bob.events if isinstance(e, RoomText) and e.sender == "alice"]


async def test_a_burst_of_lines_is_sent_line_by_line_in_order(
    registry: RegistryServer, peer: PeerFactory
) -> None:
    async with alice_with_bob(registry, peer) as (bob, app, pilot):
        lines = [f"/say lobby pasted line {i:02}" for i in range(15)]
        burst(app, "".join(line + "\n" for line in lines))
        expected = [line.removeprefix("/say lobby ") for line in lines]
        await bob.until(lambda: len(said(bob)) >= 15)
        await settle(pilot, lambda: app.pending == 0)
        assert said(bob) == expected  # each once, in order, none glued to another
        assert app.query_one(ChatInput).value == ""


async def test_keys_after_ctrl_u_are_not_wiped_by_it(
    registry: RegistryServer, peer: PeerFactory
) -> None:
    async with alice_with_bob(registry, peer) as (bob, app, pilot):
        entry = app.query_one(ChatInput)
        await write(pilot, "half a line", enter=False)
        burst(app, "<ctrl+u>", "/msg b", "<tab>")
        await settle(pilot, lambda: entry.value == "/msg bob ")
        burst(app, "hi\n", "second\n", "<alt+1>", "third")
        await settle(pilot, lambda: entry.value == "third")
        # Enter, then Alt+1: the lines went where they were typed, before the switch
        assert app.convs.current == "*"
        await bob.until(lambda: "second" in said(bob))
        await settle(pilot, lambda: "12:00 alice: hi ✓✓" in app.lines("@bob"))


async def test_a_login_typed_in_one_burst(registry: RegistryServer, tmp_path: Path) -> None:
    app = make_app(registry, memory_path=tmp_path / "last.json")
    async with running(app) as pilot:
        await settle(pilot, lambda: isinstance(app.screen, LoginScreen))
        burst(app, "alice", "<tab>", PASSWORD, "<ctrl+r>")
        await logged_in(pilot, app, room=None)
        assert app.node is not None and app.node.username == "alice"


async def test_a_login_burst_across_fields_registers_the_name_typed(
    registry: RegistryServer, tmp_path: Path
) -> None:
    """The name remembered from last time is replaced in the same burst as the password and
    Ctrl+R: what is registered is what was typed, whichever field takes its keys first."""
    memory = tmp_path / "last.json"
    memory.write_text(f'{{"registry": "127.0.0.1:{registry.port}", "username": "you"}}')
    app = make_app(registry, memory_path=memory)
    async with running(app) as pilot:
        await settle(pilot, lambda: isinstance(app.screen, LoginScreen))
        await settle(pilot, lambda: app.focused is app.screen.query_one("#password"))
        burst(app, "<shift+tab>", "<ctrl+u>", "eve", "<tab>", PASSWORD, "<ctrl+r>")
        await logged_in(pilot, app, room=None)
        assert app.node is not None and app.node.username == "eve"


async def test_a_bracketed_paste_of_lines_sends_each(
    registry: RegistryServer, peer: PeerFactory
) -> None:
    async with alice_with_bob(registry, peer) as (bob, app, pilot):
        entry = app.query_one(ChatInput)
        await write(pilot, "first: ", enter=False)
        app.post_message(events.Paste("one\ntwo\r\n\nthree\nfour\nand the rest"))
        await bob.until(lambda: len(said(bob)) >= 4)
        assert said(bob) == ["first: one", "two", "three", "four"]  # blank lines are skipped
        assert entry.value == "and the rest"  # no newline after it: still being typed
        await settle(pilot, lambda: app.lines("lobby")[-1] == "12:00 alice: four ✓")


async def test_a_paste_from_home_asks_once_for_all_its_lines(
    registry: RegistryServer, peer: PeerFactory
) -> None:
    async with alice_with_bob(registry, peer) as (bob, app, pilot):
        await pilot.press("alt+1")
        app.post_message(events.Paste("one\ntwo\nthree\n"))
        await settle(pilot, lambda: app.picker is not None and len(app.picker.texts) == 3)
        assert "and 2 more lines" in screen_text(app)
        await write(pilot, "lob")  # filters the list to #lobby; Enter picks it
        await bob.until(lambda: len(said(bob)) >= 3)
        assert said(bob) == ["one", "two", "three"]


async def test_the_line_stops_at_a_message_s_size(
    registry: RegistryServer, peer: PeerFactory
) -> None:
    async with alice_with_bob(registry, peer) as (bob, app, pilot):
        entry = app.query_one(ChatInput)
        rang: list[str] = []
        app.bell = lambda: rang.append("bell")  # type: ignore[method-assign]
        await write(pilot, "é" * (MAX_TEXT // 2 - 10), enter=False)  # 2 bytes each
        await settle(pilot, lambda: f"{MAX_TEXT - 20}/{MAX_TEXT}" in screen_text(app))
        burst(app, "x" * 30)
        await settle(pilot, lambda: entry.bytes_used() == MAX_TEXT)
        await settle(pilot, lambda: any("10 characters not typed" in s for s in app.lines()))
        assert rang == ["bell"]  # once for the burst, not once a key
        assert f"{MAX_TEXT}/{MAX_TEXT}" in screen_text(app)
        app.post_message(events.Paste("more"))  # a paste that does not fit is refused whole
        await settle(pilot, lambda: any("paste of 4 bytes not inserted" in s for s in app.lines()))
        assert entry.value.endswith("x" * 20)
        await pilot.press("enter")
        await bob.until(lambda: len(said(bob)) == 1)
        assert said(bob) == ["é" * (MAX_TEXT // 2 - 10) + "x" * 20]


async def test_a_huge_paste_does_not_hold_the_event_loop(
    registry: RegistryServer, peer: PeerFactory
) -> None:
    """A 20,000-character paste typed as keys: the line fills to the limit while the loop keeps
    turning (heartbeats, links): a callback that asks to run on every turn gets to run while
    the keys are still being taken in."""
    async with alice_with_bob(registry, peer) as (_bob, app, pilot):
        entry = app.query_one(ChatInput)
        loop = asyncio.get_running_loop()
        seen: list[int] = []
        done = asyncio.Event()

        def tick() -> None:
            seen.append(len(entry.value))
            if not done.is_set():
                loop.call_soon(tick)

        tick()
        burst(app, "y" * 20_000)
        await settle(pilot, lambda: len(entry.value) == MAX_TEXT)
        done.set()
        assert any(0 < n < MAX_TEXT for n in seen), "the loop never ran while the keys came in"
        await settle(pilot, lambda: any("characters not typed" in s for s in app.lines()))
        app.post_message(events.Paste("z" * 20_000))  # bracketed: refused whole, at once
        await settle(pilot, lambda: any("20000 bytes not inserted" in s for s in app.lines()))
        assert set(entry.value) == {"y"}


async def test_login_fields_take_a_paste(registry: RegistryServer, tmp_path: Path) -> None:
    app = make_app(registry, memory_path=tmp_path / "last.json")
    async with running(app) as pilot:
        await settle(pilot, lambda: isinstance(app.screen, LoginScreen))
        app.post_message(events.Paste("alice"))
        field = app.screen.query_one("#username", Input)
        await settle(pilot, lambda: field.value == "alice")


async def test_a_paste_of_too_many_lines_is_refused(
    registry: RegistryServer, peer: PeerFactory
) -> None:
    async with alice_with_bob(registry, peer) as (bob, app, pilot):
        app.post_message(events.Paste("".join(f"line {i}\n" for i in range(MAX_PASTE_LINES + 1))))
        note = f"paste of {MAX_PASTE_LINES + 1} lines not sent (at most {MAX_PASTE_LINES})"
        await settle(pilot, lambda: any(note in s for s in app.lines()))
        app.post_message(events.Paste("".join(f"line {i}\n" for i in range(MAX_PASTE_LINES))))
        await bob.until(lambda: len(said(bob)) == MAX_PASTE_LINES)
        assert said(bob) == [f"line {i}" for i in range(MAX_PASTE_LINES)]
