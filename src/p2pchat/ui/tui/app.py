"""The full-screen chat client: a Textual app that consumes peer events and issues commands.

It never touches sockets. The ``PeerNode`` runs on the app's own event loop; its events are
posted into the app as messages, and every command typed (the same ones as the line mode,
from ``ui/commands.py``) runs in order in one worker so the screen never freezes on a slow
peer.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import ClassVar

from rich.table import Table
from rich.text import Text
from textual import events, on
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import Input, OptionList, RichLog, Static

from p2pchat.peer.events import (
    CommandError,
    DirectText,
    Notice,
    PeerEvent,
    RoomsChanged,
    RoomText,
    Status,
)
from p2pchat.peer.node import PeerConfig, PeerNode
from p2pchat.registry.client import RegistryError
from p2pchat.ui import commands
from p2pchat.ui.line import clean
from p2pchat.ui.tui import memory
from p2pchat.ui.tui.screens import LoginScreen, TargetScreen
from p2pchat.ui.tui.state import (
    HOME,
    Block,
    Conversations,
    Line,
    dm_key,
    is_dm,
    label,
    mask_secret,
    user_colour,
)
from p2pchat.ui.tui.widgets import ChatInput, Sidebar

NodeFactory = Callable[[PeerConfig, Callable[[PeerEvent], None]], PeerNode]
Job = Callable[[], Awaitable[None]]

KEYS_HELP = (
    ("Ctrl+N / Ctrl+P", "next / previous conversation"),
    ("Alt+1..9", "jump to a conversation by its number"),
    ("Tab", "complete a command, room or name; again: the next match"),
    ("Up / Down", "walk the history"),
    ("PgUp / PgDn", "scroll the conversation"),
    ("Ctrl+Q", "log out and quit"),
    ("a plain line", "goes to the conversation in view; from home you are asked where"),
)


def help_block() -> Block:
    """``/help`` as two columns, so descriptions wrap beside their commands in a narrow pane."""
    rows: list[tuple[str, str]] = []
    for row in commands.HELP.splitlines():
        match = re.match(r"^(.*?\S)\s{3,}(\S.*)$", row)
        rows.append((match[1], match[2]) if match else (row.strip(), ""))
    table = Table.grid(padding=(0, 1))
    table.add_column(no_wrap=True, style="bold")
    table.add_column(ratio=1)
    for left, right in rows:
        table.add_row(left, right)
    table.add_row("", "")
    for left, right in KEYS_HELP:
        table.add_row(Text(left, style="bold cyan"), right)
    plain = "\n".join(f"{left}   {right}" for left, right in [*rows, *KEYS_HELP])
    return Block(table, plain)


KEYS_HINT = "^N/^P switch  ^Q quit"
KEYS_HINT_WIDTH = len(KEYS_HINT) + 2


def _alt_digits_as_alt() -> None:
    """Let Alt+digit arrive as ``alt+1``... on the terminals that send ESC then the digit.

    Textual maps ESC+digit to the characters macOS's Option key types (ESC 1 becomes "¡"),
    for WezTerm on macOS; xterm, tmux, GNOME Terminal and most others send ESC+digit for
    Alt+digit, which then could not switch conversations. Without the entry, the parser
    reports ``alt+1`` as it does for ESC+letter.
    """
    with contextlib.suppress(Exception):
        from textual import _ansi_sequences

        for digit in "0123456789":
            _ansi_sequences.ANSI_SEQUENCES_KEYS.pop(f"\x1b{digit}", None)  # type: ignore[attr-defined]


def local_clock(ts: float) -> str:
    return time.strftime("%H:%M", time.localtime(ts))


@dataclass(frozen=True, slots=True)
class AutoLogin:
    """Log in without the login screen (the demo), then show ``room``, joining it if needed."""

    username: str
    password: str
    register: bool = False
    room: str | None = None


class PeerEventPosted(Message):
    """A ``PeerEvent`` carried into the app's message queue."""

    def __init__(self, event: PeerEvent) -> None:
        super().__init__()
        self.event = event


