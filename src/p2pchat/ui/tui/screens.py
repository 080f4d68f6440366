"""The login screen, and the question asked when a plain line has nowhere to go."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen, Screen
from textual.widgets import Button, Input, Label, OptionList, Static
from textual.widgets.option_list import Option

from p2pchat.protocol.messages import PASSWORD_MIN

LoginFn = Callable[[str, str, str, bool], Awaitable[str | None]]
"""``(registry, username, password, register)``: an error sentence, or None once logged in."""


class LoginScreen(Screen[None]):
    """Registry, username and a hidden password; Enter logs in, the second button registers."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+r", "submit(True)", "Register", show=False),
    ]
    DEFAULT_CSS = """
    LoginScreen { align: center middle; }
    #login-box {
        width: 60; height: auto; padding: 1 2;
        border: round $primary; border-title-align: center;
    }
    #login-box Label.field { width: 10; padding: 0 1 0 0; }
    #login-box Horizontal { height: 1; margin: 0 0 1 0; }
    #login-box Input { width: 1fr; }
    #login-box #login-buttons { height: 1; align: center middle; margin: 0; }
    #login-buttons Button { margin: 0 1; }
    #login-error { height: auto; color: $text-error; margin: 1 0 0 0; display: none; }
    #login-help { color: $text-muted; margin: 1 0 0 0; }
    """

    def __init__(self, registry: str, username: str, login: LoginFn) -> None:
        super().__init__()
        self._registry = registry
        self._username = username
        self._login = login
        self.busy = False

    def compose(self) -> ComposeResult:
        box = Vertical(id="login-box")
        box.border_title = "p2pchat: log in"
        with box:
            with Horizontal():
                yield Label("Registry", classes="field")
                yield Input(self._registry, placeholder="host:port", id="registry", compact=True)
            with Horizontal():
                yield Label("Username", classes="field")
                yield Input(self._username, placeholder="your name", id="username", compact=True)
            with Horizontal():
                yield Label("Password", classes="field")
                yield Input(password=True, placeholder="password", id="password", compact=True)
            with Horizontal(id="login-buttons"):
                yield Button("Log in", id="login", variant="primary", compact=True)
                yield Button("Register", id="register", compact=True)
            yield Static("", id="login-error", markup=False)  # reasons may hold brackets
            yield Static(
                f"New here? Pick a name and a password ({PASSWORD_MIN}+ characters) "
                "and press Register.\n"
                "Tab moves between fields, Enter logs in, Ctrl+R registers, Ctrl+Q quits.",
                id="login-help",
            )

    def on_mount(self) -> None:
        field = "password" if self._username else "username"
        self.query_one(f"#{field}", Input).focus()

    @on(Input.Submitted)
    def _submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.action_submit(False)

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.action_submit(event.button.id == "register")

    def action_submit(self, register: bool) -> None:
        if self.busy:
            return
        values = [self.query_one(f"#{f}", Input).value.strip() for f in ("registry", "username")]
        password = self.query_one("#password", Input).value
        if not all(values) or not password:
            self.show_error("Fill in the registry, a username and a password.")
            return
        self.busy = True
        self.show_error("Registering…" if register else "Logging in…", error=False)
        self.run_worker(
            self._attempt(values[0], values[1], password, register), exit_on_error=False
        )

    async def _attempt(self, registry: str, username: str, password: str, register: bool) -> None:
        try:
            error = await self._login(registry, username, password, register)
        finally:
            self.busy = False
        if error is not None:
            self.show_error(error)

    def show_error(self, text: str, error: bool = True) -> None:
        widget = self.query_one("#login-error", Static)
        widget.styles.color = None if error else "gray"
        widget.display = bool(text)
        widget.update(text)


class TargetScreen(ModalScreen[str | None]):
    """A plain line typed with no conversation in view: to which room or peer?

    Up/Down pick from the list and Enter sends; or type a room name or ``@user``.
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "Cancel"),
        Binding("up", "move(-1)", show=False),
        Binding("down", "move(1)", show=False),
    ]
    DEFAULT_CSS = """
    TargetScreen { align: center middle; }
    #target-box {
        width: 56; height: auto; max-height: 20; padding: 0 1;
        border: round $accent; background: $surface;
    }
    #target-box OptionList { height: auto; max-height: 8; border: none; padding: 0; }
    #target-answer { margin: 1 0 0 0; }
    #target-error { color: $text-error; height: auto; }
    #target-help { color: $text-muted; }
    """

    def __init__(self, text: str, rooms: list[str], users: list[str]) -> None:
        super().__init__()
        self.text = text
        self.rooms = rooms
        self.users = users

    def compose(self) -> ComposeResult:
        box = Vertical(id="target-box")
        box.border_title = "Send to a room or to a peer?"
        shown = self.text if len(self.text) <= 48 else self.text[:47] + "…"
        with box:
            yield Label(f"“{shown}”", markup=False)  # the user's own text, brackets and all
            options = [Option(f"#{r}", id=r) for r in self.rooms]
            options += [Option(f"@{u}", id=f"@{u}") for u in self.users]
            options_list = OptionList(*options, id="target-options")
            options_list.can_focus = False
            options_list.display = bool(options)
            yield options_list
            yield Input(
                placeholder="a room name, or @user for a peer",
                id="target-answer",
                compact=True,
            )
            yield Static("", id="target-error", markup=False)
            yield Static(
                "Up/Down and Enter pick; or type a name. Esc: don't send.", id="target-help"
            )

    def on_mount(self) -> None:
        options = self.query_one(OptionList)
        if options.option_count:
            options.highlighted = 0
        self.query_one("#target-answer", Input).focus()

    def action_move(self, delta: int) -> None:
        options = self.query_one(OptionList)
        if options.option_count:
            current = options.highlighted if options.highlighted is not None else -delta
            options.highlighted = (current + delta) % options.option_count

    @on(OptionList.OptionSelected)
    def _picked(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        self.dismiss(event.option_id)

    @on(Input.Submitted)
    def _typed(self, event: Input.Submitted) -> None:
        event.stop()
        answer = event.value.strip().removeprefix("#")
        if answer.lower().startswith("/to "):
            answer = answer[4:].strip()
        if not answer:
            picked = self.query_one(OptionList).highlighted_option
            if picked is not None:
                self.dismiss(picked.id)
                return
        if not answer or answer == "@":
            self.query_one("#target-error", Static).update("Type a room name or @user.")
            return
        if not answer.startswith("@"):
            match = [r for r in self.rooms if r.casefold() == answer.casefold()]
            if not match:
                self.query_one("#target-error", Static).update(
                    f"You are not a member of {answer}; /join {answer} first, or type @user."
                )
                return
            answer = match[0]
        self.dismiss(answer)

    def action_cancel(self) -> None:
        self.dismiss(None)
