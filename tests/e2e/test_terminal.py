"""The terminal UI in a real terminal (tmux, 80x24): keys as a terminal delivers them.

Pilot tests post events straight into the app; here the keys go through a pseudo-terminal,
the terminal's parser and Textual's input thread, in the bursts tmux writes. Skipped where
tmux is not installed (``apt-get install tmux``).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.procs import WAIT, Registry, start_registry

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")

PW = "password1"


class Terminal:
    """One tmux session of its own (its own server socket), running one command."""

    def __init__(self, socket: Path) -> None:
        self.socket = socket

    def tmux(self, *args: str) -> str:
        return subprocess.run(
            ["tmux", "-S", str(self.socket), *args],
            capture_output=True,
            text=True,
            check=True,
            timeout=WAIT,
        ).stdout

    def keys(self, *keys: str) -> None:
        """Keys in one write, as a fast typist or a slow link delivers them."""
        self.tmux("send-keys", "-t", "ui", *keys)

    def paste(self, text: str, bracketed: bool) -> None:
        self.tmux("set-buffer", "-b", "p", text)
        self.tmux("paste-buffer", "-b", "p", "-t", "ui", *(["-p"] if bracketed else []))

    async def gone(self) -> None:
        """Wait for the command to end (its session closes with it)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT
        while self._alive():
            if loop.time() > deadline:
                raise AssertionError(f"still running; the screen:\n{self.screen()}")
            await asyncio.sleep(0.1)

    def _alive(self) -> bool:
        check = ["tmux", "-S", str(self.socket), "has-session", "-t", "ui"]
        return subprocess.run(check, capture_output=True, timeout=WAIT).returncode == 0

    def cursor_on(self, label: str) -> Callable[[str], bool]:
        """A test of the screen: the cursor is on the row that shows ``label``."""

        def test(screen: str) -> bool:
            row = int(self.tmux("display-message", "-p", "-t", "ui", "#{cursor_y}"))
            rows = screen.splitlines()
            return row < len(rows) and label in rows[row]

        return test

    def pid(self) -> int:
        return int(self.tmux("display-message", "-p", "-t", "ui", "#{pane_pid}"))

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "ui")

    async def until(self, predicate: Callable[[str], bool], what: str) -> str:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT
        while True:
            screen = self.screen()
            if predicate(screen):
                return screen
            if loop.time() > deadline:
                raise AssertionError(f"never saw {what}; the screen:\n{screen}")
            await asyncio.sleep(0.1)  # polling a screen: there is no event to wait on


@pytest.fixture
async def registry(tmp_path: Path) -> AsyncIterator[Registry]:
    reg = await start_registry(tmp_path / "r.db")
    yield reg
    await reg.stop()


@pytest.fixture
def terminal() -> Iterator[Terminal]:
    # tmux's socket path must be short: not under pytest's long temporary folders
    term = Terminal(Path("/tmp") / f"p2pchat-test-{uuid.uuid4().hex[:8]}")
    yield term
    subprocess.run(["tmux", "-S", str(term.socket), "kill-server"], capture_output=True)
    term.socket.unlink(missing_ok=True)


def start_tui(terminal: Terminal, registry: Registry, home: Path, username: str) -> None:
    """``p2pchat peer`` in the terminal, the login screen filled in as if used before."""
    config = home / "p2pchat"
    config.mkdir(parents=True)
    remembered = {"registry": f"127.0.0.1:{registry.port}", "username": username}
    (config / "last.json").write_text(json.dumps(remembered))
    env = {"XDG_CONFIG_HOME": str(home), "TERM": "xterm-256color"}
    command = " ".join(
        [
            "exec env",  # the program is the pane's process: its pid is the pane's
            *(f"{k}={v!r}" for k, v in env.items()),
            sys.executable,
            "-m p2pchat peer --host 127.0.0.1 --advertise 127.0.0.1 --ui tui",
            f"--registry 127.0.0.1:{registry.port}",
        ]
    )
    terminal.tmux("new-session", "-d", "-s", "ui", "-x", "80", "-y", "24", command)


async def test_a_login_typed_in_one_burst_in_a_real_terminal(
    registry: Registry, terminal: Terminal, tmp_path: Path
) -> None:
    start_tui(terminal, registry, tmp_path, username="you")
    await terminal.until(terminal.cursor_on("Password"), "the cursor in the password field")
    # the remembered name replaced, the password typed, Ctrl+R: all in one write
    terminal.keys("BTab", "C-u", "e", "v", "e", "Tab", *PW, "C-r")
    await terminal.until(lambda s: "logged in as eve" in s, "eve logged in")
    terminal.keys("/create lobby", "Enter")
    await terminal.until(lambda s: "#lobby>" in s, "the new room in view")
    lines = "".join(f"line {i}\n" for i in range(5))
    terminal.paste(lines, bracketed=True)
    terminal.paste(lines.replace("line", "typed"), bracketed=False)
    screen = await terminal.until(lambda s: "typed 4 ✓" in s, "every line sent")
    for i in range(5):
        assert screen.count(f"eve: line {i} ✓") == 1, screen
        assert screen.count(f"eve: typed {i} ✓") == 1, screen
    terminal.keys("C-q")
    await terminal.gone()


def threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs /proc to count threads")
async def test_stopped_and_continued_from_outside_the_terminal_still_works(
    registry: Registry, terminal: Terminal, tmp_path: Path
) -> None:
    """``kill -STOP`` then ``kill -CONT`` (not Ctrl+Z): the keys are still read by one
    thread, and Ctrl+Q still ends the program."""
    start_tui(terminal, registry, tmp_path, username="you")
    await terminal.until(terminal.cursor_on("Password"), "the cursor in the password field")
    pid = terminal.pid()
    before = threads(pid)
    os.kill(pid, signal.SIGSTOP)
    os.kill(pid, signal.SIGCONT)
    terminal.keys("x")
    await terminal.until(lambda s: "•" in s, "the key typed after it")  # it runs again
    assert threads(pid) == before, "a second thread reads the terminal"
    terminal.keys("C-q")
    await terminal.gone()