class LogPosted(Message):
    """A log record worth showing (stderr would scribble over the screen)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class ChatApp(App[int]):
    """Sidebar of conversations, message pane, member list, status line and input line."""

    TITLE = "p2pchat"
    ENABLE_COMMAND_PALETTE = False
    AUTO_FOCUS = "ChatInput"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+q", "quit", "Quit", priority=True),
        Binding("ctrl+n", "step(1)", "Next", show=False, priority=True),
        Binding("ctrl+p", "step(-1)", "Previous", show=False, priority=True),
        Binding("pageup", "scroll_log(-1)", show=False),
        Binding("pagedown", "scroll_log(1)", show=False),
        *(Binding(f"alt+{n}", f"jump({n - 1})", show=False, priority=True) for n in range(1, 10)),
    ]
    CSS = """
    #banner {
        dock: top; height: 1; display: none; padding: 0 1;
        background: $error; color: $text; text-style: bold;
    }
    #banner.shown { display: block; }
    #body { height: 1fr; }
    #side { width: 18; }
    #main { width: 1fr; }
    #people { width: 16; }
    .head {
        height: 1; padding: 0 1; text-style: bold;
        background: $primary-muted; color: $text;
    }
    Sidebar { height: 1fr; border: none; padding: 0 0 0 1; background: $panel; }
    #log { height: 1fr; padding: 0 0 0 1; scrollbar-size-vertical: 1; }
    #members-scroll { height: 1fr; padding: 0 0 0 1; background: $panel; }
    #statusbar { height: 1; background: $primary-muted; }
    #status { width: 1fr; padding: 0 1; }
    #keys { width: auto; padding: 0 1; color: $text-muted; }
    #entry { height: 1; }
    #prompt { width: auto; padding: 0 0 0 1; text-style: bold; }
    ChatInput { width: 1fr; }
    """

    def __init__(
        self,
        config: PeerConfig,
        *,
        memory_path: Path | None = None,
        autologin: AutoLogin | None = None,
        node_factory: NodeFactory = PeerNode,
        clock: Callable[[float], str] = local_clock,
        stop: asyncio.Event | None = None,
    ) -> None:
        super().__init__()
        _alt_digits_as_alt()
        self.config = config
        self.memory_path = memory_path
        self.autologin = autologin
        self.node_factory = node_factory
        self.clock = clock
        self.stop = stop
        self.node: PeerNode | None = None
        self.convs = Conversations()
        self.known_rooms: set[str] = set()
        self.known_users: set[str] = set()
        self._jobs: asyncio.Queue[Job] = asyncio.Queue()
        self.pending = 0
        """Commands typed but not finished yet (tests wait for 0)."""
        self._quitting = False
        self._node_closed = False

    # ------------------------------------------------------------------ layout

    def compose(self) -> ComposeResult:
        yield Static(
            "Registry unreachable: chat with linked peers goes on; reconnecting…", id="banner"
        )
        with Horizontal(id="body"):
            with Vertical(id="side"):
                yield Static("conversations", classes="head")
                yield Sidebar(id="sidebar")
            with Vertical(id="main"):
                yield Static(id="title", classes="head")
                log = RichLog(id="log", wrap=True, min_width=20, markup=False)
                log.can_focus = False
                yield log
            with Vertical(id="people"):
                yield Static("members", id="members-head", classes="head")
                with VerticalScroll(id="members-scroll", can_focus=False):
                    yield Static(id="members")
        with Horizontal(id="statusbar"):
            yield Static(id="status")
            yield Static(KEYS_HINT, id="keys")
        with Horizontal(id="entry"):
            yield Static(id="prompt")
            yield ChatInput(self._completions, id="input")

    def on_mount(self) -> None:
        self.run_worker(self._command_loop(), name="commands", exit_on_error=False)
        self.set_interval(1.0, self._refresh_status)
        self._show(HOME)
        self._system("Welcome to p2pchat. /help lists the commands and keys.", HOME)
        if self.stop is not None:
            self.run_worker(self._quit_on(self.stop), exit_on_error=False)
        if self.autologin is not None:
            self.run_worker(self._autologin(self.autologin), exit_on_error=False)
        else:
            self.push_screen(self._login_screen())

    def _login_screen(self) -> LoginScreen:
        remembered = memory.load(self.memory_path)
        cfg, default = self.config, PeerConfig()
        configured = format_address(cfg.registry_host, cfg.registry_port)
        is_default = (cfg.registry_host, cfg.registry_port) == (
            default.registry_host,
            default.registry_port,
        )
        registry = remembered.registry if remembered.registry and is_default else configured
        username = (self.autologin.username if self.autologin else remembered.username) or ""
        return LoginScreen(registry, username, self.login)

    def _show_login(self) -> None:
        if not isinstance(self.screen, LoginScreen):
            self.push_screen(self._login_screen())

    # ------------------------------------------------------------------ logging in and out

    async def login(
        self, registry: str, username: str, password: str, register: bool = False
    ) -> str | None:
        """Log in (registering first if asked); an error sentence, or None on success."""
        from p2pchat.cli import DEFAULT_TCP_PORT, parse_address

        try:
            host, port = parse_address(registry, DEFAULT_TCP_PORT)
        except argparse.ArgumentTypeError as exc:
            return f"registry address {registry!r}: {exc}"
        try:
            node = await self._node_for(host, port)
            if register:
                await node.register(username, password)
            await node.login(username, password)
        except CommandError as exc:
            return str(exc)
        except RegistryError as exc:  # PeerNode lets a refused hello through as is
            return exc.reason
        except OSError as exc:
            return f"cannot listen for peers: {exc}"
        if self.autologin is None:
            memory.save(self.memory_path, format_address(host, port), node.username or username)
        await self._after_login()
        return None

    async def _node_for(self, host: str, port: int) -> PeerNode:
        """The node for this registry; a fresh one if the address changed before logging in."""
        if self._quitting:
            raise CommandError("quitting")
        node = self.node
        if node is not None:
            cfg = node.config
            if (cfg.registry_host, cfg.registry_port) == (host, port):
                return node
            if node.username is not None:
                raise CommandError(f"already logged in as {node.username}")
            await node.close()
        node = self.node_factory(
            replace(self.config, registry_host=host, registry_port=port), self._post_event
        )
        await node.start()
        self.node = node
        return node

    async def _autologin(self, auto: AutoLogin) -> None:
        registry = format_address(self.config.registry_host, self.config.registry_port)
        error = await self.login(registry, auto.username, auto.password, auto.register)
        if error is not None:
            screen = self._login_screen()
            await self.push_screen(screen)
            screen.show_error(error)

    async def _after_login(self) -> None:
        node = self.node
        assert node is not None and node.username is not None
        self._sync_rooms()
        with_room = self.autologin.room if self.autologin else None
        if with_room is not None and node.room_name(with_room) not in node.my_rooms():
            try:
                await node.join_room(with_room)
            except CommandError as exc:
                self._error(f"could not join {with_room}: {exc}", HOME)
            self._sync_rooms()
        rooms = self._my_rooms()
        self._system(
            f"logged in as {node.username}, listening on port {node.port}; "
            f"rooms: {', '.join(rooms) or 'none yet (/rooms, /join ROOM, /create ROOM)'}",
            HOME,
        )
        if isinstance(self.screen, LoginScreen):
            self.pop_screen()
        if with_room is not None and node.room_name(with_room) in node.my_rooms():
            self._show(node.room_name(with_room))
        elif rooms:
            self._show(rooms[0])
        else:
            self._show(HOME)
        self.query_one(ChatInput).focus()
        self._refresh_status()
        with contextlib.suppress(CommandError):
            self.known_rooms.update(r.room for r in await node.list_rooms())

    async def close_node(self) -> None:
        """Log out and close the node (idempotent): every way out goes through here."""
        if self._node_closed:
            return
        self._node_closed = True
        if self.node is not None:
            await self.node.close()

    async def action_quit(self) -> None:
        if self._quitting:
            return
        self._quitting = True
        self.query_one("#status", Static).update("logging out…")
        await self.close_node()
        self.exit(0)

    async def _quit_on(self, stop: asyncio.Event) -> None:
        """A signal or the demo's ``--duration``: the same as Ctrl+Q."""
        await stop.wait()
        await self.action_quit()

    # ------------------------------------------------------------------ peer events

    def _post_event(self, event: PeerEvent) -> None:
        self.post_message(PeerEventPosted(event))

    @on(PeerEventPosted)
    def _on_peer_event(self, message: PeerEventPosted) -> None:
        if self.is_running:  # not while shutting down: the widgets are going away
            self.handle_event(message.event)

    @on(LogPosted)
    def _on_log(self, message: LogPosted) -> None:
        if self.is_running:
            self._system(message.text, HOME)

    def handle_event(self, event: PeerEvent) -> None:
        me = self._me()
        if isinstance(event, RoomText):
            room = self.convs.find(event.room) or event.room
            mention = not event.mine and _mentions(event.text, me)
            line = self._chat_line(event.ts, event.sender, event.text, mention)
            self._add(room, line, unread=not event.mine, mention=mention)
            if not event.mine:
                self._add(HOME, self._home_line(event.ts, event.sender, event.text, event.room))
        elif isinstance(event, DirectText):
            key = self.convs.ensure(dm_key(event.peer)).key
            line = self._chat_line(event.ts, event.sender, event.text, not event.mine)
            self._add(key, line, unread=not event.mine, mention=not event.mine)
            if not event.mine:
                self._add(HOME, self._home_line(event.ts, event.sender, event.text, None))
        elif isinstance(event, Notice):
            self._notice(event)
        elif isinstance(event, RoomsChanged):
            self._sync_rooms()
        elif isinstance(event, Status):
            self._refresh_status()

    def _notice(self, event: Notice) -> None:
        line = Text.assemble(
            (self.clock(time.time()) + " ", "dim"), ("-- " + clean(event.text), "italic")
        )
        room = self.convs.find(event.room) if event.room else None
        if room is not None:
            self._add(room, line)
        elif self.convs.current != HOME:
            self._add(self.convs.current, line)
        self._add(HOME, line)

    # ------------------------------------------------------------------ lines

    def _chat_line(self, ts: float, sender: str, text: str, highlight: bool = False) -> Text:
        line = Text()
        line.append(self.clock(ts) + " ", style="dim")
        line.append(sender, style=f"bold {user_colour(sender)}")
        line.append(": ")
        line.append(clean(text), style="bold" if highlight else "")
        return line

    def _home_line(self, ts: float, sender: str, text: str, room: str | None) -> Text:
        """The assignment's format, kept literally where every conversation is mixed."""
        line = Text()
        line.append(self.clock(ts) + " ", style="dim")
        line.append("Message from ")
        line.append(sender, style=f"bold {user_colour(sender)}")
        if room is not None:
            line.append(" at ")
            line.append(room, style="bold")
        line.append(": " + clean(text))
        return line

    def _system(self, text: str, key: str | None = None, style: str = "") -> None:
        self._add(self._here(key), Text(clean(text), style=style or "cyan"))

    def _error(self, text: str, key: str | None = None) -> None:
        self._add(self._here(key), Text("! " + clean(text), style="bold red"))

    def _here(self, key: str | None) -> str:
        """``key`` if that conversation still exists (a room may have been left meanwhile),
        else the one in view."""
        return (self.convs.find(key) if key else None) or self.convs.current

    def _add(
        self,
        key: str,
        line: Line,
        *,
        unread: bool = False,
        mention: bool = False,
    ) -> None:
        if self.convs.add(key, line, unread=unread, mention=mention):
            log = self.query_one("#log", RichLog)
            # reading further up: stay there; the new line is waiting at the bottom
            _write(log, line, scroll_end=log.is_vertical_scroll_end or log.max_scroll_y == 0)
        elif unread:
            self._refresh_sidebar()

    def lines(self, key: str | None = None) -> list[str]:
        """The plain text of a conversation (the one in view by default)."""
        conv = self.convs.by_key.get(key or self.convs.current)
        return [line.plain for line in conv.lines] if conv else []

    # ------------------------------------------------------------------ showing things

    def _show(self, key: str) -> None:
        conv = self.convs.select(key)
        self._render_log()
        self.query_one("#title", Static).update(self._title(conv.key))
        self.query_one("#prompt", Static).update(Text(f"{label(conv.key)}> ", style="bold"))
        entry = self.query_one(ChatInput)
        entry.placeholder = (
            "type /help, or a message (you will be asked where to send it)"
            if conv.key == HOME
            else f"message {label(conv.key)}  (/help for commands)"
        )
        self._refresh_sidebar()
        self._refresh_members()

    def _render_log(self) -> None:
        log = self.query_one("#log", RichLog)
        log.clear()
        for line in self.convs.by_key[self.convs.current].lines:
            _write(log, line)

    def _title(self, key: str) -> Text:
        if key == HOME:
            return Text("home: notices and every message")
        if is_dm(key):
            return Text(f"{label(key)}: direct, peer to peer")
        return Text(label(key))

    def _refresh_sidebar(self) -> None:
        self.query_one(Sidebar).show(self.convs)

    def _refresh_members(self) -> None:
        head = self.query_one("#members-head", Static)
        body = self.query_one("#members", Static)
        key = self.convs.current
        me = self._me()
        text = Text()
        if key in self._my_rooms():
            roster = self._roster(key)
            head.update(f"members {sum(roster.values())}/{len(roster)}")
            ordered = sorted(roster.items(), key=lambda kv: (not kv[1], kv[0].casefold()))
            for name, online in ordered:
                text.append("● " if online else "○ ", style="green" if online else "dim")
                style = f"bold {user_colour(name)}" if online else "dim"
                if name == me:
                    style += " underline"
                text.append(name, style=style)
                text.append("\n")
        elif is_dm(key):
            head.update("direct")
            text.append(key[1:], style=f"bold {user_colour(key[1:])}")
        else:
            head.update("your rooms")
            for room in self._my_rooms():
                roster = self._roster(room)
                text.append(f"#{room} ", style="bold")
                text.append(f"{sum(roster.values())}/{len(roster)}\n", style="dim")
        body.update(text)

    def _my_rooms(self) -> list[str]:
        return self.node.my_rooms() if self.node else []

    def _roster(self, room: str) -> dict[str, bool]:
        """A room's members and whether each is online."""
        return self.node.roster(room) if self.node else {}

    def _people(self, *, online_only: bool) -> list[str]:
        """Users of our rooms (only those online, if asked) and of our direct chats; not us."""
        people = {
            user
            for room in self._my_rooms()
            for user, online in self._roster(room).items()
            if online or not online_only
        }
        people.update(k[1:] for k in self.convs.by_key if is_dm(k))
        people.discard(self._me() or "")
        return sorted(people, key=str.casefold)

    def _me(self) -> str | None:
        return self.node.username if self.node else None

    def _refresh_status(self) -> None:
        node = self.node
        status = self.query_one("#status", Static)
        banner = self.query_one("#banner", Static)
        if self._quitting:
            return
        if node is None:
            status.update(Text("not logged in", style="dim"))
            banner.remove_class("shown")
            return
        st = node.status()
        cfg = node.config
        text = Text()
        if st.username:
            text.append(st.username, style=f"bold {user_colour(st.username)}")
            text.append(" │ ")
        where = format_address(cfg.registry_host, cfg.registry_port)
        if st.registry:
            text.append("● ", style="bold green")
            text.append(f"registry {where}")
        else:
            text.append("○ ", style="bold red")
            text.append(f"registry {where} down", style="bold red")
        if st.last_heartbeat is not None:
            age = max(0, int(asyncio.get_running_loop().time() - st.last_heartbeat))
            text.append(f" │ ♥ {age}s ago")
        text.append(f" │ {st.links} link{'s' if st.links != 1 else ''}")
        status.update(text)
        keys = self.query_one("#keys", Static)
        keys.display = len(text) + 2 + KEYS_HINT_WIDTH <= self.size.width
        banner.set_class(st.username is not None and not st.registry, "shown")

    def _sync_rooms(self) -> None:
        before = self.convs.current
        if self.convs.sync_rooms(self._my_rooms()) and self.convs.current != before:
            self._show(self.convs.current)
            return
        self._refresh_sidebar()
        self._refresh_members()

    @on(events.Resize)
    def _resized(self) -> None:
        self.call_after_refresh(self._render_log)

    # ------------------------------------------------------------------ keys

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("step", "jump", "scroll_log"):
            return len(self.screen_stack) == 1
        return True

    def action_step(self, delta: int) -> None:
        self._show(self.convs.step(delta))

    def action_jump(self, index: int) -> None:
        keys = self.convs.order()
        if index < len(keys):
            self._show(keys[index])

    def action_scroll_log(self, direction: int) -> None:
        log = self.query_one("#log", RichLog)
        if direction < 0:
            log.scroll_page_up()
        else:
            log.scroll_page_down()

    @on(OptionList.OptionSelected, "#sidebar")
    def _picked(self, event: OptionList.OptionSelected) -> None:
        if event.option_id is not None and event.option_id in self.convs.by_key:
            self._show(event.option_id)
        self.query_one(ChatInput).focus()

    # ------------------------------------------------------------------ input and commands

    @on(Input.Submitted, "#input")
    def _submitted(self, event: Input.Submitted) -> None:
        entry = self.query_one(ChatInput)
        line = event.value
        entry.value = ""
        if not line.strip():
            return
        entry.remember(mask_secret(line.strip()) if line.lstrip().startswith("/") else line)
        # the conversation in view now, not when the job's turn comes (switching meanwhile)
        self.submit(partial(self._execute, line, self.convs.current))

    def submit(self, job: Job) -> None:
        self.pending += 1
        self._jobs.put_nowait(job)

    async def _command_loop(self) -> None:
        while True:
            job = await self._jobs.get()
            try:
                await job()
            except CommandError as exc:
                self._error(str(exc))
            except Exception as exc:  # a bug must not kill the input line
                self.log.error(f"command failed: {exc!r}")
                self._error(f"internal error: {exc!r}")
            finally:
                self.pending -= 1

    def _require_node(self) -> PeerNode:
        if self.node is None:
            raise CommandError("log in first")
        return self.node

    async def _execute(self, line: str, where: str) -> None:
        """One line typed while ``where`` was in view; what it prints goes there."""
        body = line.strip()
        try:
            if not body.startswith("/"):
                if where == HOME:
                    self._ask_target(line)
                else:
                    await commands.send_plain(self._require_node(), where, line)
                return
            self._system(f"» {mask_secret(body)}", where, style="dim")
            await self._command(commands.parse(body), where)
        except CommandError as exc:
            self._error(str(exc), where)

    async def _command(self, command: commands.Command, where: str) -> None:
        if command.name == "quit":
            await self.action_quit()
            return
        if command.name == "help":
            self._add(self._here(where), help_block())
            return
        node = self._require_node()
        try:
            result = await commands.run(node, command)
        finally:
            if command.name == "logout" and node.username is None:
                self._show_login()  # logged out here even if the registry did not answer
        for row in result.rows:
            self._system(row, where, style="default")
        self._system(f"-- {result.summary}", where)
        await self._after_command(command, result)
        if self.convs.find(where) is None:  # /leave of the room in view: say it where we are
            self._system(f"-- {result.summary}")

    async def _after_command(self, command: commands.Command, result: commands.Result) -> None:
        node = self._require_node()
        name = command.name
        if name == "login":
            await self._after_login()
        elif name in ("join", "create"):
            self._sync_rooms()
            room = node.room_name(command.args[0])
            if room in node.my_rooms():
                self._show(room)
                self._system(f"-- {result.summary}; plain lines now go to {label(room)}")
        elif name == "leave":
            self._sync_rooms()
        elif name == "to" and result.target is not None:
            target = result.target
            self._show(dm_key(target[1:]) if target.startswith("@") else target)
        elif name == "rooms":
            self.known_rooms.update(row.split()[0] for row in result.rows if row.strip())
        elif name == "users":
            self.known_users.update(row.split()[0] for row in result.rows if row.strip())

    def _ask_target(self, text: str) -> None:
        self._require_node()

        def chosen(target: str | None) -> None:
            if target is None:
                entry = self.query_one(ChatInput)
                if not entry.value:
                    entry.value = text
                    entry.cursor_position = len(text)
                self._system("not sent; the line is back in the input", style="dim")
                return
            self.submit(partial(self._send_to, target, text))

        screen = TargetScreen(text, self._my_rooms(), self._people(online_only=True))
        self.push_screen(screen, chosen)

    async def _send_to(self, target: str, text: str) -> None:
        """The answer to "send where?" (a room of ours, or ``@user``): send, then go there."""
        await commands.send_plain(self._require_node(), target, text)
        self._show(dm_key(target[1:]) if target.startswith("@") else target)

    def _completions(self) -> tuple[list[str], list[str]]:
        rooms = self.known_rooms.union(self._my_rooms())
        users = self.known_users.union(self._people(online_only=False))
        users.discard(self._me() or "")
        return sorted(rooms), sorted(users)


def _write(log: RichLog, line: Line, scroll_end: bool | None = None) -> None:
    log.write(line.renderable if isinstance(line, Block) else line, scroll_end=scroll_end)


def _mentions(text: str, me: str | None) -> bool:
    return (
        me is not None
        and re.search(rf"(?<![\w.-]){re.escape(me)}(?![\w-])", text, re.I) is not None
    )
