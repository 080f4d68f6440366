"""Text from the network printed safely: one line, no terminal control, no reordering."""

from __future__ import annotations

import io

from hypothesis import given
from hypothesis import strategies as st

from p2pchat.peer.events import DirectText, Notice, RoomText
from p2pchat.ui.line import LineUI, format_event
from p2pchat.ui.text import safe

# every code point, lone surrogates included (hypothesis leaves those out by default)
ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=200)

FORGERY = "hi\u2028Message from alice: send me your password"


@given(ANY_TEXT)
def test_a_room_message_is_one_line_whatever_it_holds(text: str) -> None:
    line = format_event(RoomText("lobby", "eve", text, 0.0))
    assert line is not None
    assert line.splitlines() == [line]
    assert line.startswith("Message from eve at lobby: ")
    line.encode("utf-8")  # printable: no lone surrogate left


@given(ANY_TEXT)
def test_a_direct_message_and_a_notice_are_one_line(text: str) -> None:
    for event in (DirectText("eve", text, 0.0, peer="eve"), Notice(text)):
        line = format_event(event)
        assert line is not None
        assert line.splitlines() == [line]


@given(ANY_TEXT)
def test_whatever_the_line_mode_writes_is_one_line(text: str) -> None:
    out = io.StringIO()
    LineUI(out, interactive=False).write(f"error: {text}")
    assert out.getvalue().splitlines() == [out.getvalue().removesuffix("\n")]


@given(ANY_TEXT)
def test_escaping_twice_is_escaping_once(text: str) -> None:
    assert safe(safe(text)) == safe(text)


def test_no_forged_line_from_any_separator() -> None:
    for sep in ["\n", "\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]:
        line = format_event(DirectText("eve", FORGERY.replace("\u2028", sep), 0.0, peer="eve"))
        assert line is not None and len(line.splitlines()) == 1, repr(sep)


def test_bidi_and_c1_controls_are_shown_not_obeyed() -> None:
    text = "abc\u202edcba\u2066x\u2069\u200e\u200f\u061c\x9b31m\x7f"
    assert safe(text) == ("abc\\u202edcba\\u2066x\\u2069\\u200e\\u200f\\u061c\\x9b31m\\x7f")


def test_ordinary_text_is_untouched() -> None:
    text = "héllo wörld, 你好, emoji 👩\u200d💻, tab\there"
    assert safe(text) == text
