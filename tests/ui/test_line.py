"""Line mode: command parsing, event formatting and the target prompt, without a network."""

from __future__ import annotations

import ast
import io
from pathlib import Path

import pytest

from p2pchat.peer.events import CommandError, DirectText, Notice, RoomsChanged, RoomText, Status
from p2pchat.protocol.messages import RoomInfo
from p2pchat.ui import commands
from p2pchat.ui.line import NO_TARGET, LineUI, format_event


@pytest.mark.parametrize(
    ("line", "name", "args", "text"),
    [
        ("/login alice pw123456", "login", ["alice", "pw123456"], ""),
        ("/say lobby hello  there ", "say", ["lobby"], "hello  there"),
        ("/msg bob a b c", "msg", ["bob"], "a b c"),
        ("/create den private", "create", ["den", "private"], ""),
        ("/CREATE den", "create", ["den"], ""),
        ("  /rooms  ", "rooms", [], ""),
        ("/to @bob", "to", ["@bob"], ""),
    ],
)
def test_parse(line: str, name: str, args: list[str], text: str) -> None:
    command = commands.parse(line)
    assert (command.name, command.args, command.text) == (name, args, text)


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ("/nope", "unknown command /nope; /help lists them"),
        ("/login alice", "usage: /login USER PASSWORD"),
        ("/login a b c", "usage: /login USER PASSWORD"),
        ("/say lobby", "usage: /say ROOM TEXT"),
        ("/say lobby    ", "usage: /say ROOM TEXT"),
        ("/msg", "usage: /msg USER TEXT"),
        ("/create den public", "usage: /create ROOM [private]"),
        ("/users now", "usage: /users"),
    ],
)
def test_parse_errors_give_the_usage(line: str, error: str) -> None:
    with pytest.raises(CommandError) as caught:
        commands.parse(line)
    assert str(caught.value) == error


def test_every_command_has_usage_help_and_a_handler() -> None:
    assert set(commands.USAGE) == set(commands.HANDLERS)
    for name in commands.USAGE:
        assert f"/{name}" in commands.HELP


def test_counts_agree_with_their_nouns() -> None:
    assert commands.plural(1, "room") == "1 room"
    assert commands.plural(0, "room") == "0 rooms"
    assert commands.plural(2, "link") == "2 links"


@pytest.mark.parametrize(
    ("line", "text"),
    [("hello", "hello"), ("//x", "/x"), ("  //x y", "/x y"), ("/x", None), (" /me a", None)],
)
def test_plain_text_and_the_double_slash(line: str, text: str | None) -> None:
    assert commands.plain_text(line) == text


def test_event_formats() -> None:
    assert (
        format_event(RoomText("lobby", "alice", "text of the message", 0.0))
        == "Message from alice at lobby: text of the message"
    )
    assert (
        format_event(DirectText("alice", "text", 0.0, peer="alice")) == "Message from alice: text"
    )
    assert format_event(Notice("bob joined lobby")) == "* bob joined lobby"
    assert format_event(RoomText("lobby", "me", "mine", 0.0, mine=True)) is None
    assert format_event(RoomsChanged()) is None
    assert format_event(Status(True, "me", 3)) is None


def test_control_characters_from_peers_cannot_break_lines() -> None:
    line = format_event(RoomText("lobby", "eve", "two\nlines\x1b[31m and\ttab", 0.0))
    assert line == "Message from eve at lobby: two\\x0alines\\x1b[31m and\ttab"


class _FakeNode:
    username = "me"

    def __init__(self) -> None:
        self.said: list[tuple[str, str]] = []

    def my_rooms(self) -> list[str]:
        return ["lobby", "den"]

    def room_name(self, room: str) -> str:
        return {r.casefold(): r for r in self.my_rooms()}.get(room.casefold(), room)

    async def list_rooms(self) -> list[object]:
        return []

    async def say(self, room: str, text: str) -> int:
        self.said.append((room, text))
        return 1


