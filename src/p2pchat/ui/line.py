"""Line mode: commands on standard input, one event per line on standard output.

This is the contract scripts and tests rely on: every command's output ends with exactly one
line starting ``ok:`` or ``error:``; incoming messages use the assignment's two formats; every
other unrequested line starts with ``* ``. No prompt, no colour, a flush after every line.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import TextIO

from p2pchat.peer.events import (
    CommandError,
    DirectText,
    DirectUpdate,
    Notice,
    PeerEvent,
    RoomText,
)
from p2pchat.peer.node import PeerConfig, PeerNode
from p2pchat.ui import commands, exits
from p2pchat.ui.text import safe


def format_event(event: PeerEvent) -> str | None:
    """The one line line-mode prints for an event, or None. Always exactly one line."""
    if isinstance(event, RoomText):
        if event.mine:
            return None
        return safe(f"Message from {event.sender} at {event.room}: {event.text}")
    if isinstance(event, DirectText):
        if event.mine:
            return None
        return safe(f"Message from {event.sender}: {event.text}")
    if isinstance(event, DirectUpdate):
        if event.state == "delivered":
            return safe(f"* delivered to {event.peer}: {event.text}")
        return safe(f"* not delivered to {event.peer}: {event.text} ({event.reason}); /resend")
    if isinstance(event, Notice):
        return safe(f"* {event.text}")
    return None


NO_TARGET = (
    "no conversation chosen: use /to ROOM or /to @USER first, or /say ROOM TEXT or /msg USER TEXT"
)


class LineUI:
    """Reads commands, runs them on the node, writes results and events."""

    def __init__(self, out: TextIO, interactive: bool) -> None:
        self.out = out
        self.interactive = interactive
        self.node: PeerNode | None = None
        self.target: str | None = None
        self.failures = 0
        """Commands answered ``error:``: the exit status says whether there were any."""
        self._pending_text: str | None = None

    def write(self, line: str) -> None:
        """One line out, whatever ``line`` holds (names and reasons come from the network)."""
        self.out.write(safe(line) + "\n")
        self.out.flush()

    def on_event(self, event: PeerEvent) -> None:
        line = format_event(event)
        if line is not None:
            self.write(line)

    async def handle(self, line: str) -> bool:
        """Handle one input line; False once the user asked to quit."""
        assert self.node is not None
        line = line.rstrip("\r\n")
        if self._pending_text is None and not line.strip():
            return True
        try:
            text = commands.plain_text(line)
            if self._pending_text is not None:
                result = await self._answer_target(line.strip())
            elif text is None:
                command = commands.parse(line)
                if command.name == "clear":
                    raise CommandError("/clear empties a conversation of the terminal UI")
                result = await commands.run(self.node, command, self.target)
            elif self.target is not None:
                result = await commands.send_plain(self.node, self.target, text)
            elif self.interactive:
                self._pending_text = text
                self.write(self._question())
                return True
            else:
                raise CommandError(NO_TARGET)
        except CommandError as exc:
            self.failures += 1
            self.write(f"error: {exc}")
            return True
        for row in result.rows:
            self.write(row)
        if result.target is not None:
            self.target = result.target
        self.write(f"ok: {result.summary}")
        return not result.quit

    def _question(self) -> str:
        assert self.node is not None
        rooms = ", ".join(self.node.my_rooms())
        choices = f"a room ({rooms})" if rooms else "a room name"
        return (
            "Send to a room or to a peer? "
            f"Type {choices}, or @user for a peer; an empty line does not send it:"
        )

    async def _answer_target(self, answer: str) -> commands.Result:
        assert self.node is not None
        text, self._pending_text = self._pending_text or "", None
        if answer.lower().startswith("/to "):
            answer = answer[4:].strip()
        answer = answer.removeprefix("#")
        if not answer or answer == "@":
            raise CommandError("message not sent: no room or peer given")
        if answer.startswith("@"):
            target = answer
        else:
            try:
                target = await commands.room_of_mine(self.node, answer)
            except CommandError as exc:
                raise CommandError(f"{exc}; message not sent") from None
        result = await commands.send_plain(self.node, target, text)
        self.target = target
        return result


def stdin_lines(loop: asyncio.AbstractEventLoop) -> asyncio.Queue[str | None]:
    """Standard input, read by a thread so that pipes, files and terminals all work.

    None marks the end of input. The thread may outlive the loop at exit: it then stops
    quietly instead of failing on a closed loop.
    """
    queue: asyncio.Queue[str | None] = asyncio.Queue()

    # bytes that are not UTF-8 become U+FFFD instead of ending the input (the same stream
    # object: a second wrapper on its buffer would be closed at exit under the reading thread)
    if isinstance(sys.stdin, io.TextIOWrapper):
        sys.stdin.reconfigure(errors="replace")

    def pump() -> None:
        with contextlib.suppress(ValueError, OSError, RuntimeError):
            for line in sys.stdin:
                loop.call_soon_threadsafe(queue.put_nowait, line)
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(queue.put_nowait, None)

    threading.Thread(target=pump, name="stdin", daemon=True).start()
    return queue


async def next_line(lines: asyncio.Queue[str | None], stop: asyncio.Event) -> str | None:
    """The next input line, or None at the end of input or once ``stop`` is set."""
    get = asyncio.ensure_future(lines.get())
    halt = asyncio.ensure_future(stop.wait())
    done, _ = await asyncio.wait({get, halt}, return_when=asyncio.FIRST_COMPLETED)
    for task in (get, halt):
        if task not in done:
            task.cancel()
    return get.result() if get in done else None


Setup = Callable[[PeerNode, "LineUI"], Awaitable[None]]


async def run_line_mode(
    config: PeerConfig,
    stop: asyncio.Event | None = None,
    *,
    setup: Setup | None = None,
    stop_on_eof: bool = True,
) -> int:
    """Run the line mode until /quit, the end of input (unless ``stop_on_eof`` is off: then
    until ``stop``), or ``stop``. ``setup`` runs first (the demo logs in with it).

    The exit status: 0 if every command succeeded, 1 if any answered ``error:``, 2 if the
    peer could not even listen."""
    ui = LineUI(sys.stdout, interactive=sys.stdin.isatty())
    node = PeerNode(config, on_event=ui.on_event)
    ui.node = node
    try:
        await node.start()
    except OSError as exc:
        ui.write(f"error: cannot listen on {config.listen_host}:{config.listen_port}: {exc}")
        return exits.CANNOT_START
    stopped = stop or asyncio.Event()
    try:
        if setup is not None:
            await setup(node, ui)
        lines = stdin_lines(asyncio.get_running_loop())
        while True:
            line = await next_line(lines, stopped)
            if line is None:  # end of input, or a signal: same as /quit
                if not stop_on_eof and not stopped.is_set():
                    await stopped.wait()
                break
            if not await ui.handle(line):
                break
    finally:
        await node.close()
    return exits.FAILED if ui.failures else exits.OK
