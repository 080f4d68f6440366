"""The input line, the conversation log and the sidebar.

Keys are handled in the order they were typed. Textual hands every key to the focused widget
at once, but runs a widget's non-priority key bindings (Enter, Ctrl+U, Tab...) only after the
key has bubbled up to the app, so in a burst (a paste without bracketed paste, a slow SSH
link) the characters typed after Enter used to land in the line before it was submitted.
``OrderedInput`` runs those bindings in its own turn instead, between the characters around
them.
"""

from __future__ import annotations

import asyncio
from bisect import bisect_right
from collections.abc import Callable
from typing import ClassVar

from rich.console import RenderableType
from rich.text import Text
from textual import events
from textual.actions import parse as parse_action
from textual.binding import Binding, BindingType
from textual.dom import DOMNode
from textual.geometry import Size
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.widgets import Input, OptionList
from textual.widgets.option_list import Option

from p2pchat.protocol.messages import MAX_TEXT
from p2pchat.ui.tui.state import Conversations, History, Line, Outgoing, complete, label

CompletionSource = Callable[[], tuple[list[str], list[str]]]
"""Returns the room names and usernames Tab may offer, fresh each time."""
LineHandler = Callable[[str, bool], None]
"""Called with a submitted line, and whether it came from a (bracketed) paste."""
Notify = Callable[[str], None]

BURST = 64
"""Characters typed in a burst are inserted this many at a time, and the event loop gets a
turn in between: the peer's heartbeats and links never wait for a long paste."""
MAX_PASTE_LINES = 100
"""A bracketed paste of more lines than this is refused rather than sent as that many
messages."""
COUNT_FROM = MAX_TEXT - 512
"""The byte count shows once the line is this long."""


