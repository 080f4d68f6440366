"""What the screen shows: a fresh session per login, scrolling, re-wrapping, stable numbers,
mentions, days, actions; and getting out, whatever state the peer is in."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from textual.widgets import Input, Static

from p2pchat.peer.events import PeerEvent, RoomText
from p2pchat.peer.node import PeerConfig, PeerNode
from p2pchat.registry.server import RegistryServer
from p2pchat.ui.tui import app as app_module
from p2pchat.ui.tui.screens import LoginScreen
from p2pchat.ui.tui.state import HOME
from p2pchat.ui.tui.widgets import ChatInput
from tests.ui.harness import (
    PASSWORD,
    PeerFactory,
    alice_with_bob,
    auto,
    logged_in,
    make_app,
    running,
    screen_text,
    settle,
    write,
)


async def test_another_login_sees_nothing_of_the_previous_user(
    registry: RegistryServer, peer: PeerFactory, tmp_path: Path
) -> None:
    bob = await peer("bob", room="lobby", create=True)
    await (await peer("carol")).node.logout()  # an account, not online
    app = make_app(registry, memory_path=tmp_path / "last.json", autologin=auto("alice"))
    async with running(app) as pilot:
        await logged_in(pilot, app)
        await bob.node.send_direct("alice", "psst, alice only")
        await settle(pilot, lambda: "@bob" in app.convs.by_key)
        await write(pilot, "/msg bob my secret reply")
        await settle(pilot, lambda: app.pending == 0)
        await write(pilot, "/logout")
        await settle(pilot, lambda: isinstance(app.screen, LoginScreen))
        screen = app.screen
        screen.query_one("#username", Input).value = "carol"
        field = screen.query_one("#password", Input)
        field.value = PASSWORD
        field.focus()
        await settle(pilot, lambda: app.focused is field)
        await pilot.press("enter")
        await logged_in(pilot, app, room=None)
        assert app.node is not None and app.node.username == "carol"
        assert set(app.convs.by_key) == {HOME}
        every = "\n".join(app.lines(HOME)) + screen_text(app)
        assert "psst" not in every and "alice" not in every
        entry = app.query_one(ChatInput)
        await pilot.press("up")  # alice's lines are not in carol's history either
        assert entry.value == ""


async def test_scrolled_up_new_lines_wait_below_and_our_own_brings_us_down(
    registry: RegistryServer, peer: PeerFactory
) -> None:
    async with alice_with_bob(registry, peer) as (bob, app, pilot):
        for i in range(40):
            await bob.node.say("lobby", f"chatter {i}")
        await settle(pilot, lambda: "12:00 bob: chatter 39" in app.lines())
        assert "chatter 39" in screen_text(app)
        await pilot.press("pageup", "pageup")
        assert "chatter 39" not in screen_text(app)
        await bob.node.say("lobby", "while you read")
        await settle(pilot, lambda: "12:00 bob: while you read" in app.lines())
        await settle(pilot, lambda: "1 new line below" in screen_text(app))
        assert "while you read" not in screen_text(app)  # we stay where we were reading
        await write(pilot, "my own line")
        await settle(pilot, lambda: "alice: my own line" in screen_text(app))
        assert "while you read" in screen_text(app)
        assert "new line below" not in screen_text(app)


async def test_old_lines_wrap_again_when_the_terminal_changes_size(
    registry: RegistryServer, peer: PeerFactory
) -> None:
    async with alice_with_bob(registry, peer) as (bob, app, pilot):
        words = [f"word{i:02}" for i in range(30)]
        await bob.node.say("lobby", " ".join(words))
        await settle(pilot, lambda: any("word29" in s for s in app.lines()))
        for width in (60, 120, 80):
            await pilot.resize_terminal(width, 24)
            await settle(pilot, lambda w=width: app.size.width == w)  # type: ignore[misc]
            await pilot.pause()
            shown = screen_text(app)
            missing = [w for w in words if w not in shown]
            assert not missing, f"at {width} columns, cut: {missing}"
            assert "▎" not in shown


async def test_numbers_stay_with_their_conversations(
    registry: RegistryServer, peer: PeerFactory
) -> None:
    async with alice_with_bob(registry, peer) as (_bob, app, pilot):
        await write(pilot, "/create aardvarks")  # sorts before lobby: it must not take 2
        await settle(pilot, lambda: app.convs.current == "aardvarks")
        await pilot.press("alt+2")
        assert app.convs.current == "lobby"
        await pilot.press("alt+3")
        assert app.convs.current == "aardvarks"
        sidebar = screen_text(app).splitlines()[1:5]
        assert sidebar[1].startswith(" 2 #lobby") and sidebar[2].startswith(" 3 #aardvarks")
        await write(pilot, "/leave lobby")
        await settle(pilot, lambda: "lobby" not in app.convs.by_key)
        await pilot.press("alt+3")
        assert app.convs.current == "aardvarks"  # still 3 after 2 went


async def test_mentions_and_direct_messages_ring_and_stand_out(
    registry: RegistryServer, peer: PeerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(app_module, "BELL_GAP", 0.0)  # one bell a second at most, normally
    async with alice_with_bob(registry, peer) as (bob, app, pilot):
        rang: list[str] = []
        app.bell = lambda: rang.append("bell")  # type: ignore[method-assign]
        await pilot.press("alt+1")
        await bob.node.say("lobby", "just chatter")
        await settle(pilot, lambda: app.convs.by_key["lobby"].unread == 1)
        assert rang == []
        assert " 2 #lobby" in screen_text(app) and "@1" not in screen_text(app)
        await bob.node.say("lobby", "alice, look at this")
        await settle(pilot, lambda: app.convs.by_key["lobby"].mentions == 1)
        assert rang == ["bell"]
        row = next(r for r in screen_text(app).splitlines() if r.startswith(" 2 #lobby"))
        assert row[:18].rstrip().endswith("@1")  # its own badge, not the chatter count
        await pilot.press("alt+2")
        rows = screen_text(app).splitlines()
        rule = next(i for i, row in enumerate(rows) if "─ new ─" in row)
        assert "bob: just chatter" in rows[rule + 1]  # the divider: above the first unread
        await bob.node.send_direct("alice", "psst")
        await settle(pilot, lambda: "@bob" in app.convs.by_key)
        assert rang == ["bell", "bell"]


async def test_the_bell_can_be_turned_off(registry: RegistryServer, peer: PeerFactory) -> None:
    bob = await peer("bob", room="lobby", create=True)
    app = make_app(registry, autologin=auto("alice"), bell=False)
    async with running(app) as pilot:
        await logged_in(pilot, app)
        rang: list[str] = []
        app.bell = lambda: rang.append("bell")  # type: ignore[method-assign]
        await bob.node.send_direct("alice", "ping")
        await settle(pilot, lambda: "@bob" in app.convs.by_key)
        assert rang == []


async def test_a_new_day_gets_a_divider(registry: RegistryServer, peer: PeerFactory) -> None:
    days = {0.0: "Monday 1 June 2026", 86_400.0: "Tuesday 2 June 2026"}
    await peer("bob", room="lobby", create=True)
    app = make_app(registry, autologin=auto("alice"), day=lambda ts: days.get(ts, "Today"))
    async with running(app) as pilot:
        await logged_in(pilot, app)
        app.handle_event(RoomText("lobby", "bob", "late on monday", 0.0))
        app.handle_event(RoomText("lobby", "bob", "early on tuesday", 86_400.0))
        await pilot.pause()
        shown = screen_text(app)
        assert shown.index("late on monday") < shown.index("Tuesday 2 June 2026")
        assert shown.index("Tuesday 2 June 2026") < shown.index("early on tuesday")


async def test_actions_a_leading_slash_and_clear(
    registry: RegistryServer, peer: PeerFactory
) -> None:
    async with alice_with_bob(registry, peer) as (bob, app, pilot):
        await write(pilot, "/me waves")
        await write(pilot, "//usr/bin is a folder")
        await bob.until(
            lambda: (
                [e.text for e in bob.events if isinstance(e, RoomText)]
                == ["/me waves", "/usr/bin is a folder"]
            )
        )
        await settle(pilot, lambda: "12:00 * alice waves ✓" in app.lines())
        await bob.node.say("lobby", "/me waves back")
        await settle(pilot, lambda: "12:00 * bob waves back" in app.lines())
        await write(pilot, "/clear")
        await settle(pilot, lambda: "waves" not in screen_text(app))
        assert app.lines() == []


async def test_a_wrong_password_is_typed_again_from_scratch(
    registry: RegistryServer, peer: PeerFactory, tmp_path: Path
) -> None:
    await peer("alice")
    app = make_app(registry, memory_path=tmp_path / "last.json")
    async with running(app) as pilot:
        await settle(pilot, lambda: isinstance(app.screen, LoginScreen))
        screen = app.screen
        screen.query_one("#username", Input).value = "alice"
        field = screen.query_one("#password", Input)
        field.focus()
        await settle(pilot, lambda: app.focused is field)
        await write(pilot, "wrong-password")
        error = screen.query_one("#login-error", Static)
        await settle(pilot, lambda: "wrong password" in str(error.render()))
        assert field.value == ""
        assert screen.focused is field


class StuckNode(PeerNode):
    """A peer that never finishes closing: its registry gone, a link that never ends."""

    def __init__(self, config: PeerConfig, on_event: Callable[[PeerEvent], None]) -> None:
        super().__init__(config, on_event)
        self.closing = asyncio.Event()

    async def close(self) -> None:
        self.closing.set()
        await asyncio.Event().wait()


async def test_ctrl_q_gets_out_even_if_the_peer_cannot_close(
    registry: RegistryServer, peer: PeerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(app_module, "QUIT_SECONDS", 0.2, raising=False)
    await peer("bob", room="lobby", create=True)
    app = make_app(registry, autologin=auto("alice"), node_factory=StuckNode)
    async with app.run_test(size=(80, 24)) as pilot:
        await logged_in(pilot, app)
        node = app.node
        assert isinstance(node, StuckNode)
        await pilot.press("ctrl+q")
        await settle(pilot, lambda: app.return_code == 0)
        assert node.closing.is_set()
    await PeerNode.close(node)


async def test_the_status_line_is_left_alone_once_quitting(
    registry: RegistryServer, peer: PeerFactory
) -> None:
    app = make_app(registry, autologin=auto("alice", room=None))
    async with running(app) as pilot:
        await logged_in(pilot, app, room=None)
        await pilot.press("ctrl+q")
        await settle(pilot, lambda: app.return_code == 0)
    # what the 1 s timer or a late peer event used to do while the widgets were going away
    app._refresh_status()
    app.post_message(app_module.PeerEventPosted(RoomText("lobby", "bob", "late", 0.0)))