async def test_plain_line_without_target_in_a_script_is_an_error() -> None:
    out = io.StringIO()
    ui = LineUI(out, interactive=False)
    ui.node = _FakeNode()  # type: ignore[assignment]
    assert await ui.handle("hello") is True
    assert out.getvalue() == f"error: {NO_TARGET}\n"
    assert ui.failures == 1


async def test_plain_line_without_target_on_a_terminal_asks_where() -> None:
    out = io.StringIO()
    ui = LineUI(out, interactive=True)
    node = ui.node = _FakeNode()  # type: ignore[assignment]
    await ui.handle("hello")
    assert out.getvalue() == (
        "Send to a room or to a peer? Type a room (lobby, den), or @user for a peer; "
        "an empty line does not send it:\n"
    )
    await ui.handle("kitchen")
    assert out.getvalue().splitlines()[-1] == (
        "error: there is no room kitchen; /rooms lists them, /create kitchen makes it; "
        "message not sent"
    )
    assert ui.target is None
    await ui.handle("hello again")
    await ui.handle("#DEN")
    assert node.said == [("den", "hello again")]
    assert ui.target == "den"


async def test_an_empty_answer_does_not_send_and_is_not_ignored() -> None:
    out = io.StringIO()
    ui = LineUI(out, interactive=True)
    node = ui.node = _FakeNode()  # type: ignore[assignment]
    await ui.handle("hello")
    await ui.handle("")  # the answer: nothing
    assert out.getvalue().splitlines()[-1] == "error: message not sent: no room or peer given"
    await ui.handle("lobby")  # a new plain line, not the answer to the question above
    assert node.said == []
    assert out.getvalue().splitlines()[-1].startswith("Send to a room or to a peer?")


async def test_a_leading_slash_is_sent_with_two() -> None:
    out = io.StringIO()
    ui = LineUI(out, interactive=False)
    node = ui.node = _FakeNode()  # type: ignore[assignment]
    ui.target = "lobby"
    await ui.handle("//etc/hosts is a file")
    await ui.handle("/me waves")
    assert node.said == [("lobby", "/etc/hosts is a file"), ("lobby", "/me waves")]
    assert ui.failures == 0
    await ui.handle("/clear")
    assert out.getvalue().splitlines()[-1].startswith("error: /clear")


class _Registry(_FakeNode):
    """Rooms as the registry lists them: ``private`` is not ours and not visible to us."""

    async def list_rooms(self) -> list[RoomInfo]:
        return [
            RoomInfo(room="annex", private=False, owner="bob", members=1, online=1, member=False)
        ]


async def test_saying_to_a_room_that_does_not_exist_says_so() -> None:
    out = io.StringIO()
    ui = LineUI(out, interactive=False)
    ui.node = _Registry()  # type: ignore[assignment]
    await ui.handle("/say nosuch hi")
    await ui.handle("/say annex hi")
    assert out.getvalue().splitlines() == [
        "error: there is no room nosuch; /rooms lists them, /create nosuch makes it",
        "error: you are not a member of annex; /join annex first",
    ]


async def test_results_carry_what_they_listed_as_data() -> None:
    node = _Registry()
    result = await commands.run(node, commands.parse("/rooms"))  # type: ignore[arg-type]
    assert result.summary == "1 room"
    assert [r.room for r in result.rooms] == ["annex"]
    result = await commands.run(node, commands.parse("/say DEN hi"))  # type: ignore[arg-type]
    assert (result.room, result.links) == ("den", 1)


def test_the_interfaces_do_not_import_the_command_line() -> None:
    """cli -> demo -> tui -> app -> cli was a circle: the UI reads addresses from below."""
    ui = Path(commands.__file__).parent
    for path in [*ui.rglob("*.py"), ui.parent / "demo.py"]:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "p2pchat.cli":
                raise AssertionError(f"{path.name} imports p2pchat.cli")
            if (
                isinstance(node, ast.ImportFrom)
                and node.module == "p2pchat"
                and any(a.name == "cli" for a in node.names)
            ):
                raise AssertionError(f"{path.name} imports p2pchat.cli")