def utf8_len(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def fitting(text: str, room: int) -> str:
    """The longest start of ``text`` that takes at most ``room`` bytes of UTF-8."""
    if utf8_len(text) <= room:
        return text
    used = 0
    for i, char in enumerate(text):
        used += utf8_len(char)
        if used > room:
            return text[:i]
    return text


class OrderedInput(Input):
    """An Input that handles every key in the order typed, however fast they come.

    Its own bindings and those of its screen and the app (except priority ones, which the app
    runs as the key arrives) run in this widget's turn, looked up from this widget; characters
    typed in a burst are inserted together, which also keeps a long burst linear (Textual's
    Input measures the whole line for each character inserted).
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._typed: list[str] = []
        self._flush_queued = False

    async def _on_key(self, event: events.Key) -> None:
        # a plain character: typed (Alt+1 is printable too, but a key binding goes first)
        typed = event.is_printable and event.character is not None and "+" not in event.key
        if not typed:
            self.flush_typed()
            bound = self._bound(event.key)
            if bound is not None:
                event.stop()
                event.prevent_default()
                await self.app.run_action(*bound)
                return
        if event.is_printable and event.character is not None:
            event.stop()
            event.prevent_default()
            self._typed.append(event.character)
            if len(self._typed) >= BURST:
                self.flush_typed()
                await asyncio.sleep(0)  # a long burst: let the rest of the program run
            elif not self._flush_queued:
                self._flush_queued = True
                self.call_later(self.flush_typed)  # after the keys already queued

    def _bound(self, key: str) -> tuple[str, DOMNode] | None:
        """The action ``key`` is bound to, looked up from this widget to the app: not from
        whatever has the focus by now (a key typed before Tab belongs here, not in the next
        field). Priority bindings are left out: the app ran them as the key arrived."""
        for node in self.ancestors_with_self:
            for binding in node._bindings.key_to_bindings.get(key, ()):
                if binding.priority:
                    continue
                where, name, params = parse_action(binding.action)
                target = {"app": self.app, "screen": self.screen}.get(where, node)
                if target.check_action(name, params):
                    return binding.action, node
        return None

    def flush_typed(self) -> None:
        """Insert the characters typed so far (before anything reads or edits the line)."""
        self._flush_queued = False
        if not self._typed:
            return
        text, self._typed = "".join(self._typed), []
        if self.selection.is_empty:
            self.insert_text_at_cursor(text)
        else:
            self.replace(text, *self.selection)

    def _on_paste(self, event: events.Paste) -> None:
        self.flush_typed()


class ChatInput(OrderedInput):
    """One line, at most one message long; Up/Down walk the history, Tab completes (pressed
    again: the next candidate); Enter hands the line over at once and empties the input."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up", "history_previous", "Previous line", show=False),
        Binding("down", "history_next", "Next line", show=False),
        Binding("tab", "complete", "Complete", show=False),
        # the conversation scrolls, not this one-line widget (Widget binds these to itself)
        Binding("pageup", "app.scroll_log(-1)", show=False),
        Binding("pagedown", "app.scroll_log(1)", show=False),
        Binding("ctrl+end", "app.scroll_log(0)", show=False),
    ]

    def __init__(
        self,
        source: CompletionSource,
        on_line: LineHandler,
        on_notice: Notify,
        *,
        limit: int = MAX_TEXT,
        id: str | None = None,
    ) -> None:
        super().__init__(compact=True, select_on_focus=False, id=id)
        self.history = History()
        self.limit = limit
        self._source = source
        self._on_line = on_line
        self._on_notice = on_notice
        self._cut = 0
        """Characters typed past the limit and not inserted, since the last notice."""
        self._cycle: tuple[str, str, list[str], int] | None = None
        """While Tab is pressed again and again: text before the word, after it, candidates,
        and which one is shown."""
        self.picking: Callable[[int], bool] | None = None
        """Set while the "where does this go" question is open: Up/Down move its choice."""

    def remember(self, line: str) -> None:
        self.history.add(line)

    # ------------------------------------------------------------------ bounded text

    def replace(self, text: str, start: int, end: int) -> None:
        """Every edit comes through here: nothing goes past the message limit."""
        room = self.limit - utf8_len(self.value) + utf8_len(self.value[start:end])
        kept = fitting(text, max(0, room))
        if len(kept) < len(text):
            if self._cut == 0:
                self.app.bell()
                self.call_later(self._say_cut)
            self._cut += len(text) - len(kept)
        super().replace(kept, start, end)

    def _say_cut(self) -> None:
        cut, self._cut = self._cut, 0
        self._on_notice(
            f"the line is full (a message is at most {self.limit} bytes): "
            f"{cut} character{'s' if cut != 1 else ''} not typed"
        )

    def bytes_used(self) -> int:
        return utf8_len(self.value)

    def _on_paste(self, event: events.Paste) -> None:
        """A bracketed paste: every line of it, never only the first."""
        event.stop()
        event.prevent_default()
        self.flush_typed()
        text = event.text.replace("\r\n", "\n").replace("\r", "\n")
        if "\n" not in text:
            if utf8_len(self.value) + utf8_len(text) > self.limit:
                self._refuse(f"paste of {utf8_len(text)} bytes not inserted")
                return
            self.insert_text_at_cursor(text)
            return
        head = self.value[: self.cursor_position]
        tail = self.value[self.cursor_position :]
        lines = (head + text + tail).split("\n")
        if len(lines) - 1 > MAX_PASTE_LINES:
            self._refuse(f"paste of {len(lines) - 1} lines not sent (at most {MAX_PASTE_LINES})")
            return
        if any(utf8_len(line) > self.limit for line in lines):
            self._refuse("paste not sent: a line of it is longer than a message")
            return
        *complete_lines, rest = lines
        self.value = ""
        for line in complete_lines:
            if line.strip():
                self._hand_over(line, pasted=True)
        self.value = rest
        self.cursor_position = len(rest) - len(tail)

    def _refuse(self, what: str) -> None:
        self.app.bell()
        self._on_notice(f"{what}: a message is at most {self.limit} bytes of text")

    # ------------------------------------------------------------------ actions

    async def action_submit(self) -> None:
        """Hand the line over now, not after the keys typed behind Enter."""
        self.flush_typed()
        line, self.value = self.value, ""
        self._hand_over(line, pasted=False)

    def _hand_over(self, line: str, *, pasted: bool) -> None:
        self._cycle = None
        self._on_line(line, pasted)

    def action_history_previous(self) -> None:
        if self.picking is not None and self.picking(-1):
            return
        line = self.history.previous(self.value)
        if line is not None:
            self._show(line)

    def action_history_next(self) -> None:
        if self.picking is not None and self.picking(1):
            return
        line = self.history.next()
        if line is not None:
            self._show(line)

    def _show(self, line: str) -> None:
        self.value = line
        self.cursor_position = len(line)

    def action_complete(self) -> None:
        cycle = self._cycle
        if cycle is not None and self.value == self._candidate(cycle):
            head, tail, options, index = cycle
            cycle = (head, tail, options, (index + 1) % len(options))
        else:
            rooms, users = self._source()
            start, options = complete(self.value, self.cursor_position, rooms, users)
            if not options:
                self._cycle = None
                self.app.bell()
                return
            cycle = (self.value[:start], self.value[self.cursor_position :], options, 0)
        self._cycle = cycle
        head, _, options, index = cycle
        self.value = self._candidate(cycle)
        self.cursor_position = len(head) + len(options[index])

    @staticmethod
    def _candidate(cycle: tuple[str, str, list[str], int]) -> str:
        head, tail, options, index = cycle
        return head + options[index] + tail

    def on_key(self, event: events.Key) -> None:
        # Textual calls each class's handler in turn: OrderedInput's runs next
        if event.key != "tab":
            self._cycle = None


