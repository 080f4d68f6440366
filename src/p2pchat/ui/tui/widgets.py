"""The input line (history and Tab completion) and the conversation sidebar."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from rich.text import Text
from textual.binding import Binding, BindingType
from textual.events import Key
from textual.widgets import Input, OptionList
from textual.widgets.option_list import Option

from p2pchat.ui.tui.state import Conversations, History, complete, label

CompletionSource = Callable[[], tuple[list[str], list[str]]]
"""Returns the room names and usernames Tab may offer, fresh each time."""


class ChatInput(Input):
    """One line; Up/Down walk the history, Tab completes (pressed again: the next candidate)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up", "history_previous", "Previous line", show=False),
        Binding("down", "history_next", "Next line", show=False),
        Binding("tab", "complete", "Complete", show=False),
    ]

    def __init__(self, source: CompletionSource, *, id: str | None = None) -> None:
        super().__init__(compact=True, select_on_focus=False, id=id)
        self.history = History()
        self._source = source
        self._cycle: tuple[str, str, list[str], int] | None = None
        """While Tab is pressed again and again: text before the word, after it, candidates,
        and which one is shown."""

    def remember(self, line: str) -> None:
        self.history.add(line)

    def action_history_previous(self) -> None:
        line = self.history.previous(self.value)
        if line is not None:
            self._show(line)

    def action_history_next(self) -> None:
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

    def on_key(self, event: Key) -> None:
        if event.key != "tab":
            self._cycle = None


class Sidebar(OptionList):
    """Conversations with their numbers (Alt+number) and unread counts. Never takes focus:
    typing always goes to the input line."""

    can_focus = False
    WIDTH = 16

    def show(self, convs: Conversations) -> None:
        keys = convs.order()
        options = [Option(self._prompt(n, convs, key), id=key) for n, key in enumerate(keys, 1)]
        self.set_options(options)
        self.highlighted = keys.index(convs.current)

    def _prompt(self, number: int, convs: Conversations, key: str) -> Text:
        conv = convs.by_key[key]
        count = f"{conv.unread}" if conv.unread else ""
        name_width = self.WIDTH - 2 - max(len(count), 1) - 1
        name = label(key)
        if len(name) > name_width:
            name = name[: name_width - 1] + "…"
        text = Text()
        text.append(f"{number if number < 10 else ' '} ", style="dim")
        text.append(name.ljust(name_width), style="bold" if conv.unread else "")
        if count:
            text.append(" " + count.rjust(max(len(count), 1)), style="bold reverse red")
            if conv.mentioned:
                text.stylize("bold yellow", 2, 2 + len(name))
        return text
