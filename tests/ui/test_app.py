"""The terminal UI driven headless with Pilot, against a real registry and real peers."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from textual.widgets import Input, Static

from p2pchat.peer.events import DirectText, RoomsChanged, RoomText
from p2pchat.peer.node import PeerConfig
from p2pchat.registry.passwords import Passwords
from p2pchat.registry.server import RegistryServer
from p2pchat.trust import tls
from p2pchat.trust.certs import Authority
from p2pchat.ui import commands
from p2pchat.ui.tui import AutoLogin, ChatApp
from p2pchat.ui.tui.screens import LoginScreen
from p2pchat.ui.tui.state import HOME
from p2pchat.ui.tui.widgets import ChatInput
from tests.ui.harness import (
    PASSWORD,
    PeerFactory,
    alice_with_bob,
    auto,
    linked,
    logged_in,
    make_app,
    running,
    screen_text,
    settle,
    write,
)


async def test_register_and_log_in_from_the_login_screen(
    registry: RegistryServer, tmp_path: Path
) -> None:
    remembered = tmp_path / "last.json"
    app = make_app(registry, memory_path=remembered)
    async with running(app) as pilot:
        await settle(pilot, lambda: isinstance(app.screen, LoginScreen))
        assert app.screen.query_one("#password", Input).password  # hidden while typed
        await write(pilot, "alice", enter=False)
        await pilot.press("tab")
        await write(pilot, PASSWORD, enter=False)
        await pilot.press("ctrl+r")  # register, then log in
        await logged_in(pilot, app, room=None)
        assert not isinstance(app.screen, LoginScreen)
        assert app.node is not None and app.node.username == "alice"
        assert "alice" in screen_text(app)
    saved = json.loads(remembered.read_text())
    assert saved == {"registry": f"127.0.0.1:{registry.port}", "username": "alice"}
    assert PASSWORD not in remembered.read_text()

    again = make_app(registry, memory_path=remembered)
    async with running(again) as pilot:
        await settle(pilot, lambda: isinstance(again.screen, LoginScreen))
        screen = again.screen
        assert screen.query_one("#username", Input).value == "alice"
        assert screen.focused is screen.query_one("#password", Input)
        await write(pilot, "wrong-password")
        error = screen.query_one("#login-error", Static)
        await settle(pilot, lambda: "wrong password" in str(error.render()))
        assert not getattr(screen, "busy", True)
        assert isinstance(again.screen, LoginScreen)
        assert again.node is not None and again.node.username is None


async def test_join_a_room_and_send(registry: RegistryServer, peer: PeerFactory) -> None:
    bob = await peer("bob", room="lobby", create=True)
    app = make_app(registry, autologin=auto("alice", room=None))
    async with running(app) as pilot:
        await logged_in(pilot, app, room=None)
        assert app.convs.current == HOME
        await write(pilot, "/join lobby")
        await settle(pilot, lambda: app.convs.current == "lobby")
        assert app.node is not None
        await bob.until(lambda: linked(bob.node, app.node, "lobby"))  # type: ignore[arg-type]
        await write(pilot, "hello bob")
        await bob.until(
            lambda: any(
                isinstance(e, RoomText) and e.sender == "alice" and e.text == "hello bob"
                for e in bob.events
            )
        )
        await settle(pilot, lambda: "12:00 alice: hello bob ✓" in app.lines("lobby"))
        text = screen_text(app)
        assert "#lobby" in text and "alice: hello bob" in text
        assert "● bob" in text  # the member list shows who is online
        await write(pilot, "/leave lobby")  # the room in view: the answer shows at home
        await settle(pilot, lambda: app.convs.current == HOME and "-- left lobby" in app.lines())
        assert "lobby" not in app.convs.by_key


async def test_messages_arrive_while_typing(registry: RegistryServer, peer: PeerFactory) -> None:
    async with alice_with_bob(registry, peer) as (bob, app, pilot):
        await pilot.press(*"half a thou")  # real key presses, as a person types
        entry = app.query_one(ChatInput)
        await bob.node.say("lobby", "news from bob")
        await settle(pilot, lambda: "12:00 bob: news from bob" in app.lines("lobby"))
        assert entry.value == "half a thou"
        assert entry.cursor_position == len("half a thou")
        assert app.focused is entry
        home = app.lines(HOME)
        assert "12:00 Message from bob at lobby: news from bob" in home  # the assignment's format
        await write(pilot, "ght")
        await bob.until(
            lambda: any(isinstance(e, RoomText) and e.text == "half a thought" for e in bob.events)
        )


async def test_switching_conversations_and_unread_counts(
    registry: RegistryServer, peer: PeerFactory
) -> None:
    async with alice_with_bob(registry, peer) as (bob, app, pilot):
        await pilot.press("alt+1")
        assert app.convs.current == HOME
        await bob.node.say("lobby", "one")
        await bob.node.say("lobby", "two")
        await bob.node.send_direct("alice", "psst")
        await settle(pilot, lambda: app.convs.by_key.get("@bob") is not None)
        await settle(pilot, lambda: app.convs.by_key["lobby"].unread == 2)
        assert app.convs.by_key["@bob"].unread == 1
        assert app.convs.by_key[HOME].unread == 0
        sidebar = screen_text(app).splitlines()
        assert any("#lobby" in row and row.rstrip().endswith("2") for row in sidebar[:4])
        await pilot.press("ctrl+n")
        assert app.convs.current == "lobby"
        assert app.convs.by_key["lobby"].unread == 0
        assert "12:00 bob: two" in screen_text(app)
        await pilot.press("ctrl+n")
        assert app.convs.current == "@bob"
        assert "12:00 bob: psst" in screen_text(app)
        await pilot.press("ctrl+p", "ctrl+p")
        assert app.convs.current == HOME
        await pilot.press("alt+3")
        assert app.convs.current == "@bob"
        await write(pilot, "back at you")
        await bob.until(
            lambda: any(isinstance(e, DirectText) and e.text == "back at you" for e in bob.events)
        )


async def test_a_plain_line_from_home_asks_where(
    registry: RegistryServer, peer: PeerFactory
) -> None:
    async with alice_with_bob(registry, peer) as (bob, app, pilot):
        await pilot.press("alt+1")
        text = "where does [/]this[b] go"  # brackets are text, not markup
        await write(pilot, text)
        await settle(pilot, lambda: app.picker is not None)
        assert "to a room or a peer?" in screen_text(app)
        assert text in screen_text(app)
        await pilot.press("escape")
        await settle(pilot, lambda: app.query_one(ChatInput).value == text)
        assert app.picker is None
        await pilot.press("enter")
        await settle(pilot, lambda: app.picker is not None)
        await write(pilot, "[nope]")
        await settle(pilot, lambda: "matches '[nope]'" in screen_text(app))
        assert app.picker is not None  # still asking, the text kept
        await pilot.press("ctrl+u")
        await write(pilot, "@car")  # nobody we know: the registry is asked, and says no
        await settle(pilot, lambda: "no user 'car'" in screen_text(app))
        assert app.picker is not None and app.picker.texts == [text]
        assert app.query_one(ChatInput).value == "@car"  # to correct, not to type again
        await pilot.press("ctrl+u")
        await write(pilot, "lo", enter=False)  # the list narrows as we type
        await settle(pilot, lambda: "@bob" not in screen_text(app))
        await pilot.press("ctrl+u")
        await write(pilot, "lobby")
        await bob.until(lambda: any(isinstance(e, RoomText) and e.text == text for e in bob.events))
        await settle(pilot, lambda: app.convs.current == "lobby")
        await settle(pilot, lambda: f"12:00 alice: {text} ✓" in app.lines("lobby"))


async def test_help_completion_and_history(registry: RegistryServer, peer: PeerFactory) -> None:
    await peer("bob", room="lobby", create=True)
    app = make_app(registry, autologin=auto("alice"))
    async with running(app) as pilot:
        await logged_in(pilot, app)
        await write(pilot, "/help")
        await settle(pilot, lambda: app.pending == 0)
        shown = "\n".join(app.lines())
        for name in commands.COMMANDS:
            assert f"/{name}" in shown
        assert "Ctrl+Q" in shown and "Ctrl+N" in shown
        entry = app.query_one(ChatInput)
        await pilot.press("/", "m", "e", "m", "tab")
        assert entry.value == "/members "
        await pilot.press("l", "o", "tab")
        assert entry.value == "/members lobby "
        await pilot.press("enter")
        await settle(pilot, lambda: any("2 members" in line for line in app.lines()))
        await pilot.press("up")
        assert entry.value == "/members lobby"
        await pilot.press("up")
        assert entry.value == "/help"
        await pilot.press("down", "down")
        assert entry.value == ""
        await pilot.press("b", "tab")
        assert entry.value == "bob: "
        await pilot.press("ctrl+u")  # clears the line
        await write(pilot, "/login bob nope")
        await settle(pilot, lambda: app.pending == 0)
        assert "nope" not in "\n".join(app.lines())
        assert "already logged in" in "\n".join(app.lines())


async def test_the_registry_going_away_and_coming_back(
    registry: RegistryServer, peer: PeerFactory
) -> None:
    async with alice_with_bob(registry, peer) as (bob, app, pilot):
        assert not app.query_one("#banner").has_class("shown")
        await registry.close()
        await settle(pilot, lambda: app.query_one("#banner").has_class("shown"))
        text = screen_text(app)
        assert "Registry unreachable" in text
        assert "down" in text.splitlines()[-2]  # the status line
        assert any("registry unreachable" in line for line in app.lines("lobby"))
        await bob.node.say("lobby", "still here")  # linked peers chat on
        await settle(pilot, lambda: "12:00 bob: still here" in app.lines("lobby"))
        # restarted on the same ports with the same accounts: the node logs in again
        again = RegistryServer(
            registry.core.store,
            host="127.0.0.1",
            port=registry.port,
            udp_port=registry.udp_port,
            config=registry.core.config,
            passwords=Passwords("cheapest"),
            authority=registry.authority,  # its CA is kept beside its database
        )
        await again.start()
        try:
            # the status line may turn green a moment before the login again is answered
            await settle(pilot, lambda: any("registry is back" in s for s in app.lines("lobby")))
            await settle(pilot, lambda: not app.query_one("#banner").has_class("shown"))
            assert "● registry" in screen_text(app).splitlines()[-2]
        finally:
            await again.close()


async def test_logging_out_without_the_registry(
    registry: RegistryServer, peer: PeerFactory
) -> None:
    await peer("bob", room="lobby", create=True)
    app = make_app(registry, autologin=auto("alice"))
    async with running(app) as pilot:
        await logged_in(pilot, app)
        await registry.close()
        await settle(pilot, lambda: app.query_one("#banner").has_class("shown"))
        await write(pilot, "/logout")  # the registry cannot hear it, but we are logged out
        await settle(pilot, lambda: isinstance(app.screen, LoginScreen))
        assert app.node is not None and app.node.username is None
        await settle(pilot, lambda: not app.query_one("#banner").has_class("shown"))


async def test_a_refused_hello_shows_on_the_login_screen() -> None:
    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hello = json.loads(await reader.readline())
        refusal = {"type": "error", "id": hello["id"], "code": "unsupported_version"}
        writer.write(json.dumps({**refusal, "reason": "speaks version 99"}).encode() + b"\n")
        await reader.read()  # until the client hangs up
        writer.close()

    ca = tls.registry_server(Authority.create(time.time()))
    server = await asyncio.start_server(refuse, "127.0.0.1", 0, ssl=ca)
    port = server.sockets[0].getsockname()[1]
    config = PeerConfig(registry_port=port, listen_host="127.0.0.1")
    app = ChatApp(config, autologin=AutoLogin("alice", PASSWORD))
    try:
        async with running(app) as pilot:
            await settle(pilot, lambda: isinstance(app.screen, LoginScreen))
            screen = app.screen
            error = screen.query_one("#login-error", Static)
            await settle(pilot, lambda: "speaks version 99" in str(error.render()))
            screen.query_one("#registry", Input).value = "host:[/]"  # not markup, just text
            screen.query_one("#password", Input).value = PASSWORD
            screen.query_one("#password", Input).focus()
            await pilot.press("enter")
            await settle(pilot, lambda: "not a port number: '[/]'" in str(error.render()))
    finally:
        server.close()
        await server.wait_closed()


async def test_a_line_goes_where_it_was_typed(registry: RegistryServer, peer: PeerFactory) -> None:
    async with alice_with_bob(registry, peer) as (bob, app, pilot):
        gate = asyncio.Event()

        async def slow() -> None:  # a command ahead of the line, still running
            await gate.wait()

        app.submit(slow)
        await write(pilot, "typed in lobby")
        await settle(pilot, lambda: app.pending == 2)  # queued behind the slow one
        await pilot.press("alt+1")  # home is in view when the line's turn comes
        gate.set()
        await bob.until(
            lambda: any(isinstance(e, RoomText) and e.text == "typed in lobby" for e in bob.events)
        )
        assert app.picker is None


async def test_quit_logs_out(registry: RegistryServer, peer: PeerFactory) -> None:
    bob = await peer("bob", room="lobby", create=True)
    app = make_app(registry, autologin=auto("alice"))
    async with running(app) as pilot:
        await logged_in(pilot, app)
        assert app.node is not None
        await bob.until(lambda: bob.node.roster("lobby").get("alice", False))
        await pilot.press("ctrl+q")
    assert app.return_code == 0
    await bob.until(lambda: not bob.node.roster("lobby").get("alice", False))
    assert any(isinstance(e, RoomsChanged) for e in bob.events)


async def test_a_stop_signal_quits_like_ctrl_q(registry: RegistryServer) -> None:
    stop = asyncio.Event()  # what SIGTERM or the demo's --duration sets
    app = make_app(registry, autologin=auto("alice", room=None), stop=stop)
    async with running(app) as pilot:
        await logged_in(pilot, app, room=None)
        stop.set()
        await settle(pilot, lambda: app.return_code == 0)
        assert app.node is not None
        assert not app.node.status().registry


async def test_notices_for_joins_and_presence(registry: RegistryServer, peer: PeerFactory) -> None:
    bob = await peer("bob", room="lobby", create=True)
    app = make_app(registry, autologin=auto("alice"))
    async with running(app) as pilot:
        await logged_in(pilot, app)
        carol = await peer("carol", room="lobby")
        await settle(pilot, lambda: "12:00 -- carol joined lobby" in app.lines("lobby"))
        await settle(pilot, lambda: "● carol" in screen_text(app))
        await carol.node.logout()
        await settle(pilot, lambda: "12:00 -- carol went offline in lobby" in app.lines("lobby"))
        assert "○ carol" in screen_text(app)
        await bob.node.leave_room("lobby")
        await settle(pilot, lambda: "12:00 -- bob left lobby" in app.lines("lobby"))
        assert "● bob" not in screen_text(app)  # gone from the member list
        assert "carol joined lobby" in "\n".join(app.lines(HOME))
