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

from p2pchat.peer.events import CommandError, DirectText, Notice, PeerEvent, RoomText
from p2pchat.peer.node import PeerConfig, PeerNode
from p2pchat.ui import commands

_CONTROL = {c: "\ufffd" for c in [*range(0x20), 0x7F] if c != 0x09}


def clean(text: str) -> str:
    """Control characters from other peers must not break lines or drive the terminal."""
    return text.translate(_CONTROL)


def format_event(event: PeerEvent) -> str | None:
    """The one line line-mode prints for an event, or None."""
    if isinstance(event, RoomText):
        if event.mine:
            return None
        return f"Message from {event.sender} at {event.room}: {clean(event.text)}"
    if isinstance(event, DirectText):
        if event.mine:
            return None
        return f"Message from {event.sender}: {clean(event.text)}"
    if isinstance(event, Notice):
        return f"* {clean(event.text)}"
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
        self._pending_text: str | None = None

    def write(self, line: str) -> None:
        self.out.write(line + "\n")
        self.out.flush()

    def on_event(self, event: PeerEvent) -> None:
        line = format_event(event)
        if line is not None:
            self.write(line)

    async def handle(self, line: str) -> bool:
        """Handle one input line; False once the user asked to quit."""
        assert self.node is not None
        line = line.rstrip("\r\n")
        if not line.strip():
            return True
        try:
            if self._pending_text is not None:
                result = await self._answer_target(line.strip())
            elif line.lstrip().startswith("/"):
                result = await commands.run(self.node, commands.parse(line))
            elif self.target is not None:
                result = await commands.send_plain(self.node, self.target, line)
            elif self.interactive:
                self._pending_text = line
                self.write("Send to a room or to a peer? Type a room name, or @user for a peer:")
                return True
            else:
                raise CommandError(NO_TARGET)
        except CommandError as exc:
            self.write(f"error: {exc}")
            return True
        for row in result.rows:
            self.write(row)
        if result.target is not None:
            self.target = result.target
        self.write(f"ok: {result.summary}")
        return not result.quit

    async def _answer_target(self, answer: str) -> commands.Result:
        assert self.node is not None
        text, self._pending_text = self._pending_text or "", None
        if answer.startswith("/to "):
            answer = answer[4:].strip()
        target = answer if answer.startswith("@") else self.node.room_name(answer)
        if not target.startswith("@") and target not in self.node.my_rooms():
            raise CommandError(f"you are not a member of {answer}; message not sent")
        self.target = target
        return await commands.send_plain(self.node, target, text)


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
    until ``stop``), or ``stop``. ``setup`` runs first (the demo logs in with it)."""
    ui = LineUI(sys.stdout, interactive=sys.stdin.isatty())
    node = PeerNode(config, on_event=ui.on_event)
    ui.node = node
    try:
        await node.start()
    except OSError as exc:
        print(f"error: cannot listen on {config.listen_host}:{config.listen_port}: {exc}")
        return 2
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
    return 0