class ChatLog(ScrollView, can_focus=False):
    """The conversation in view, drawn from its lines at the current width.

    Each line is wrapped anew when the width changes, and redrawn alone when it changes
    (a message we sent, as its state moves on). It follows the bottom unless scrolled up;
    then ``below`` counts what arrived meanwhile.
    """

    DEFAULT_CSS = """
    ChatLog { overflow-x: hidden; overflow-y: auto; scrollbar-gutter: stable; }
    """

    def __init__(self, render: Callable[[Line], RenderableType], *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._line_renderable = render
        self.entries: list[Line] = []
        self._strips: list[list[Strip]] = []
        self._starts: list[int] = []
        """The first row of each entry: rows are found by bisection."""
        self._width = 0
        self._versions: list[int] = []
        self.below = 0
        """Lines added while scrolled up: the "new messages below" marker counts them."""
        self.on_below: Callable[[int], None] = lambda count: None

    # ------------------------------------------------------------------ content

    def show(self, lines: list[Line], *, first_new: int | None = None) -> None:
        """Replace the content; at the bottom, or with line ``first_new`` near the top."""
        self.entries = list(lines)
        self._rewrap()
        self._set_below(0)
        if first_new is not None:
            row = self._starts[first_new] if first_new < len(self._starts) else 0
            self.scroll_to(y=min(max(0, row - 1), self._max_y()), animate=False, force=True)
        else:
            self.scroll_to(y=self._max_y(), animate=False, force=True)

    def append(self, lines: list[Line], *, follow: bool = False) -> None:
        """Add lines at the bottom; scroll to them if we were at the bottom, or if ``follow``
        (a line we sent ourselves)."""
        if not lines:
            return
        at_end = self.at_bottom()
        for line in lines:
            self.entries.append(line)
            self._strips.append(self._draw(line))
            self._versions.append(_version(line))
        self._reindex()
        if at_end or follow:
            self.scroll_to(y=self._max_y(), animate=False, force=True)
            self._set_below(0)
        else:
            self._set_below(self.below + len(lines))
        self.refresh()

    def changed(self, line: Line) -> None:
        """``line`` changed (a message's state): redraw it where it is."""
        for i in range(len(self.entries) - 1, -1, -1):
            if self.entries[i] is line:
                if self._versions[i] != _version(line):
                    self._strips[i] = self._draw(line)
                    self._versions[i] = _version(line)
                    at_end = self.at_bottom()
                    self._reindex()
                    if at_end:
                        self.scroll_to(y=self._max_y(), animate=False, force=True)
                    self.refresh()
                return

    def trim(self, limit: int) -> None:
        if len(self.entries) > limit:
            cut = len(self.entries) - limit
            del self.entries[:cut], self._strips[:cut], self._versions[:cut]
            self._reindex()
            self.refresh()

    # ------------------------------------------------------------------ scrolling

    def at_bottom(self) -> bool:
        return self.scroll_offset.y >= self._max_y()

    def _max_y(self) -> int:
        return max(0, self.virtual_size.height - self.scrollable_content_region.height)

    def page(self, direction: int) -> None:
        height = max(1, self.scrollable_content_region.height - 1)
        y = min(max(0, self.scroll_offset.y + direction * height), self._max_y())
        self.scroll_to(y=y, animate=False, force=True)
        if self.at_bottom():
            self._set_below(0)

    def to_bottom(self) -> None:
        self.scroll_to(y=self._max_y(), animate=False, force=True)
        self._set_below(0)

    def watch_scroll_y(self, old_value: float, new_value: float) -> None:
        super().watch_scroll_y(old_value, new_value)
        if self.below and new_value >= self._max_y():
            self._set_below(0)  # scrolled down to the end, by wheel or scrollbar

    def _set_below(self, count: int) -> None:
        if count != self.below:
            self.below = count
            self.on_below(count)

    # ------------------------------------------------------------------ drawing

    def on_resize(self, event: events.Resize) -> None:
        at_end = self.at_bottom()
        self._rewrap()
        if at_end:
            self.scroll_to(y=self._max_y(), animate=False, force=True)

    def _content_width(self) -> int:
        return max(10, self.scrollable_content_region.width)

    def _rewrap(self) -> None:
        self._width = self._content_width()
        self._strips = [self._draw(line) for line in self.entries]
        self._versions = [_version(line) for line in self.entries]
        self._reindex()
        self.refresh()

    def _draw(self, line: Line) -> list[Strip]:
        width = self._width or self._content_width()
        console = self.app.console
        options = console.options.update_width(width)
        rows = console.render_lines(self._line_renderable(line), options, pad=False)
        return [Strip(row).adjust_cell_length(width) for row in rows] or [Strip.blank(width)]

    def _reindex(self) -> None:
        starts, row = [], 0
        for strips in self._strips:
            starts.append(row)
            row += len(strips)
        self._starts = starts
        self.virtual_size = Size(self._width, row)

    def render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width
        row = self.scroll_offset.y + y
        if row >= self.virtual_size.height or not self._starts:
            return Strip.blank(width, self.rich_style)
        i = bisect_right(self._starts, row) - 1
        strip = self._strips[i][row - self._starts[i]]
        return strip.crop_extend(0, width, self.rich_style).apply_style(self.rich_style)


def _version(line: Line) -> int:
    return line.version if isinstance(line, Outgoing) else 0


class Sidebar(OptionList):
    """Conversations with their numbers (Alt+number) and unread counts; lines that name us
    and direct messages get a badge of their own. Never takes focus: typing always goes to
    the input line."""

    can_focus = False
    WIDTH = 16

    def show(self, convs: Conversations) -> None:
        keys = convs.order()
        options = [Option(self._prompt(convs, key), id=key) for key in keys]
        self.set_options(options)
        self.highlighted = keys.index(convs.current)

    def _prompt(self, convs: Conversations, key: str) -> Text:
        conv = convs.by_key[key]
        number = conv.number
        badge = f"@{conv.mentions}" if conv.mentions else ""
        count = f"{conv.unread}" if conv.unread and not conv.mentions else ""
        tag = badge or count
        name_width = self.WIDTH - 2 - max(len(tag), 1) - 1
        name = label(key)
        if len(name) > name_width:
            name = name[: name_width - 1] + "…"
        text = Text()
        text.append(f"{number if number < 10 else ' '} ", style="dim")
        text.append(name.ljust(name_width), style="bold" if conv.unread else "")
        if badge:
            text.append(" " + badge, style="bold reverse yellow")
        elif count:
            text.append(" " + count, style="bold cyan")
        return text
