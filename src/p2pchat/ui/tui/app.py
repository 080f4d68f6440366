"""The full-screen chat client: a Textual app that consumes peer events and issues commands.

It never touches sockets. The ``PeerNode`` runs on the app's own event loop; its events are
posted into the app as messages. Lines are taken in the order typed (see ``widgets.py``):
commands run one after another in one worker, while every message sent is shown at once,
with its state, and goes in a task of its own, so a slow peer never holds back the next line.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any, ClassVar

from rich.console import RenderableType
from rich.rule import Rule
from rich.table import Table
from rich.text import Text
from textual import events, on
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.css.query import NoMatches
from textual.message import Message
from textual.timer import Timer
from textual.widgets import Input, OptionList, Static

from p2pchat.address import AddressError, format_address, parse_address
from p2pchat.peer.events import (
    CommandError,
    DirectText,
    DirectUpdate,
    Notice,
    PeerEvent,
    RoomsChanged,
    RoomText,
    Status,
)
from p2pchat.peer.node import PeerConfig, PeerNode
from p2pchat.ui import commands
from p2pchat.ui.text import safe
from p2pchat.ui.tui import memory
from p2pchat.ui.tui.screens import LoginScreen
from p2pchat.ui.tui.state import (
    HOME,
    MAX_LINES,
    Block,
    Conversations,
    Delivery,
    Divider,
    Line,
    Outgoing,
    Picker,
    dm_key,
    is_dm,
    label,
    local_day,
    mask_secret,
    plain,
    user_colour,
)
from p2pchat.ui.tui.widgets import (
    BURST,
    COUNT_FROM,
    MAX_PASTE_LINES,
    ChatInput,
    ChatLog,
    Sidebar,
)

NodeFactory = Callable[[PeerConfig, Callable[[PeerEvent], None]], PeerNode]
Job = Callable[[], Awaitable[None]]

MAX_SENDING = 100
HISTORY_ON_OPEN = 50
"""Messages of a room shown from the local history when its conversation opens."""
"""Messages waiting to go or on their way at once; more fail at once, to be sent again."""
QUIT_SECONDS = 5.0
"""Ctrl+Q waits this long for the peer to log out and close its links, then leaves anyway."""
BELL_GAP = 1.0
"""At most one bell a second, however many mentions arrive together."""

KEYS_HELP = (
    ("Ctrl+N / Ctrl+P", "next / previous conversation"),
    ("Alt+1..9", "jump to a conversation by its number (numbers never move)"),
    ("Tab", "complete a command, room or name; again: the next match"),
    ("Up / Down", "walk the history"),
    ("PgUp / PgDn", "scroll the conversation (Ctrl+End: back to the bottom)"),
    ("Ctrl+R", "send again the messages that failed here"),
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


def _resume_only_after_suspend(app: App[Any]) -> None:
    """Textual's terminal driver takes every SIGCONT as the end of its own Ctrl+Z and starts
    the terminal again: after a SIGSTOP from outside (a debugger, ``kill -STOP``, a frozen
    session) a second thread then reads the keys beside the first, which splits escape
    sequences between them and outlives the app (a key typed after quitting is posted to a
    closed loop: "coroutine 'MessagePump._post_message' was never awaited"). Let SIGCONT
    through only after a SIGTSTP; otherwise just redraw.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    on_stop, on_cont = signal.getsignal(signal.SIGTSTP), signal.getsignal(signal.SIGCONT)
    if not (callable(on_stop) and callable(on_cont)):
        return  # no terminal driver (headless): nothing to guard
    suspended = False
    loop = asyncio.get_running_loop()

    def stopping(signum: int, frame: FrameType | None) -> None:
        nonlocal suspended
        suspended = True
        on_stop(signum, frame)

    def continuing(signum: int, frame: FrameType | None) -> None:
        nonlocal suspended
        if suspended:
            suspended = False
            on_cont(signum, frame)
        else:
            loop.call_soon_threadsafe(app.refresh)

    signal.signal(signal.SIGTSTP, stopping)
    signal.signal(signal.SIGCONT, continuing)


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


