"""The login screen."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Button, Input, Label, Static

from p2pchat.protocol.messages import PASSWORD_MIN
from p2pchat.ui.tui.widgets import OrderedInput

SETTLE_SECONDS = 2.0
"""How long a submit waits for the fields to take in the keys typed before it."""

LoginFn = Callable[[str, str, str, bool], Awaitable[str | None]]
"""``(registry, username, password, register)``: an error sentence, or None once logged in."""


class LoginScreen(Screen[None]):
    """Registry, username and a hidden password; Enter logs in, the second button registers."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+r", "submit(True)", "Register", show=False),
        # moving between fields must happen as the key arrives, so the keys typed after Tab
        # go to the next field however fast they come (the fields take keys in order)
        Binding("tab", "app.focus_next", show=False, priority=True),
        Binding("shift+tab", "app.focus_previous", show=False, priority=True),
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
                yield OrderedInput(
                    self._registry, placeholder="host:port", id="registry", compact=True
                )
            with Horizontal():
                yield Label("Username", classes="field")
                yield OrderedInput(
                    self._username, placeholder="your name", id="username", compact=True
                )
            with Horizontal():
                yield Label("Password", classes="field")
                yield OrderedInput(
                    password=True, placeholder="password", id="password", compact=True
                )
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

    async def _fields_settled(self) -> None:
        """Each field takes its keys in its own turn: keys typed into the username before Tab
        and Enter may not be in it yet. Wait until every field has handled what it was given."""
        waits = []
        for field in self.query(OrderedInput):
            done = asyncio.Event()
            field.call_later(done.set)  # queued behind the keys the field already holds
            waits.append(done.wait())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*waits), SETTLE_SECONDS)
        for field in self.query(OrderedInput):
            field.flush_typed()

    def action_submit(self, register: bool) -> None:
        if self.busy:
            return
        self.busy = True
        self.run_worker(self._submit(register), exit_on_error=False)

    async def _submit(self, register: bool) -> None:
        try:
            await self._fields_settled()
            registry, username = (
                self.query_one(f"#{f}", Input).value.strip() for f in ("registry", "username")
            )
            password = self.query_one("#password", Input).value
            if not (registry and username and password):
                self.show_error("Fill in the registry, a username and a password.")
                return
            self.show_error("Registering…" if register else "Logging in…", error=False)
            error = await self._login(registry, username, password, register)
        finally:
            self.busy = False
        if error is not None:
            self.show_error(error)
            # a wrong password is typed again from scratch, not appended to
            field = self.query_one("#password", Input)
            field.value = ""
            field.focus()

    def show_error(self, text: str, error: bool = True) -> None:
        widget = self.query_one("#login-error", Static)
        widget.styles.color = None if error else "gray"
        widget.display = bool(text)
        widget.update(text)
