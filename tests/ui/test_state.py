"""The terminal UI's model without Textual: conversations, unread counts, history, completion,
colours, and the remembered login."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from rich.text import Text

from p2pchat.ui import commands
from p2pchat.ui.tui import memory
from p2pchat.ui.tui.state import (
    HOME,
    Conversations,
    Delivery,
    Divider,
    History,
    Outgoing,
    Picker,
    complete,
    mask_secret,
    user_colour,
)


def test_conversation_order_unread_and_stepping() -> None:
    convs = Conversations()
    convs.sync_rooms(["lobby", "Annex"])
    convs.ensure("@bob")
    assert convs.order() == [HOME, "Annex", "lobby", "@bob"]
    assert convs.add("lobby", Text("x"), unread=True) == []  # not in view: nothing to draw
    assert convs.add("lobby", Text("y"), unread=True, mention=True) == []
    z = Text("z")
    assert convs.add(HOME, z, unread=False) == [z]
    assert convs.by_key["lobby"].unread == 2
    assert convs.by_key["lobby"].mentions == 1
    convs.select("LOBBY")  # names are case-insensitive
    assert convs.current == "lobby"
    assert convs.by_key["lobby"].unread == 0
    assert convs.step(1) == "@bob"
    assert convs.step(2) == HOME
    assert convs.step(-1) == "Annex"


def test_leaving_the_room_in_view_goes_home() -> None:
    convs = Conversations()
    convs.sync_rooms(["lobby"])
    convs.select("lobby")
    assert convs.sync_rooms([]) is True
    assert convs.current == HOME
    assert convs.sync_rooms([]) is False


def test_history_walks_back_and_restores_the_draft() -> None:
    h = History()
    for line in ["one", "two", "two", "three"]:
        h.add(line)
    assert list(h.entries) == ["one", "two", "three"]
    assert h.previous("draft") == "three"
    assert h.previous("three") == "two"
    assert h.previous("two") == "one"
    assert h.previous("one") is None
    assert h.next() == "two"
    assert h.next() == "three"
    assert h.next() == "draft"
    assert h.next() is None


def test_passwords_never_reach_the_history() -> None:
    assert mask_secret("/login alice s3cret!") == "/login alice"
    assert mask_secret("/REGISTER bob hunter22") == "/REGISTER bob"
    assert mask_secret("/msg bob my password is x") == "/msg bob my password is x"


def test_completion_knows_what_each_place_wants() -> None:
    rooms, users = ["lobby", "lounge", "dev"], ["ada", "alice", "bob"]
    assert complete("/jo", 3, rooms, users) == (0, ["/join "])
    assert complete("/", 1, rooms, users)[1] == [f"/{c} " for c in commands.COMMANDS]
    assert complete("/join l", 7, rooms, users) == (6, ["lobby ", "lounge "])
    assert complete("/msg a", 6, rooms, users) == (5, ["ada ", "alice "])
    assert complete("/msg bob hi a", 13, rooms, users) == (12, ["ada ", "alice "])
    assert complete("/add dev b", 10, rooms, users) == (9, ["bob "])
    assert complete("/add d", 6, rooms, users) == (5, ["dev "])
    assert complete("/to @b", 6, rooms, users) == (4, ["@bob "])
    assert complete("/create x", 9, rooms, users) == (8, [])
    assert complete("B", 1, rooms, users) == (0, ["bob: "])  # a nick at the start
    assert complete("hi AL there", 5, rooms, users) == (3, ["alice "])


@given(st.text(min_size=1, max_size=32))
def test_a_user_keeps_one_colour(name: str) -> None:
    assert user_colour(name) == user_colour(name) == user_colour(name.upper().lower())


def test_colours_are_the_same_on_every_run() -> None:
    # pinned: a salted ``hash()`` would pass the test above but change between runs
    assert user_colour("alice") == user_colour("ALICE") == "steel_blue1"
    assert user_colour("bob") == "medium_purple1"


def test_colours_differ_between_users() -> None:
    assert len({user_colour(n) for n in ["ada", "grace", "linus", "bob", "alice"]}) >= 3


def test_memory_round_trip_without_password(tmp_path: Path) -> None:
    path = tmp_path / "p2pchat" / "last.json"
    assert memory.load(path) == memory.Remembered()
    memory.save(path, "10.0.0.5:15600", "alice")
    assert memory.load(path) == memory.Remembered("10.0.0.5:15600", "alice")
    assert set(json.loads(path.read_text())) == {"registry", "username"}
    path.write_text("[not, json")
    assert memory.load(path) == memory.Remembered()


def test_memory_lives_under_xdg_config_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert memory.default_path() == tmp_path / "p2pchat" / "last.json"


def test_numbers_are_kept_and_the_lowest_free_one_is_reused() -> None:
    convs = Conversations()
    convs.sync_rooms(["lobby"])
    convs.ensure("@bob")
    convs.sync_rooms(["lobby", "aardvarks"])  # sorts first, comes last
    assert [convs.by_key[k].number for k in convs.order()] == [1, 2, 3, 4]
    assert convs.order() == [HOME, "lobby", "@bob", "aardvarks"]
    convs.sync_rooms(["aardvarks"])  # lobby goes: nobody moves up
    assert convs.numbered(4) == "aardvarks" and convs.numbered(2) is None
    convs.ensure("@carol")
    assert convs.numbered(2) == "@carol"


def test_the_unread_divider_marks_where_new_lines_begin() -> None:
    convs = Conversations()
    convs.sync_rooms(["lobby"])
    convs.select("lobby")
    seen = Text("seen")
    convs.add("lobby", seen)
    convs.select(HOME)
    first, second = Text("first new"), Text("second new")
    convs.add("lobby", first, unread=True)
    convs.add("lobby", second, unread=True)
    convs.select("lobby")
    view = convs.view()
    assert view[0] is seen and isinstance(view[1], Divider) and view[2] is first
    convs.select(HOME)  # looked at: next time, no divider
    convs.select("lobby")
    assert not any(isinstance(x, Divider) for x in convs.view())


def test_a_new_day_inserts_its_name() -> None:
    convs = Conversations(day=lambda ts: "day two" if ts >= 100 else "day one")
    convs.select("lobby")
    assert len(convs.add("lobby", Text("a"), ts=10)) == 1
    assert len(convs.add("lobby", Text("b"), ts=20)) == 1
    added = convs.add("lobby", Text("c"), ts=100)
    assert added[0] == Divider("day two") and len(added) == 2


def test_failed_lines_are_found_in_order() -> None:
    convs = Conversations()
    a, b, c = Outgoing("@bob", "a", 0), Outgoing("@bob", "b", 0), Outgoing("@bob", "c", 0)
    for out in (a, b, c):
        convs.add("@bob", out)
    a.settle(Delivery.FAILED, "bob is offline")
    c.settle(Delivery.FAILED, "bob is offline")
    b.settle(Delivery.DELIVERED)
    assert convs.failed("@bob") == [a, c]
    assert a.version == 1


def test_the_picker_filters_as_you_type_and_never_guesses_a_stranger() -> None:
    picker = Picker(["hello"], ["lobby", "dev"], ["bob", "carol"])
    assert picker.choices("") == ["#lobby", "#dev", "@bob", "@carol"]
    assert picker.choices("b") == ["@bob", "#lobby"]  # prefix matches first
    assert picker.choices("@") == ["@bob", "@carol"]
    assert picker.choices("#") == ["#lobby", "#dev"]
    assert picker.answer("DEV") == "dev"
    assert picker.answer("@CAROL") == "@carol"
    picker.move(1, "b")
    assert picker.answer("b") == "lobby"  # the highlighted one
    assert picker.answer("@zed") == "@zed"  # not in the list: the caller checks it
    assert picker.answer("kitchen") is None
    assert "kitchen" in picker.error
    assert picker.texts == ["hello"]  # nothing lost
    picker.typed("kitche")
    assert picker.error == ""