class ChatApp(App[int]):
    """Sidebar of conversations, message pane, member list, status line and input line."""

    TITLE = "p2pchat"
    ENABLE_COMMAND_PALETTE = False
    AUTO_FOCUS = "ChatInput"
    # Only Ctrl+Q acts as the key arrives; every other key waits its turn behind the keys
    # typed before it (the input line runs them in order: see widgets.OrderedInput).
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+q", "quit", "Quit", priority=True),
        Binding("ctrl+n", "step(1)", "Next", show=False),
        Binding("ctrl+p", "step(-1)", "Previous", show=False),
        Binding("ctrl+r", "resend", "Resend", show=False),
        Binding("escape", "cancel_pick", show=False),
        *(Binding(f"alt+{n}", f"jump({n})", show=False) for n in range(1, 10)),
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
    #below { height: 1; display: none; padding: 0 1; background: $accent; color: $text; }
    #below.shown { display: block; }
    #members-scroll { height: 1fr; padding: 0 0 0 1; background: $panel; }
    #picker {
        height: auto; max-height: 12; display: none; padding: 0 1;
        background: $surface; border-top: solid $accent;
    }
    #picker.shown { display: block; }
    #statusbar { height: 1; background: $primary-muted; }
    #status { width: 1fr; padding: 0 1; }
    #keys { width: auto; padding: 0 1; color: $text-muted; }
    #entry { height: 1; }
    #prompt { width: auto; padding: 0 0 0 1; text-style: bold; }
    ChatInput { width: 1fr; }
    #count { width: auto; padding: 0 1; display: none; }
    #count.shown { display: block; }
    """

    def __init__(
        self,
        config: PeerConfig,
        *,
        memory_path: Path | None = None,
        autologin: AutoLogin | None = None,
        node_factory: NodeFactory = PeerNode,
        clock: Callable[[float], str] = local_clock,
        day: Callable[[float], str] = local_day,
        stop: asyncio.Event | None = None,
        bell: bool = True,
    ) -> None:
        super().__init__()
        _alt_digits_as_alt()
        self.config = config
        self.memory_path = memory_path
        self.autologin = autologin
        self.node_factory = node_factory
        self.clock = clock
        self.day = day
        self.stop = stop
        self.ring = bell
        """Ring the terminal bell for direct messages and lines that name us."""
        self.node: PeerNode | None = None
        self.convs = Conversations(day)
        self.known_rooms: set[str] = set()
        self.known_users: set[str] = set()
        self.picker: Picker | None = None
        self._jobs: asyncio.Queue[Job] = asyncio.Queue()
        self._sending: set[asyncio.Task[None]] = set()
        self._outstanding = 0
        """Messages accepted and not finished (queued or on their way): at most MAX_SENDING."""
        self.pending = 0
        """Commands typed but not finished yet, and messages still on their way (tests wait
        for 0)."""
        self._quitting = False
        self._node_closed = False
        self._status_timer: Timer | None = None
        self._last_bell = float("-inf")
        self._keys_seen = 0
        self.session_user: str | None = None
        """Whose conversations are on screen: another login starts from nothing."""

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
                yield ChatLog(self._render_line, id="log")
                yield Static(id="below")
            with Vertical(id="people"):
                yield Static("members", id="members-head", classes="head")
                with VerticalScroll(id="members-scroll", can_focus=False):
                    yield Static(id="members")
        yield Static(id="picker")
        with Horizontal(id="statusbar"):
            yield Static(id="status")
            yield Static(KEYS_HINT, id="keys")
        with Horizontal(id="entry"):
            yield Static(id="prompt")
            yield ChatInput(self._completions, self._line, self._input_notice, id="input")
            yield Static(id="count")

    def on_mount(self) -> None:
        _resume_only_after_suspend(self)
        self.run_worker(self._command_loop(), name="commands", exit_on_error=False)
        self._status_timer = self.set_interval(1.0, self._refresh_status)
        self.query_one(ChatLog).on_below = self._below_changed
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
        try:
            host, port = parse_address(registry)
        except AddressError as exc:
            return f"registry address {registry!r}: {exc}"
        try:
            node = await self._node_for(host, port)
            if register:
                await node.register(username, password)
            await node.login(username, password)
        except CommandError as exc:
            return str(exc)
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

    def _new_session(self) -> None:
        """Nothing of the previous user stays on screen: conversations, what they typed,
        what they knew, the messages they were still sending."""
        for task in list(self._sending):
            task.cancel()
        self.convs = Conversations(self.day)
        self.known_rooms.clear()
        self.known_users.clear()
        self.query_one(ChatInput).history.clear()
        self._close_picker()
        self.session_user = None
        self._show(HOME)

    async def _after_login(self) -> None:
        node = self.node
        assert node is not None and node.username is not None
        if self.session_user != node.username:
            if self.session_user is not None:
                self._new_session()
            self.session_user = node.username
        self._sync_rooms()
        auto = self.autologin
        with_room = auto.room if auto and auto.username == node.username else None
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

    def _logged_out(self) -> None:
        self._new_session()
        self._show_login()

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
        if self._status_timer is not None:
            self._status_timer.stop()
        self.query_one("#status", Static).update("logging out…")
        # a peer that cannot finish closing (its registry gone, a link stuck) must not keep
        # the user in: after a while, leave anyway
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.close_node(), QUIT_SECONDS)
        self.exit(0)

    async def _quit_on(self, stop: asyncio.Event) -> None:
        """A signal or the demo's ``--duration``: the same as Ctrl+Q."""
        await stop.wait()
        await self.action_quit()

    async def on_event(self, event: events.Event) -> None:
        # a paste without bracketed paste arrives as thousands of keys at once, and Textual
        # handles queued events without letting anything else run: give the peer (heartbeats,
        # links, the registry) a turn every BURST keys, as the input line does
        if isinstance(event, events.Key):
            self._keys_seen += 1
            if self._keys_seen % BURST == 0:
                await asyncio.sleep(0)
        await super().on_event(event)

    # ------------------------------------------------------------------ peer events

    def _post_event(self, event: PeerEvent) -> None:
        self.post_message(PeerEventPosted(event))

    @on(PeerEventPosted)
    def _on_peer_event(self, message: PeerEventPosted) -> None:
        if self.is_running and not self._quitting:  # the widgets are going away
            self.handle_event(message.event)

    @on(LogPosted)
    def _on_log(self, message: LogPosted) -> None:
        if self.is_running and not self._quitting:
            self._system(message.text, HOME)

    def handle_event(self, event: PeerEvent) -> None:
        me = self._me()
        if isinstance(event, RoomText):
            if event.mine:  # shown when typed, with its state
                return
            room = self.convs.find(event.room) or self._open_room(event.room)
            if (event.sender, event.ts, event.text) in self.convs.by_key[room].from_history:
                return  # shown already, from the history when the room opened
            mention = _mentions(event.text, me)
            line = self._chat_line(event.ts, event.sender, event.text, mention)
            self._add(room, line, ts=event.ts, unread=True, mention=mention)
            self._add(HOME, self._home_line(event.ts, event.sender, event.text, event.room))
            if mention:
                self._ring()
        elif isinstance(event, DirectUpdate):
            self._direct_update(event)
        elif isinstance(event, DirectText):
            if event.mine:
                return
            key = self.convs.ensure(dm_key(event.peer)).key
            line = self._chat_line(event.ts, event.sender, event.text, True)
            self._add(key, line, ts=event.ts, unread=True, mention=True)
            self._add(HOME, self._home_line(event.ts, event.sender, event.text, None))
            self._ring()
        elif isinstance(event, Notice):
            self._notice(event)
        elif isinstance(event, RoomsChanged):
            self._sync_rooms()
        elif isinstance(event, Status):
            self._refresh_status()

    def _ring(self) -> None:
        now = time.monotonic()
        if self.ring and now - self._last_bell >= BELL_GAP:
            self._last_bell = now
            self.bell()

    def _notice(self, event: Notice) -> None:
        now = time.time()
        line = Text.assemble((self.clock(now) + " ", "dim"), ("-- " + safe(event.text), "italic"))
        room = self.convs.find(event.room) if event.room else None
        if room is not None:
            self._add(room, line, ts=now)
        elif self.convs.current != HOME:
            self._add(self.convs.current, line, ts=now)
        self._add(HOME, line, ts=now)

    # ------------------------------------------------------------------ lines

    def _chat_line(self, ts: float, sender: str, text: str, highlight: bool = False) -> Text:
        line = Text()
        line.append(self.clock(ts) + " ", style="dim")
        if commands.is_action(text):
            line.append("* ", style="bold")
            line.append(sender, style=f"bold {user_colour(sender)}")
            line.append(" " + safe(text[len(commands.ACTION) :]), style="italic")
            return line
        line.append(sender, style=f"bold {user_colour(sender)}")
        line.append(": ")
        line.append(safe(text), style="bold" if highlight else "")
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
        line.append(": " + safe(text))
        return line

    def _render_line(self, line: Line) -> RenderableType:
        """What the log draws for a line; sent messages show their state after the text."""
        if isinstance(line, Block):
            return line.renderable
        if isinstance(line, Divider):
            return Rule(line.text, style="bold red" if line.unread else "dim")
        if isinstance(line, Outgoing):
            text = self._chat_line(line.ts, self.session_user or "me", line.text)
            if line.state is Delivery.SENDING:
                text.append(" …", style="dim")
            elif line.state is Delivery.SENT:
                text.append(" ✓", style="green")
                if line.detail:
                    text.append(f" {line.detail}", style="dim")
            elif line.state is Delivery.DELIVERED:
                text.append(" ✓✓", style="green")
            elif line.state is Delivery.QUEUED:
                text.append(f" ⧗ queued: {safe(line.detail)}", style="yellow")
            else:
                text.append(f" ✗ {safe(line.detail)}; ^R sends it again", style="bold red")
            return text
        return line

    def _system(self, text: str, key: str | None = None, style: str = "") -> None:
        self._add(self._here(key), Text(safe(text), style=style or "cyan"))

    def _error(self, text: str, key: str | None = None) -> None:
        self._add(self._here(key), Text("! " + safe(text), style="bold red"))

    def _here(self, key: str | None) -> str:
        """``key`` if that conversation still exists (a room may have been left meanwhile),
        else the one in view."""
        return (self.convs.find(key) if key else None) or self.convs.current

    def _add(
        self,
        key: str,
        line: Line,
        *,
        ts: float | None = None,
        unread: bool = False,
        mention: bool = False,
        follow: bool = False,
    ) -> None:
        shown = self.convs.add(key, line, ts=ts, unread=unread, mention=mention)
        if shown:
            log = self.query_one(ChatLog)
            log.append(shown, follow=follow)
            log.trim(MAX_LINES + 1)
        elif unread:
            self._refresh_sidebar()

    def lines(self, key: str | None = None) -> list[str]:
        """The plain text of a conversation (the one in view by default), as drawn."""
        conv = self.convs.by_key.get(key or self.convs.current)
        if conv is None:
            return []
        out = []
        for line in conv.lines:
            drawn = self._render_line(line)
            out.append(drawn.plain if isinstance(drawn, Text) else plain(line))
        return out

    # ------------------------------------------------------------------ showing things

    def _show(self, key: str) -> None:
        conv = self.convs.select(key)
        lines = self.convs.view()
        first_new = next(
            (i for i, x in enumerate(lines) if isinstance(x, Divider) and x.unread), None
        )
        self.query_one(ChatLog).show(lines, first_new=first_new)
        self.query_one("#title", Static).update(self._title(conv.key))
        self._refresh_prompt()
        self._refresh_sidebar()
        self._refresh_members()

    def _refresh_prompt(self) -> None:
        key = self.convs.current
        entry = self.query_one(ChatInput)
        if self.picker is not None:
            prompt = "to? "
            entry.placeholder = "a room or @user (Up/Down pick, Enter sends, Esc keeps it)"
        else:
            prompt = f"{label(key)}> "
            entry.placeholder = (
                "type /help, or a message (you will be asked where to send it)"
                if key == HOME
                else f"message {label(key)}  (/help for commands)"
            )
        self.query_one("#prompt", Static).update(Text(prompt, style="bold"))

    def _title(self, key: str) -> Text:
        if key == HOME:
            return Text("home: notices and every message")
        if is_dm(key):
            return Text(f"{label(key)}: direct, peer to peer")
        return Text(label(key))

    def _below_changed(self, count: int) -> None:
        below = self.query_one("#below", Static)
        below.set_class(count > 0, "shown")
        if count:
            s = "s" if count != 1 else ""
            below.update(f"▼ {count} new line{s} below: PgDn or Ctrl+End")

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
        # the 1 s timer is stopped when quitting begins; a late call finds nothing to update
        if self._quitting or not self.is_running:
            return
        try:
            status = self.query_one("#status", Static)
            banner = self.query_one("#banner", Static)
        except NoMatches:  # the app is closing some other way: its widgets are gone
            return
        node = self.node
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

    def _open_room(self, room: str) -> str:
        """A room's conversation, made with the room's recent history kept here (shown when
        it opens, also after a restart)."""
        conv = self.convs.ensure(room)
        node = self.node
        if node is None or conv.lines:
            return conv.key
        kept = node.history(room, HISTORY_ON_OPEN)
        for m in kept:
            conv.from_history.add((m.sender, m.ts, m.text))
            line = self._chat_line(m.ts, m.sender, m.text)
            line.stylize("dim")
            self._add(conv.key, line, ts=m.ts)
        if kept:
            self._add(conv.key, Divider("history kept on this machine, above"))
        return conv.key

    def _sync_rooms(self) -> None:
        before = self.convs.current
        for room in self._my_rooms():
            if self.convs.find(room) is None:
                self._open_room(room)
        if self.convs.sync_rooms(self._my_rooms()) and self.convs.current != before:
            self._show(self.convs.current)
            return
        self._refresh_sidebar()
        self._refresh_members()

    # ------------------------------------------------------------------ keys

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("step", "jump", "scroll_log", "resend", "cancel_pick"):
            return len(self.screen_stack) == 1
        return True

    def action_step(self, delta: int) -> None:
        self._show(self.convs.step(delta))

    def action_jump(self, number: int) -> None:
        key = self.convs.numbered(number)
        if key is None:
            self.bell()
        else:
            self._show(key)

    def action_scroll_log(self, direction: int) -> None:
        log = self.query_one(ChatLog)
        if direction:
            log.page(direction)
        else:
            log.to_bottom()

    def action_resend(self) -> None:
        failed = self.convs.failed(self.convs.current)
        if not failed:
            self.bell()
        kept = [out for out in failed if out.id is not None]
        for out in failed:
            if out.id is None:  # never kept by the peer: send it anew
                out.settle(Delivery.SENDING)
                self._start(out)
            else:
                out.settle(Delivery.QUEUED, "sent again when they can be reached")
            self._changed(out)
        if kept:  # kept in the outbox: sent again with the same ids (never shown twice)
            self.submit(partial(self._resend, kept, self.convs))

    async def _resend(self, outs: list[Outgoing], convs: Conversations) -> None:
        if convs is not self.convs or self.node is None:
            return
        try:
            await self.node.resend_direct(outs[0].key[1:])
        except CommandError as exc:
            for out in outs:
                out.settle(Delivery.FAILED, str(exc))
                self._changed(out)

    def _direct_update(self, event: DirectUpdate) -> None:
        """A direct message's state changed after /msg answered: update its line in place."""
        key = self.convs.ensure(dm_key(event.peer)).key
        conv = self.convs.by_key[key]
        out = next((x for x in conv.lines if isinstance(x, Outgoing) and x.id == event.id), None)
        if out is None:  # sent before a restart: say what became of it
            verb = "delivered" if event.state == "delivered" else "not delivered"
            why = f" ({event.reason}; ^R there sends it again)" if event.reason else ""
            self._system(f"-- {verb} to {event.peer}: {event.text}{why}", key)
            return
        if event.state == "delivered":
            out.settle(Delivery.DELIVERED)
        else:
            out.settle(Delivery.FAILED, event.reason)
        self._changed(out)

    @on(OptionList.OptionSelected, "#sidebar")
    def _picked(self, event: OptionList.OptionSelected) -> None:
        if event.option_id is not None and event.option_id in self.convs.by_key:
            self._show(event.option_id)
        self.query_one(ChatInput).focus()

    # ------------------------------------------------------------------ input

    def _input_notice(self, text: str) -> None:
        self._error(text)

    @on(Input.Changed, "#input")
    def _typed(self, event: Input.Changed) -> None:
        entry = self.query_one(ChatInput)
        count = self.query_one("#count", Static)
        used = entry.bytes_used()
        count.set_class(used >= COUNT_FROM, "shown")
        if used >= COUNT_FROM:
            style = "bold red" if used >= entry.limit else "bold yellow"
            count.update(Text(f"{used}/{entry.limit}", style=style))
        if self.picker is not None:
            self.picker.typed(entry.value)  # now, not as it was when the event left
            self._draw_picker()

    def _line(self, line: str, pasted: bool) -> None:
        """A line handed over by the input, in the order typed (see ``widgets.py``)."""
        entry = self.query_one(ChatInput)
        if self.picker is not None:
            if pasted and len(self.picker.texts) >= MAX_PASTE_LINES:
                self._error(f"at most {MAX_PASTE_LINES} lines wait for a destination")
            elif pasted:
                self.picker.texts.append(line)
                self._draw_picker()
            else:
                self._answer_pick(line)
            return
        if not line.strip():
            return
        body = line.strip()
        entry.remember(mask_secret(body) if body.startswith("/") else line)
        where = self.convs.current
        text = commands.plain_text(line)
        if text is not None:
            if where == HOME:
                self._ask_where(text)
            else:
                self._send(where, text)
            return
        echo = f"» {mask_secret(body)}"
        try:
            command = commands.parse(body)
        except CommandError as exc:
            self._system(echo, where, style="dim")
            self._error(str(exc), where)
            return
        if not self._sends_here(command, where):  # else the line sent shows it
            self._system(echo, where, style="dim")
        try:
            self._typed_command(command, where)
        except CommandError as exc:
            self._error(str(exc), where)

    def _sends_here(self, command: commands.Command, where: str) -> bool:
        if command.name == "me":
            return where != HOME
        if command.name == "say":
            return self._room(command.args[0]) == where
        if command.name == "msg":
            return self.convs.find(dm_key(command.args[0])) == where
        return False

    def _typed_command(self, command: commands.Command, where: str) -> None:
        """Commands that act on the screen at once, or send a message; the rest queue up."""
        name = command.name
        if name == "quit":
            self.run_worker(self.action_quit(), exit_on_error=False)
        elif name == "help":
            self._add(where, help_block())
        elif name == "clear":
            self.convs.clear(where)
            self._show(where)
        elif name == "me":
            if where == HOME:
                raise CommandError("/me goes to the conversation in view: open a room first")
            self._send(where, commands.ACTION + command.text)
        elif name == "say" and (room := self._room(command.args[0])) is not None:
            self._send(room, command.text)
        elif name == "msg" and self._me() is not None:
            user = command.args[0]
            if user.casefold() == (self._me() or "").casefold():
                raise CommandError("that is you")
            self._send(self.convs.ensure(dm_key(user)).key, command.text)
        else:
            self.submit(partial(self._command, command, where))

    def _room(self, room: str) -> str | None:
        """Our spelling of a room we are in, else None."""
        node = self.node
        if node is None:
            return None
        name = node.room_name(room)
        return name if name in node.my_rooms() else None

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

    async def _command(self, command: commands.Command, where: str) -> None:
        node = self._require_node()
        target = None if where == HOME else where
        try:
            result = await commands.run(node, command, target)
        except CommandError as exc:
            self._error(str(exc), where)
            return
        finally:
            if command.name == "logout" and node.username is None:
                self._logged_out()  # logged out here even if the registry did not answer
        if command.name == "logout":
            return
        for row in result.rows:
            self._system(row, where, style="default")
        self._system(f"-- {result.summary}", where)
        await self._after_command(command, result)
        if self.convs.find(where) is None:  # /leave of the room in view: say it where we are
            self._system(f"-- {result.summary}")

    async def _after_command(self, command: commands.Command, result: commands.Result) -> None:
        name = command.name
        if name == "login":
            await self._after_login()
        elif name in ("join", "create"):
            self._sync_rooms()
            if result.room is not None and self._room(result.room) is not None:
                self._show(result.room)
                self._system(f"-- {result.summary}; plain lines now go to {label(result.room)}")
        elif name == "leave":
            self._sync_rooms()
        elif name == "to" and result.target is not None:
            target = result.target
            self._show(dm_key(target[1:]) if target.startswith("@") else target)
        self.known_rooms.update(r.room for r in result.rooms)
        self.known_users.update(u.username for u in result.users)
        self.known_users.update(m.username for m in result.members)
        if result.user is not None:
            self.known_users.add(result.user)

    # ------------------------------------------------------------------ sending

    def _send(self, key: str, text: str) -> None:
        """Show the line at once, as sending, where it goes; send it in a task of its own."""
        key = self.convs.ensure(key).key
        out = Outgoing(key, text, time.time())
        self._add(key, out, ts=out.ts, follow=key == self.convs.current)
        self._start(out)

    def _start(self, out: Outgoing) -> None:
        if self._outstanding >= MAX_SENDING:
            out.settle(Delivery.FAILED, "too many messages still on their way")
            self._changed(out)
            return
        self._outstanding += 1
        # through the command queue: a line typed after a command goes after it (a /join
        # before a line to that room), but no message waits for an earlier message
        self.submit(partial(self._launch, out, self.convs))

    async def _launch(self, out: Outgoing, convs: Conversations) -> None:
        if convs is not self.convs:  # logged out meanwhile
            self._outstanding -= 1
            return
        self.pending += 1
        task = asyncio.create_task(self._deliver(out, convs))
        self._sending.add(task)
        task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[Any]) -> None:
        self._sending.discard(task)
        self._outstanding -= 1
        self.pending -= 1

    async def _deliver(self, out: Outgoing, convs: Conversations) -> None:
        try:
            result = await commands.send_plain(self._require_node(), out.key, out.text)
        except CommandError as exc:
            out.settle(Delivery.FAILED, str(exc))
        except Exception as exc:  # a bug must not leave the line "sending" for ever
            self.log.error(f"send failed: {exc!r}")
            out.settle(Delivery.FAILED, f"internal error: {exc!r}")
        else:
            sent = result.direct
            if sent is not None:
                out.id = sent.id
                if sent.delivered:
                    out.settle(Delivery.DELIVERED)
                else:
                    out.settle(Delivery.QUEUED, sent.reason)
            else:
                out.settle(Delivery.SENT, "" if result.links else "(nobody linked now)")
        if convs is self.convs and not self._quitting:
            self._changed(out)
            if out.state is Delivery.FAILED and out.key != self.convs.current:
                self._error(f"not sent to {label(out.key)}: {out.detail}; ^R there sends it again")

    def _changed(self, out: Outgoing) -> None:
        if out.key == self.convs.current:
            self.query_one(ChatLog).changed(out)

    # ------------------------------------------------------------------ where does it go

    def _ask_where(self, text: str) -> None:
        if self.node is None or self.node.username is None:
            self._error("log in first")
            return
        self.picker = Picker([text], self._my_rooms(), self._people(online_only=False))
        self.query_one(ChatInput).picking = self._pick_move
        self._refresh_prompt()
        self._draw_picker()

    def _pick_move(self, delta: int) -> bool:
        if self.picker is None:
            return False
        self.picker.move(delta, self.query_one(ChatInput).value)
        self._draw_picker()
        return True

    def action_cancel_pick(self) -> None:
        picker = self.picker
        if picker is None:
            return
        self._close_picker()
        entry = self.query_one(ChatInput)
        for text in picker.texts[:-1]:
            entry.remember(text)
        entry.value = picker.texts[-1]
        entry.cursor_position = len(entry.value)
        more = len(picker.texts) - 1
        also = f"; {more} more in the history (Up)" if more else ""
        self._system(f"not sent; the line is back in the input{also}", style="dim")

    def _answer_pick(self, typed: str) -> None:
        picker = self.picker
        assert picker is not None
        target = picker.answer(typed)
        if target is None:
            self._retry_pick(typed)
            return
        if target.startswith("@") and target[1:].casefold() not in (
            u.casefold() for u in picker.users
        ):
            self.submit(partial(self._check_user, target[1:], typed))
            return
        self._picked_target(target)

    def _retry_pick(self, typed: str) -> None:
        """The answer goes back in the input to be corrected, the error showing."""
        if self.picker is not None:
            self.picker.last = typed  # putting it back is not a change that clears the error
        entry = self.query_one(ChatInput)
        entry.value = typed
        entry.cursor_position = len(typed)
        self._draw_picker()

    async def _check_user(self, user: str, typed: str) -> None:
        """A ``@name`` not among the people we know: send only if the registry knows it."""
        picker = self.picker
        try:
            found = await self._require_node().search(user)
        except CommandError as exc:
            if self.picker is picker and picker is not None:
                picker.error = f"{exc}; pick another, or Esc to keep the line"
                self._retry_pick(typed)
            return
        if self.picker is picker:
            self._picked_target(f"@{found.username}")

    def _picked_target(self, target: str) -> None:
        picker = self.picker
        assert picker is not None
        self._close_picker()
        key = self.convs.ensure(dm_key(target[1:]) if target.startswith("@") else target).key
        self._show(key)
        for text in picker.texts:
            self._send(key, text)

    def _close_picker(self) -> None:
        self.picker = None
        self.query_one(ChatInput).picking = None
        self.query_one("#picker", Static).remove_class("shown")
        self._refresh_prompt()

    def _draw_picker(self) -> None:
        picker = self.picker
        if picker is None:
            return
        typed = self.query_one(ChatInput).value
        text = Text()
        first = picker.texts[0]
        shown = first if len(first) <= 50 else first[:49] + "…"
        text.append("Send “", style="bold")
        text.append(safe(shown))
        more = len(picker.texts) - 1
        if more:
            text.append(f"” and {commands.plural(more, 'more line')}", style="bold")
        else:
            text.append("”", style="bold")
        text.append(" to a room or a peer?\n", style="bold")
        choices = picker.choices(typed)
        if not choices:
            text.append("  (nothing matches; @name sends to any user)\n", style="dim")
        start = max(0, min(picker.highlighted - 3, len(choices) - 7))
        for i, choice in enumerate(choices[start : start + 7], start):
            mark = "▸ " if i == picker.highlighted else "  "
            text.append(mark + choice + "\n", style="reverse" if i == picker.highlighted else "")
        if picker.error:
            text.append(safe(picker.error) + "\n", style="bold red")
        text.append("Up/Down and Enter pick; or type a name. Esc: don't send.", style="dim")
        widget = self.query_one("#picker", Static)
        widget.update(text)
        widget.add_class("shown")

    def _completions(self) -> tuple[list[str], list[str]]:
        rooms = self.known_rooms.union(self._my_rooms())
        users = self.known_users.union(self._people(online_only=False))
        users.discard(self._me() or "")
        return sorted(rooms), sorted(users)

    @on(events.Resize)
    def _resized(self) -> None:
        self._refresh_status()


def _mentions(text: str, me: str | None) -> bool:
    return (
        me is not None
        and re.search(rf"(?<![\w.-]){re.escape(me)}(?![\w-])", text, re.I) is not None
    )
